"""How the blocks of a build are spread over workers: threads or processes, in order.

``Runner`` runs the passes' per-block tasks (``passes.count_block``,
``passes.write_block``) on worker threads of this process (the default: the parse, the
hashing, file I/O and the large array operations release the GIL, and a thread costs
nothing to start) or on worker processes, handing them out at most two per worker
ahead, so memory stays bounded by a few blocks, and yielding the results in block
order. ``thread_budget``, ``effective_workers`` and ``parse_threads`` decide how many
threads a run keeps busy; ``Progress`` is the rows/s bar.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable

import tqdm

# Lines per block by default: the unit of parallel work and of a worker's memory.
CHUNK_ROWS = 65_536


def parse_threads(block: int, num_blocks: int, threads: int) -> int:
  """Threads for the parse of block number ``block`` of ``num_blocks``, ``threads``
  (``thread_budget``) being at work: one, but the last ``num_blocks % threads`` blocks
  share all the threads, rounded up, so that no core idles through the last round.
  On 2 threads, the fifth of 5 blocks is parsed on both; on 16, each of 5 blocks is
  parsed on 4 (20 threads on 16 CPUs, for a moment)."""
  last = num_blocks % threads
  return -(-threads // last) if last and block >= num_blocks - last else 1


# A worker process is slow to start (spawn, imports): each gets at least this much input.
MIN_BYTES_PER_WORKER = 16 << 20


def default_workers(processes: bool = False) -> int:
  """Threads: one per CPU (``os.cpu_count()``). Processes: one per idle CPU,
  ``os.cpu_count()`` less the 1-minute load average: on a machine already saturated
  by other jobs, extra processes only add their start-up and compete with each other
  for the same cores."""
  cpus = os.cpu_count() or 1
  if not processes:
    return cpus
  return max(1, cpus - round(os.getloadavg()[0]))


def thread_budget(requested: int, processes: bool = False) -> int:
  """Threads a run may keep busy: ``requested`` workers (0: ``default_workers()``),
  at most one per CPU."""
  return max(1, min(requested or default_workers(processes), os.cpu_count() or 1))


def effective_workers(threads: int, input_bytes: int, num_blocks: int,
                      processes: bool = False) -> int:
  """Workers to use: ``threads`` (``thread_budget``), but never more than the blocks,
  nor, for processes, one per ``MIN_BYTES_PER_WORKER`` of input, so that more workers
  are never slower than one."""
  by_size = -(-input_bytes // MIN_BYTES_PER_WORKER) if processes else num_blocks
  return max(1, min(threads, num_blocks, by_size))


class WorkerDied(RuntimeError):
  """A worker process ended without a result (killed, e.g. by the kernel's OOM killer,
  or crashed)."""


class Runner:
  """Runs block tasks in order: in this process (``workers`` 1), on threads of this
  process (``threads``: the parse, the hashing and most array work release the GIL,
  and a thread costs nothing to start) or on a pool of processes.

  Workers come from a ``forkserver``, not a ``fork`` of the caller (which may hold
  threads, JAX, Grain, that a fork would copy mid-state): a clean server process
  imports the parser once, then forks each worker, so starting one costs little. A
  worker process that dies raises ``WorkerDied`` here (``ProcessPoolExecutor`` notices
  a missing process; ``multiprocessing.Pool`` would wait for its result forever).
  """

  def __init__(self, workers: int = 1, threads: bool = True):
    self.workers = workers
    self.threads = threads
    self._executor = None

  @property
  def in_process(self) -> bool:
    """Whether tasks run in this process (they may share its objects)."""
    return self.workers <= 1 or self.threads

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False

  def close(self):
    """Stops the workers. Their writes to the store's shared maps are already in the
    page cache; after an error, the blocks still pending are of no use: they are
    cancelled, and worker processes are ended (threads finish the task they are on).
    Nothing runs once this returns."""
    if self._executor is None:
      return
    if not self.threads:
      # ProcessPoolExecutor has no terminate before Python 3.14.
      for process in list(getattr(self._executor, "_processes", {}).values()):
        process.terminate()
    self._executor.shutdown(wait=True, cancel_futures=True)
    self._executor = None

  def _start(self):
    if self.threads:
      return concurrent.futures.ThreadPoolExecutor(self.workers)
    context = multiprocessing.get_context("forkserver")
    # The fork server imports the parser once; each worker is a fork of it.
    context.set_forkserver_preload(["pico_jax.ingest.passes"])
    return concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context)

  def map(self, fn: Callable, tasks: Iterable, num_tasks: int) -> Iterable[Any]:
    """``fn(task)`` for every task, in order (a worker's exception re-raised here)."""
    if self.workers <= 1 or num_tasks <= 1:
      yield from map(fn, tasks)
      return
    if self._executor is None:
      self._executor = self._start()
    pending = collections.deque()
    try:
      for task in tasks:
        pending.append(self._executor.submit(fn, task))
        if len(pending) >= 2 * self.workers:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    except BrokenProcessPool as e:  # from a result, or from a submit after the death.
      raise WorkerDied(
          "a preprocessing worker process died without a result (killed, e.g. by the "
          "OOM killer: each holds about two blocks; try fewer --workers, a smaller "
          "--chunk_rows, or threads instead of --processes). The pool's report: "
          f"{e}") from e


class Progress:
  """A tqdm bar over ``total`` units (rows, or bytes when ``unit`` is "B") that shows
  rows/s; a no-op when ``enabled`` is False."""

  def __init__(self, total: int, desc: str, unit: str = "rows", enabled: bool = True):
    self.rows, self.start = 0, time.perf_counter()
    self.bar = None
    if enabled:
      self.bar = tqdm.tqdm(total=total, desc=desc, unit=unit, unit_scale=True,
                           unit_divisor=1024 if unit == "B" else 1000, dynamic_ncols=True,
                           smoothing=0.1)

  def update(self, rows: int, amount: int | None = None):
    self.rows += rows
    if self.bar is not None:
      self.bar.update(rows if amount is None else amount)
      if amount is not None:
        rate = self.rows / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{rate:,.0f} rows/s", refresh=False)

  def close(self):
    if self.bar is not None:
      self.bar.close()
