"""What a store's columns may hold, checked when it is loaded (and before it is sealed).

* ``sparse`` / ``multi``: every id in [0, the field's vocabulary size);
* ``click`` / ``conversion``: 0 or 1;
* the conversion/click rule the store declares: where ``task_relation`` is
  ``entire_space`` and its policy is not ``keep``, conversion <= click on every row;
* ``dense``: finite.

A failure is a ``DataError`` naming the column's file, the split, the column (and field)
and the first bad row. The columns are read in slices of ``ROWS`` rows, so the check
holds at most one slice of a column in memory whatever the store's size.
"""

from __future__ import annotations

import numpy as np

from pico_jax import batch as B
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema

ROWS = 1 << 20  # rows per slice: a few MiB of any column.


def _fail(file: str, split: str, key: str, row: int, what: str, field: str | None = None):
  name = f" (field {field!r})" if field else ""
  raise DataError(f"split {split!r}, column {key!r}{name}, row {row}: {what}", path=file)


def _ids(file, split, key, column, fields) -> None:
  """Ids of ``column`` (int32 [n, F] or [n, G, L]) in [0, size) per field."""
  sizes = np.array([f.vocab_size for f in fields], np.int64)
  axes = (0,) + tuple(range(2, column.ndim))
  for start in range(0, len(column), ROWS):
    part = column[start:start + ROWS]
    if not len(part) or (part.min(axis=axes) >= 0).all() and (
        part.max(axis=axes) < sizes).all():  # reductions: no temporary the size of part.
      continue
    bad = (part < 0) | (part >= sizes.reshape((1, -1) + (1,) * (column.ndim - 2)))
    row, j, *rest = np.argwhere(bad)[0]
    _fail(file, split, key, start + int(row), f"id {int(part[(row, j, *rest)])} outside "
          f"[0, {int(sizes[j])}) (the field's vocabulary size)", fields[j].name)


def _labels(file, split, key, column) -> None:
  for start in range(0, len(column), ROWS):
    part = column[start:start + ROWS]
    bad = np.flatnonzero((part != 0) & (part != 1))
    if len(bad):
      _fail(file, split, key, start + int(bad[0]),
            f"label {float(part[bad[0]])!r}, not 0 or 1")


def _entire_space(file, split, click, conversion) -> None:
  for start in range(0, len(click), ROWS):
    bad = np.flatnonzero(conversion[start:start + ROWS] > click[start:start + ROWS])
    if len(bad):
      _fail(file, split, B.CONVERSION, start + int(bad[0]),
            "conversion without click, which this store's entire-space rule forbids "
            "(conversion <= click)")


def _finite(file, split, key, column, names) -> None:
  for start in range(0, len(column), ROWS):
    part = column[start:start + ROWS]
    if not part.size or np.isfinite(part.min()) and np.isfinite(part.max()):
      continue  # min and max are NaN where any value is, and infinite where one is.
    row, k = np.argwhere(~np.isfinite(part))[0]
    _fail(file, split, key, start + int(row), "dense value "
          f"{float(part[row, k])!r} is not finite", names[k])


def check_split(split: str, columns: dict, files: dict[str, str], schema: Schema,
                meta: dict) -> None:
  """Raises DataError at the first value of ``split``'s ``columns`` (batch key ->
  array) that the store cannot hold; ``files``: batch key -> its file (for messages)."""
  for key, fields in ((B.SPARSE, schema.sparse), (B.MULTI, schema.multi)):
    if key in columns:
      _ids(files[key], split, key, columns[key], fields)
  for key in (B.CLICK, B.CONVERSION):
    _labels(files[key], split, key, columns[key])
  if (meta.get("task_relation") == "entire_space"
      and meta.get("entire_space_policy") != "keep"):
    _entire_space(files[B.CONVERSION], split, columns[B.CLICK], columns[B.CONVERSION])
  if B.DENSE in columns:
    _finite(files[B.DENSE], split, B.DENSE, columns[B.DENSE], schema.dense)
