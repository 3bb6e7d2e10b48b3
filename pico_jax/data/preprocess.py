"""Raw files -> columnar store, streaming with bounded memory.

Three passes over the inputs, each holding one block of lines at a time:

  0. scan: sha256, line count and header of every file; every row is assigned a split
     (and its order inside the split) before any statistic is taken.
  1. validate + statistics: every block is parsed and checked; vocabularies (counts of
     the training rows), dense mean/std (training rows) and the multiplicity of
     key:value fields are accumulated.
  2. write: every block is parsed again, mapped to ids, standardised and scattered into
     the preallocated memory-mapped columns of its split.

Memory: the per-row bookkeeping (split int8, order int64, kept bool, position int64:
18 bytes a row, 0.7 GB for 40M rows), the distinct values of the vocabularies and one
block. The store is written into a temporary directory and renamed at the end.

Splits. Inputs are ``PATH`` or ``SPLIT=PATH`` (SPLIT: train, val, test or all):
  - one file (or only ``all=``): DESIGN section 4's seeded split, ``perm =
    default_rng(seed).permutation(n)``; train, val, test = consecutive slices of sizes
    int(f_train n), int(f_val n) and the rest, stored in ``perm`` order;
  - two files: train and test; val is carved from train the same way
    (``val_fraction``), with train rows first in ``perm`` order;
  - three files: train, val, test, in file order.

Entire space. A row with conversion = 1 and click = 0 breaks ESMM's c = 1 => y = 1. The
policy is per format (``Format.default_policy``), overridable: "error" (default:
the first such row is reported with file/line/column), "drop" (rows are skipped and
counted in meta.json, as the AITM recipe does) or "keep" (census, whose two tasks are
independent; meta.json records ``task_relation: "independent"``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import os
from typing import Callable, Sequence

import numpy as np

from pico_jax import batch as B
from pico_jax.data import readers, store
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema, SparseField
from pico_jax.data.vocab import Counter, Vocab, build_vocab

PREPROCESS_VERSION = 1
POLICIES = ("error", "drop", "keep")
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}
_INT32 = np.iinfo(np.int32)


@dataclasses.dataclass(frozen=True)
class Options:
  """Preprocessing options (every one is recorded in meta.json).

  Attributes:
    min_count: values seen fewer times in the training split map to id 0.
    hash_buckets: field name -> bucket count: those fields are hashed.
    max_vocab: > 0: a field keeping more values than this is hashed into max_vocab
      buckets.
    multi_max_len: padded length L of multi-valued fields; longer lists keep their
      first L ids (in line order) and the truncated rows are counted in meta.json.
    multi_fields: key:value fields stored as multi-valued even if no row repeats them.
    policy: conversion without click: error | drop | keep (None: the format's own).
    dense_transform: "standardize" (train mean/std, DESIGN section 4) or "none".
    seed: the split permutation's seed.
    split_fractions: (train, val, test) fractions of a single input.
    val_fraction: the part of the train file carved out as val with two inputs.
    chunk_rows: lines per block.
    workers: processes parsing blocks in parallel (1: parse in this process).
    sparse, dense: column names replacing the format's default features.
  """
  min_count: int = 1
  hash_buckets: tuple[tuple[str, int], ...] = ()
  max_vocab: int = 0
  multi_max_len: int = 64
  multi_fields: tuple[str, ...] = ()
  policy: str | None = None
  dense_transform: str = "standardize"
  seed: int = 0
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  val_fraction: float = 0.1
  chunk_rows: int = 65_536
  workers: int = 1
  sparse: tuple[str, ...] | None = None
  dense: tuple[str, ...] | None = None

  def validate(self):
    if self.min_count < 1:
      raise ValueError(f"min_count={self.min_count}: must be >= 1")
    if self.policy is not None and self.policy not in POLICIES:
      raise ValueError(f"policy={self.policy!r}: expected one of {list(POLICIES)}")
    if self.dense_transform not in ("standardize", "none"):
      raise ValueError(f"dense_transform={self.dense_transform!r}: expected "
                       "'standardize' or 'none'")
    f = self.split_fractions
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1) > 1e-9:
      raise ValueError(f"split_fractions={f}: three non-negative fractions summing to 1")
    if not 0 <= self.val_fraction < 1:
      raise ValueError(f"val_fraction={self.val_fraction}: must be in [0, 1)")
    if self.chunk_rows < 1 or self.multi_max_len < 1 or self.workers < 1:
      raise ValueError("chunk_rows, multi_max_len and workers must be >= 1")
    for name, buckets in self.hash_buckets:
      if buckets < 1:
        raise ValueError(f"hash buckets for {name!r}: must be >= 1, got {buckets}")


@dataclasses.dataclass
class _Source:
  split: str  # train | val | test | all
  path: str
  info: readers.FileInfo
  layout: readers.Layout
  rows: int
  offset: int = 0  # index of its first row among all rows of all sources.


def parse_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
  """``PATH`` / ``SPLIT=PATH`` arguments -> [(split, path)] (see the module docstring)."""
  if not inputs:
    raise ValueError("no input files")
  named = [i.split("=", 1)[0] in (*_SPLIT_ID, "all") and "=" in i for i in inputs]
  if any(named) and not all(named):
    raise ValueError("give every input as SPLIT=PATH or none of them")
  if all(named):
    pairs = [tuple(i.split("=", 1)) for i in inputs]
    if "all" in {s for s, _ in pairs} and len({s for s, _ in pairs}) > 1:
      raise ValueError("all=PATH cannot be mixed with train/val/test inputs")
    return pairs
  by_count = {1: ("all",), 2: ("train", "test"), 3: ("train", "val", "test")}
  if len(inputs) not in by_count:
    raise ValueError(f"{len(inputs)} inputs: give 1 (split by fractions), 2 (train, "
                     "test) or 3 (train, val, test) paths, or SPLIT=PATH pairs")
  return list(zip(by_count[len(inputs)], inputs))


def _assign(sources: list[_Source], options: Options):
  """Split id (int8 [N]) and order key inside the split (int64 [N]) of every row."""
  total = sum(s.rows for s in sources)
  split_of = np.empty(total, np.int8)
  rank_of = np.arange(total, dtype=np.int64)
  for s in sources:
    if s.split != "all":
      split_of[s.offset:s.offset + s.rows] = _SPLIT_ID[s.split]

  def random_split(rows, counts):
    perm = np.random.default_rng(options.seed).permutation(len(rows))
    bounds = np.cumsum((0,) + tuple(counts))
    for split_id in range(3):
      part = rows[perm[bounds[split_id]:bounds[split_id + 1]]]
      split_of[part] = split_id
      rank_of[part] = np.arange(bounds[split_id], bounds[split_id + 1])

  pooled = [s for s in sources if s.split == "all"]
  if pooled:
    rows = np.concatenate([np.arange(s.offset, s.offset + s.rows) for s in pooled])
    n = len(rows)
    f = options.split_fractions
    n_train, n_val = int(f[0] * n), int(f[1] * n)
    random_split(rows, (n_train, n_val, n - n_train - n_val))
  elif not any(s.split == "val" for s in sources) and options.val_fraction > 0:
    rows = np.concatenate([np.arange(s.offset, s.offset + s.rows)
                           for s in sources if s.split == "train"] or [np.zeros(0, int)])
    n_val = int(options.val_fraction * len(rows))
    random_split(rows, (len(rows) - n_val, n_val, 0))
  return split_of, rank_of


class _Moments:
  """Mean and population std of dense columns over streamed blocks (Chan's merge)."""

  def __init__(self, dim):
    self.n, self.mean, self.m2 = 0, np.zeros(dim), np.zeros(dim)

  def add(self, x):
    if len(x) == 0:
      return
    nb, mb = len(x), x.mean(0)
    m2b = ((x - mb) ** 2).sum(0)
    delta, total = mb - self.mean, self.n + nb
    self.mean = self.mean + delta * nb / total
    self.m2 = self.m2 + m2b + delta ** 2 * self.n * nb / total
    self.n = total

  def std(self):
    std = np.sqrt(self.m2 / max(self.n, 1))
    return np.where(std > 0, std, 1.0)  # a constant column stays constant (0).


def _parse(fmt, path, first_line, lines, layout):
  return fmt.parse(path, lines, first_line, layout)


def _chunks(fmt, source: _Source, options: Options, pool=None):
  """(global row indices int64 [n], Chunk) for every block of ``source``, in order.

  With a worker ``pool`` the blocks are parsed in parallel, at most two per worker in
  flight, so memory stays bounded however fast the file is read.
  """
  blocks = readers.iter_chunks(source.path, options.chunk_rows, source.layout.header)
  args = ((fmt, source.path, first, lines, source.layout) for first, lines in blocks)
  if pool is None:
    parsed = (_parse(*a) for a in args)
  else:
    parsed = _bounded_imap(pool, _parse, args, 2 * options.workers)
  row = source.offset
  for chunk in parsed:
    yield np.arange(row, row + len(chunk)), chunk
    row += len(chunk)


def _bounded_imap(pool, fn, args, window):
  pending = collections.deque()
  for a in args:
    pending.append(pool.apply_async(fn, a))
    if len(pending) >= window:
      yield pending.popleft().get()
  while pending:
    yield pending.popleft().get()


def _positions_in_rows(rows: np.ndarray) -> np.ndarray:
  """For ascending row indices of list entries: each entry's index within its row."""
  return np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")


def build_store(format_name: str, inputs: Sequence[str], output: str, *,
                options: Options = Options(), overwrite: bool = False,
                log: Callable[[str], None] = lambda msg: None) -> dict:
  """Converts raw ``inputs`` of ``format_name`` into a store at ``output``.

  Args:
    format_name: one of ``readers.FORMATS``.
    inputs: ``PATH`` or ``SPLIT=PATH`` strings (see the module docstring).
    output: the store directory (created; replaced only with ``overwrite``).
    options: see ``Options``.
    log: called with progress lines.

  Returns:
    The store's meta dict (also written to ``output/meta.json``).

  Raises:
    DataError: bad input, naming file, line and column. No store is written (an
      existing one at ``output`` stays as it was) and no temporary directory is left.
  """
  options.validate()
  fmt = readers.get_format(format_name, sparse=options.sparse, dense=options.dense)
  output = os.path.abspath(output)
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
  with contextlib.ExitStack() as stack:
    pool = None
    if options.workers > 1:
      # spawn, not fork: the caller may hold threads (JAX, Grain) that fork would copy.
      pool = stack.enter_context(
          multiprocessing.get_context("spawn").Pool(options.workers))
    return _build(fmt, inputs, output, options, overwrite, log, pool)


def _build(fmt, inputs, output, options, overwrite, log, pool):
  policy = options.policy or fmt.default_policy

  # Pass 0: scan.
  sources, offset = [], 0
  for split, path in parse_inputs(inputs):
    info = readers.scan_file(path)
    layout = fmt.inspect(path, info.first_line)
    rows = info.num_lines - int(layout.header)
    if rows == 0:
      raise DataError("no data rows after the header", path=path, line=2)
    sources.append(_Source(split, path, info, layout, rows, offset))
    offset += rows
  log(f"scanned {len(sources)} file(s), {offset:,} rows")
  split_of, rank_of = _assign(sources, options)
  keep = np.ones(offset, bool)

  # Pass 1: validate and count.
  hashed = dict(options.hash_buckets)
  unknown = set(hashed) - set(fmt.sparse_names + fmt.list_names)
  if unknown:
    raise ValueError(f"hash_buckets names unknown fields {sorted(unknown)}")
  counters = {name: Counter() for name in fmt.sparse_names + fmt.list_names}
  moments = _Moments(len(fmt.dense_names))
  max_mult = {name: 0 for name in fmt.list_names}
  dropped = {s: 0 for s in _SPLIT_ID}
  for source in sources:
    for rows, chunk in _chunks(fmt, source, options, pool):
      bad = np.flatnonzero((chunk.conversion == 1) & (chunk.click == 0))
      if len(bad) and policy == "error":
        col, name = fmt.conversion_column
        raise DataError("conversion without click (conversion = 1, click = 0) breaks the "
                        "entire-space rule; use policy 'drop' to skip such rows",
                        path=source.path, line=int(chunk.lines[bad[0]]), column=col,
                        column_name=name)
      if len(bad) and policy == "drop":
        keep[rows[bad]] = False
        for split, sid in _SPLIT_ID.items():
          dropped[split] += int(np.sum(split_of[rows[bad]] == sid))
      if chunk.group is not None:
        out = np.flatnonzero((chunk.group < _INT32.min) | (chunk.group > _INT32.max))
        if len(out):
          raise DataError(f"group key {int(chunk.group[out[0]])} does not fit int32",
                          path=source.path, line=int(chunk.lines[out[0]]),
                          column_name=fmt.group_name)
      train = (split_of[rows] == 0) & keep[rows]
      for name, values in zip(fmt.sparse_names, chunk.sparse):
        counters[name].add(values[train])
      if chunk.dense is not None:
        moments.add(chunk.dense[train])
      for name, (lrows, values, _) in chunk.lists.items():
        if len(lrows):
          max_mult[name] = max(max_mult[name], int(np.bincount(lrows).max()))
        counters[name].add(values[train[lrows]])
    log(f"pass 1: {source.path}: {source.rows:,} rows checked")

  # Vocabularies and schema.
  vocabs: dict[str, Vocab] = {}
  vocab_meta = {}
  for name, counter in counters.items():
    keys, counts = counter.result()
    v = build_vocab(keys, counts, min_count=options.min_count, buckets=hashed.get(name, 0),
                    max_size=options.max_vocab)
    vocabs[name] = v
    vocab_meta[name] = {"kind": "hash" if v.buckets else "table", "size": v.vocab_size,
                        "train_distinct": 0 if keys is None else len(keys)}
  multi_names = tuple(n for n in fmt.list_names
                      if max_mult[n] > 1 or n in options.multi_fields)
  single_lists = tuple(n for n in fmt.list_names if n not in multi_names)
  sparse_names = fmt.sparse_names + single_lists
  multi_len = min(max((max_mult[n] for n in multi_names), default=1), options.multi_max_len)
  multi_len = max(multi_len, 2) if multi_names else 1  # max_len > 1 marks multi-valued.
  extras = (B.GROUP,) if fmt.group_name else ()
  schema = Schema(
      sparse=tuple(SparseField(n, vocabs[n].vocab_size) for n in sparse_names),
      multi=tuple(SparseField(n, vocabs[n].vocab_size, multi_len) for n in multi_names),
      dense=fmt.dense_names, extras=extras)
  mean, std = moments.mean, moments.std()
  if options.dense_transform == "none":
    mean, std = np.zeros_like(mean), np.ones_like(std)

  # Where every kept row goes.
  position = np.empty(len(keep), np.int64)
  split_rows = {}
  for split, sid in _SPLIT_ID.items():
    members = np.flatnonzero((split_of == sid) & keep)
    members = members[np.argsort(rank_of[members], kind="stable")]
    position[members] = np.arange(len(members))
    split_rows[split] = len(members)
    if not len(members):
      raise DataError(f"split {split!r} has no rows (inputs: {list(inputs)}); give a "
                      f"{split} file or a fraction for it")
  del rank_of

  # Pass 2: write.
  truncated = {n: 0 for n in multi_names}
  with store.StoreWriter(output, schema, split_rows, overwrite=overwrite) as writer:
    for source in sources:
      for rows, chunk in _chunks(fmt, source, options, pool):
        n = len(chunk)
        cols = {B.CLICK: chunk.click, B.CONVERSION: chunk.conversion}
        if sparse_names:
          ids = np.zeros((n, len(sparse_names)), np.int32)
          for j, values in enumerate(chunk.sparse):
            ids[:, j] = vocabs[sparse_names[j]].lookup(values)
          for j, name in enumerate(single_lists, start=len(chunk.sparse)):
            lrows, values, _ = chunk.lists[name]
            ids[lrows, j] = vocabs[name].lookup(values)
          cols[B.SPARSE] = ids
        if multi_names:
          multi = np.zeros((n, len(multi_names), multi_len), np.int32)
          mask = np.zeros((n, len(multi_names), multi_len), bool)
          for g, name in enumerate(multi_names):
            lrows, values, _ = chunk.lists[name]
            pos = _positions_in_rows(lrows)
            fits = pos < multi_len
            multi[lrows[fits], g, pos[fits]] = vocabs[name].lookup(values[fits])
            mask[lrows[fits], g, pos[fits]] = True
            truncated[name] += int(np.sum(np.bincount(lrows, minlength=n) > multi_len))
          cols[B.MULTI], cols[B.MULTI_MASK] = multi, mask
        if fmt.dense_names:
          cols[B.DENSE] = ((chunk.dense - mean) / std).astype(np.float32)
        if extras:
          cols[B.GROUP] = chunk.group.astype(np.int32)
        kept_split = np.where(keep[rows], split_of[rows], -1)
        for split, sid in _SPLIT_ID.items():
          sel = kept_split == sid
          if sel.any():
            where = position[rows[sel]]
            for key, values in cols.items():
              writer.columns[split][key][where] = values[sel]
      log(f"pass 2: {source.path}: written")
    for name, v in vocabs.items():
      if not v.buckets and v.keys is not None:
        file = f"vocab/{(sparse_names + multi_names).index(name):03d}.npy"
        writer.save_array(file, v.keys)
        vocab_meta[name]["file"] = file
    meta = writer.commit({
        "format": fmt.name,
        "preprocess_version": PREPROCESS_VERSION,
        "task_relation": fmt.task_relation,
        "tasks": fmt.tasks,
        "entire_space_policy": policy,
        "splits": {s: {"dropped_conversion_without_click": dropped[s]} for s in _SPLIT_ID},
        "sources": [{"path": os.path.abspath(s.path), "split": s.split,
                     "sha256": s.info.sha256, "rows": s.rows,
                     "header": s.layout.header} for s in sources],
        "vocab": vocab_meta,
        "dense_stats": {"mean": mean.tolist(), "std": std.tolist(),
                        "transform": options.dense_transform},
        "multi_truncated_rows": truncated,
        "options": {k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in dataclasses.asdict(options).items()},
    })
  log(f"wrote {output}: " + ", ".join(f"{s} {n:,}" for s, n in split_rows.items()))
  return meta
