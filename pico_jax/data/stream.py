"""Streaming a sharded store's training split, on Grain's own datasets.

Which rows a process reads (``process_pieces``): the shards of a group (the whole split,
or one time partition) are laid end to end and process p of P takes rows
[p n / P, (p + 1) n / P) of them: whole shards when the counts divide, row ranges inside
shards when they do not (fewer shards than processes included). Every row is read by
exactly one process once per epoch, and the processes' shares differ by at most one row
per group. Its range is cut into pieces of at most ``PIECE_ROWS`` rows.

One epoch of one process (``epoch_dataset``), with every random choice drawn from
``default_rng([seed, epoch, process_index])``:

  pieces, in a shuffled order ("shuffle") or in partition order ("time")
  -> ``_PieceDataset`` per piece: packets of up to ``PACKET_ROWS`` consecutive rows,
     read a Parquet row group at a time; the packets' cut points move by a random
     offset every epoch, so the same rows do not travel together from epoch to epoch
  -> ``grain.experimental.InterleaveIterDataset`` over ``CYCLE_PIECES`` open pieces
     ("time": one, in order)
  -> ``grain.experimental.WindowShuffleIterDataset`` over ``window`` rows of packets.

The epochs follow each other (an ``InterleaveIterDataset`` of cycle 1) and
``grain.experimental.RebatchIterDataset`` cuts the row stream into local batches.
Memory is O(window + open pieces' row groups), whatever the store's size. The
iterator's ``get_state`` (Grain's, nested: epoch, open pieces and their next rows, the
window's start) is what a checkpoint saves; a resume is bit-identical.

Grain's ``ParquetIterDataset`` yields one Python dict per row (measured in
docs/data.md); a packet of rows keeps the per-row Python off the path.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import grain
import numpy as np

from pico_jax import batch as B
from pico_jax.data import pipeline
from pico_jax.data.sharded import ShardedSplit, read_row_group, row_group_starts

PACKET_ROWS = 1024  # rows that travel together through the shuffle window.
PIECE_ROWS = 1 << 20  # the most rows of one piece (the unit of the piece order).
CYCLE_PIECES = 4  # pieces read at once in shuffle order: one row group buffered each.
ORDERS = ("shuffle", "time")  # config.data.order


@dataclasses.dataclass(frozen=True)
class Piece:
  """Rows [start, stop) of shard ``shard`` (an index into the split's shards)."""
  shard: int
  start: int
  stop: int


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
  for group in groups:
    starts = np.concatenate([[0], np.cumsum([shard_rows[i] for i in group])])
    n = int(starts[-1])
    lo, hi = n * process_index // process_count, n * (process_index + 1) // process_count
    for shard, first in zip(group, starts[:-1]):
      a, b = max(lo, int(first)) - first, min(hi, int(first) + shard_rows[shard]) - first
      for start in range(int(a), int(b), piece_rows):
        pieces.append(Piece(shard, start, min(int(b), start + piece_rows)))
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


class _PieceIterator(grain.DatasetIterator):
  """Packets of one piece; the state is the next row to read."""

  def __init__(self, split, piece, specs, first_cut):
    super().__init__()
    self._split, self._piece, self._specs = split, piece, specs
    self._first_cut = first_cut
    self._row = piece.start
    self._file = self._starts = None
    self._group, self._buffer = -1, None

  def _cut(self, row: int) -> int:
    """The end of the packet starting at ``row``."""
    start, first = self._piece.start, self._piece.start + self._first_cut
    end = first if row < first else first + ((row - first) // PACKET_ROWS + 1) * PACKET_ROWS
    return min(end, self._piece.stop)

  def __next__(self) -> dict[str, np.ndarray]:
    if self._row >= self._piece.stop:
      raise StopIteration
    if self._file is None:
      self._file = self._split.files.open(self._split.shards[self._piece.shard].relpath)
      self._starts = row_group_starts(self._file)
    group = int(np.searchsorted(self._starts, self._row, side="right")) - 1
    if group != self._group:
      self._group, self._buffer = group, read_row_group(self._file, group, self._specs)
    g0, end = int(self._starts[group]), min(self._cut(self._row), int(self._starts[group + 1]))
    packet = {k: v[self._row - g0:end - g0].copy() for k, v in self._buffer.items()}
    self._row = end
    return packet

  def get_state(self) -> dict[str, Any]:
    return {"row": self._row}

  def set_state(self, state: dict[str, Any]) -> None:
    self._row = int(state["row"])


class _PieceDataset(grain.IterDataset):
  def __init__(self, split, piece, specs, first_cut):
    super().__init__()
    self._args = (split, piece, specs, first_cut)

  def __iter__(self):
    return _PieceIterator(*self._args)


def epoch_dataset(split: ShardedSplit, pieces: Sequence[Piece], *, epoch: int, seed: int,
                  order: str, window: int, process_index: int,
                  specs=None) -> grain.IterDataset:
  """The packets (key -> array [n <= PACKET_ROWS, *tail]) of one epoch of one process
  (see the module docstring). ``specs``: the columns read (default: the batch keys)."""
  specs = split.specs if specs is None else specs
  rng = np.random.default_rng([seed, epoch, process_index])
  shuffle = order == "shuffle"
  sequence = rng.permutation(len(pieces)) if shuffle else np.arange(len(pieces))
  cuts = rng.integers(0, PACKET_ROWS, len(pieces)) if shuffle else np.zeros(len(pieces), int)
  window_seed = int(rng.integers(1 << 31))
  items = [(pieces[i], int(cuts[i])) for i in sequence]
  ds = grain.MapDataset.source(items).map(
      lambda item: _PieceDataset(split, item[0], specs, item[1]))
  ds = grain.experimental.InterleaveIterDataset(ds, cycle_length=CYCLE_PIECES if shuffle else 1)
  packets = -(-window // PACKET_ROWS)
  if packets > 1:
    ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=packets, seed=window_seed)
  return ds


def train_iterator(split: ShardedSplit, *, global_batch_size: int, num_batches: int,
                   seed: int, order: str = "shuffle", window: int = 65_536,
                   process_index: int = 0, process_count: int = 1, prefetch: int = 4,
                   put: Callable[[dict[str, np.ndarray]], Any] | None = None,
                   device_prefetch: int = 0) -> grain.DatasetIterator:
  """``num_batches`` local training batches of the sharded ``split``, streamed.

  The same contract as ``pipeline.train_iterator`` (batch keys and ``mask``;
  ``get_state``/``set_state`` whatever ``put`` and ``device_prefetch``), except that
  epochs run on without dropping a partial batch: the row stream of every epoch is
  every row of this process's share once, and a batch may span two epochs.

  Args:
    order: "shuffle" (pieces in a random order, window shuffle) or "time" (partitions
      in order, window shuffle only).
    window: rows of the shuffle window (<= PACKET_ROWS: no window shuffle).
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
  epochs = num_batches * local // rows + 2
  stream = grain.experimental.InterleaveIterDataset(
      grain.MapDataset.range(epochs).map(lambda epoch: epoch_dataset(
          split, pieces, epoch=epoch, seed=seed, order=order, window=window,
          process_index=process_index)), cycle_length=1)
  ds = grain.experimental.RebatchIterDataset(stream, batch_size=local, drop_remainder=True)
  ds = grain.experimental.LimitIterDataset(ds.map(_with_mask), count=num_batches)
  if prefetch:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
  return pipeline.placed(ds, put, device_prefetch)


def _with_mask(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {**batch, B.MASK: np.ones(len(batch[B.CLICK]), np.float32)}
