"""Which split every input row goes to, decided before any statistic is taken.

Inputs are ``PATH`` or ``SPLIT=PATH`` (SPLIT: train, val, test or all):
  - one file (or only ``all=``): a seeded split, ``perm = default_rng(seed)
    .permutation(n)``; train, val, test = consecutive slices of sizes int(f_train n),
    int(f_val n) and the rest, stored in ``perm`` order;
  - two files: train and test; val is carved from train the same way
    (``val_fraction``), with train rows first in ``perm`` order;
  - three files: train, val, test, in file order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SPLIT_ID = {"train": 0, "val": 1, "test": 2}


def parse_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
  """``PATH`` / ``SPLIT=PATH`` arguments -> [(split, path)] (see the module docstring)."""
  if not inputs:
    raise ValueError("no input files")
  named = [i.split("=", 1)[0] in (*SPLIT_ID, "all") and "=" in i for i in inputs]
  if any(named) and not all(named):
    raise ValueError("give every input as SPLIT=PATH or none of them")
  if all(named):
    pairs = [tuple(i.split("=", 1)) for i in inputs]
    if "all" in {s for s, _ in pairs} and len({s for s, _ in pairs}) > 1:
      raise ValueError("all=PATH cannot be mixed with train/val/test inputs")
    return pairs
  by_count = {1: ("all",), 2: ("train", "test"), 3: ("train", "val", "test")}
  if len(inputs) not in by_count:
    raise ValueError(f"{len(inputs)} inputs: give 1 (split by fractions), 2 (train, "
                     "test) or 3 (train, val, test) paths, or SPLIT=PATH pairs")
  return list(zip(by_count[len(inputs)], inputs))


def assign(sources, seed: int, split_fractions, val_fraction: float):
  """Split id (int8 [N]) and order key inside the split (int64 [N]: distinct within a
  split, in [0, N)) of every row.

  ``sources``: objects with ``split`` (train | val | test | all), ``offset`` (index of
  their first row among all rows) and ``rows``.
  """
  total = sum(s.rows for s in sources)
  split_of = np.empty(total, np.int8)
  rank_of = np.arange(total, dtype=np.int64)
  for s in sources:
    if s.split != "all":
      split_of[s.offset:s.offset + s.rows] = SPLIT_ID[s.split]

  def random_split(rows, counts):
    perm = np.random.default_rng(seed).permutation(len(rows))
    bounds = np.cumsum((0,) + tuple(counts))
    for split_id in range(3):
      part = rows[perm[bounds[split_id]:bounds[split_id + 1]]]
      split_of[part] = split_id
      rank_of[part] = np.arange(bounds[split_id], bounds[split_id + 1])

  pooled = [s for s in sources if s.split == "all"]
  if pooled:
    rows = np.concatenate([np.arange(s.offset, s.offset + s.rows) for s in pooled])
    n = len(rows)
    n_train, n_val = int(split_fractions[0] * n), int(split_fractions[1] * n)
    random_split(rows, (n_train, n_val, n - n_train - n_val))
  elif not any(s.split == "val" for s in sources) and val_fraction > 0:
    rows = np.concatenate([np.arange(s.offset, s.offset + s.rows)
                           for s in sources if s.split == "train"] or [np.zeros(0, int)])
    n_val = int(val_fraction * len(rows))
    random_split(rows, (len(rows) - n_val, n_val, 0))
  return split_of, rank_of
