"""The raw input formats by name (see ``readers`` for the reading contract).

  census       UCI Census-Income (KDD) raw lines, 42 fields (or 43 with a leading row
               index, as DeepCTR's sample); tasks income > 50K ("click" role) and
               marital stat == "Never married" ("conversion" role), independent tasks.
  aliexpress   search_id, categorical_1..16, numerical_1..63, click, conversion.
  aliccp_csv   torch-rechub / ESMM CSV: click, purchase, 23 sparse ids, 8 dense.
  aliccp_aitm  AITM CSV: click, purchase, 18 sparse ids (a header is optional).
  aliccp_raw   ``id,click,purchase,field:feat,...`` lines; fields may repeat
               (multi-valued).
"""

from __future__ import annotations

from pico_jax.ingest import numeric_csv, text_formats
from pico_jax.ingest.readers import Format

FORMATS = {
    "census": text_formats.CensusFormat,
    "aliexpress": numeric_csv.aliexpress,
    "aliccp_csv": numeric_csv.aliccp_csv,
    "aliccp_aitm": numeric_csv.aliccp_aitm,
    "aliccp_raw": text_formats.AliccpRawFormat,
}


def get_format(name: str, *, sparse=None, dense=None) -> Format:
  """The reader of format ``name``, with optional feature overrides: ``sparse`` /
  ``dense`` are column names replacing the format's default features."""
  if name not in FORMATS:
    raise ValueError(f"unknown format {name!r}; expected one of {sorted(FORMATS)}")
  return FORMATS[name](sparse=sparse, dense=dense)
