"""Mean and population std of the dense columns, from the training rows, stably.

Each block gives (count, mean, sum of squared deviations) of its training rows
(``block_moments``: two passes, the mean first); ``Moments`` merges blocks in file
order (Chan et al.'s pairwise update). Both are float64 and overflow for no finite
input: a column whose block holds a magnitude at or above ``_BIG`` (2**480, where
n squared deviations could pass float64's 2**1024) is accumulated in units of
``_SCALE`` (2**600, a power of two: the scaled sums round as the unscaled ones would
have, but for underflow), and one whose magnitudes all stay below ``_SMALL``
(2**-400, whose squares lose digits to underflow) in units of 1 / ``_SCALE``. Other
columns are computed as they always were, so stores of ordinary data keep their bits.

A column is constant when its std is at most ``CONSTANT_RTOL`` of its mean's
magnitude: float64 rounding of the running mean alone leaves a spread of that order
(a column of 0.1 repeated has std 1.4e-17, not 0), and standardising by it would
blow rounding noise up to arbitrary values. A constant column gets std 1 and is
stored as 0 (``encode.Encoder``).
"""

from __future__ import annotations

import numpy as np

from pico_jax.ingest import compiled

_BIG = 2.0 ** 480
_SMALL = 2.0 ** -400
_SCALE = 2.0 ** 600
CONSTANT_RTOL = 2.0 ** -32  # about 2.3e-10 of the mean's magnitude.


def block_moments(x: np.ndarray, rows: np.ndarray):
  """(count, mean float64 [D], squared deviations float64 [D], unit float64 [D]) of
  the ``rows`` (bool [n]) of ``x`` float64 [n, D] (finite, or NaN where a value is
  missing), or None when no row is selected: mean and deviations are those of
  ``x / unit`` (a power of two: 1 but for columns of huge or tiny magnitudes). With a
  missing value, each column counts its own values: count is then int64 [D]."""
  if not rows.any():
    return None
  with np.errstate(all="ignore"):  # the sum is a test for NaN: inf - inf is one too.
    suspect = np.isnan(np.sum(x))
  if suspect and np.isnan(x).any():
    missing = np.isnan(x)
    parts = [block_moments(np.where(missing[:, k:k + 1], 0.0, x[:, k:k + 1]),
                           rows & ~missing[:, k]) for k in range(x.shape[1])]
    none = (0, np.zeros(1), np.zeros(1), np.ones(1))
    parts = [none if p is None else p for p in parts]
    return (np.array([p[0] for p in parts], np.int64),
            *(np.concatenate([p[i] for p in parts]) for i in (1, 2, 3)))
  unit = np.ones(x.shape[1])
  if x.size:
    top = np.max(np.abs(x[rows]), axis=0)
    unit = np.where(top >= _BIG, _SCALE, np.where((top > 0) & (top < _SMALL),
                                                  1 / _SCALE, 1.0))
  if (unit != 1).any():
    x = x / unit  # powers of two: exact.
  return (*compiled.moments(x, rows), unit)


class Moments:
  """The merged moments of the training rows of every block, in file order."""

  def __init__(self, dim: int):
    self.n, self.mean, self.m2 = 0, np.zeros(dim), np.zeros(dim)
    self.unit = np.ones(dim)

  def add(self, nb: int, mb: np.ndarray, m2b: np.ndarray, unit: np.ndarray):
    """Merges a block of ``nb`` rows with mean ``mb`` and squared deviations ``m2b``
    (of ``x / unit``)."""
    if (unit != self.unit).any():  # one unit per column: the larger one.
      to = np.where(np.asarray(self.n) > 0, np.maximum(unit, self.unit), unit)
      self.mean, self.m2 = _rescale(self.mean, self.m2, self.unit / to)
      mb, m2b = _rescale(mb, m2b, unit / to)
      self.unit = to
    delta, total = mb - self.mean, self.n + nb
    divisor = np.maximum(total, 1)  # a column without values yet stays at 0.
    self.mean = self.mean + delta * nb / divisor
    self.m2 = self.m2 + m2b + delta ** 2 * self.n * nb / divisor
    self.n = total

  def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean float64 [D], std float64 [D], constant bool [D]); std is 1 where the
    column is constant."""
    std = np.sqrt(self.m2 / np.maximum(self.n, 1))
    constant = std <= CONSTANT_RTOL * np.abs(self.mean)
    return self.mean * self.unit, np.where(constant, 1.0, std * self.unit), constant


def _rescale(mean, m2, factor):
  """(mean, m2) multiplied into other units (``factor``: a power of two, 1 mostly)."""
  return mean * factor, m2 * factor * factor
