"""Compiled (Numba) loops of preprocessing and scoring: one pass where numpy takes
several and allocates between them.

Each kernel gives exactly the result of the numpy expression it replaces (named in
its docstring: the same IEEE operations in the same order for the floating-point
ones), so stores are bit-identical to those of the numpy code; ``tests/test_kernels.py``
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
  """``bytes(data).count(b"\n")`` of a buffer (bytes, memoryview), twice as fast
  as numpy's comparison and count."""
  return int(_count_newlines(np.frombuffer(data, np.uint8)))


@numba.njit(nogil=True, cache=True, error_model="numpy")  # x / 0 is inf, as in numpy.
def _standardize(x, mean, std, out):
  n, d = x.shape
  for i in range(n):
    for k in range(d):
      out[i, k] = (x[i, k] - mean[k]) / std[k]


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """float32 [n, D]: ``((x - mean) / std).astype(np.float32)`` of float64 ``x``
  [n, D], ``mean`` and ``std`` [D], without the float64 temporaries."""
  out = np.empty(x.shape, np.float32)
  _standardize(np.ascontiguousarray(x), mean.astype(np.float64),
               std.astype(np.float64), out)
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
