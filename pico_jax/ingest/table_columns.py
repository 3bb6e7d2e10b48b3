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

PARQUET = (".parquet", ".pq")


def present(table, name, where):
  """Column ``name`` of ``table``; DataError at its first null."""
  column = table.column(name)
  nulls = column.is_null()
  if pc.any(nulls).as_py():
    where.fail(int(np.flatnonzero(nulls.to_numpy(zero_copy_only=False))[0]), name,
               "missing value")
  return column


def floats(table, name, where) -> np.ndarray:
  column = present(table, name, where)
  try:
    values = column.cast(pa.float64()).to_numpy()
  except pa.ArrowInvalid:
    bad = _first_bad(column, lambda x: x.cast(pa.float64()))
    where.fail(bad, name, f"non-numeric value {echo(_text(column, bad))}")
  bad = np.flatnonzero(~np.isfinite(values))
  if len(bad):
    where.fail(int(bad[0]), name, f"NaN/inf value, got {values[bad[0]]!r}")
  return values


def label(table, name, where) -> np.ndarray:
  values = floats(table, name, where)
  bad = np.flatnonzero((values != 0) & (values != 1))
  if len(bad):
    where.fail(int(bad[0]), name, f"label must be 0 or 1, got {values[bad[0]]!r}")
  return values.astype(np.float32)


def ids(table, name, where) -> np.ndarray:
  column = present(table, name, where)
  kind = column.type
  if pa.types.is_string(kind) or pa.types.is_large_string(kind) or \
      pa.types.is_dictionary(kind):
    return np.array(column.cast(pa.string()).to_pylist(), np.bytes_)
  if pa.types.is_binary(kind):
    return np.array(column.to_pylist(), np.bytes_)
  values = floats(table, name, where) if pa.types.is_floating(kind) else None
  if values is not None:
    bad = np.flatnonzero((np.floor(values) != values) | (np.abs(values) >= MAX_EXACT_INT))
    if len(bad):
      where.fail(int(bad[0]), name, "categorical ids must be integers below 2**53, "
                 f"got {values[bad[0]]!r}")
    return values.astype(np.int64)
  values = column.cast(pa.int64()).to_numpy()
  bad = np.flatnonzero(np.abs(values) >= MAX_EXACT_INT)
  if len(bad):
    where.fail(int(bad[0]), name, f"categorical ids must be below 2**53, got "
               f"{int(values[bad[0]])}")
  return values


def group(table, name, where) -> np.ndarray:
  """The group keys: integer ids, as the store's int32 column holds them."""
  values = ids(table, name, where)
  if values.dtype.kind == "S":
    where.fail(0, name, "group keys must be integers (GAUC's int32 "
               f"groups), got {echo(values[0])}")
  return values


def bag(table, name, sep, where):
  column = present(table, name, where)
  if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
    column = pc.split_pattern(column.cast(pa.string()), sep)
  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
  rows = np.repeat(np.arange(len(lengths)), lengths).astype(np.int64)
  flat = pc.list_flatten(column)
  sub = pa.table({name: flat})
  values = ids(sub, name, Where(where.path, where.lines[rows]))
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
    if self.path.endswith(PARQUET):
      group = _row_group(self.path, row - 1)
      raise DataError(f"row {row} (row group {group}): {what}", path=self.path,
                      column_name=column)
    raise DataError(what, path=self.path, line=row, column_name=column)


def _row_group(path: str, row: int) -> int:
  import pyarrow.parquet as pq
  sizes = [g.num_rows for g in (pq.ParquetFile(path).metadata.row_group(k)
                                for k in range(pq.ParquetFile(path).num_row_groups))]
  return int(np.searchsorted(np.cumsum(sizes), row, side="right"))
