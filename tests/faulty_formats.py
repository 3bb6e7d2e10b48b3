"""Formats that misbehave on purpose, for the preprocessor's failure tests: one whose
parser kills the process parsing a chosen line (as the kernel's OOM killer would), one
whose parser appends to its own input (a file written while it is read). They are in
a module of their own so that forked worker processes can unpickle them."""

import os
import signal
import time

from pico_jax.ingest import numeric_csv


class DyingAliexpress(numeric_csv.CsvFormat):
  """The AliExpress format, whose worker processes die on the block holding line
  ``die_at`` (the parent process, which never parses, is spared)."""

  def __init__(self, die_at: int, parent: int, **kwargs):
    base = numeric_csv.aliexpress(**kwargs)
    self.__dict__.update(base.__dict__)
    self.die_at, self.parent = die_at, parent

  def parse_block(self, path, data, first_line_no, layout, num_lines=None, threads=1):
    n = num_lines if num_lines is not None else bytes(data).count(b"\n")
    if first_line_no <= self.die_at < first_line_no + n and os.getpid() != self.parent:
      os.kill(os.getpid(), signal.SIGKILL)
    return super().parse_block(path, data, first_line_no, layout, num_lines, threads)


class GrowingAliexpress(numeric_csv.CsvFormat):
  """The AliExpress format, whose first parse appends a line to the file it reads."""

  def __init__(self, **kwargs):
    self.__dict__.update(numeric_csv.aliexpress(**kwargs).__dict__)
    self.grown = False

  def parse_block(self, path, data, first_line_no, layout, num_lines=None, threads=1):
    if not self.grown:
      self.grown = True
      with open(path, "ab") as f:
        f.write(bytes(data[:data.tobytes().index(b"\n") + 1]))
    return super().parse_block(path, data, first_line_no, layout, num_lines, threads)


def die_on_one(x: int) -> int:
  """A block task whose worker dies on task 1 (a little after the others started)."""
  if x == 1:
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGKILL)
  return x
