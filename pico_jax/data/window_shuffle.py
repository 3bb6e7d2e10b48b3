"""Grain's window shuffle, its window order computed for a whole window at once.

``grain.experimental.WindowShuffleIterDataset`` puts element ``i`` of a window of ``n``
at ``index_shuffle(i, max_index=n - 1, seed, rounds=4)``: a 4-round Simon cipher on a
block of at least 16 bits, applied again ("cycle walking") until the value falls in
[0, n). The sharded reader's windows hold a few chunks (``stream``: 4 of a 65,536-row
window), so each element walks about 2^16 / n cipher steps, one C++ call each holding
the GIL: 13 ms a window, 3.3 ms an element at n = 4 (measured on the development VM),
40% of the reader's time. ``window_order`` gives the same order from one vectorized
encryption of the whole block and pointer jumping along its cycles: 3.8 ms a window.

``WindowShuffleIterDataset`` here yields Grain's elements in Grain's order and keeps
Grain's ``get_state`` layout, so checkpoints written before or after resume with either
(``tests/test_window_shuffle.py`` runs both side by side).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import grain
import numpy as np

ROUNDS = 4  # Grain's window shuffle always uses 4 cipher rounds.
MIN_BLOCK_BITS = 16  # Grain's smallest cipher block, whatever n.
_MASK32 = 0xFFFFFFFF


def _round_keys(seed: int, rounds: int) -> list[int]:
  """``std::seed_seq{seed}.generate`` of ``rounds`` uint32 words: Grain's round keys.
  The algorithm is the C++ standard's ([rand.util.seedseq]), so it is the same for
  every compiler."""
  n, s, values = rounds, 1, [seed & _MASK32]
  out = [0x8B8B8B8B] * n
  t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
  p = (n - t) // 2
  q = p + t
  m = max(s + 1, n)

  def mix(x):
    return x ^ (x >> 27)

  for k in range(m):
    r1 = 1664525 * mix(out[k % n] ^ out[(k + p) % n] ^ out[(k - 1) % n]) & _MASK32
    r2 = r1 + (s if k == 0 else k % n + values[k - 1] if k <= s else k % n) & _MASK32
    out[(k + p) % n] = (out[(k + p) % n] + r1) & _MASK32
    out[(k + q) % n] = (out[(k + q) % n] + r2) & _MASK32
    out[k % n] = r2
  for k in range(m, m + n):
    r3 = 1566083941 * mix((out[k % n] + out[(k + p) % n] + out[(k - 1) % n]) & _MASK32)
    r3 &= _MASK32
    r4 = (r3 - k % n) & _MASK32
    out[(k + p) % n] ^= r3
    out[(k + q) % n] ^= r4
    out[k % n] = r4
  return out


def _simon_f(x: np.ndarray, word: int) -> np.ndarray:
  """Simon's round function on ``word``-bit values (int64 [...])."""
  mask = (1 << word) - 1

  def rotl(r):
    return ((x << r) | (x >> (word - r))) & mask

  return (rotl(1) & rotl(8)) ^ rotl(2)


def _encrypt(x: np.ndarray, keys: list[int], word: int) -> np.ndarray:
  """Grain's cipher of the blocks ``x`` (int64 [...] < 2^(2 word))."""
  mask = (1 << word) - 1
  # Over a whole block, the round function of every word value once, then gathers.
  table = _simon_f(np.arange(1 << word, dtype=np.int64), word) if x.size >> word else None

  def f(v):
    return _simon_f(v, word) if table is None else table[v]

  # Grain's cipher keeps the low bits of each word: (x >> word) & mask, not x >> word.
  left, right = (x >> word) & mask, x & mask
  for k1, k2 in zip(keys[::2], keys[1::2]):
    left = left ^ f(right) ^ (k1 & mask)
    right = right ^ f(left) ^ (k2 & mask)
  return (left << word) | right


def window_order(n: int, seed: int) -> np.ndarray:
  """int64 [n]: ``index_shuffle(i, max_index=n - 1, seed, rounds=4)`` for i < n, the
  order Grain's window shuffle gives a window of ``n`` elements."""
  if n <= 1:
    return np.zeros(n, np.int64)
  bits = math.ceil(math.log2(n - 1))  # Grain's block size, rounded up to even.
  bits = max(bits + bits % 2, MIN_BLOCK_BITS)
  keys = _round_keys(seed, ROUNDS)
  if (1 << bits) <= 64 * n:  # a few steps a walk: walk the n elements directly.
    order = _encrypt(np.arange(n, dtype=np.int64), keys, bits // 2)
    while (out := order >= n).any():
      order[out] = _encrypt(order[out], keys, bits // 2)
    return order
  # Long walks: the cipher of every block value, then pointer jumping: ``succ[x]`` is
  # a value on x's cycle with no value < n strictly between; each round doubles the
  # stretch until every start's ``succ`` is < n (log2 of the longest walk rounds).
  succ = _encrypt(np.arange(1 << bits, dtype=np.int64), keys, bits // 2)
  hit = succ < n
  while not hit[:n].all():
    succ, hit = np.where(hit, succ, succ[succ]), hit | hit[succ]
  return succ[:n]


class _WindowShuffleIterator(grain.DatasetIterator):
  """Grain's ``_WindowShuffleDatasetIterator`` with ``window_order``: windows of
  ``window_size`` parent elements, each yielded from the end of its shuffled list."""

  def __init__(self, parent: grain.DatasetIterator, window_size: int, seed: int):
    super().__init__(parent)
    self._window_size, self._seed = window_size, seed
    self._window_index = self._pos_in_window = 0
    self._window: list[Any] = []
    self._window_start = self._parent.get_state()
    self._parent_exhausted = False

  def _fill_and_shuffle_window(self) -> None:
    window = list(itertools.islice(self._parent, self._window_size))
    self._parent_exhausted = len(window) < self._window_size
    order = window_order(len(window), self._seed + self._window_index)
    self._window = [window[i] for i in order]

  def __next__(self):
    if not self._window:
      if self._parent_exhausted:
        raise StopIteration
      # A checkpoint restarts the window from its first element (set_state).
      self._window_start = self._parent.get_state()
      self._fill_and_shuffle_window()
      self._pos_in_window = 0
    if not self._window:
      raise StopIteration
    self._pos_in_window += 1
    element = self._window.pop()
    if not self._window:
      self._window_index += 1
    return element

  def get_state(self) -> dict[str, Any]:
    return {"parent_window_start_state": copy.deepcopy(self._window_start),
            "window_index": self._window_index, "pos_in_window": self._pos_in_window}

  def set_state(self, state: dict[str, Any]) -> None:
    self._window_start = copy.deepcopy(state["parent_window_start_state"])
    self._parent.set_state(self._window_start)
    self._window_index = state["window_index"]
    self._pos_in_window = state["pos_in_window"]
    self._parent_exhausted = False
    self._fill_and_shuffle_window()
    del self._window[len(self._window) - min(self._pos_in_window, len(self._window)):]


class WindowShuffleIterDataset(grain.IterDataset):
  """``grain.experimental.WindowShuffleIterDataset(parent, window_size=, seed=)``:
  the same elements, order and state, at a fraction of its cost per window."""

  def __init__(self, parent: grain.IterDataset, *, window_size: int, seed: int):
    super().__init__(parent)
    self._window_size, self._seed = window_size, seed

  def __iter__(self) -> _WindowShuffleIterator:
    return _WindowShuffleIterator(self._parent.__iter__(), self._window_size, self._seed)
