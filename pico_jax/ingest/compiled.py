"""Compiled (Numba) loops of preprocessing and scoring: one pass where numpy takes
several and allocates between them.

Each kernel gives exactly the result of the numpy expression it replaces (named in
its docstring: the same IEEE operations in the same order for the floating-point
ones), so stores are bit-identical to those of the numpy code; ``tests/test_compiled.py``
checks each against that expression. All release the GIL, so the preprocessor's
worker threads run them side by side.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _count_newlines(buf):
  count = 0
  for i in range(len(buf)):
    count += buf[np.uint64(i)] == 10  # unsigned: no wraparound check, vectorised.
  return count


def count_newlines(data) -> int:
  """``bytes(data).count(b"\n")`` of a buffer (bytes, memoryview), in one pass: numpy's
  comparison and count first writes a boolean array the size of the buffer, then
  reads it again."""
  return int(_count_newlines(np.frombuffer(data, np.uint8)))


@numba.njit(nogil=True, cache=True, error_model="numpy")  # x / 0 is inf, as in numpy.
def _standardize_rows(x, mean, std, split, where, out0, out1, out2):
  # Chosen as in ``_scatter_rows``, spelled out: a shared inlined helper was slower.
  n, d = x.shape
  bad_row, bad_k = -1, 0
  for i in range(n):
    s = split[i]
    if s == 0:
      out = out0
    elif s == 1:
      out = out1
    elif s == 2:
      out = out2
    else:
      continue
    w = where[i]
    for k in range(d):
      v = np.float32((x[i, k] - mean[k]) / std[k])
      out[w, k] = v
      if bad_row < 0 and not np.isfinite(v):  # beyond float32's 3.4e38.
        bad_row, bad_k = i, k
  return bad_row, bad_k


def standardize_rows(x: np.ndarray, mean: np.ndarray, std: np.ndarray, split: np.ndarray,
                     where: np.ndarray, outs: tuple[np.ndarray, np.ndarray, np.ndarray]
                     ) -> tuple[int, int] | None:
  """``scatter_rows(standardize(x, mean, std), split, where, outs)`` in one pass, without
  the float32 [n, D] block in between: row i of ``x`` lands, standardized, at row
  ``where[i]`` of ``outs[split[i]]`` (float32 [N_s, D], memory maps included; rows
  with another ``split`` are skipped). Returns None, or the (row, column) of ``x``
  of the first value whose float32 result is not finite."""
  row, k = _standardize_rows(np.ascontiguousarray(x), mean.astype(np.float64),
                             std.astype(np.float64), split, where,
                             *(np.asarray(o) for o in outs))
  return None if row < 0 else (int(row), int(k))


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """float32 [n, D]: ``((x - mean) / std).astype(np.float32)`` of float64 ``x``
  [n, D], ``mean`` and ``std`` [D], without the float64 temporaries."""
  out = np.empty(x.shape, np.float32)
  standardize_rows(x, mean, std, np.zeros(len(x), np.int8), np.arange(len(x)),
                   (out, out, out))
  return out


@numba.njit(nogil=True, cache=True)
def _moments(x, train):
  n, d = x.shape
  total = np.zeros(d)
  count = 0
  for i in range(n):
    if train[i]:
      count += 1
      for k in range(d):
        total[k] += x[i, k]
  mean = total / count
  m2 = np.zeros(d)
  for i in range(n):
    if train[i]:
      for k in range(d):
        dev = x[i, k] - mean[k]
        m2[k] += dev * dev
  return count, mean, m2


def moments(x: np.ndarray, rows: np.ndarray):
  """(count, mean float64 [D], sum of squared deviations float64 [D]) of the ``rows``
  (bool [n]) of ``x`` float64 [n, D], or None when no row is selected: ``y =
  x[rows]; y.mean(0)`` and ``np.square(y - mean).sum(0)``, whose axis-0 sums add
  the rows in order."""
  if not rows.any():
    return None
  if x.shape[1] == 1:  # numpy sums a contiguous axis pairwise, not in order.
    y = x[rows]
    mean = y.mean(0)
    return len(y), mean, np.square(y - mean).sum(0)
  return _moments(np.ascontiguousarray(x), rows)


@numba.njit(nogil=True, cache=True)
def _scatter_rows(src, split, where, out0, out1, out2):
  n, d = src.shape
  for i in range(n):
    s = split[i]
    if s == 0:
      out = out0
    elif s == 1:
      out = out1
    elif s == 2:
      out = out2
    else:
      continue
    w = where[i]
    for k in range(d):
      out[w, k] = src[i, k]


def scatter_rows(src: np.ndarray, split: np.ndarray, where: np.ndarray,
                 outs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
  """``outs[split[i]][where[i]] = src[i]`` for every row i with ``split[i]`` in
  {0, 1, 2} (others, e.g. -1 for a dropped row, are skipped).

  Args:
    src: [n, ...] rows of any dtype.
    split: int8 [n].
    where: int64 [n], the row's index in its split.
    outs: three arrays [N_s, ...] of ``src``'s dtype and row shape (memory maps
      included).
  """
  width = int(np.prod(src.shape[1:], dtype=np.int64))
  # Views (writes reach the maps), one row of ``width`` values per store row.
  flat = lambda a: np.asarray(a).reshape(len(a), width)
  _scatter_rows(flat(np.ascontiguousarray(src)), split, where, *(flat(o) for o in outs))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: multiplicative hashing.


@numba.njit(nogil=True, cache=True)
def _factorize(values, rows):
  n = len(values)
  bits = 1
  while (1 << bits) < 2 * n:  # a table at most half full: short probes.
    bits += 1
  mask = (1 << bits) - 1
  shift = np.uint64(64 - bits)
  slots = np.full(1 << bits, -1, np.int32)
  seen = np.empty(n, np.int64)  # distinct values in order of first appearance.
  inverse = np.empty(n, np.int32)
  counts = np.zeros(n, np.int64)
  k = 0
  for i in range(n):
    v = values[i]
    h = np.int64((np.uint64(v) * _GOLDEN) >> shift)
    while True:
      s = slots[h]
      if s < 0:
        s = slots[h] = k
        seen[k] = v
        k += 1
        break
      if seen[s] == v:
        break
      h = (h + 1) & mask
    inverse[i] = s
    if rows[i]:
      counts[s] += 1
  return seen[:k], inverse, counts[:k]


@numba.njit(nogil=True, cache=True)
def _factorize_range(values, rows, low, size):
  present = np.zeros(size, np.int32)
  counts = np.zeros(size, np.int64)
  for i in range(len(values)):
    v = np.uint64(values[i] - low)  # unsigned indices: no wraparound checks.
    present[v] = 1
    if rows[i]:
      counts[v] += 1
  rank = np.empty(size, np.int32)
  k = 0
  for v in range(size):
    rank[np.uint64(v)] = k
    k += present[np.uint64(v)]
  keys = np.empty(k, np.int64)
  kept = np.empty(k, np.int64)
  for v in range(size):
    if present[np.uint64(v)]:
      keys[rank[np.uint64(v)]] = v + low
      kept[rank[np.uint64(v)]] = counts[np.uint64(v)]
  inverse = np.empty(len(values), np.int32)
  for i in range(len(values)):
    inverse[i] = rank[np.uint64(values[i] - low)]
  return keys, inverse, kept


def factorize_int64(values: np.ndarray, rows: np.ndarray):
  """(keys, inverse, counts) of an int64 column: its sorted distinct values (int64
  [K]), the index of each row's value among them (int32 [n]: ``keys[inverse]`` is
  ``values``) and how often each occurs in the ``rows`` (bool [n]) -- ``np.unique(
  values, return_inverse=True)`` and a ``np.bincount`` of the selected inverse.
  Values within a range of at most 2n are counted in a table indexed by value (most
  categorical ids: a few distinct values, or ids numbered densely); others go through
  a hash table and numpy's sort of the distinct values only."""
  values = np.ascontiguousarray(values, np.int64)
  if len(values):
    low, high = int(values.min()), int(values.max())
    if high - low < 2 * len(values):
      return _factorize_range(values, rows, low, high - low + 1)
  seen, inverse, counts = _factorize(values, rows)
  order = np.argsort(seen)
  rank = np.empty(len(order), np.int32)
  rank[order] = np.arange(len(order), dtype=np.int32)
  return seen[order], rank[inverse], counts[order]


@numba.njit(nogil=True, cache=True)
def _merge_two(keys_a, counts_a, keys_b, counts_b):
  keys = np.empty(len(keys_a) + len(keys_b), np.int64)
  counts = np.empty(len(keys), np.int64)
  i = j = m = 0
  while i < len(keys_a) and j < len(keys_b):
    a, b = keys_a[i], keys_b[j]
    if a <= b:
      keys[m], counts[m] = a, counts_a[i]
      i += 1
      if a == b:
        counts[m] += counts_b[j]
        j += 1
    else:
      keys[m], counts[m] = b, counts_b[j]
      j += 1
    m += 1
  for i in range(i, len(keys_a)):
    keys[m], counts[m] = keys_a[i], counts_a[i]
    m += 1
  for j in range(j, len(keys_b)):
    keys[m], counts[m] = keys_b[j], counts_b[j]
    m += 1
  return keys[:m], counts[:m]


def merge_counts(keys: list[np.ndarray], counts: list[np.ndarray]):
  """(keys int64 [K], counts int64 [K]): the union of sorted distinct int64 ``keys``
  (one array per piece) with the ``counts`` (int64) of a key added over the pieces --
  what sorting the concatenated pieces and summing the counts of equal keys gives
  (``vocab.Counter``), merged two at a time in linear passes."""
  pieces = [(np.ascontiguousarray(k, np.int64), np.ascontiguousarray(c, np.int64))
            for k, c in zip(keys, counts, strict=True)]
  if not pieces:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  while len(pieces) > 1:
    pairs = zip(pieces[0::2], pieces[1::2])
    pieces = [_merge_two(*a, *b) for a, b in pairs] + pieces[len(pieces) // 2 * 2:]
  return pieces[0]


@numba.njit(nogil=True, cache=True)
def _split_positions(split_of, rank_of, keep, position, rows):
  n = len(split_of)
  by_rank = np.empty(n, np.int64)
  for s in range(3):
    by_rank[:] = -1
    for i in range(n):
      if keep[i] and split_of[i] == s:
        by_rank[rank_of[i]] = i
    count = 0
    for r in range(n):
      i = by_rank[r]
      if i >= 0:
        position[i] = count
        count += 1
    rows[s] = count


def split_positions(split_of: np.ndarray, rank_of: np.ndarray, keep: np.ndarray):
  """(position int64 [N], rows int64 [3]): the index of every kept row in its split
  when a split's kept rows are ordered by ``rank_of``, and each split's kept rows.
  ``split_of`` int8 [N] (0, 1, 2), ``rank_of`` int64 [N] (distinct within a split, in
  [0, N)), ``keep`` bool [N]; the positions of rows not kept are left unset. Per split
  s, numpy's ``members = np.flatnonzero((split_of == s) & keep)`` sorted by
  ``rank_of[members]``, then ``position[members] = np.arange(len(members))``."""
  position = np.empty(len(split_of), np.int64)
  rows = np.zeros(3, np.int64)
  _split_positions(split_of, rank_of, keep, position, rows)
  return position, rows
