"""Writing a sharded store (the layout is ``pico_jax.data.sharded``'s).

``shard_table`` turns a block of encoded model inputs (the dict of batch key -> numpy
array the columnar writer receives) into the Arrow table of a shard, ``write_shard``
writes one shard and returns its checksum entry, and ``write_meta`` writes the
``meta.json`` that makes the shards a store; the local conversion below and a
distributed build's sink call the same three. ``write_store`` writes whole splits from
columns (a v1 store's memory maps, or any arrays), so ``launch/preprocess.py
--num_shards`` is the local build's passes followed by this conversion: the same
vocabularies and statistics.

A local store is written into a temporary directory beside it and renamed into place
when complete; an object-store location has no rename, so its ``meta.json`` is written
last, and a location without ``meta.json`` is never read as a store.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pico_jax.data import filesystem, integrity, sharded, value_checks
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema
from pico_jax.data.store import META, SPLITS, column_specs
from pico_jax.ingest import store_writer

# Rows per Parquet row group: the unit a reader decodes; one per open shard is buffered.
ROW_GROUP_ROWS = 16_384


def shard_table(block: Mapping[str, np.ndarray], row_ids: np.ndarray,
                schema: Schema) -> pa.Table:
  """The Arrow table of one shard: one row per example.

  Args:
    block: batch key -> array [n, *tail] with the dtypes of ``store.column_specs``.
    row_ids: int64 [n], the rows' indices in their split of the equivalent local build.
    schema: the store's schema (which keys, which shapes).

  Returns:
    A table of non-null columns: ``row_id`` int64, then one per batch key: a typed
    scalar column for a [n] array, and for [n, *tail] the row's values as raw
    little-endian bytes (``fixed_size_binary`` of prod(tail) * itemsize; decoding is a
    view, where a fixed-size list decodes 10x slower: docs/data.md).
  """
  row_ids = np.asarray(row_ids, np.int64)
  columns = {sharded.ROW_ID: pa.array(row_ids)}
  for key, (tail, dtype) in column_specs(schema).items():
    values = np.ascontiguousarray(block[key], dtype.newbyteorder("<"))
    if values.shape != (len(row_ids),) + tail:
      raise ValueError(f"column {key!r} has shape {values.shape}; expected "
                       f"{(len(row_ids),) + tail}")
    if not tail:
      columns[key] = pa.array(values)
      continue
    width = int(np.prod(tail)) * dtype.itemsize
    columns[key] = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(values), [None, pa.py_buffer(values.view(np.uint8))])
  table = pa.table(columns)
  return table.cast(pa.schema([f.with_nullable(False) for f in table.schema]))


def write_shard(table: pa.Table, root: str, relpath: str) -> dict[str, Any]:
  """Writes ``table`` as the Parquet shard ``relpath`` under ``root`` (a path or URI):
  uncompressed, no dictionaries, row groups of ``ROW_GROUP_ROWS`` (docs/data.md says
  why). Returns its ``integrity`` entry, hashed from the bytes written (no re-read)."""
  sink = pa.BufferOutputStream()
  pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, compression="none",
                 use_dictionary=False, write_statistics=False)
  data = sink.getvalue()
  _write_bytes(root, relpath, data)
  return {"bytes": data.size, "blake3": integrity.digest_bytes(memoryview(data))}


def _write_bytes(root: str, relpath: str, data) -> None:
  fs, path = filesystem.resolve(filesystem.join(root, *relpath.split("/")))
  fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
  with fs.open_output_stream(path) as out:
    out.write(data)


def shard_bounds(rows: int, num_shards: int,
                 partitions: Sequence[tuple[str | None, int]] | None = None
                 ) -> list[tuple[int, int, str | None]]:
  """(start, stop, partition) of every shard of a split of ``rows`` rows.

  Without ``partitions`` the rows are cut into ``min(num_shards, rows)`` shards whose
  sizes differ by at most one. ``partitions``: (value, rows) in order, summing to
  ``rows``; no shard spans two of them, and each gets a share of ``num_shards`` in
  proportion to its rows (at least one).
  """
  parts = partitions or [(None, rows)]
  if sum(n for _, n in parts) != rows:
    raise ValueError(f"partitions hold {sum(n for _, n in parts)} rows, the split {rows}")
  out, start = [], 0
  for value, n in parts:
    k = max(1, min(n, round(num_shards * n / max(rows, 1))))
    cuts = [start + n * i // k for i in range(k + 1)]
    out += [(a, b, value) for a, b in zip(cuts, cuts[1:]) if b > a]
    start += n
  return out


def write_store(output: str, meta: Mapping[str, Any], splits: Mapping[str, Mapping],
                vocab: Mapping[str, np.ndarray], *, num_shards: int, seed: int = 0,
                overwrite: bool = False,
                partitions: Mapping[str, Sequence[tuple[str | None, int]]] | None = None,
                log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
  """Writes a sharded store at ``output`` (a local directory or a URI).

  Args:
    meta: the store's facts (``schema`` and what the local build records); the layout
      keys, ``splits`` (rows, shards), ``files`` and ``fingerprint`` are set here.
    splits: split -> batch key -> array [rows, *tail] (memory maps are read a shard at
      a time).
    vocab: relative path ("vocab/000.npy") -> the vocabulary's sorted raw values.
    num_shards: shards per split (fewer when a split has fewer rows).
    seed: the rows of shard i of split s are in ``default_rng([seed, s, i])``'s order
      (their ``row_id`` keeps their place in the split).
    overwrite: replace a store already at ``output``.
    partitions: split -> [(value, rows)] in order (time order, e.g. one per day).

  Returns:
    The meta dict written to ``output/meta.json``.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards={num_shards}: must be >= 1")
  schema = Schema.from_json(meta["schema"])
  # The reader checks shards against their BLAKE3 only, so what a shard may hold is
  # checked here, once, before anything is sealed (the columnar store's rule at load).
  for split in SPLITS:
    value_checks.check_split(split, splits[split], {k: str(output) for k in splits[split]},
                             schema, meta)
  root = open_root(output, overwrite, log)
  try:
    files, split_meta = {}, {}
    for split in SPLITS:
      columns = splits[split]
      rows = len(columns[next(iter(columns))])
      shards = []
      for i, (start, stop, value) in enumerate(shard_bounds(
          rows, num_shards, (partitions or {}).get(split))):
        relpath = f"{split}/part-{i:05d}.{sharded.SHARD_EXT}"
        # Rows in a seeded order inside the shard: a reader's packets of consecutive
        # rows are then random rows, whatever the order of the input files.
        order = np.random.default_rng([seed, SPLITS.index(split), i]).permutation(stop - start)
        block = {key: np.asarray(col[start:stop])[order] for key, col in columns.items()}
        files[relpath] = write_shard(shard_table(block, start + order, schema), root, relpath)
        shards.append({"file": relpath, "rows": stop - start, "partition": value})
      split_meta[split] = {**meta.get("splits", {}).get(split, {}), "rows": rows,
                           "shards": shards}
      log(f"{split}: {rows:,} rows in {len(shards)} shards")
    return finish_store(root, output, meta, split_meta, files, vocab)
  except BaseException:
    abandon(root, output)
    raise


def check_target(output: str, overwrite: bool,
                 log: Callable[[str], None] = lambda msg: None) -> None:
  """Whether a store may be written at ``output``: a local ``output`` must be absent,
  or with ``overwrite`` a store or an empty directory (``store_writer.check_output``),
  after the leftovers of killed builds of it are removed in a ``log`` line
  (``store_writer.clear_leftovers``); a URI must hold no store unless ``overwrite``
  (FileExistsError)."""
  if filesystem.is_uri(output):
    if filesystem.exists(filesystem.join(output, META)) and not overwrite:
      raise FileExistsError(f"{output} holds a store; pass --overwrite to replace it")
    return
  store_writer.clear_leftovers(os.path.abspath(output), log)
  store_writer.check_output(os.path.abspath(output), overwrite)


def open_root(output: str, overwrite: bool,
              log: Callable[[str], None] = lambda msg: None) -> str:
  """Where a store for ``output`` is written, once ``check_target`` allows it: a new
  temporary directory beside a local ``output``, ``output`` itself for a URI."""
  check_target(output, overwrite, log)
  if filesystem.is_uri(output):
    return output
  output = os.path.abspath(output)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  return store_writer.make_temp_dir(output, "tmp")


def abandon(root: str, output: str) -> None:
  """Removes an unfinished local store (``open_root``'s directory)."""
  if root != output:
    shutil.rmtree(root, ignore_errors=True)


def finish_store(root: str, output: str, meta: Mapping[str, Any],
                 split_meta: Mapping[str, dict], files: dict[str, dict],
                 vocab: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Completes the store written under ``root`` (``open_root``): the vocabularies
  (relative path -> sorted raw values), then ``meta.json`` (``write_meta``), last; a
  local store is then moved to ``output``. Returns the meta written."""
  files = dict(files)
  for relpath, values in vocab.items():
    buffer = pa.BufferOutputStream()
    np.save(buffer, values, allow_pickle=False)
    data = buffer.getvalue()
    _write_bytes(root, relpath, data)
    files[relpath] = {"bytes": data.size, "blake3": integrity.digest_bytes(memoryview(data))}
  out = write_meta(root, meta, split_meta, files)
  if root != output:
    store_writer.move_into_place(root, os.path.abspath(output))
  return out


def write_meta(root: str, meta: Mapping[str, Any], splits: Mapping[str, Any],
               files: Mapping[str, Any]) -> dict[str, Any]:
  """Writes the store's ``meta.json`` under ``root``, the last file of a store: ``meta``
  with the layout keys, ``splits`` (split -> {rows, shards: [{file, rows, partition}]})
  and ``files`` (relative path -> ``write_shard``'s entry), and its fingerprint.
  Returns what it wrote."""
  out = {**meta, "store_version": sharded.STORE_VERSION, "layout": sharded.LAYOUT,
         "shard_format": sharded.SHARD_EXT, "splits": dict(splits),
         integrity.FILES: dict(files)}
  out.pop(integrity.FINGERPRINT, None)
  out[integrity.FINGERPRINT] = integrity.fingerprint(out)
  _write_bytes(root, META, json.dumps(out, indent=1, sort_keys=True).encode())
  return out


def convert(v1_path: str, output: str, *, num_shards: int, seed: int = 0,
            overwrite: bool = False, partitions=None,
            log: Callable[[str], None] = lambda msg: None) -> dict:
  """The v1 columnar store at ``v1_path`` rewritten as a sharded store at ``output``:
  the same rows in the same order, vocabularies, statistics and facts."""
  from pico_jax.data import store
  dataset = store.load_store(v1_path)
  if dataset.info["meta"].get("store_version") != store.STORE_VERSION:
    raise DataError("not a columnar (version 1) store: nothing to convert", path=v1_path)
  meta = {k: v for k, v in dataset.info["meta"].items()
          if k not in (integrity.FILES, integrity.FINGERPRINT)}
  vocab = {entry["file"]: np.load(os.path.join(v1_path, entry["file"]), allow_pickle=False)
           for entry in meta.get("vocab", {}).values() if "file" in entry}
  return write_store(output, meta, dataset.splits, vocab, num_shards=num_shards, seed=seed,
                     overwrite=overwrite, partitions=partitions, log=log)
