"""The Grain input pipeline: whole batches gathered with numpy fancy indexing.

Grain owns order, prefetch and the checkpointable iterator state; the unit of work is
a whole batch, never a row, so there is no per-row Python on the hot path. The
columns may be in-memory arrays or ``np.memmap`` views of a columnar store.

Batch k of epoch e is the k-th slice of ``permutation(seed, e)``; process p of P takes
rows [p * B / P, (p + 1) * B / P) of that global batch. The global batch is therefore
the same whatever the number of processes, which makes multi-host runs reproduce
single-host runs.

Columns are usually the read-only memory maps of a columnar store
(``pico_jax.data.store``): a batch gather touches only the pages of its rows, so the
store may be far larger than memory, and every process maps the same files.
Throughput on W2-shaped data is in BENCHMARKS.md ("Input pipeline").
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

import grain
import numpy as np

from pico_jax import batch as B


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
  """The row order of ``epoch``: int64 [num_rows], a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_rows)


def num_rows(columns: Mapping[str, np.ndarray]) -> int:
  """The common leading dimension N of ``columns``; raises if the columns disagree."""
  if not columns:
    raise ValueError("no columns")
  sizes = {key: len(col) for key, col in columns.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"columns differ in row count: {sizes}")
  return next(iter(sizes.values()))


def gather(columns: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
  """One batch: every column indexed by ``rows`` (int64 [b]), plus ``mask`` of ones."""
  out = {key: np.asarray(col[rows]) for key, col in columns.items()}
  out[B.MASK] = np.ones(len(rows), np.float32)
  return out


class _TrainBatches:
  """Random access to the batches of a shuffled, repeated training stream."""

  def __init__(self, columns, *, global_batch_size, seed, shuffle, process_index,
               process_count):
    self.columns = columns
    self.num_rows = num_rows(columns)
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.batches_per_epoch = self.num_rows // global_batch_size
    self.seed = seed
    self.shuffle = shuffle
    self.process_index = process_index
    # Grain calls this object from ``num_threads`` threads at once. The lock makes the
    # look-up and the fill of the cache one step, so threads asking for the same epoch
    # wait for one computation instead of each computing it; the two newest epochs are
    # kept because at an epoch edge the threads ask for both in turn.
    self._lock = threading.Lock()
    self._perms: dict[int, np.ndarray] = {}

  def _order(self, epoch):
    with self._lock:
      perm = self._perms.get(epoch)
      if perm is None:
        perm = (epoch_permutation(self.num_rows, self.seed, epoch) if self.shuffle
                else np.arange(self.num_rows))
        self._perms[epoch] = perm
        for old in sorted(self._perms)[:-2]:
          del self._perms[old]
      return perm

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    epoch, k = divmod(int(index), self.batches_per_epoch)
    start = k * self.global_batch_size + self.process_index * self.local_batch_size
    rows = self._order(epoch)[start:start + self.local_batch_size]
    return gather(self.columns, rows)


def train_iterator(columns: Mapping[str, np.ndarray], *, global_batch_size: int,
                   num_batches: int, seed: int, shuffle: bool = True,
                   process_index: int = 0, process_count: int = 1,
                   prefetch: int = 4, num_threads: int = 2,
                   put: Callable[[dict[str, np.ndarray]], Any] | None = None,
                   device_prefetch: int = 0) -> grain.DatasetIterator:
  """An iterator over ``num_batches`` local training batches.

  Epochs follow each other without a gap; the last partial batch of an epoch is
  dropped (every step sees a full global batch). The returned iterator supports
  ``get_state()`` / ``set_state()``, in the same format whatever ``put`` and
  ``device_prefetch`` are, so a checkpoint resumes with either.

  Device prefetch is Grain's own: ``.map(put)`` places each batch and
  ``grain.experimental.ThreadPrefetchIterDataset`` runs that map on a background
  thread, ``device_prefetch`` placed batches ahead of the step (2: double
  buffering, each costing one batch of device memory), so the host-to-device copies
  are off the step's critical path. Its ``get_state()`` is the state after the last
  batch *handed to the caller*, never after the ones read ahead (the thread records
  the state beside each batch it buffers), so a checkpoint written between steps
  resumes exactly at the next unseen batch; ``set_state`` stops the thread and drops
  what was read ahead. An error raised on the thread (by ``put`` or the read)
  reaches the caller at the batch it concerns.

  Args:
    columns: column arrays with a common leading dimension N (batch keys).
    global_batch_size: rows per step over all processes; divisible by process_count.
    num_batches: how many batches the iterator yields in total.
    seed: shuffling seed; the order is a pure function of (seed, epoch).
    process_index, process_count: this process's shard of every global batch.
    prefetch, num_threads: Grain's read-ahead of host batches and its threads.
    put: host batch -> placed batch (``Trainer.put``), applied to every batch; None
      yields the host batches.
    device_prefetch: batches the background thread keeps ready (>= 0; 0: ``put``
      runs on the caller's thread when the batch is asked for).
  """
  if device_prefetch < 0:
    raise ValueError(f"device_prefetch={device_prefetch}: must be >= 0")
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by "
                     f"{process_count} processes")
  source = _TrainBatches(columns, global_batch_size=global_batch_size, seed=seed,
                         shuffle=shuffle, process_index=process_index,
                         process_count=process_count)
  if source.batches_per_epoch == 0:
    raise ValueError(f"global batch size {global_batch_size} exceeds the "
                     f"{source.num_rows} rows of the training split")
  ds = grain.MapDataset.range(num_batches).map(source).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  return placed(ds, put, device_prefetch)


def placed(ds: grain.IterDataset, put: Callable[[dict[str, np.ndarray]], Any] | None,
           device_prefetch: int) -> grain.DatasetIterator:
  """The iterator of host batches ``ds``, each mapped by ``put`` (None: left on the
  host), ``device_prefetch`` of them placed ahead by Grain's thread (see
  ``train_iterator``)."""
  if device_prefetch < 0:
    raise ValueError(f"device_prefetch={device_prefetch}: must be >= 0")
  if put is not None:
    ds = ds.map(put)
  if device_prefetch:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=device_prefetch)
  return iter(ds)


def eval_batches(columns: Mapping[str, np.ndarray], *, global_batch_size: int,
                 process_index: int = 0, process_count: int = 1):
  """Yields the local part of every global evaluation batch, in row order.

  Every row is visited exactly once; the last batch is padded to full size by
  repeating row 0 with ``mask = 0``, so all batches share one compiled shape.
  """
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by "
                     f"{process_count} processes")
  n = num_rows(columns)
  local = global_batch_size // process_count
  for start in range(0, n, global_batch_size):
    rows = np.arange(start + process_index * local, start + (process_index + 1) * local)
    valid = rows < n
    out = gather(columns, np.where(valid, rows, 0))
    out[B.MASK] = valid.astype(np.float32)
    yield out
