"""Dataset schema: which fields exist and how large their vocabularies are.

The schema is all the model needs to know about a dataset; it is stored in a
columnar store's ``meta.json`` and produced by every reader and by the synthetic
generator.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class SparseField:
  """A categorical field. ``vocab_size`` counts id 0 (unseen / rare / padding)."""
  name: str
  vocab_size: int
  max_len: int = 1  # > 1: multi-valued, stored padded in the ``multi`` column.

  @property
  def multi_valued(self) -> bool:
    return self.max_len > 1


@dataclasses.dataclass(frozen=True)
class Schema:
  """Feature layout of a dataset (labels are not features and never appear here)."""
  sparse: tuple[SparseField, ...] = ()
  multi: tuple[SparseField, ...] = ()
  dense: tuple[str, ...] = ()
  # Extra per-row columns (segment, group, ...) that evaluation may use.
  extras: tuple[str, ...] = ()

  def __post_init__(self):
    for f in self.sparse:
      if f.multi_valued:
        raise ValueError(f"single-valued field {f.name!r} has max_len={f.max_len}")
    lens = {f.max_len for f in self.multi}
    if len(lens) > 1:
      raise ValueError(f"multi-valued fields must share one padded length, got {sorted(lens)}")
    names = [f.name for f in self.sparse + self.multi] + list(self.dense)
    dup = {n for n in names if names.count(n) > 1}
    if dup:
      raise ValueError(f"duplicate feature names in schema: {sorted(dup)}")

  @property
  def num_dense(self) -> int:
    return len(self.dense)

  @property
  def multi_len(self) -> int:
    return self.multi[0].max_len if self.multi else 0

  def to_json(self) -> dict[str, Any]:
    return {
        "sparse": [dataclasses.asdict(f) for f in self.sparse],
        "multi": [dataclasses.asdict(f) for f in self.multi],
        "dense": list(self.dense),
        "extras": list(self.extras),
    }

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Schema":
    unknown = set(d) - {"sparse", "multi", "dense", "extras"}
    if unknown:
      raise ValueError(f"unknown schema keys: {sorted(unknown)}")
    return cls(
        sparse=tuple(SparseField(**f) for f in d.get("sparse", ())),
        multi=tuple(SparseField(**f) for f in d.get("multi", ())),
        dense=tuple(d.get("dense", ())),
        extras=tuple(d.get("extras", ())),
    )
