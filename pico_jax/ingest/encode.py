"""Parsed rows -> model columns: vocabularies, the dense transform and the schema layout.

One ``Encoder`` maps a ``format_contract.Chunk`` to the store's columns. Preprocessing
builds it from the training statistics and writes its output into the store; scoring
(``pico_jax.predict``) loads the same encoder from a store (``Encoder.from_store``)
and feeds its output to the model, so raw rows are encoded by one code path.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from pico_jax import batch as B
from pico_jax.ingest import compiled, formats
from pico_jax.data import store
from pico_jax.ingest.format_contract import Chunk, Format
from pico_jax.ingest.vocab import Vocab


def positions_in_rows(rows: np.ndarray) -> np.ndarray:
  """For ascending row indices of list entries: each entry's index within its row."""
  return np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")


@dataclasses.dataclass
class Factorized:
  """A column of raw values as its sorted distinct ``keys`` and, per row, the index
  of its key (``inverse``, any int [n]): ``keys[inverse]`` is the column."""
  keys: np.ndarray
  inverse: np.ndarray

  def __len__(self) -> int:
    return len(self.inverse)


def factorize(values: np.ndarray, rows: np.ndarray) -> tuple[Factorized, np.ndarray]:
  """``values`` (int64 or bytes [n]) as its sorted distinct keys and an int32 inverse,
  and how often each key occurs in the ``rows`` (bool [n]): int64 [K]. An int64
  column goes through ``compiled.factorize_int64`` (compiled), other columns (bytes)
  through ``np.unique``."""
  if values.dtype == np.int64:
    keys, inverse, counts = compiled.factorize_int64(values, rows)
    return Factorized(keys, inverse), counts
  keys, inverse = np.unique(values, return_inverse=True)
  inverse = inverse.astype(np.int32).reshape(-1)
  return Factorized(keys, inverse), np.bincount(inverse[rows], minlength=len(keys))


def _lookup(vocab: Vocab, values) -> np.ndarray:
  """``vocab.lookup`` of a raw column, once per distinct value when factorized."""
  if isinstance(values, Factorized):
    return vocab.lookup(values.keys)[values.inverse]
  return vocab.lookup(values)


class Unstorable(ValueError):
  """A dense value whose stored (transformed, float32) form is not finite: at ``row``
  of the chunk, dense column ``column``; ``value`` the raw one."""

  def __init__(self, row: int, column: int, value: float, transformed: bool):
    self.row, self.column, self.value, self.transformed = row, column, value, transformed
    super().__init__(self.message())

  def message(self) -> str:
    how = "standardized" if self.transformed else "as is"
    return (f"dense value {self.value!r} cannot be stored: {how}, it is beyond "
            "float32's range (3.4e38)")


@dataclasses.dataclass
class Encoder:
  """Everything that turns raw values into the store's ids and dense values.

  Attributes:
    sparse_names: the single-valued fields in schema order: the format's sparse
      columns, then the key:value fields that no row repeats (``single_lists``).
    single_lists: key:value fields stored single-valued.
    multi_names: multi-valued fields, in schema order.
    multi_len: their padded length L.
    vocabs: field name -> ``Vocab``.
    mean, std: float64 [D]: dense = (raw - mean) / std.
    has_dense, has_group: whether the store has the dense and group columns.
    constant: bool [D], dense columns constant in the training rows (see
      ``moments``): stored as 0 in every split; None: none is.
  """
  sparse_names: tuple[str, ...]
  single_lists: tuple[str, ...]
  multi_names: tuple[str, ...]
  multi_len: int
  vocabs: dict[str, Vocab]
  mean: np.ndarray
  std: np.ndarray
  has_dense: bool
  has_group: bool
  constant: np.ndarray | None = None

  def encode(self, chunk: Chunk, dense: bool = True
             ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(columns, truncated): the batch-keyed columns of ``chunk`` (labels only when it
    has them; dense only with ``dense``) and, per multi-valued field, how many rows had
    more than L values.

    Shapes: sparse int32 [n, F], multi int32 [n, G, L], multi_mask bool [n, G, L],
    dense float32 [n, D], group int32 [n], click/conversion float32 [n].
    """
    n = len(chunk)
    cols = {}
    if chunk.click is not None:
      cols[B.CLICK], cols[B.CONVERSION] = chunk.click, chunk.conversion
    if self.sparse_names:
      ids = np.zeros((n, len(self.sparse_names)), np.int32)
      for j, values in enumerate(chunk.sparse):
        ids[:, j] = _lookup(self.vocabs[self.sparse_names[j]], values)
      for j, name in enumerate(self.single_lists, start=len(chunk.sparse)):
        lrows, values, _ = chunk.lists[name]
        ids[lrows, j] = self.vocabs[name].lookup(values)
      cols[B.SPARSE] = ids
    truncated = {}
    if self.multi_names:
      L = self.multi_len
      multi = np.zeros((n, len(self.multi_names), L), np.int32)
      mask = np.zeros((n, len(self.multi_names), L), bool)
      for g, name in enumerate(self.multi_names):
        lrows, values, _ = chunk.lists[name]
        pos = positions_in_rows(lrows)
        fits = pos < L
        multi[lrows[fits], g, pos[fits]] = self.vocabs[name].lookup(values[fits])
        mask[lrows[fits], g, pos[fits]] = True
        truncated[name] = int(np.sum(np.bincount(lrows, minlength=n) > L))
      cols[B.MULTI], cols[B.MULTI_MASK] = multi, mask
    if self.has_dense and dense:
      values = compiled.standardize(chunk.dense, *self._transform())
      bad = np.argwhere(~np.isfinite(values))
      if len(bad):
        self._unstorable(chunk, *bad[0])
      cols[B.DENSE] = values
    if self.has_group:
      cols[B.GROUP] = chunk.group.astype(np.int32)
    return cols, truncated

  def write(self, chunk: Chunk, split: np.ndarray, where: np.ndarray,
            outs: Callable[[str], tuple[np.ndarray, ...]]) -> dict[str, int]:
    """``encode``'s columns written into a store: row i of ``chunk`` to row
    ``where[i]`` (int64 [n]) of ``outs(key)[split[i]]`` (split int8 [n]; rows of
    split -1 are skipped), where ``outs(key)`` are the train, val and test columns of
    a batch key. The dense values are standardized straight into their rows. Returns
    the rows truncated per multi-valued field."""
    cols, truncated = self.encode(chunk, dense=False)
    for key, values in cols.items():
      compiled.scatter_rows(values, split, where, outs(key))
    if self.has_dense:
      bad = compiled.standardize_rows(chunk.dense, *self._transform(), split, where,
                                      outs(B.DENSE))
      if bad is not None:
        self._unstorable(chunk, *bad)
    return truncated

  def _transform(self) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float64 [D] the dense values are standardized with: a constant
    column's (0, inf), which stores every finite value as 0."""
    zeroed = self.zeroed()
    return np.where(zeroed, 0.0, self.mean), np.where(zeroed, np.inf, self.std)

  def zeroed(self) -> np.ndarray:
    """bool [D]: the dense columns stored as 0 (constant in the training rows)."""
    if self.constant is None:
      return np.zeros(len(self.mean), bool)
    return np.asarray(self.constant, bool)

  def _unstorable(self, chunk: Chunk, row: int, column: int):
    transformed = bool(np.any(self.mean != 0) or np.any(self.std != 1))
    raise Unstorable(int(row), int(column), float(chunk.dense[row, column]), transformed)

  @classmethod
  def from_store(cls, path: str) -> tuple["Encoder", Format, dict]:
    """(encoder, format, meta) of the store at ``path``: the encoder it was written
    with (from its meta.json and vocabulary files) and the reader of its raw format,
    with the store's feature columns."""
    meta = store.read_meta(path)
    if meta.get("format") not in formats.FORMATS or "vocab" not in meta:
      raise ValueError(f"{path}: a store of format {meta.get('format')!r}, not built "
                       "from raw files by launch/preprocess.py: it has no vocabularies")
    options = meta.get("options", {})
    fmt = formats.get_format(meta["format"], sparse=options.get("sparse"),
                             dense=options.get("dense"), table=options.get("table"))
    schema = meta["schema"]
    names = [f["name"] for f in schema["sparse"]]
    multi = [f["name"] for f in schema["multi"]]
    vocabs = {}
    for name in names + multi:
      entry = meta["vocab"][name]
      if entry["kind"] == "hash":
        vocabs[name] = Vocab(buckets=entry["size"] - 1)
      elif "file" in entry:
        vocabs[name] = Vocab(keys=np.load(os.path.join(path, entry["file"]),
                                          allow_pickle=False))
      else:
        vocabs[name] = Vocab()
    stats = meta["dense_stats"]
    return cls(sparse_names=tuple(names),
               single_lists=tuple(n for n in names if n not in fmt.sparse_names),
               multi_names=tuple(multi),
               multi_len=max((f["max_len"] for f in schema["multi"]), default=1),
               vocabs=vocabs, mean=np.asarray(stats["mean"], np.float64),
               std=np.asarray(stats["std"], np.float64), has_dense=bool(schema["dense"]),
               has_group=B.GROUP in schema["extras"],
               constant=np.isin(schema["dense"], meta.get("dense_constant", []))), fmt, meta
