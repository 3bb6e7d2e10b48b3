"""A dataset: columns per split (train, val, test) and the schema the model is built from.

Every source of data (the synthetic generators, a columnar store) produces one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pico_jax import batch as B
from pico_jax.data.schema import Schema


@dataclasses.dataclass
class Dataset:
  """Columns per split, keyed by batch key (see ``pico_jax.batch``)."""
  schema: Schema
  splits: dict[str, dict[str, np.ndarray]]
  info: dict  # dataset-specific facts, e.g. {"rho": [...]} for synthetic data.

  def num_rows(self, split: str) -> int:
    return len(self.splits[split][B.CLICK])
