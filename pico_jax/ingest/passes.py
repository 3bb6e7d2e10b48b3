"""The two passes over the blocks: where a line becomes a row, and a row a store row.

Pass 1 (``count_pass``): every block (``raw_files.Block``) of every source is parsed
once (``parse``: ``Format.parse_block``, lines -> a ``format_contract.Chunk`` of rows,
checked) and counted (``count_block``: the training values of every field, the dense
moments, the multiplicity of key:value fields), then spilled (``spill.Spill``: held
in memory up to a budget, in files beyond it) with its ids factorized per block.
Pass 2 (``write_pass``): once the vocabularies are built, every spilled block is taken
back, encoded and checked (``encode.Encoder.encode``, as scoring encodes) and written
into the store's memory-mapped columns (``write_block``). Blocks run on
``blocks.Runner``'s workers and come back in file order, so the first bad row of the
input (in file order) is the one reported: the parse's errors first, then the
encoder's (a group key beyond int32, a dense value beyond float32).

As worker processes, only offsets, per-row split ids and small statistics travel: a
worker reads its block from the file (a gzip stream is unpacked once by the parent)
and writes its rows into the store itself.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import pickle
from typing import Any, Callable, Sequence

import numpy as np

from pico_jax.ingest import blocks, format_contract, moments as moments_lib, raw_files
from pico_jax.data.errors import DataError
from pico_jax.ingest.encode import Encoder, StoreRows, factorize
from pico_jax.ingest.spill import FILES, Spill
from pico_jax.ingest.vocab import Counter


@dataclasses.dataclass
class Source:
  """One input file of a build: its split role, scan, layout and first row's index."""
  split: str  # train | val | test | all
  path: str
  info: raw_files.FileInfo
  layout: format_contract.Layout
  rows: int
  offset: int = 0  # index of its first row among all rows of all sources.
  digest: concurrent.futures.Future | None = None  # hashed beside the other passes.


@dataclasses.dataclass
class Build:
  """What one ``preprocess.build_store`` run works with, shared by both passes.

  Attributes:
    fmt: the inputs' format.
    sources: the scanned inputs, in order (``Source``).
    inputs: the ``[SPLIT=]PATH`` strings given (for messages).
    output: the store directory.
    options: the ``preprocess.Options``.
    overwrite: replace an existing store.
    log: called with progress lines.
    progress: show tqdm bars.
    runner: the workers (``blocks.Runner``).
    threads: the thread budget (``blocks.thread_budget``).
    spill_dir: where spilled blocks and the workers' encoder wait.
  """
  fmt: format_contract.Format
  sources: list[Source]
  inputs: Sequence[str]
  output: str
  options: Any
  overwrite: bool
  log: Callable[[str], None]
  progress: bool
  runner: blocks.Runner
  threads: int
  spill_dir: str


@dataclasses.dataclass(frozen=True)
class CountTask:
  """Pass 1 of one block. ``split``: int8 [n] split id (0 train, 1 val, 2 test) of its
  rows; ``data``: the block's bytes when the parent read them (gzip), else None;
  ``threads``: the threads its parse may use (``parse_threads``)."""
  fmt: format_contract.Format
  block: raw_files.Block
  layout: format_contract.Layout
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


def parse(fmt, block: raw_files.Block, layout, data: bytes | None,
          threads: int = 1) -> format_contract.Chunk:
  """The block's rows (its bytes read from the file unless given)."""
  if data is None:
    data = raw_files.read_block(block)
  return fmt.parse_block(block.path, data, block.first_line, layout, block.num_lines,
                         threads)


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
  train = (task.split == 0) & ~dropped
  uniques = []
  for j, values in enumerate(chunk.sparse):
    # Spilled factorized: pass 2 then looks up each distinct value once, in order.
    counted = train & ~chunk.missing[j] if j in chunk.missing else train
    factors, counts = factorize(values, counted)
    uniques.append((factors.keys[counts > 0], counts[counts > 0]))
    chunk.sparse[j] = factors
  moments = None if chunk.dense is None else moments_lib.block_moments(chunk.dense, train)
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
  of its pickle (read once per worker); ``path`` the block's file (for messages)."""
  spill: str
  encoder: Encoder | str
  store_dir: str
  split: np.ndarray
  where: np.ndarray
  path: str = ""


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
  the files. Raises DataError (``Encoder.encode``)."""
  chunk = spill.take(task.spill)
  encoder = (_load_encoder(task.encoder) if isinstance(task.encoder, str)
             else task.encoder)
  outs = lambda key: tuple(columns[split][key] if columns is not None
                           else _column(task.store_dir, split, key) for split in splits)
  return encoder.encode(chunk, task.path, StoreRows(task.split, task.where, outs))[1]


@dataclasses.dataclass
class Counts:
  """What pass 1 learned: per-row ``keep`` (bool [N]) and the first row of every block
  (``block_rows``), the training counts of every field, the dense moments and the
  largest multiplicity of every key:value field."""
  keep: np.ndarray
  block_rows: list[int]
  block_paths: list[str]
  counters: dict[str, Counter]
  moments: moments_lib.Moments
  max_mult: dict[str, int]


def count_pass(build: Build, split_of: np.ndarray, policy: str, spill: Spill) -> Counts:
  """Pass 1: every block parsed, checked and counted (in file order), and spilled (to
  ``spill``, or as ``spill_dir/<block number>.pkl``). ``split_of``: int8 [N], every
  row's split id."""
  fmt, total = build.fmt, len(split_of)
  counts = Counts(np.ones(total, bool), [], [],
                  {name: Counter() for name in fmt.sparse_names + fmt.list_names},
                  moments_lib.Moments(len(fmt.dense_names)),
                  {name: 0 for name in fmt.list_names})
  num_blocks = sum(len(s.info.blocks) for s in build.sources)

  def tasks():
    for source in build.sources:
      row = source.offset
      for block, data in fmt.blocks(source.info):
        k = len(counts.block_rows)
        counts.block_rows.append(row)
        counts.block_paths.append(block.path)
        yield CountTask(fmt, block, source.layout, data,
                        split_of[row:row + block.num_lines], policy,
                        spill_file(build.spill_dir, k),
                        blocks.parse_threads(k, num_blocks, build.threads))
        row += block.num_lines

  count = count_block
  if build.runner.in_process:
    count = functools.partial(count_block, spill=spill)
  bar = blocks.Progress(total, "parse", "rows", build.progress)
  for k, stats in enumerate(build.runner.map(count, tasks(), num_blocks)):
    row = counts.block_rows[k]
    counts.keep[row:row + stats.rows] = ~stats.dropped
    for counter, uniques in zip(counts.counters.values(), stats.uniques, strict=True):
      counter.add_counts(*uniques)
    if stats.moments is not None:
      counts.moments.add(*stats.moments)
    for name, m in stats.max_mult.items():
      counts.max_mult[name] = max(counts.max_mult[name], m)
    bar.update(stats.rows)
  bar.close()
  return counts


def spill_file(spill_dir: str, block: int) -> str:
  return os.path.join(spill_dir, f"{block:08d}.pkl")


def write_pass(build: Build, writer, encoder: Encoder, counts: Counts,
               kept_split: np.ndarray, position: np.ndarray, spill: Spill
               ) -> dict[str, int]:
  """Pass 2: every spilled block encoded and written into ``writer``'s columns
  (``kept_split`` int8 [N]: a row's split, -1 when dropped; ``position`` int64 [N]:
  its row in the split); the rows truncated per multi-valued field. Raises
  DataError where the encoder does (``Encoder.encode``)."""
  total, runner = len(position), build.runner
  in_process = runner.in_process or len(counts.block_rows) <= 1
  shared = encoder
  if not in_process:  # workers read the encoder (vocabularies) once, from a file.
    shared = os.path.join(build.spill_dir, "encoder.pkl")
    with open(shared, "wb") as f:
      pickle.dump(encoder, f, protocol=pickle.HIGHEST_PROTOCOL)
  sizes = np.diff(counts.block_rows + [total])
  tasks = (WriteTask(spill_file(build.spill_dir, k), shared, writer.tmp,
                     kept_split[row:row + n], position[row:row + n],
                     counts.block_paths[k])
           for k, (row, n) in enumerate(zip(counts.block_rows, sizes)))
  write = write_block
  if in_process:
    write = functools.partial(write_block, columns=writer.columns, spill=spill)
  truncated = {n: 0 for n in encoder.multi_names}
  bar = blocks.Progress(total, "write", "rows", build.progress)
  for n, block_truncated in zip(sizes, runner.map(write, tasks, len(sizes))):
    for name, count in block_truncated.items():
      truncated[name] += count
    bar.update(int(n))
  bar.close()
  runner.close()
  return truncated


