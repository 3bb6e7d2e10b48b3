"""A store from a table in memory: a pyarrow Table or a pandas DataFrame, its column
roles declared, through the same passes as files of format table (no file written)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from pico_jax.data.errors import DataError
from pico_jax.ingest import preprocess
from pico_jax.ingest.table import TableRoles, ValuePolicy

_LOG = logging.getLogger("pico_jax.ingest")


def _arrow(data, key: str) -> pa.Table:
  if isinstance(data, pa.Table):
    return data
  try:
    return pa.table(data)  # a pandas DataFrame, a dict of columns, an Arrow stream.
  except (TypeError, ValueError, pa.ArrowException) as e:
    raise DataError(f"not a table pyarrow can read ({type(data).__name__}): {e}",
                    path=f"memory:{key}") from None


def store_from_table(data, output: str, *, roles: TableRoles | Mapping[str, Any],
                     overwrite: bool = False, log: Callable[[str], None] | None = None,
                     progress: bool = False, **options) -> dict:
  """Builds the store at ``output`` from tables in memory, as ``launch/preprocess.py
  --format=table`` builds it from files.

  Args:
    data: a ``pyarrow.Table``, a pandas DataFrame (anything ``pyarrow.table`` takes),
      or a mapping of split ("train", "val", "test"; or "all") to one: one table is
      split by ``split_fractions``, as one input file is (docs/data.md section 4).
    output: the store directory (created; replaced with ``overwrite`` only where it is
      a store or an empty directory).
    roles: the column roles, a ``TableRoles`` or its dict: ``click``, ``conversion``,
      optional ``group``, ``id``, ``sparse``, ``multi`` ({column: separator}), ``dense``.
    log: called with progress lines (default: the ``pico_jax.ingest`` logger, INFO).
    progress: show tqdm bars.
    **options: fields of ``preprocess.Options`` (``values``: a ``ValuePolicy`` or its
      dict, e.g. ``{"missing_sparse": "default"}``).

  Returns:
    The store's meta dict; its ``sources`` name the tables ``memory:SPLIT``, with the
    BLAKE3 digest of each one's Arrow IPC stream.

  Raises:
    DataError: a bad value, naming ``memory:SPLIT``, the row and the column.
    preprocess.OptionError: an option out of its range, roles or a value policy that
      do not parse.
  """
  tables = dict(data) if isinstance(data, Mapping) else {"all": data}
  tables = {key: _arrow(table, key) for key, table in tables.items()}
  values = options.pop("values", ValuePolicy())
  try:
    roles = roles if isinstance(roles, TableRoles) else TableRoles.from_json(dict(roles))
  except ValueError as e:
    raise preprocess.OptionError("table", roles, str(e)) from None
  try:
    values = values if isinstance(values, ValuePolicy) else ValuePolicy.from_json(values)
  except (TypeError, ValueError) as e:
    raise preprocess.OptionError("values", values, str(e)) from None
  fields = {f.name for f in dataclasses.fields(preprocess.Options)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise TypeError(f"store_from_table: unknown options {unknown}; see "
                    "preprocess.Options")
  return preprocess.build_store(
      "table", [f"{key}=memory:{key}" for key in tables], output,
      options=preprocess.Options(table=roles, values=values, **options),
      overwrite=overwrite, log=log or _LOG.info, progress=progress, tables=tables)
