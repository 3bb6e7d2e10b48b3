"""A format whose parser kills the process that parses a chosen line, as the kernel's
OOM killer would: a preprocessing worker process that dies without a result. The
class is in a module of its own so that forked worker processes can unpickle it."""

import os
import signal

from pico_jax.data import numeric_csv


class DyingAliexpress(numeric_csv.CsvFormat):
  """The AliExpress format, whose worker processes die on the block holding line
  ``die_at`` (the parent process, which never parses, is spared)."""

  def __init__(self, die_at: int, parent: int, **kwargs):
    base = numeric_csv.aliexpress(**kwargs)
    self.__dict__.update(base.__dict__)
    self.die_at, self.parent = die_at, parent

  def parse_block(self, path, data, first_line_no, layout, num_lines=None):
    n = num_lines if num_lines is not None else bytes(data).count(b"\n")
    if first_line_no <= self.die_at < first_line_no + n and os.getpid() != self.parent:
      os.kill(os.getpid(), signal.SIGKILL)
    return super().parse_block(path, data, first_line_no, layout, num_lines)
