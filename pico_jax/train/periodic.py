"""Schedules of the loop's periodic actions, and the preemption signal.

In the spirit of big_vision's ``itstime`` and CLU's periodic actions (CLU itself is not
a dependency: these few lines are all the loop needs). Each action of the loop
(logging, evaluation, the temperature report, early stopping, checkpointing, the
preemption check) is an ``Every`` with its own period.
"""

from __future__ import annotations

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


class PreemptionWatch:
  """Whether the job was asked to stop (SIGTERM: preemption, scancel, kubectl delete).

  Single process: a SIGTERM handler sets a flag that the loop reads between steps.
  Multi-process: jax's preemption sync service (started by
  ``jax.distributed.initialize``) catches the signal on any process and makes every
  process agree on the same step to stop at, so all of them save that step.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def requested(self, step: int) -> bool:
    """Collective in a multi-process job: every process calls it at every step."""
    if jax.process_count() == 1:
      return self._flag.is_set()
    from jax.experimental import multihost_utils
    return multihost_utils.reached_preemption_sync_point(step)
