"""Checkpoint failures as one line: the noise of a failed read or write kept out of the
output, and the cause named.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys


def cause(e: BaseException) -> str:
  """The first line of ``e``'s message, naming the damaged array when TensorStore says
  which (its spec, a page of JSON, is left out)."""
  text = str(e).strip()
  text = text.splitlines()[0] if text else "(no message)"
  text = text.split(" [tensorstore_spec=")[0]
  array = re.search(r'Error (?:reading|opening) "([^"]+?)/\.zarray"', text)
  prefix = f"array {array.group(1).replace('.', '/')!r} is damaged: " if array else ""
  return f"{prefix}{type(e).__name__}: {text[:400]}"


@contextlib.contextmanager
def quiet_orbax():
  """Keeps the noise of a failed checkpoint read out of the output; the caller raises
  one error that says what failed.

  A read that fails on one damaged array closes orbax's asyncio loop while TensorStore
  still completes the reads of the others; each completion then reports
  ``RuntimeError: Event loop is closed`` through ``sys.unraisablehook`` (thousands of
  tracebacks for a real model), and orbax logs each failure. Both are silenced here;
  the hook filter stays installed, since those completions arrive after the read.
  """
  _drop_closed_loop_reports()
  loggers = [logging.getLogger(n) for n in ("absl", "orbax", "asyncio")]
  levels = [l.level for l in loggers]
  for l in loggers:
    l.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for l, level in zip(loggers, levels):
      l.setLevel(level)


def _drop_closed_loop_reports():
  if getattr(sys.unraisablehook, "_drops_closed_loop", False):
    return
  previous = sys.unraisablehook

  def hook(report):
    if not (isinstance(report.exc_value, RuntimeError)
            and str(report.exc_value) == "Event loop is closed"):
      previous(report)

  hook._drops_closed_loop = True
  sys.unraisablehook = hook
