"""The work directory of a run: where each file it writes lives.

Every file a run writes has its name here::

  WORKDIR/
    checkpoints/<step>/          one orbax checkpoint per saved step, with the items
                                 state/  (params, optimizer state, step, rng)
                                 data/   (the Grain iterator position of every process)
                                 config/ (the run's config as JSON)
                                 best/   (the early-stopping best params, when on)
                                 integrity/ (checksums, the data's fingerprint)
                                 loop/   (the logging window's sums)
    checkpoints/<step>.orbax-checkpoint-tmp-*/   a save cut short (ignored)
    metrics.jsonl                one JSON record per evaluation
    train_metrics.jsonl          one JSON record per logging window
    tensorboard/                 TensorBoard event files
    tau_<split>.npz              per-row tau of the latest evaluation of a split
    eval_<split>_step<N>.json    launch/evaluate.py's result
    export/step_<N>/             launch/export.py's artifact (default --output)
    plots/                       launch/plot.py's figures (default --output)
    result.json                  launch/experiment.py: the finished run's test metrics
    writer.lock                  the training run that writes here (pid, host, start)

What the checkpoints hold, how they are kept and which one is best is
``pico_jax/train/checkpoint.py``'s business; this module names the paths and holds the
work directory's one lock.

One writer per work directory: a training run holds ``writer.lock`` (``writer_lock``)
from before it reads a checkpoint until it ends, so a second run on the same directory
stops at once instead of interleaving its checkpoints and metrics with the first's. In
a multi-process job process 0 holds it for all. Readers (``launch/evaluate.py``,
``export.py``, ``predict.py``) take no lock: they write nothing a run writes.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket

log = logging.getLogger("pico_jax")

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TRAIN_METRICS_FILE = "train_metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "export"
PLOTS_DIR = "plots"
RESULT_FILE = "result.json"
LOCK_FILE = "writer.lock"
# orbax writes a step into <step> + this marker + a suffix, renamed when complete.
TMP_MARKER = ".orbax-checkpoint-tmp"


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def tau_file(split: str) -> str:
  return f"tau_{split}.npz"


def eval_file(workdir: str, split: str, step: int) -> str:
  return os.path.join(workdir, f"eval_{split}_step{step}.json")


def export_dir(workdir: str, step: int) -> str:
  return os.path.join(workdir, EXPORT_DIR, f"step_{step}")


class WorkdirError(RuntimeError):
  """The work directory cannot serve a run; the message says why in one line."""


class WorkdirBusyError(WorkdirError):
  """Another run holds the work directory's lock; the message names it (pid, host)."""


def check_location(workdir: str) -> None:
  """Raises WorkdirError for a URI: the lock, the metrics and TensorBoard files are POSIX
  files, so ``gs://b/run`` would silently become a local directory named ``gs:``."""
  from pico_jax.data import filesystem  # pyarrow: only for the run that trains.
  if filesystem.is_uri(str(workdir)):
    raise WorkdirError(
        f"--workdir={workdir}: a work directory is a path on a file system every host "
        "shares (NFS, or a bucket mounted with gcsfuse or s3fs), not a URI")


def _process_start(pid: int) -> str | None:
  """When process ``pid`` started (its /proc start time, in clock ticks since boot), so
  a pid the system has reused for another process is not taken for the lock's holder;
  None where /proc is not available."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(holder: dict) -> bool:
  """Whether the lock's holder (on this host) is still running."""
  try:
    os.kill(holder["pid"], 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process: it exists.
    return True
  start = holder.get("process_start")
  return start is None or _process_start(holder["pid"]) in (None, start)


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')!r} (started "
          f"{holder.get('started', '?')})")


def _claim(draft: str, path: str):
  """Creates ``path`` with the content of ``draft``; FileExistsError if it exists (the
  check and the claim in one step, so two runs cannot both take the lock)."""
  try:
    os.link(draft, path)  # whole at once: no reader sees a half-written lock.
  except FileExistsError:
    raise
  except OSError:  # a file system without hard links: an exclusive create, then write.
    with open(path, "x") as f, open(draft) as d:
      f.write(d.read())


def _acquire(path: str) -> dict:
  """Creates the lock file at ``path`` (atomically, with its content), taking over a
  stale one; raises WorkdirBusyError when a live run holds it."""
  me = {"pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "process_start": _process_start(os.getpid())}
  draft = f"{path}.{me['pid']}.tmp"
  with open(draft, "w") as f:
    json.dump(me, f)
  try:
    for _ in range(3):  # a lost race with another taker: read the winner, try again.
      try:
        _claim(draft, path)
        return me
      except FileExistsError:
        pass
      try:
        with open(path) as f:
          holder = json.load(f)
      except FileNotFoundError:
        continue
      except (OSError, ValueError):
        raise WorkdirBusyError(f"{path}: the work directory's lock file is unreadable; if "
                               "no run uses this directory, remove the file") from None
      if holder.get("host") != me["host"] or _alive(holder):
        raise WorkdirBusyError(
            f"{os.path.dirname(path)} is in use by another training run: "
            f"{_describe(holder)} holds {path}. Wait for it to end or use another --workdir"
            + ("" if holder.get("host") == me["host"] else "; if that run is gone, remove "
               "the lock file"))
      log.warning("taking over the lock of a run that is gone (%s): %s", _describe(holder),
                  path)
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    raise WorkdirBusyError(f"{path}: other runs keep taking the lock at the same time")
  finally:
    os.remove(draft)


def _release(path: str, me: dict):
  with contextlib.suppress(OSError, ValueError):
    with open(path) as f:
      if json.load(f).get("pid") == me["pid"]:
        os.remove(path)


@contextlib.contextmanager
def writer_lock(workdir: str):
  """Holds ``workdir``'s lock (see the module docstring) for the duration.

  Collective in a multi-process job: process 0 takes the lock, and every process raises
  ``WorkdirBusyError`` when it cannot. A lock left by a run on this host that is gone
  (killed) is taken over with a warning.
  """
  from pico_jax import parallel  # jax only where a run starts, not for the paths.
  import jax
  path = os.path.join(workdir, LOCK_FILE)
  me, error = None, None
  if jax.process_index() == 0:
    try:
      me = _acquire(path)
    except WorkdirBusyError as e:
      error = e
  if parallel.first_failing_process(error is not None) is not None:
    raise error or WorkdirBusyError(f"{path}: process 0 could not take the work "
                                    "directory's lock (see its error)")
  try:
    yield
  finally:
    if me is not None:
      _release(path, me)
