"""Vocabularies: raw categorical values -> field-local ids, built from the training split.

Id 0 means unseen, rare (count below ``min_count``) or missing; kept values get ids
1..V in sorted order of the raw value, so a lookup is a vectorised ``searchsorted``.
A hashed field maps every value to ``1 + hash(value) % buckets`` instead: no table, a
fixed size, and collisions (its ``min_count`` is not applied). Raw values are int64 or
bytes arrays; every operation here is whole-array numpy, but for the merge of int64
counts (``compiled.merge_counts``, compiled).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from pico_jax.ingest import compiled


class Counter:
  """Counts of distinct values over a stream of arrays, in memory proportional to the
  number of distinct values (per-chunk uniques are merged once they pile up)."""

  def __init__(self):
    self._keys: list[np.ndarray] = []
    self._counts: list[np.ndarray] = []
    self._pending = 0
    self._merged = 0

  def add_counts(self, keys: np.ndarray, counts: np.ndarray) -> None:
    """Adds sorted distinct ``keys`` seen ``counts`` times (``np.unique`` of a block)."""
    if len(keys) == 0:
      return
    self._keys.append(keys)
    self._counts.append(counts.astype(np.int64))
    self._pending += len(keys)
    if self._pending > max(1 << 20, 2 * self._merged):
      self._merge()

  def _merge(self) -> None:
    if all(k.dtype == np.int64 for k in self._keys):  # ids: a compiled merge of sorted runs.
      keys, counts = compiled.merge_counts(self._keys, self._counts)
    else:
      keys = np.concatenate(self._keys)
      counts = np.concatenate(self._counts)
      order = np.argsort(keys, kind="stable")
      keys, counts = keys[order], counts[order]
      starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
      keys, counts = keys[starts], np.add.reduceat(counts, starts)
    self._keys, self._counts = [keys], [counts]
    self._merged = self._pending = len(keys)

  def result(self) -> tuple[np.ndarray | None, np.ndarray]:
    """(sorted distinct values, int64 counts); values is None if nothing was added."""
    if not self._keys:
      return None, np.zeros(0, np.int64)
    self._merge()
    return self._keys[0], self._counts[0]


def _splitmix64(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def stable_hash(values: np.ndarray) -> np.ndarray:
  """A 64-bit hash of int or bytes values that is the same on every machine: uint64."""
  if values.dtype.kind in "iu":
    with np.errstate(over="ignore"):
      return _splitmix64(values.astype(np.int64).view(np.uint64))
  uniq, inverse = np.unique(values, return_inverse=True)
  hashed = np.array([int.from_bytes(hashlib.blake2b(bytes(u), digest_size=8).digest(),
                                    "little") for u in uniq], np.uint64)
  return hashed[inverse.reshape(-1)]


@dataclasses.dataclass
class Vocab:
  """One field's value -> id map. ``keys``: sorted kept values (table vocab);
  ``buckets`` > 0: hashed vocab. ``vocab_size`` counts id 0."""
  keys: np.ndarray | None = None
  buckets: int = 0

  @property
  def vocab_size(self) -> int:
    if self.buckets:
      return self.buckets + 1
    return 1 + (0 if self.keys is None else len(self.keys))

  def lookup(self, values: np.ndarray) -> np.ndarray:
    """Ids of ``values`` (any shape): int32, 0 where unseen or rare."""
    values = np.asarray(values)
    if self.buckets:
      ids = (1 + stable_hash(values.reshape(-1)) % np.uint64(self.buckets)).astype(np.int32)
      ids = ids.reshape(values.shape)
    elif self.keys is None or len(self.keys) == 0:
      ids = np.zeros(values.shape, np.int32)
    else:
      pos = np.minimum(np.searchsorted(self.keys, values), len(self.keys) - 1)
      ids = np.where(self.keys[pos] == values, pos + 1, 0).astype(np.int32)
    return ids


def build_vocab(keys: np.ndarray | None, counts: np.ndarray, *, min_count: int = 1,
                buckets: int = 0, max_size: int = 0) -> Vocab:
  """The vocab of one field from its training counts.

  Args:
    keys, counts: ``Counter.result()``.
    min_count: values seen fewer times map to 0.
    buckets: > 0 hashes the field into this many buckets.
    max_size: > 0 hashes the field into ``max_size`` buckets when more than
      ``max_size`` values would be kept (the "huge field" rule).
  """
  if buckets:
    return Vocab(buckets=buckets)
  if keys is None:
    return Vocab()
  kept = keys[counts >= min_count]
  if max_size and len(kept) > max_size:
    return Vocab(buckets=max_size)
  return Vocab(keys=kept)
