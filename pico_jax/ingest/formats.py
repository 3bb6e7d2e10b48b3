"""The raw input formats by name (``format_contract`` is what each one implements).

  census       UCI Census-Income (KDD) raw lines, 42 fields (or 43 with a leading row
               index, as DeepCTR's sample); tasks income > 50K ("click" role) and
               marital stat == "Never married" ("conversion" role), independent tasks.
  aliexpress   search_id, categorical_1..16, numerical_1..63, click, conversion.
  aliccp_csv   torch-rechub / ESMM CSV: click, purchase, 23 sparse ids, 8 dense.
  aliccp_aitm  AITM CSV: click, purchase, 18 sparse ids (a header is optional).
  aliccp_raw   ``id,click,purchase,field:feat,...`` lines; fields may repeat
               (multi-valued).
  table        users' own CSV or Parquet tables with declared column roles
               (``table.TableRoles``).
"""

from __future__ import annotations

from typing import Any, Mapping

from pico_jax.ingest import numeric_csv, table, text_formats
from pico_jax.ingest.format_contract import Format
from pico_jax.ingest.table import TableRoles, ValuePolicy

FORMATS = {
    "census": text_formats.CensusFormat,
    "aliexpress": numeric_csv.aliexpress,
    "aliccp_csv": numeric_csv.aliccp_csv,
    "aliccp_aitm": numeric_csv.aliccp_aitm,
    "aliccp_raw": text_formats.AliccpRawFormat,
    "table": table.TableFormat,
}


def get_format(name: str, *, sparse=None, dense=None, table=None, values=None) -> Format:
  """The reader of format ``name``, with optional feature overrides: ``sparse`` /
  ``dense`` are column names replacing the format's default features; ``table`` the
  column roles of format "table" (a ``table.TableRoles`` or its dict), ``values`` its
  null and timestamp policy (a ``table.ValuePolicy`` or its dict; None: the default)."""
  if name not in FORMATS:
    raise ValueError(f"unknown format {name!r}; expected one of {sorted(FORMATS)}")
  if not isinstance(values, ValuePolicy):
    values = ValuePolicy.from_json(values)
  if name == "table":
    roles = table if table is None or isinstance(table, TableRoles) else (
        TableRoles.from_json(table))
    return FORMATS[name](roles, sparse=sparse, dense=dense, values=values)
  if table is not None:
    raise ValueError(f"format {name}: column roles are declared for format table only")
  if values != ValuePolicy():
    raise ValueError(f"format {name}: the null and timestamp policy (--missing_sparse, "
                     "--missing_dense, --missing_indicator, --timestamps) is format "
                     "table's")
  return FORMATS[name](sparse=sparse, dense=dense)


def from_options(name: str, options: Mapping[str, Any]) -> Format:
  """``get_format`` with the options a store's meta.json records (``options``: the
  build's options as JSON; keys other than get_format's are ignored)."""
  return get_format(name, sparse=options.get("sparse"), dense=options.get("dense"),
                    table=options.get("table"), values=options.get("values"))
