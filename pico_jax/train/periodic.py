"""Schedules of the loop's periodic actions, and the preemption signal.

In the spirit of big_vision's ``itstime`` and CLU's periodic actions (CLU itself is not
a dependency: these few lines are all the loop needs). Each action of the loop
(logging, evaluation, the temperature report, early stopping, checkpointing, the
preemption check) is an ``Every`` with its own period.

Stopping a run: SIGTERM (preemption) and the first Ctrl-C (SIGINT) both ask the loop
to save at the next step boundary and stop; after a SIGTERM the run returns (exit 0, a
scheduler reruns it), after a Ctrl-C it raises ``Interrupted`` (exit 130). A second
Ctrl-C ends the process at once with one line, saving nothing more.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable

import jax


def itstime(step: int, every: int, last: int) -> bool:
  """Whether an action with period ``every`` runs after ``step``: at its multiples and at
  the ``last`` step of the run (so the end is always logged, evaluated and saved)."""
  return step == last or (every > 0 and step % every == 0)


class Every:
  """Calls ``action(step)`` when ``itstime(step, every, last)`` or ``also()`` is true.

  Args:
    every: the period in steps (0: only at ``last`` and when ``also()``).
    action: called with the step just completed.
    last: the run's last step.
    also: an extra condition read at every step (e.g. "the run is stopping now").
  """

  def __init__(self, every: int, action: Callable[[int], object], *, last: int,
               also: Callable[[], bool] | None = None):
    self.every, self.action, self.last, self.also = every, action, last, also

  def __call__(self, step: int):
    if itstime(step, self.every, self.last) or (self.also is not None and self.also()):
      self.action(step)


class Interrupted(KeyboardInterrupt):
  """The run was stopped by Ctrl-C at a step boundary; the message says at which step
  and what was saved."""


_ABORT = (b"error: aborted by a second Ctrl-C, without saving; the same command resumes "
          b"from the latest complete checkpoint\n")


class PreemptionWatch:
  """Whether the job was asked to stop: SIGTERM (preemption, scancel, kubectl delete) or
  a first Ctrl-C (``interrupted``); a second Ctrl-C aborts the process at once.

  Single process: the handlers set a flag that the loop reads between steps.
  Multi-process: jax's preemption sync service (started by
  ``jax.distributed.initialize``) catches SIGTERM on any process and makes every
  process agree on the same step to stop at, so all of them save that step; a Ctrl-C
  raises SIGTERM in its process to join that protocol.
  """

  def __init__(self):
    self._flag = threading.Event()
    self.interrupted = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    if jax.process_count() == 1:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM,
                                                     lambda *_: self._flag.set())
    self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_interrupt)
    return self

  def _on_interrupt(self, *_):
    if self.interrupted:
      os.write(2, _ABORT)  # no logging or I/O buffers: the handler may interrupt them.
      os._exit(130)
    self.interrupted = True
    if jax.process_count() == 1:
      self._flag.set()
    else:
      signal.raise_signal(signal.SIGTERM)

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def requested(self, step: int) -> bool:
    """Collective in a multi-process job: every process calls it at every step."""
    if jax.process_count() == 1:
      return self._flag.is_set()
    from jax.experimental import multihost_utils
    return multihost_utils.reached_preemption_sync_point(step)
