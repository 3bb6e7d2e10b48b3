"""The sharded store (store version 2): Parquet shards that a process streams.

Layout, under a local directory or an object-store URI (``pico_jax.data.filesystem``)::

  DIR/meta.json              store_version 2, layout "sharded", the schema, the
                             vocabularies' sizes, the dense statistics; per split its
                             rows and its ordered shards ({file, rows, partition});
                             ``files`` (bytes and BLAKE3 of every file) and
                             ``fingerprint`` (``pico_jax.data.integrity``)
  DIR/vocab/NNN.npy          as in v1: the sorted raw values of table NNN (id = index + 1)
  DIR/SPLIT/part-PPPPP.parquet
                             one row per example: ``row_id`` int64 (the row's index in
                             its split of the equivalent v1 build) and one column per
                             batch key (``pico_jax.batch``): a typed column for [N]
                             keys; for [N, *tail] keys (sparse [F], multi and
                             multi_mask [G, L], dense [D]) the row's values as raw
                             little-endian bytes, row-major (fixed_size_binary)

A split is a ``ShardedSplit``: the training stream (``pico_jax.data.stream``) reads its
shards a row group at a time; evaluation, which scores every row of a split at once,
reads the whole split into memory on first use. Every shard is checked against its
BLAKE3 entry on its first read in a process. Written by ``pico_jax.ingest.shard_writer``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pico_jax.data import filesystem, integrity
from pico_jax.data.dataset import Dataset
from pico_jax.data.errors import DataError, one_line
from pico_jax.data.schema import Schema

STORE_VERSION = 2
LAYOUT = "sharded"
SHARD_EXT = "parquet"
ROW_ID = "row_id"  # int64: the row's index in its split of the equivalent local build.


@dataclasses.dataclass(frozen=True)
class Shard:
  """One shard file: ``relpath`` under the store, its rows and its time partition."""
  relpath: str
  rows: int
  partition: str | None = None


class ShardFiles:
  """Opens a store's shards; each is verified against ``meta.json`` on its first open in
  this process (a missing shard or a changed byte is an ``IntegrityError`` naming its
  location). Thread-safe: Grain opens shards on its own threads."""

  def __init__(self, root: str, files: Mapping[str, Any], verify: bool = True):
    self.root, self.files, self.verify = root, files, verify
    self._lock = threading.Lock()
    self._verifying: dict[str, threading.Lock] = {}  # per shard: one thread hashes it.
    self._verified: set[str] = set()

  def location(self, relpath: str) -> str:
    return filesystem.join(self.root, *relpath.split("/"))

  def open(self, relpath: str) -> pq.ParquetFile:
    if self.verify:
      with self._lock:
        shard_lock = self._verifying.setdefault(relpath, threading.Lock())
      # Grain's threads open pieces of one shard together: the others wait for its
      # checksum instead of reading the whole shard again.
      with shard_lock:
        if relpath not in self._verified:
          if relpath not in self.files:
            raise integrity.IntegrityError("meta.json has no checksum for this shard",
                                           path=self.location(relpath))
          integrity.verify_file(self.root, relpath, self.files[relpath])
          self._verified.add(relpath)
    location = self.location(relpath)
    fs, path = filesystem.resolve(location)
    try:
      # pre_buffer: one coalesced read per row group, not one per column chunk (5x
      # the rows/s from an S3 server, docs/data.md).
      return pq.ParquetFile(fs.open_input_file(path), pre_buffer=True)
    except (OSError, pa.ArrowInvalid) as e:
      raise DataError(f"cannot read shard: {one_line(e)}", path=location) from None


def row_group_starts(file: pq.ParquetFile) -> np.ndarray:
  """int64 [groups + 1]: the first row of every row group, then the file's rows."""
  sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
  return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


def read_row_group(file: pq.ParquetFile, group: int,
                   specs: Mapping[str, tuple[tuple[int, ...], np.dtype]]
                   ) -> dict[str, np.ndarray]:
  """The columns ``specs`` (key -> (tail, dtype)) of row group ``group``: arrays
  [n, *tail] of the spec's dtype (the tensor columns are views of the bytes read)."""
  table = file.read_row_group(group, columns=list(specs))
  out = {}
  for key, (tail, dtype) in specs.items():
    column = table.column(key).combine_chunks()
    if not tail:
      out[key] = column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
      continue
    width = int(np.prod(tail)) * np.dtype(dtype).itemsize
    data = np.frombuffer(column.buffers()[1], np.uint8)[column.offset * width:]
    out[key] = data[:len(column) * width].view(np.dtype(dtype).newbyteorder("<")).astype(
        dtype, copy=False).reshape((len(column),) + tuple(tail))
  return out


class ShardedSplit(Mapping):
  """One split of a sharded store: its shards, and (as a read-only mapping of batch key
  -> array [N, *tail]) its columns, read into memory on first access."""

  def __init__(self, name: str, shards: list[Shard], specs, files: ShardFiles):
    self.name, self.shards, self.specs, self.files = name, shards, dict(specs), files
    self._columns: dict[str, np.ndarray] | None = None
    self._lock = threading.Lock()

  @property
  def num_rows(self) -> int:
    return sum(s.rows for s in self.shards)

  def read_shard(self, shard: Shard, specs=None) -> dict[str, np.ndarray]:
    """Every row of ``shard``: key -> array [rows, *tail] (default: the batch keys)."""
    specs = self.specs if specs is None else specs
    file = self.files.open(shard.relpath)
    parts = [read_row_group(file, g, specs) for g in range(file.num_row_groups)]
    out = {k: (np.concatenate([p[k] for p in parts]) if parts
               else np.zeros((0,) + tuple(t), d)) for k, (t, d) in specs.items()}
    if len(out[next(iter(out))]) != shard.rows:
      raise DataError(f"shard has {len(out[next(iter(out))])} rows; meta.json says "
                      f"{shard.rows}", path=self.files.location(shard.relpath))
    return out

  def _load(self) -> dict[str, np.ndarray]:
    """Every row, in ``row_id`` order (the split's order in the local build)."""
    with self._lock:
      if self._columns is None:
        n = self.num_rows
        columns = {k: np.empty((n,) + tuple(t), d) for k, (t, d) in self.specs.items()}
        seen = np.zeros(n, bool)
        for shard in self.shards:
          part = self.read_shard(shard, {**self.specs, ROW_ID: ((), np.dtype(np.int64))})
          rows = part.pop(ROW_ID)
          if rows.min(initial=0) < 0 or rows.max(initial=0) >= n or seen[rows].any():
            raise DataError(f"shard's row_id values are not distinct rows of the "
                            f"{n}-row split", path=self.files.location(shard.relpath))
          seen[rows] = True
          for k, v in part.items():
            columns[k][rows] = v
        self._columns = columns
      return self._columns

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self.specs:
      raise KeyError(key)
    return self._load()[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self.specs)

  def __len__(self) -> int:
    return len(self.specs)


def read_meta(location: str) -> dict[str, Any]:
  """The parsed ``meta.json`` at the store ``location`` (a path or URI). A missing or
  unreachable location (no bucket, no file) is a ``DataError`` naming it."""
  meta_location = filesystem.join(location, "meta.json")
  fs, path = filesystem.resolve(meta_location)
  try:
    with fs.open_input_stream(path) as f:
      text = f.read()
  except FileNotFoundError:
    if filesystem.is_uri(location) and not filesystem.exists(filesystem.bucket(location)):
      raise DataError(f"no bucket {path.split('/', 1)[0]!r} (or no access to it)",
                      path=location) from None
    raise DataError("not a store (no meta.json); build one with launch/preprocess.py",
                    path=location) from None
  except OSError as e:
    raise DataError(f"cannot read the store: {one_line(e)}", path=meta_location) from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"invalid JSON: {e.msg}", path=meta_location, line=e.lineno,
                    column=e.colno) from None


def load(location: str, meta: Mapping[str, Any], *, verify: bool = True) -> Dataset:
  """The sharded store at ``location`` whose ``meta.json`` is ``meta``: a ``Dataset``
  whose splits are ``ShardedSplit``s (nothing but ``meta.json`` is read here)."""
  from pico_jax.data.store import SPLITS, column_specs
  meta_location = filesystem.join(location, "meta.json")
  integrity.check_meta(meta, meta_location)
  try:
    schema = Schema.from_json(meta["schema"])
    files = ShardFiles(location, meta[integrity.FILES], verify)
    splits = {split: ShardedSplit(split, [Shard(s["file"], int(s["rows"]), s.get("partition"))
                                          for s in meta["splits"][split]["shards"]],
                                  column_specs(schema), files)
              for split in SPLITS}
  except (KeyError, TypeError, ValueError) as e:
    raise DataError(f"invalid sharded meta.json: {type(e).__name__} {e}",
                    path=meta_location) from None
  for split in splits.values():
    if split.num_rows != meta["splits"][split.name].get("rows"):
      raise DataError(f"split {split.name!r}: its shards hold {split.num_rows} rows, "
                      f"meta.json says {meta['splits'][split.name].get('rows')}",
                      path=meta_location)
  info = {"format": meta.get("format"), "task_relation": meta.get("task_relation"),
          "tasks": meta.get("tasks"), "path": location, "meta": meta}
  return Dataset(schema=schema, splits=splits, info=info)
