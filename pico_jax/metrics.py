"""Evaluation metrics over whole splits (never averages of per-batch values).

All functions take host numpy arrays holding every prediction of a split and compute
in float64.
"""

from __future__ import annotations

import numpy as np

from pico_jax import batch as B


def auc(labels, scores, weights=None) -> float:
  """Exact ROC AUC; tied scores count 1/2 per positive-negative pair (as sklearn).

  Args:
    labels: [N] in {0, 1}. scores: [N] float. weights: optional [N] >= 0.
  Returns:
    The (weighted) probability that a random positive outranks a random negative;
    NaN when either class has zero weight.
  """
  labels = np.asarray(labels, np.float64).ravel()
  scores = np.asarray(scores, np.float64).ravel()
  weights = np.ones_like(labels) if weights is None else np.asarray(weights, np.float64).ravel()
  if not labels.shape == scores.shape == weights.shape:
    raise ValueError(f"auc: labels {labels.shape}, scores {scores.shape} and weights "
                     f"{weights.shape} differ in shape")
  order = np.argsort(scores, kind="stable")
  s, y, w = scores[order], labels[order], weights[order]
  # Sum positive and negative weight per distinct score.
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
  pos = np.add.reduceat(w * y, starts)
  neg = np.add.reduceat(w * (1 - y), starts)
  total_pos, total_neg = pos.sum(), neg.sum()
  if total_pos <= 0 or total_neg <= 0:
    return float("nan")
  neg_below = np.cumsum(neg) - neg
  return float(np.sum(pos * (neg_below + 0.5 * neg)) / (total_pos * total_neg))


def logloss(labels, probs, weights=None, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps]."""
  labels = np.asarray(labels, np.float64)
  p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
  per_row = -(labels * np.log(p) + (1 - labels) * np.log1p(-p))
  return float(np.average(per_row, weights=weights))


def task_metrics(predictions, columns) -> dict[str, float]:
  """CTR, CVR (clicked rows only) and CTCVR metrics of one split.

  Args:
    predictions: dict with ``p_ctr``, ``p_cvr``, ``p_ctcvr`` [N] (and optionally
      ``tau``) for every row of the split, in row order.
    columns: the split's columns (``click``, ``conversion``; the synthetic
      ``p_ctr_true``/``p_cvr_true``/``segment`` are used when present).
  Returns:
    Flat dict of metric name -> float.
  """
  click = np.asarray(columns[B.CLICK], np.float64)
  conv = np.asarray(columns[B.CONVERSION], np.float64)
  clicked = click > 0
  out = {
      "ctr_auc": auc(click, predictions["p_ctr"]),
      "cvr_auc": auc(conv[clicked], predictions["p_cvr"][clicked]),
      "ctcvr_auc": auc(click * conv, predictions["p_ctcvr"]),
      "ctr_logloss": logloss(click, predictions["p_ctr"]),
      "cvr_logloss": logloss(conv[clicked], predictions["p_cvr"][clicked]),
      "ctcvr_logloss": logloss(click * conv, predictions["p_ctcvr"]),
  }
  if B.P_CTR_TRUE in columns:
    p_ctr, p_cvr = columns[B.P_CTR_TRUE], columns[B.P_CVR_TRUE]
    out["oracle_ctr_auc"] = auc(click, p_ctr)
    out["oracle_cvr_auc"] = auc(conv[clicked], p_cvr[clicked])
    out["oracle_ctcvr_auc"] = auc(click * conv, p_ctr * p_cvr)
  if "tau" in predictions:
    tau = np.asarray(predictions["tau"], np.float64)
    out["tau_mean"] = float(tau.mean())
    if B.SEGMENT in columns:
      seg = np.asarray(columns[B.SEGMENT])
      for s in np.unique(seg):
        out[f"tau_segment_{int(s)}"] = float(tau[seg == s].mean())
  return out
