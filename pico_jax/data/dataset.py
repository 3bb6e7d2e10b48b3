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
    columns = self.splits[split]
    # A sharded split knows its rows without reading them.
    return columns.num_rows if hasattr(columns, "num_rows") else len(columns[B.CLICK])


def random_splits(columns: dict[str, np.ndarray], permutation: np.ndarray,
                  val_fraction: float, test_fraction: float) -> dict[str, dict]:
  """``columns`` (each [N, ...]) cut into train, val and test: consecutive slices of
  ``permutation`` (int [N]) of sizes N - n_val - n_test, n_val = int(val_fraction N)
  and n_test = int(test_fraction N)."""
  num_rows = len(permutation)
  n_val, n_test = int(val_fraction * num_rows), int(test_fraction * num_rows)
  n_train = num_rows - n_val - n_test
  bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
            "test": (n_train + n_val, num_rows)}
  return {name: {key: col[permutation[lo:hi]] for key, col in columns.items()}
          for name, (lo, hi) in bounds.items()}
