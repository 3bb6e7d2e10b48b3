"""Format "table"'s columns: an Arrow column of a block -> the numpy arrays of a ``Chunk``.

Every function takes the block (a ``pyarrow.Table``), a column name and a ``Where``
(the block's file and row numbers), and raises ``DataError`` naming the file, the row
(a CSV file's line; a Parquet file's row and row group) and the column.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pico_jax.data.errors import DataError
from pico_jax.ingest.format_contract import echo
from pico_jax.ingest.numeric_parse import MAX_EXACT_INT
from pico_jax.ingest.vocab import stable_hash

PARQUET = (".parquet", ".pq")
MEMORY = "memory:"  # an in-memory table's input name: memory:KEY.


_HINTS = {"sparse": "--missing_sparse=default maps it to id 0",
          "dense": "--missing_dense=default maps it to the training mean"}


def present(table, name, where, role: str | None = None):
  """Column ``name`` of ``table``; DataError at its first null (``role``: sparse or
  dense, whose option allows nulls, for the message)."""
  column = table.column(name)
  nulls_ = nulls(table, name)
  if nulls_ is not None:
    hint = f" ({_HINTS[role]})" if role else ""
    where.fail(int(np.flatnonzero(nulls_)[0]), name, f"missing value{hint}")
  return column


def nulls(table, name) -> np.ndarray | None:
  """bool [n]: the rows where column ``name`` is null, or None where none is."""
  column = table.column(name)
  if not column.null_count:
    return None
  return column.is_null().to_numpy(zero_copy_only=False)


_PER_SECOND = {"s": 1, "ms": 10 ** 3, "us": 10 ** 6, "ns": 10 ** 9}


def _epoch_seconds(column, name, where, timestamps: str):
  """A timestamp or date column as float64 seconds since 1970-01-01 UTC (a timestamp
  without a time zone read as UTC; nulls NaN), or None for a column of another type;
  DataError unless ``timestamps`` converts."""
  kind = column.type
  if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
    return None
  if timestamps != "epoch_seconds":
    where.fail_column(name, f"a {kind} column is not a dense value as is; "
                      "--timestamps=epoch_seconds converts it to seconds since "
                      "1970-01-01 UTC")
  counts = column.cast(pa.int32() if pa.types.is_date32(kind) else pa.int64())
  counts = counts.to_numpy(zero_copy_only=False).astype(np.float64)
  if pa.types.is_date32(kind):  # days.
    return counts * 86400
  return counts / (_PER_SECOND[kind.unit] if pa.types.is_timestamp(kind) else 1000)


def floats(table, name, where, missing: str = "error", timestamps: str = "error"
           ) -> np.ndarray:
  """float64 [n], finite but where a null is (NaN there, with ``missing`` "default")."""
  column = present(table, name, where, "dense") if missing == "error" else (
      table.column(name))
  values = _epoch_seconds(column, name, where, timestamps)
  if values is None:
    try:
      values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowNotImplementedError:
      where.fail_column(name, f"a {column.type} column is not a number")
    except pa.ArrowInvalid:
      bad = _first_bad(column, lambda x: x.cast(pa.float64()))
      where.fail(bad, name, f"non-numeric value {echo(_text(column, bad))}")
  null = nulls(table, name)
  bad = np.flatnonzero(~np.isfinite(values) & (True if null is None else ~null))
  if len(bad):
    where.fail(int(bad[0]), name, f"NaN/inf value, got {float(values[bad[0]])!r}")
  return values


def label(table, name, where) -> np.ndarray:
  values = floats(table, name, where)
  bad = np.flatnonzero((values != 0) & (values != 1))
  if len(bad):
    where.fail(int(bad[0]), name, f"label must be 0 or 1, got {float(values[bad[0]])!r}")
  return values.astype(np.float32)


def ids(table, name, where, missing: str | None = None) -> np.ndarray:
  """Raw categorical values: bytes [n] (strings, binary) or int64 [n] (integers over
  the whole int64 range; floats that are integers below 2**53). A null is an error
  (``missing`` None: a key, never null; "error": a sparse value) or becomes a
  placeholder the caller masks (``missing`` "default"; ``nulls``)."""
  kind = table.column(name).type
  textual = (pa.types.is_string(kind) or pa.types.is_large_string(kind)
             or pa.types.is_dictionary(kind))
  column = table.column(name)
  if missing != "default":
    present(table, name, where, missing and "sparse")
  if textual:
    column = column.cast(pa.string())
  if column.null_count:  # a placeholder, masked by the caller (``nulls``).
    fill = "" if textual else b"" if pa.types.is_binary(kind) else 0
    column = pc.fill_null(column, pa.scalar(fill, column.type))
  if textual:
    return np.array(column.cast(pa.string()).to_pylist(), np.bytes_)
  if pa.types.is_binary(kind):
    return np.array(column.to_pylist(), np.bytes_)
  if pa.types.is_floating(kind):
    values = floats(pa.table({name: column}), name, where)
    bad = np.flatnonzero((np.floor(values) != values) | (np.abs(values) >= MAX_EXACT_INT))
    if len(bad):
      where.fail(int(bad[0]), name, "categorical ids given as floats must be integers "
                 f"below 2**53, got {float(values[bad[0]])!r}")
    return values.astype(np.int64)
  try:
    return column.cast(pa.int64()).to_numpy(zero_copy_only=False)
  except pa.ArrowInvalid:  # a uint64 beyond int64.
    bad = _first_bad(column, lambda x: x.cast(pa.int64()))
    where.fail(bad, name, f"categorical id {echo(_text(column, bad))} is beyond int64")
  except pa.ArrowNotImplementedError:
    where.fail_column(name, f"a {kind} column cannot hold categorical ids")


GROUP_BUCKETS = 1 << 31  # a hashed group key: BLAKE2b-64 of its bytes, modulo this.


def group(table, name, where) -> np.ndarray:
  """The group keys as int64 [n]: integers as they are (the store's int32 column
  checks them), any other value hashed (``vocab.stable_hash`` mod ``GROUP_BUCKETS``)."""
  values = ids(table, name, where)
  if values.dtype.kind == "S":
    return (stable_hash(values) % np.uint64(GROUP_BUCKETS)).astype(np.int64)
  return values


def bag(table, name, sep, where, missing: str = "error"):
  """A multi-valued column (a list column, or strings joined by ``sep``): (row int64
  [T], value [T], 1-based position [T]) of its values. Empty tokens, null items and
  empty lists are no values, as an absent one; a null list is one with
  ``missing`` "default"."""
  column = present(table, name, where, "sparse") if missing == "error" else (
      table.column(name))
  if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
    column = pc.split_pattern(column.cast(pa.string()), sep)
  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
  rows = np.repeat(np.arange(len(lengths)), lengths).astype(np.int64)
  flat = pc.list_flatten(column)
  if pa.types.is_dictionary(flat.type):
    flat = flat.cast(pa.string())
  keep = flat.is_valid()
  if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
    keep = pc.and_(keep, pc.not_equal(pc.utf8_length(flat), 0))
  keep = pc.fill_null(keep, False).to_numpy(zero_copy_only=False)
  rows, flat = rows[keep], flat.filter(pa.array(keep))
  values = ids(pa.table({name: flat}), name, Where(where.path, where.lines[rows]))
  position = np.arange(len(rows)) - np.searchsorted(rows, rows)
  return rows, values, position + 1


def _text(column, i: int) -> bytes:
  return str(column[i].as_py()).encode()


def _first_bad(column, convert) -> int:
  """The first row of ``column`` that ``convert`` rejects (a search, on failure only)."""
  for i in range(len(column)):
    try:
      convert(column.slice(i, 1))
    except pa.ArrowInvalid:
      return i
  return 0


@dataclasses.dataclass
class Where:
  path: str
  lines: np.ndarray

  def fail(self, i: int, column: str, what: str):
    row = int(self.lines[i])
    if self.path.startswith(MEMORY):
      raise DataError(f"row {row}: {what}", path=self.path, column_name=column)
    if self.path.endswith(PARQUET):
      group = _row_group(self.path, row - 1)
      raise DataError(f"row {row} (row group {group}): {what}", path=self.path,
                      column_name=column)
    raise DataError(what, path=self.path, line=row, column_name=column)

  def fail_column(self, column: str, what: str):
    """A problem with the whole column (its type), not with one row."""
    raise DataError(what, path=self.path, column_name=column)


def _row_group(path: str, row: int) -> int:
  import pyarrow.parquet as pq
  sizes = [g.num_rows for g in (pq.ParquetFile(path).metadata.row_group(k)
                                for k in range(pq.ParquetFile(path).num_row_groups))]
  return int(np.searchsorted(np.cumsum(sizes), row, side="right"))
