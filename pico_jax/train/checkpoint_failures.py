"""Checkpoint failures as one line: the errors, the check that a save can be written
before it starts, the cause of a failed read or write named, and orbax's noise kept out
of the output.

Why a check before each save: orbax writes asynchronously, and a write that fails
there (a read-only directory, a full disk) leaves its other threads waiting for a
signal until orbax's timeout, then prints a traceback per thread. Probing the directory (a file created and removed) and its free
space against the state's bytes before the save turns both into one error within
seconds, on every process at once (they agree through one small all-gather).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import sys

# The space a save needs besides the arrays' bytes (metadata, the other items).
_MARGIN_BYTES = 1 << 20


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model of the current config; the message names why."""


class CheckpointRestoreError(RuntimeError):
  """A complete checkpoint cannot be resumed; the message names the step, item and cause."""


class CheckpointIntegrityError(CheckpointRestoreError):
  """What a checkpoint holds is not what was saved (a checksum differs) or is not finite;
  the message names the step, the item and the leaf, and the earlier checkpoints."""


class CheckpointExistsError(FileExistsError):
  """A save at a step that already has a checkpoint (without ``overwrite=True``)."""


class CheckpointWriteError(CheckpointRestoreError):
  """A checkpoint cannot be written (permissions, no space); the message names the step,
  the path, the cause and the earlier checkpoints. (A CheckpointRestoreError so the
  command-line scripts print it as one line.)"""


def what_to_do(path: str, complete: list[int]) -> str:
  """What to use instead of the damaged checkpoint at ``path`` (``.../<step>``), given
  the complete checkpoints of its directory (``complete``)."""
  step = int(os.path.basename(path))
  earlier = [s for s in complete if s < step]
  later = [s for s in complete if s > step]
  after = f"; complete checkpoints after it: {', '.join(map(str, later))}" if later else ""
  if not earlier:
    return (f"no earlier complete checkpoint is kept in {os.path.dirname(path)}{after}: "
            f"restore {path} from a copy, or start a new --workdir")
  return (f"remove {path} to resume from step {earlier[-1]} (earlier complete "
          f"checkpoints: {', '.join(map(str, earlier))}{after})")


def unparsable_metrics(paths: list[str]) -> tuple[str, str] | None:
  """(the first checkpoint of ``paths`` whose saved metrics, orbax's JSON beside each
  step, do not parse; why), or None."""
  for path in paths:
    try:
      with open(os.path.join(path, "metrics", "metrics")) as f:
        json.load(f)
    except FileNotFoundError:
      continue
    except (OSError, ValueError) as e:
      return path, cause(e)
  return None


def write_error(what: str, intact: list[int]) -> CheckpointWriteError:
  """The error of a save that cannot be written (``what``: the step, path and cause);
  ``intact``: the complete checkpoints besides it."""
  return CheckpointWriteError(
      f"{what}. Nothing of it was kept; "
      + (f"the complete checkpoints ({', '.join(map(str, intact))}) are untouched "
         f"and the same command resumes from step {intact[-1]}" if intact else
         "no complete checkpoint is kept")
      + " once the directory is writable with space to spare.")


def write_problem(directory: str, nbytes: int) -> str | None:
  """Why a save of ``nbytes`` array bytes cannot be written into ``directory``, or None:
  the directory cannot be created or written (a file is created and removed), or its
  file system has less free space than the arrays plus a margin (uncompressed: at most
  what the save writes)."""
  probe = os.path.join(directory, f".write_probe.{os.getpid()}")
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, "w") as f:
      f.write("x")
    os.remove(probe)
    free = shutil.disk_usage(directory).free
  except OSError as e:
    return os_cause(e)
  if nbytes and free < nbytes + _MARGIN_BYTES:
    return (f"no space left on the device ({free / 2**20:.1f} MiB free; this save needs up "
            f"to {(nbytes + _MARGIN_BYTES) / 2**20:.1f} MiB)")
  return None


_ERRNO_TEXT = {errno.ENOSPC: "no space left on the device",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EROFS: "read-only file system", errno.EDQUOT: "disk quota exceeded"}


def os_cause(e: BaseException) -> str:
  """The cause of a failed write: the OS error found in ``e``'s chain or message
  (TensorStore reports ``[os_error_code='28']``), else ``cause(e)``."""
  seen = e
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno in _ERRNO_TEXT:
      where = f" ({seen.filename})" if seen.filename else ""
      return f"{_ERRNO_TEXT[seen.errno]}{where}"
    code = re.search(r"os_error_code='?(\d+)", str(seen))
    if code and int(code.group(1)) in _ERRNO_TEXT:
      return _ERRNO_TEXT[int(code.group(1))]
    seen = seen.__cause__ or seen.__context__
  return cause(e)


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
