"""The columnar store: a directory of memory-mapped ``.npy`` columns and ``meta.json``.

Layout::

  DIR/meta.json             schema, row counts, column shapes/dtypes, sources, versions
  DIR/{train,val,test}/KEY.npy
                            one array per batch key (``pico_jax.batch``): sparse int32
                            [N, F], multi int32 [N, G, L], multi_mask bool [N, G, L],
                            dense float32 [N, D], click/conversion float32 [N], and the
                            extras (group int32 [N]) the schema lists
  DIR/vocab/*.npy           the sorted raw values of each table vocabulary (id = index + 1)

A store is written (``pico_jax.ingest.store_writer``) into a temporary directory next
to ``DIR`` and renamed into place only when complete, so a directory with
``meta.json`` is always a whole store. Loading
maps every column read-only (``np.load(mmap_mode="r")``): the arrays are the same
whatever the process count, and each process pages in only the rows it gathers.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from pico_jax import batch as B
from pico_jax.data import filesystem, integrity, sharded, value_checks
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema
from pico_jax.data.dataset import Dataset

STORE_VERSION = 1
META = "meta.json"
SPLITS = ("train", "val", "test")
_EXTRA_DTYPES = {B.GROUP: np.int32, B.SEGMENT: np.int32, B.P_CTR_TRUE: np.float32,
                 B.P_CVR_TRUE: np.float32}


def column_specs(schema: Schema) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Per batch key of a store with ``schema``: (shape after the row axis, dtype)."""
  specs = {B.CLICK: ((), np.dtype(np.float32)), B.CONVERSION: ((), np.dtype(np.float32))}
  if schema.sparse:
    specs[B.SPARSE] = ((len(schema.sparse),), np.dtype(np.int32))
  if schema.multi:
    tail = (len(schema.multi), schema.multi_len)
    specs[B.MULTI] = (tail, np.dtype(np.int32))
    specs[B.MULTI_MASK] = (tail, np.dtype(np.bool_))
  if schema.dense:
    specs[B.DENSE] = ((schema.num_dense,), np.dtype(np.float32))
  for key in schema.extras:
    if key not in _EXTRA_DTYPES:
      raise ValueError(f"unknown extra column {key!r}; expected one of {list(_EXTRA_DTYPES)}")
    specs[key] = ((), np.dtype(_EXTRA_DTYPES[key]))
  return specs


def columns_meta(schema: Schema) -> dict[str, dict[str, Any]]:
  """meta.json's ``columns``: per batch key, {"shape": after the row axis, "dtype"}."""
  return {key: {"shape": list(tail), "dtype": dtype.name}
          for key, (tail, dtype) in column_specs(schema).items()}


def read_meta(path: str) -> dict[str, Any]:
  """The parsed ``meta.json`` of the store at ``path`` (a local path or a URI, read
  through ``filesystem``), checked for version."""
  meta = sharded.read_meta(path)
  if meta.get("store_version") not in (STORE_VERSION, sharded.STORE_VERSION):
    raise DataError(f"store version {meta.get('store_version')!r}; this code reads "
                    f"versions {STORE_VERSION} and {sharded.STORE_VERSION}: rebuild the "
                    "store", path=filesystem.join(path, META))
  return meta


def verified_meta(path: str) -> dict[str, Any]:
  """``read_meta`` of the store at ``path``, checked against its fingerprint: a store
  without checksums, or whose meta.json was edited, is a DataError naming meta.json."""
  meta = read_meta(path)
  integrity.check_meta(meta, filesystem.join(path, META))
  return meta


def load_array(path: str, meta: dict[str, Any], relpath: str, mmap: bool = False
               ) -> np.ndarray:
  """The array at ``relpath`` of the store at ``path`` (a local path or a URI),
  verified against the size and BLAKE3 digest that ``meta`` (``verified_meta``)
  records for it before it is read. ``mmap`` maps a local file read-only; a file in
  object storage is read into memory."""
  entry = meta[integrity.FILES].get(relpath)
  file = filesystem.join(path, *relpath.split("/"))
  if entry is None:
    raise integrity.IntegrityError("meta.json records no checksum for this file",
                                   path=file)
  if filesystem.is_uri(path):  # read once: checked, then parsed from memory.
    return _read(io.BytesIO(integrity.read_verified(path, relpath, entry)), False, file)
  integrity.verify_file(path, relpath, entry)
  return _read(file, mmap)


def _read(file, mmap: bool, name: str | None = None) -> np.ndarray:
  """``np.load`` of ``file`` (a path, or a file object named ``name``)."""
  try:
    return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
  except (ValueError, OSError) as e:  # a damaged header, a truncated array.
    raise DataError(f"unreadable .npy file: {e}", path=name or file) from None


def open_columns(path: str, meta: dict[str, Any], verify: bool = True
                 ) -> tuple[Schema, dict[str, dict[str, np.ndarray]]]:
  """(schema, {split: {batch key: read-only memory map}}) of the store at ``path``:
  every column verified (with ``verify``, against ``meta``'s checksums), checked for
  shape and dtype, then for its values (``value_checks``)."""
  meta_path = os.path.join(path, META)
  for key in ("schema", "splits"):
    if key not in meta:
      raise DataError(f"meta.json has no key {key!r}", path=meta_path)
  try:
    schema = Schema.from_json(meta["schema"])
  except (TypeError, ValueError, KeyError) as e:
    raise DataError(f"invalid 'schema' in meta.json: {e}", path=meta_path) from None
  specs = column_specs(schema)
  splits = {}
  for split in SPLITS:
    if split not in meta["splits"]:
      raise DataError(f"meta.json has no split {split!r}", path=meta_path)
    if "rows" not in meta["splits"][split]:
      raise DataError(f"meta.json split {split!r} has no key 'rows'", path=meta_path)
    n = meta["splits"][split]["rows"]
    cols, files = {}, {}
    for key, (tail, dtype) in specs.items():
      files[key] = file = os.path.join(path, split, f"{key}.npy")
      if not os.path.isfile(file):
        raise DataError(f"missing column {key!r} of split {split!r}", path=file)
      if verify:
        col = load_array(path, meta, f"{split}/{key}.npy", mmap=True)
      else:
        col = _read(file, mmap=True)
      if col.shape != (n,) + tail or col.dtype != dtype:
        raise DataError(f"column {key!r} has shape {col.shape} {col.dtype}; meta.json "
                        f"says {(n,) + tail} {dtype}", path=file)
      cols[key] = col
    value_checks.check_split(split, cols, files, schema, meta)
    splits[split] = cols
  return schema, splits


def load_store(path: str, *, verify_shards: bool = True) -> Dataset:
  """Maps the store at ``path``: a ``Dataset`` with splits train/val/test. A sharded
  store (version 2, a local path or a URI) is opened by ``sharded.load`` instead
  (``verify_shards``: each shard checked on its first read).

  Before any row is used, meta.json is checked against its fingerprint, every column
  against its BLAKE3 checksum and every value against what its column may hold
  (``value_checks``); each failure is a DataError naming the file (and the split,
  column and row of a value).

  Returns:
    ``Dataset(schema, splits, info)``: ``splits[split][key]`` are read-only memory maps
    keyed by batch key; ``info`` has ``format``, ``task_relation`` ("entire_space" or
    "independent"), ``tasks`` (what click and conversion mean), ``path`` and ``meta``
    (``meta["fingerprint"]`` names the store's exact bytes).
  """
  if filesystem.is_uri(path):
    meta = sharded.read_meta(path)
    if meta.get("store_version") != sharded.STORE_VERSION:
      raise DataError("a columnar (version 1) store is read from a local directory; "
                      "convert it with launch/preprocess.py --convert", path=path)
    return sharded.load(path, meta, verify=verify_shards)
  path = os.path.abspath(path)
  meta = read_meta(path)
  if meta.get("store_version") == sharded.STORE_VERSION:
    return sharded.load(path, meta, verify=verify_shards)
  integrity.check_meta(meta, os.path.join(path, META))  # verified_meta, read once.
  for relpath, entry in meta[integrity.FILES].items():
    if not relpath.startswith(tuple(f"{s}/" for s in SPLITS)):  # columns: as opened.
      integrity.verify_file(path, relpath, entry)
  schema, splits = open_columns(path, meta)
  info = {"format": meta.get("format"), "task_relation": meta.get("task_relation"),
          "tasks": meta.get("tasks"), "path": path, "meta": meta}
  return Dataset(schema=schema, splits=splits, info=info)
