"""Streaming a sharded store's training split, on Grain's own datasets.

Which rows a process reads (``process_pieces``): the shards of a group (the whole split,
or one time partition) are laid end to end and process p of P takes rows
[p n / P, (p + 1) n / P) of them: whole shards when the counts divide, row ranges inside
shards when they do not (fewer shards than processes included). Every row is read by
exactly one process once per epoch, and the processes' shares differ by at most one row
per group. Its range is cut into pieces of at most ``PIECE_ROWS`` rows.

One epoch of one process (``epoch_dataset``), with every random choice drawn from
``default_rng([seed, epoch, process_index])``, group by group:

  pieces, in a shuffled order ("shuffle") or in partition order ("time")
  -> ``_PieceDataset`` per piece: chunks of ``chunk_rows(window)`` consecutive rows,
     read a Parquet row group at a time (a shard's rows are stored in a seeded random
     order, ``shard_writer``)
  -> ``grain.experimental.InterleaveIterDataset`` over ``CYCLE_PIECES`` open pieces
     ("time": one, in order); Grain reads ahead on its threads, a chunk per hand-over
  -> ``window_shuffle.WindowShuffleIterDataset`` (Grain's window shuffle, element for
     element, at a quarter of its cost): the chunks of every ``window`` rows in a
     shuffled order.

The groups of an epoch follow each other (a window never mixes two time partitions), the
epochs too (``InterleaveIterDataset``s of cycle 1). ``train_iterator`` then cuts the row
stream into blocks of ``window`` rows (``RebatchIterDataset``), draws a permutation of
each (``random_map``) and cuts the block into local batches, each one gather of its
permuted rows (``FlatMapIterDataset``): row-level mixing over the window, vectorized.
The window holds chunks, not rows: a window element costs Python (a list entry, an
order computed, a hand-over), a few a window are noise, 65,536 would cap the reader.
Memory is O(window + open pieces' row groups),
whatever the store's size. The iterator's ``get_state`` (Grain's, nested: epoch, open
pieces and their next rows, the window's start, the block count) is what a checkpoint
saves; a resume is bit-identical.

Grain's ``ParquetIterDataset`` yields one Python dict per row (measured in
docs/data.md); chunks of rows keep the per-row Python off the path.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import grain
import numpy as np

from pico_jax import batch as B
from pico_jax.data import ORDERS, pipeline, window_shuffle
from pico_jax.data.sharded import ShardedSplit, read_row_group, row_group_starts

CHUNK_ROWS = 16_384  # the most rows one read hands over (never across a row group),
WINDOW_CHUNKS = 4  # and the fewest chunks a shuffle window holds (small windows: small chunks).
PIECE_ROWS = 1 << 20  # the most rows of one piece (the unit of the piece order).
CYCLE_PIECES = 4  # pieces read at once in shuffle order: one row group buffered each.


@dataclasses.dataclass(frozen=True)
class Piece:
  """Rows [start, stop) of shard ``shard`` (an index into the split's shards), in
  group ``group`` (a time partition, or 0 for all)."""
  shard: int
  start: int
  stop: int
  group: int = 0


def process_pieces(shard_rows: Sequence[int], groups: Sequence[Sequence[int]],
                   process_index: int, process_count: int,
                   piece_rows: int = PIECE_ROWS) -> list[Piece]:
  """The pieces process ``process_index`` of ``process_count`` reads, group by group.

  Args:
    shard_rows: rows of every shard of the split.
    groups: shard indices of every group, in order (consecutive shards).
    piece_rows: the most rows of one piece.
  """
  pieces = []
  for index, group in enumerate(groups):
    starts = np.concatenate([[0], np.cumsum([shard_rows[i] for i in group])])
    n = int(starts[-1])
    lo, hi = n * process_index // process_count, n * (process_index + 1) // process_count
    for shard, first in zip(group, starts[:-1]):
      a, b = max(lo, int(first)) - first, min(hi, int(first) + shard_rows[shard]) - first
      for start in range(int(a), int(b), piece_rows):
        pieces.append(Piece(shard, start, min(int(b), start + piece_rows), index))
  return pieces


def groups_of(split: ShardedSplit, order: str) -> list[list[int]]:
  """The split's shard groups: one ("shuffle"), or one per time partition in shard
  order ("time")."""
  if order not in ORDERS:
    raise ValueError(f"order={order!r}: expected one of {list(ORDERS)}")
  if order == "shuffle":
    return [list(range(len(split.shards)))]
  groups: list[list[int]] = []
  for i, shard in enumerate(split.shards):
    if groups and split.shards[groups[-1][-1]].partition == shard.partition:
      groups[-1].append(i)
    else:
      groups.append([i])
  return groups


def chunk_rows(window: int) -> int:
  """Rows of a chunk for a shuffle window of ``window`` rows (< 2: no window)."""
  return CHUNK_ROWS if window < 2 else max(1, min(CHUNK_ROWS, window // WINDOW_CHUNKS))


class _PieceIterator(grain.DatasetIterator):
  """Chunks of one piece (key -> array [n <= chunk, *tail], views of one row group);
  the state is the next row to read."""

  def __init__(self, split, piece, specs, chunk):
    super().__init__()
    self._split, self._piece, self._specs, self._chunk = split, piece, specs, chunk
    self._row = piece.start
    self._file = self._starts = None
    self._group, self._buffer = -1, None

  def __next__(self) -> dict[str, np.ndarray]:
    if self._row >= self._piece.stop:
      raise StopIteration
    if self._file is None:
      self._file = self._split.files.open(self._split.shards[self._piece.shard].relpath)
      self._starts = row_group_starts(self._file)
    group = int(np.searchsorted(self._starts, self._row, side="right")) - 1
    if group != self._group:
      self._group, self._buffer = group, read_row_group(self._file, group, self._specs)
    g0 = int(self._starts[group])
    end = min(self._row + self._chunk, int(self._starts[group + 1]), self._piece.stop)
    chunk = {k: v[self._row - g0:end - g0] for k, v in self._buffer.items()}
    self._row = end
    return chunk

  def get_state(self) -> dict[str, Any]:
    return {"row": self._row}

  def set_state(self, state: dict[str, Any]) -> None:
    self._row = int(state["row"])


class _PieceDataset(grain.IterDataset):
  def __init__(self, split, piece, specs, chunk):
    super().__init__()
    self._args = (split, piece, specs, chunk)

  def __iter__(self):
    return _PieceIterator(*self._args)


def epoch_dataset(split: ShardedSplit, pieces: Sequence[Piece], *, epoch: int, seed: int,
                  order: str, window: int, process_index: int,
                  specs=None) -> grain.IterDataset:
  """The chunks (key -> array [n <= chunk_rows(window), *tail]) of one epoch of one
  process (see the module docstring). ``specs``: the columns read (default: the batch
  keys)."""
  specs = split.specs if specs is None else specs
  chunk = chunk_rows(window)
  rng = np.random.default_rng([seed, epoch, process_index])
  shuffle = order == "shuffle"
  sequence = rng.permutation(len(pieces)) if shuffle else np.arange(len(pieces))
  groups = sorted({p.group for p in pieces})
  seeds = rng.integers(1 << 31, size=len(groups))
  datasets = []
  for group, window_seed in zip(groups, seeds):
    members = [pieces[i] for i in sequence if pieces[i].group == group]
    ds = grain.MapDataset.source(members).map(
        lambda piece: _PieceDataset(split, piece, specs, chunk))
    ds = grain.experimental.InterleaveIterDataset(
        ds, cycle_length=CYCLE_PIECES if shuffle else 1, iter_buffer_size=2)
    if window >= 2:  # per group: a window never mixes two time partitions.
      ds = window_shuffle.WindowShuffleIterDataset(
          ds, window_size=-(-window // chunk), seed=int(window_seed))
    datasets.append(ds)
  if len(datasets) == 1:
    return datasets[0]
  return grain.experimental.InterleaveIterDataset(datasets, cycle_length=1)


class _Batches(grain.experimental.FlatMapTransform):
  """(block of k * batch rows, a permutation of them) -> its k batches, each one gather
  of its rows (the only copy after the Parquet decode and the block's). ``np.take``
  along axis 0, not ``v[rows]``: the same rows, copied whole, about twice the rows/s
  for the [n, F] and [n, D] columns (measured on the development VM)."""

  def __init__(self, batch: int, block: int):
    self.batch, self.max_fan_out = batch, block // batch

  def flat_map(self, element):
    block, order = element
    ones = np.ones(self.batch, np.float32)
    return [{**{k: np.take(v, rows, axis=0) for k, v in block.items()}, B.MASK: ones}
            for rows in order.reshape(-1, self.batch)]


def train_iterator(split: ShardedSplit, *, global_batch_size: int, num_batches: int,
                   seed: int, order: str = "shuffle", window: int = 65_536,
                   process_index: int = 0, process_count: int = 1, prefetch: int = 4,
                   put: Callable[[dict[str, np.ndarray]], Any] | None = None,
                   device_prefetch: int = 0) -> grain.DatasetIterator:
  """``num_batches`` local training batches of the sharded ``split``, streamed.

  The same contract as ``pipeline.train_iterator`` (batch keys and ``mask``;
  ``get_state``/``set_state`` whatever ``put`` and ``device_prefetch``), except that
  epochs run on without dropping a partial batch: the row stream of every epoch is
  every row of this process's share once, and a block (so a batch) may span two epochs.

  Args:
    order: "shuffle" (pieces in a random order, window shuffle) or "time" (partitions
      in order, window shuffle only).
    window: rows of the shuffle window (< 2: none): the rows of every block of
      ``window`` rows (rounded up to whole local batches) are permuted.
    prefetch: host batches Grain's thread keeps ready (0: none).
  """
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by "
                     f"{process_count} processes")
  local = global_batch_size // process_count
  pieces = process_pieces([s.rows for s in split.shards], groups_of(split, order),
                          process_index, process_count)
  rows = sum(p.stop - p.start for p in pieces)
  if rows < local:
    raise ValueError(f"local batch {local} exceeds the {rows} training rows of process "
                     f"{process_index} of {process_count}")
  block = local * max(1, -(-window // local))
  epochs = (num_batches * local + block) // rows + 1  # enough rows for the last block.
  ds = grain.experimental.InterleaveIterDataset(
      grain.MapDataset.range(epochs).map(lambda epoch: epoch_dataset(
          split, pieces, epoch=epoch, seed=seed, order=order, window=window,
          process_index=process_index)), cycle_length=1)
  ds = grain.experimental.RebatchIterDataset(ds, batch_size=block, drop_remainder=True)
  if window >= 2:
    ds = ds.random_map(lambda b, rng: (b, rng.permutation(block)),
                       seed=int(np.random.default_rng([seed, process_index]).integers(1 << 31)))
  else:
    ds = ds.map(lambda b: (b, np.arange(block)))
  ds = grain.experimental.FlatMapIterDataset(ds, _Batches(local, block))
  ds = grain.experimental.LimitIterDataset(ds, count=num_batches)
  if prefetch:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
  return pipeline.placed(ds, put, device_prefetch)
