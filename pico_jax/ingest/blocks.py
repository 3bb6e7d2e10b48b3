"""The per-block work of preprocessing, run in order on worker threads (or processes).

A block (``readers.Block``) is parsed once: ``count_block`` parses and checks it,
returns its training statistics and spills the parsed rows (the ids factorized per
block, the dense values raw: ``spill.Spill`` holds them in memory up to a budget, in
files beyond it); after the vocabularies are built, ``write_block`` takes the spilled
block back, encodes it and writes it into the store's memory-mapped columns. Workers are
threads of the preprocessing process by default (the parse, the hashing, file I/O and
the large array operations release the GIL, and a thread costs nothing to start); as
processes, only offsets, per-row split ids and small statistics travel between them:
a worker reads its block from the file (a gzip stream is unpacked once by the parent)
and writes its rows into the store itself.

``Runner`` hands the tasks to the workers at most two per worker ahead, so memory
stays bounded by a few blocks, and yields the results in block order, so the first
bad row of the input (in file order) is the one reported.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import pickle
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable

import numpy as np
import tqdm

from pico_jax.ingest import compiled, readers
from pico_jax.ingest.encode import Encoder, factorize
from pico_jax.data.errors import DataError
from pico_jax.ingest.spill import FILES, Spill

_INT32 = np.iinfo(np.int32)


@dataclasses.dataclass(frozen=True)
class CountTask:
  """Pass 1 of one block. ``split``: int8 [n] split id (0 train, 1 val, 2 test) of its
  rows; ``data``: the block's bytes when the parent read them (gzip), else None;
  ``threads``: the threads its parse may use (``parse_threads``)."""
  fmt: readers.Format
  block: readers.Block
  layout: readers.Layout
  data: bytes | None
  split: np.ndarray
  policy: str
  spill: str
  threads: int = 1


@dataclasses.dataclass
class BlockStats:
  """What pass 1 learns from a block.

  Attributes:
    rows: n.
    dropped: bool [n], rows dropped by policy "drop" (conversion without click).
    uniques: per feature field (sparse names, then list names): (sorted distinct
      training values, int64 counts).
    moments: (count, mean float64 [D], sum of squared deviations float64 [D]) of the
      training rows' dense values, or None when there are none.
    max_mult: per key:value field, the most values one row has.
  """
  rows: int
  dropped: np.ndarray
  uniques: list[tuple[np.ndarray, np.ndarray]]
  moments: tuple[int, np.ndarray, np.ndarray] | None
  max_mult: dict[str, int]


def parse(fmt, block: readers.Block, layout, data: bytes | None,
          threads: int = 1) -> readers.Chunk:
  """The block's rows (its bytes read from the file unless given)."""
  if data is None:
    data = readers.read_block(block)
  return fmt.parse_block(block.path, data, block.first_line, layout, block.num_lines,
                         threads)


def parse_threads(block: int, num_blocks: int, threads: int) -> int:
  """Threads for the parse of block number ``block`` of ``num_blocks``, ``threads``
  (``thread_budget``) being at work: one, but the last ``num_blocks % threads`` blocks
  share all the threads, rounded up. On 2 threads, the fifth of 5 blocks is parsed on
  both (one core idled for 0.04 of 0.37 s on the 2 vCPU VM); on 16, each of 5 blocks
  is parsed on 4 (20 threads on 16 CPUs, for a moment)."""
  last = num_blocks % threads
  return -(-threads // last) if last and block >= num_blocks - last else 1


def count_block(task: CountTask, spill: Spill = FILES) -> BlockStats:
  """Parses, checks and spills a block (to ``task.spill``'s file unless ``spill`` holds
  it); its training statistics. Raises DataError."""
  fmt, path = task.fmt, task.block.path
  chunk = parse(fmt, task.block, task.layout, task.data, task.threads)
  bad = (chunk.conversion == 1) & (chunk.click == 0)
  if task.policy == "error" and bad.any():
    i = int(np.flatnonzero(bad)[0])
    col, name = fmt.conversion_column
    raise DataError("conversion without click (conversion = 1, click = 0) breaks the "
                    "entire-space rule; use policy 'drop' to skip such rows",
                    path=path, line=int(chunk.lines[i]), column=col, column_name=name)
  dropped = bad if task.policy == "drop" else np.zeros(len(chunk), bool)
  if chunk.group is not None:
    out = np.flatnonzero((chunk.group < _INT32.min) | (chunk.group > _INT32.max))
    if len(out):
      raise DataError(f"group key {int(chunk.group[out[0]])} does not fit int32",
                      path=path, line=int(chunk.lines[out[0]]), column_name=fmt.group_name)
  train = (task.split == 0) & ~dropped
  uniques = []
  for j, values in enumerate(chunk.sparse):
    # Spilled factorized: pass 2 then looks up each distinct value once, in order.
    factors, counts = factorize(values, train)
    uniques.append((factors.keys[counts > 0], counts[counts > 0]))
    chunk.sparse[j] = factors
  moments = None if chunk.dense is None else compiled.moments(chunk.dense, train)
  max_mult = {}
  for name, (lrows, values, _) in chunk.lists.items():
    max_mult[name] = int(np.bincount(lrows).max()) if len(lrows) else 0
    uniques.append(np.unique(values[train[lrows]], return_counts=True))
  spill.put(task.spill, chunk)
  return BlockStats(len(chunk), dropped, uniques, moments, max_mult)


@dataclasses.dataclass(frozen=True)
class WriteTask:
  """Pass 2 of one block: ``where`` int64 [n] is each row's index in its split,
  ``split`` int8 [n] its split id (-1: dropped); ``encoder`` the Encoder or the path
  of its pickle (read once per worker)."""
  spill: str
  encoder: Encoder | str
  store_dir: str
  split: np.ndarray
  where: np.ndarray


@functools.lru_cache(maxsize=4)
def _load_encoder(path: str) -> Encoder:
  with open(path, "rb") as f:
    return pickle.load(f)


_COLUMNS: dict[str, np.ndarray] = {}  # this worker's writable maps of the store.


def _column(store_dir: str, split: str, key: str) -> np.ndarray:
  path = os.path.join(store_dir, split, f"{key}.npy")
  if path not in _COLUMNS:
    _COLUMNS[path] = np.load(path, mmap_mode="r+")
  return _COLUMNS[path]


def write_block(task: WriteTask, splits=("train", "val", "test"), columns=None,
                spill: Spill = FILES):
  """Encodes a spilled block (taken from ``spill``) into the store; per multi-valued
  field, the rows truncated. ``columns`` (split -> key -> array) defaults to maps of
  the files."""
  chunk = spill.take(task.spill)
  encoder = (_load_encoder(task.encoder) if isinstance(task.encoder, str)
             else task.encoder)
  return encoder.write(chunk, task.split, task.where, lambda key: tuple(
      columns[split][key] if columns is not None
      else _column(task.store_dir, split, key) for split in splits))


# A worker process costs about a second to start (spawn, imports): below this much
# input per worker process, fewer of them finish sooner. Threads cost nothing to start.
MIN_BYTES_PER_WORKER = 16 << 20


def default_workers(processes: bool = False) -> int:
  """Threads: one per CPU (``os.cpu_count()``). Processes: one per idle CPU,
  ``os.cpu_count()`` less the 1-minute load average: on a machine already saturated
  by other jobs, extra processes only add their start-up and compete with each other
  for the same cores (measured: BENCHMARKS.md)."""
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
    context.set_forkserver_preload(["pico_jax.ingest.blocks"])
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
