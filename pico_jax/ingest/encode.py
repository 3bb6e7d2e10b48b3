"""Parsed rows -> checked model inputs: vocabularies, the dense transform, the layout.

``Encoder.encode`` is the one function that turns a parsed block (a
``format_contract.Chunk``) into the model's columns and checks what they can hold,
naming file, line and column. Preprocessing builds the encoder from the training
statistics and writes its output into the store (pass 2); scoring
(``pico_jax.predict``) loads the same encoder from the store (``Encoder.from_store``)
and feeds its output to the model. The encoder is plain data (vocabularies, dense
statistics, column roles), so it can travel without the store.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from pico_jax import batch as B
from pico_jax.ingest import compiled, formats
from pico_jax.data import store
from pico_jax.data.errors import DataError
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


_INT32 = np.iinfo(np.int32)


def column_roles(fmt: Format) -> dict:
  """The ``Encoder`` fields that say where its inputs sit in ``fmt``'s raw files: the
  dense features, their columns and the group key."""
  return {"dense_names": fmt.dense_names,
          "dense_columns": tuple(fmt.column_number(n) for n in fmt.dense_names),
          "group_name": fmt.group_name}


@dataclasses.dataclass(frozen=True)
class StoreRows:
  """Where the rows of a block go in a store: row i to row ``where[i]`` (int64 [n]) of
  split ``split[i]`` (int8 [n]; -1: not stored) of ``columns(key)``, the train, val
  and test arrays of a batch key."""
  split: np.ndarray
  where: np.ndarray
  columns: Callable[[str], tuple[np.ndarray, ...]]


@dataclasses.dataclass
class Encoder:
  """Everything that turns parsed rows into model inputs, as plain data: the
  vocabularies (tables or hash buckets), the dense statistics and the column roles.

  Attributes:
    sparse_names: the single-valued fields in schema order: the format's sparse
      columns, then the key:value fields that no row repeats (``single_lists``).
    single_lists: key:value fields stored single-valued.
    multi_names: multi-valued fields, in schema order.
    multi_len: their padded length L.
    vocabs: field name -> ``Vocab``.
    mean, std: float64 [D]: dense = (raw - mean) / std.
    dense_names: the D dense features (none: the inputs have no dense column).
    dense_columns: per dense feature, its 1-based column in a raw file, or None where
      columns have no fixed place (for messages).
    group_name: the group key's column, or None when there is no group column.
    constant: bool [D], dense columns constant in the training rows (see
      ``moments``): stored as 0 in every split; None: none is.
    fill: float64 [D], the raw value a missing dense value (NaN) takes: the training
      rows' mean; None: no value may be missing.
  """
  sparse_names: tuple[str, ...]
  single_lists: tuple[str, ...]
  multi_names: tuple[str, ...]
  multi_len: int
  vocabs: dict[str, Vocab]
  mean: np.ndarray
  std: np.ndarray
  dense_names: tuple[str, ...] = ()
  dense_columns: tuple[int | None, ...] = ()
  group_name: str | None = None
  constant: np.ndarray | None = None
  fill: np.ndarray | None = None

  def encode(self, chunk: Chunk, path: str, into: StoreRows | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The rows of ``chunk``, parsed from file ``path``, as checked model inputs:
    (columns, truncated). ``columns`` are batch-keyed (labels only when the rows have
    them); ``truncated``, per multi-valued field, counts the rows with more than L
    values. With ``into``, the columns are written into a store's rows instead (the
    dense values standardized straight into them) and ``columns`` is empty.

    Shapes: sparse int32 [n, F], multi int32 [n, G, L], multi_mask bool [n, G, L],
    dense float32 [n, D], group int32 [n], click/conversion float32 [n].

    Raises DataError naming the file, line and column of the first group key beyond
    int32 or dense value beyond float32 (as stored: standardized, or as is).
    """
    n = len(chunk)
    cols = {}
    if chunk.click is not None:
      cols[B.CLICK], cols[B.CONVERSION] = chunk.click, chunk.conversion
    if self.sparse_names:
      ids = np.zeros((n, len(self.sparse_names)), np.int32)
      for j, values in enumerate(chunk.sparse):
        ids[:, j] = _lookup(self.vocabs[self.sparse_names[j]], values)
        if j in chunk.missing:
          ids[chunk.missing[j], j] = 0
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
    if self.group_name is not None:
      cols[B.GROUP] = self._group(chunk, path)
    dense = chunk.dense
    if self.fill is not None and dense is not None and np.isnan(dense).any():
      dense = np.where(np.isnan(dense), self.fill, dense)
    if into is None:
      if self.dense_names:
        values = compiled.standardize(dense, *self._transform())
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
          self._unstorable(chunk, path, *bad[0])
        cols[B.DENSE] = values
      return cols, truncated
    for key, values in cols.items():
      compiled.scatter_rows(values, into.split, into.where, into.columns(key))
    if self.dense_names:
      bad = compiled.standardize_rows(dense, *self._transform(), into.split,
                                      into.where, into.columns(B.DENSE))
      if bad is not None:
        self._unstorable(chunk, path, *bad)
    return {}, truncated

  def _group(self, chunk: Chunk, path: str) -> np.ndarray:
    """The group keys as the store's int32 column (DataError where one does not fit)."""
    out = np.flatnonzero((chunk.group < _INT32.min) | (chunk.group > _INT32.max))
    if len(out):
      raise DataError(f"group key {int(chunk.group[out[0]])} does not fit int32",
                      path=path, line=int(chunk.lines[out[0]]), column_name=self.group_name)
    return chunk.group.astype(np.int32)

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

  def _unstorable(self, chunk: Chunk, path: str, row: int, k: int):
    how = ("standardized" if np.any(self.mean != 0) or np.any(self.std != 1)
           else "as is")
    raise DataError(f"dense value {float(chunk.dense[row, k])!r} cannot be stored: "
                    f"{how}, it is beyond float32's range (3.4e38)", path=path,
                    line=int(chunk.lines[row]), column=self.dense_columns[k],
                    column_name=self.dense_names[k])

  @classmethod
  def from_store(cls, path: str) -> tuple["Encoder", Format, dict]:
    """(encoder, format, meta) of the store at ``path``: the encoder it was written
    with (from its meta.json and vocabulary files) and the reader of its raw format,
    with the store's feature columns. meta.json and the vocabulary files are verified
    against the store's checksums first."""
    meta = store.verified_meta(path)
    if meta.get("format") not in formats.FORMATS or "vocab" not in meta:
      raise DataError(f"a store of format {meta.get('format')!r}, not built from raw "
                      "files by launch/preprocess.py: it has no vocabularies", path=path)
    options = meta.get("options", {})
    fmt = formats.from_options(meta["format"], options)
    schema = meta["schema"]
    names = [f["name"] for f in schema["sparse"]]
    multi = [f["name"] for f in schema["multi"]]
    vocabs = {}
    for name in names + multi:
      entry = meta["vocab"][name]
      if entry["kind"] == "hash":
        vocabs[name] = Vocab(buckets=entry["size"] - 1)
      elif "file" in entry:
        vocabs[name] = Vocab(keys=store.load_array(path, meta, entry["file"]))
      else:
        vocabs[name] = Vocab()
    stats = meta["dense_stats"]
    return cls(sparse_names=tuple(names),
               single_lists=tuple(n for n in names if n not in fmt.sparse_names),
               multi_names=tuple(multi),
               multi_len=max((f["max_len"] for f in schema["multi"]), default=1),
               vocabs=vocabs, mean=np.asarray(stats["mean"], np.float64),
               std=np.asarray(stats["std"], np.float64),
               constant=np.isin(schema["dense"], meta.get("dense_constant", [])),
               fill=None if stats.get("fill") is None else np.asarray(stats["fill"]),
               **column_roles(fmt)), fmt, meta
