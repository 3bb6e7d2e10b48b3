"""The simplest transfer baselines, as evaluation-time scorings of a trained model.

Each re-scores the CVR of a model's predictions without training anything:

* ``ctr_as_cvr``: CVR scored by the model's own pCTR (what a practitioner tries first
  when conversions are too scarce to learn from).
* ``blend``: logit pCVR' = logit pCVR + w (logit pCTR - c), with w fitted on the fit
  split's (validation's) realised conversions of the clicked rows by log-loss
  (``fit_blend_weight``, w in [0, 5]) and c the fit split's mean logit pCTR over those rows, so the
  blend starts calibrated where w = 0 and the test split never informs w.

CTCVR is then p_ctr * pCVR' (ESMM's factorisation), so every metric of
``pico_jax.metrics.task_metrics`` applies. ``SCORINGS`` names them; the metrics of
scoring ``s`` are reported as ``<s>/<metric>`` (``scoring_metrics``).
"""

from __future__ import annotations

import math

import numpy as np

from pico_jax import batch as B

SCORINGS = ("ctr_as_cvr", "blend")
BLEND_WEIGHT = "blend/weight"  # the fitted w, reported beside the blend's metrics.
_GOLDEN = (math.sqrt(5) - 1) / 2
_EPS = 1e-7


def logit(p) -> np.ndarray:
  """float [N] probabilities -> float64 [N] logits, clipped at 1e-7 from 0 and 1."""
  p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
  return np.log(p) - np.log1p(-p)


def blend_logloss(w: float, cvr_logit, ctr_logit, labels) -> float:
  """Mean log-loss of sigmoid(cvr_logit + w ctr_logit) against labels (float [N] each):
  convex in w (a logistic loss of a linear function of w)."""
  z = np.asarray(cvr_logit, np.float64) + w * np.asarray(ctr_logit, np.float64)
  y = np.asarray(labels, np.float64)
  return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_blend_weight(cvr_logit, ctr_logit, labels, bounds=(0.0, 5.0),
                     iterations: int = 90) -> float:
  """The w in ``bounds`` minimising ``blend_logloss``: golden-section search, exact for
  a convex function of one variable up to (high - low) * 0.618^iterations. w >= 0 by
  default: the blend adds the click signal (w = 0 is the model itself), it never
  subtracts it.

  Args:
    cvr_logit, ctr_logit: float [N] logits of the rows the fit uses (the clicked rows of
      the validation split; centre ``ctr_logit`` first). labels: float [N] in {0, 1},
      the realised conversions.
  Returns:
    w as a float; 0.0 when the labels hold a single class (log-loss then rewards any
    shift of the logits, not a ranking).
  """
  y = np.asarray(labels, np.float64)
  if not len(y) or y.min() == y.max():
    return 0.0
  loss = lambda w: blend_logloss(w, cvr_logit, ctr_logit, y)
  low, high = bounds
  a, b = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
  fa, fb = loss(a), loss(b)
  for _ in range(iterations):
    if fa <= fb:
      high, b, fb = b, a, fa
      a = high - _GOLDEN * (high - low)
      fa = loss(a)
    else:
      low, a, fa = a, b, fb
      b = low + _GOLDEN * (high - low)
      fb = loss(b)
  return float((low + high) / 2)


def _rescored(predictions, p_cvr) -> dict[str, np.ndarray]:
  p_ctr = np.asarray(predictions["p_ctr"], np.float64)
  return {"p_ctr": p_ctr, "p_cvr": p_cvr, "p_ctcvr": p_ctr * p_cvr}


def rescore(fit_predictions, fit_columns, predictions) -> tuple[dict, float]:
  """({scoring: predictions}, w): every scoring of ``predictions`` (dicts of ``p_ctr``,
  ``p_cvr`` float [N]), the blend fitted on ``fit_predictions`` / ``fit_columns``
  (``click``, ``conversion`` [M]) only."""
  clicked = np.asarray(fit_columns[B.CLICK]) > 0
  fit_ctr = logit(fit_predictions["p_ctr"])[clicked]
  centre = float(fit_ctr.mean()) if len(fit_ctr) else 0.0
  w = fit_blend_weight(logit(fit_predictions["p_cvr"])[clicked], fit_ctr - centre,
                       np.asarray(fit_columns[B.CONVERSION])[clicked])
  ctr_logit = logit(predictions["p_ctr"])
  blend = 1 / (1 + np.exp(-(logit(predictions["p_cvr"]) + w * (ctr_logit - centre))))
  return {"ctr_as_cvr": _rescored(predictions, np.asarray(predictions["p_ctr"], np.float64)),
          "blend": _rescored(predictions, blend)}, w


def scoring_metrics(fit_predictions, fit_columns, predictions, columns,
                    info: dict | None = None) -> dict[str, float]:
  """``<scoring>/<metric>`` for every scoring and every ``task_metrics`` metric of the
  scored split, and ``blend/weight`` (the fitted w)."""
  from pico_jax.metrics import task_metrics
  scored, w = rescore(fit_predictions, fit_columns, predictions)
  out = {BLEND_WEIGHT: w}
  for name, p in scored.items():
    out.update({f"{name}/{k}": v for k, v in task_metrics(p, columns, info).items()})
  return out


def parse_scored(spec: str) -> tuple[str, str, str]:
  """``NAME=VARIANT:SCORING`` -> (NAME, VARIANT, SCORING), e.g. ``blend=none:blend``."""
  head, sep, scoring = spec.rpartition(":")
  name, eq, variant = head.partition("=")
  if not (sep and eq and name and variant) or scoring not in SCORINGS:
    raise ValueError(f"--scored={spec!r}: expected NAME=VARIANT:SCORING with SCORING one "
                     f"of {list(SCORINGS)}")
  return name, variant, scoring


def scored_runs(runs: list[dict], name: str, variant: str, scoring: str) -> list[dict]:
  """Adds a variant ``name`` at every grid condition: a copy of each run of ``variant``
  whose metrics are those of ``scoring`` (its ``<scoring>/<metric>`` entries, recorded
  with ``config.train.baseline_scorings``). The copies carry no ``val_`` metrics: a
  selection among variants never sees a scoring fitted on the eval split. Returns
  ``runs`` with the copies appended; raises ValueError when a run of ``variant`` holds
  no such metrics."""
  prefix, added = f"{scoring}/", []
  for r in runs:
    parts = r["point"].split(" ")
    if parts[-1] != variant:
      continue
    scored = {k[len(prefix):]: v for k, v in r.items() if k.startswith(prefix)}
    if not scored:
      raise ValueError(f"--scored={name}={variant}:{scoring}: run {r['point']!r} seed "
                       f"{r['seed']} has no {prefix}* metrics; train it with "
                       "config.train.baseline_scorings=True")
    added.append({**{k: v for k, v in r.items() if not k.startswith("val_")}, **scored,
                  "point": " ".join(parts[:-1] + [name])})
  return runs + added
