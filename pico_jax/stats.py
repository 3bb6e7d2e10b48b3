"""Paired 95% intervals over seeds and oracle gaps for the experiment tables.

The interval of a paired difference d_1..d_n (one per seed: a run minus the baseline
run of the same seed, hence the same synthetic data and initialisation seed) is the
Student t interval mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n), sd with ddof = 1. It
treats the seeds as the only source of variation: test rows are not resampled.
"""

from __future__ import annotations

import math

# t_{0.975, df} for df = 1..30 (two-sided 95%), to 6 decimals.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
         2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
         2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
         2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_Z975 = 1.959964


def t_critical_95(df: int) -> float:
  """The two-sided 95% Student t critical value t_{0.975, df} (df >= 1).

  A table to df = 30; above it the Cornish-Fisher expansion in 1/df, within 1e-4.
  """
  if df < 1:
    raise ValueError(f"df={df}: need at least one degree of freedom")
  if df <= len(_T975):
    return _T975[df - 1]
  z = _Z975
  return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def _moments(deltas) -> tuple[int, float, float]:
  """(n, mean, sample SD) of ``deltas`` with NaN values dropped (mean NaN when n = 0,
  SD NaN when n < 2)."""
  values = [float(d) for d in deltas if not math.isnan(float(d))]
  n = len(values)
  mean = sum(values) / n if n else math.nan
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
  return n, mean, sd


def paired_interval(deltas) -> tuple[float, float, float]:
  """(mean, low, high) of the 95% paired t interval of ``deltas``; NaN values are
  dropped, and the bounds are NaN with fewer than two values."""
  n, mean, sd = _moments(deltas)
  if n < 2:
    return mean, math.nan, math.nan
  half = t_critical_95(n - 1) * sd / math.sqrt(n)
  return mean, mean - half, mean + half


def add_oracle_gaps(runs: list[dict]) -> list[dict]:
  """Adds ``gap_<task>_auc`` = oracle_<task>_auc - <task>_auc to every run that has
  both (synthetic data): how far each model is from the true probabilities."""
  for r in runs:
    for task in ("ctr", "cvr", "ctcvr"):
      if f"oracle_{task}_auc" in r and f"{task}_auc" in r:
        r[f"gap_{task}_auc"] = r[f"oracle_{task}_auc"] - r[f"{task}_auc"]
  return runs


def add_intervals(summary: list[dict], runs: list[dict], group_key: str = "point",
                  prefix: str = "delta_") -> list[dict]:
  """Adds ``<m>_ci_low`` and ``<m>_ci_high`` to each summary row for every metric m of
  its runs whose name starts with ``prefix``: the 95% paired t interval over seeds."""
  for row in summary:
    members = [r for r in runs if r[group_key] == row[group_key]]
    names = sorted({m for r in members for m in r if m.startswith(prefix)})
    for m in names:
      _, low, high = paired_interval([r[m] for r in members if m in r])
      row[f"{m}_ci_low"], row[f"{m}_ci_high"] = low, high
  return summary


def format_interval(mean: float, low: float, high: float, digits: int = 4) -> str:
  """``+0.0123 [-0.0010, +0.0256]``, with ``*`` when the interval excludes zero."""
  text = f"{mean:+.{digits}f}"
  if math.isnan(low):
    return text
  significant = low > 0 or high < 0
  return f"{text} [{low:+.{digits}f}, {high:+.{digits}f}]" + ("*" if significant else "")


def _betacf(a: float, b: float, x: float) -> float:
  """The continued fraction of the regularised incomplete beta (modified Lentz)."""
  tiny, c, d = 1e-300, 1.0, 1 - (a + b) * x / (a + 1)
  d = 1 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 300):
    for numer in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                  -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
      d = 1 + numer * d
      d = 1 / (d if abs(d) > tiny else tiny)
      c = 1 + numer / c
      c = c if abs(c) > tiny else tiny
      h *= d * c
    if abs(d * c - 1) < 1e-15:
      break
  return h


def _betainc(a: float, b: float, x: float) -> float:
  """The regularised incomplete beta I_x(a, b), x in [0, 1]."""
  if x <= 0 or x >= 1:
    return 0.0 if x <= 0 else 1.0
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
               + b * math.log1p(-x))
  if x < (a + 1) / (a + b + 2):
    return math.exp(log_front) * _betacf(a, b, x) / a
  return 1 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def t_sf(t: float, df: float) -> float:
  """P(T > t) for Student's t with ``df`` degrees of freedom."""
  tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
  return tail if t >= 0 else 1 - tail


def t_quantile(q: float, df: float) -> float:
  """The ``q`` quantile of Student's t (bisection on ``t_sf``; q in (0, 1))."""
  low, high = -1e3, 1e3
  for _ in range(200):
    mid = (low + high) / 2
    if 1 - t_sf(mid, df) < q:
      low = mid
    else:
      high = mid
  return (low + high) / 2


def paired_t_pvalue(deltas) -> float:
  """Two-sided p of the paired t test that mean(deltas) = 0 (NaN values dropped; NaN
  with fewer than two values; 0 or 1 when every delta is equal)."""
  n, mean, sd = _moments(deltas)
  if n < 2:
    return math.nan
  if sd == 0:
    return 1.0 if mean == 0 else 0.0
  return min(1.0, 2 * t_sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def min_detectable_effect(deltas, power: float = 0.8) -> float:
  """The smallest true mean difference a two-sided 5% paired t test of this many seeds
  detects with probability ``power``, at the observed paired SD:
  (t_{0.975, n-1} + t_{power, n-1}) sd / sqrt(n). NaN with fewer than two values."""
  n, _, sd = _moments(deltas)
  if n < 2:
    return math.nan
  return (t_critical_95(n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def holm(pvalues) -> list[float]:
  """Holm's step-down adjustment of a family of p-values (family-wise error control):
  the i-th smallest of m becomes max_{j <= i} min(1, (m - j + 1) p_(j)). NaN values are
  not members of the family and stay NaN; the order of the input is kept."""
  p = [float(v) for v in pvalues]
  members = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
  m = len(members)
  out = [math.nan] * len(p)
  running = 0.0
  for rank, (v, i) in enumerate(members):
    running = max(running, min(1.0, (m - rank) * v))
    out[i] = running
  return out
