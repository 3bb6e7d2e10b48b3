"""Evaluation metrics over whole splits (never averages of per-batch values).

All functions take host numpy arrays holding every prediction of a split (gathered
across processes by ``pico_jax.train.trainer.Trainer.predict``) and compute in float64.

Which rows each task is scored on:

- CTR: all rows (click).
- CVR: clicked rows only (conversion given click), the post-click space the CVR tower
  models. When the dataset's two tasks are independent (``info["task_relation"] ==
  "independent"``, e.g. Census income / never-married, where the "conversion" does not
  imply the "click"), ``cvr_auc_all_rows`` scores the CVR tower on all rows as well.
- CTCVR: all rows, p_ctr * p_cvr against click * conversion (ESMM's entire space).

Calibration (ad systems bid on the probability itself, which AUC ignores) is scored on
the same rows per task: PCOC (mean predicted / observed rate, 1 when calibrated on
average), ECE over equal-mass bins of the prediction (``RELIABILITY_BINS``), and the
reliability curve (mean prediction and observed rate per bin).

GAUC is the impression-weighted mean of per-group AUCs over the batch key ``group``
(user id, search id); groups holding a single class have no AUC and are skipped, and
the number skipped is reported beside the value.

Every metric of ``task_metrics`` is written to ``metrics.jsonl`` and TensorBoard; which
of them show in the log, the plots and the experiment tables is ``pico_jax.metric_names``.
"""

from __future__ import annotations

import re

import numpy as np

from pico_jax import batch as B

INDEPENDENT = "independent"
RELIABILITY_BINS = 10


def _as_1d(x):
  return np.asarray(x, np.float64).ravel()


def _check_inputs(fn, labels, scores, weights):
  labels, scores = _as_1d(labels), _as_1d(scores)
  weights = (np.ones_like(labels) if weights is None else _as_1d(weights))
  if not labels.shape == scores.shape == weights.shape:
    raise ValueError(f"{fn}: labels {labels.shape}, scores {scores.shape} and weights "
                     f"{weights.shape} differ in shape")
  bad = ~((labels == 0) | (labels == 1))
  if bad.any():
    raise ValueError(f"{fn}: labels must be 0 or 1; row {int(np.argmax(bad))} holds "
                     f"{labels[bad][0]!r} ({int(bad.sum())} such rows)")
  if not np.isfinite(scores).all():
    raise ValueError(f"{fn}: {int((~np.isfinite(scores)).sum())} non-finite scores, first "
                     f"at row {int(np.argmax(~np.isfinite(scores)))}")
  if (weights < 0).any() or not np.isfinite(weights).all():
    raise ValueError(f"{fn}: weights must be finite and >= 0")
  return labels, scores, weights


def auc(labels, scores, weights=None) -> float:
  """Exact ROC AUC; tied scores count 1/2 per positive-negative pair (as sklearn).

  Args:
    labels: [N] in {0, 1}. scores: [N] finite floats. weights: optional [N] >= 0.
  Returns:
    The (weighted) probability that a random positive outranks a random negative;
    NaN when either class has zero weight.
  """
  labels, scores, weights = _check_inputs("auc", labels, scores, weights)
  return _mann_whitney(scores, weights * labels, weights * (1 - labels))


def expected_auc(p_true, scores, weights=None) -> float:
  """The AUC expected under the true probabilities: each row is a positive with weight
  w p and a negative with weight w (1 - p), tied scores count 1/2 (exact, O(N log N)).

  It is E[positive-negative pairs ranked right] / E[pairs] over the label draw: the
  realised AUC without the noise of which rows happened to convert, so effects far
  below the realised AUC's sampling error are visible on synthetic data.

  Args:
    p_true: [N] true probabilities in [0, 1]. scores: [N] finite floats.
    weights: optional [N] >= 0 row weights.
  Returns:
    The expected AUC; NaN when the positive or negative weight is zero.
  """
  p = _as_1d(p_true)
  if ((p < 0) | (p > 1) | ~np.isfinite(p)).any():
    raise ValueError(f"expected_auc: p_true must lie in [0, 1]; row "
                     f"{int(np.argmax((p < 0) | (p > 1) | ~np.isfinite(p)))} does not")
  # The labels are checked as all-ones: p_true takes their place.
  _, scores, weights = _check_inputs("expected_auc", np.ones_like(p), scores, weights)
  return _mann_whitney(scores, weights * p, weights * (1 - p))


def _mann_whitney(scores, pos_weight, neg_weight) -> float:
  """sum over (positive, negative) weight pairs of [s_pos > s_neg] + [tie] / 2, over the
  total pair weight: one sort, ties grouped."""
  if not len(scores):
    return float("nan")
  order = np.argsort(scores, kind="stable")
  s = scores[order]
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
  pos = np.add.reduceat(pos_weight[order], starts)
  neg = np.add.reduceat(neg_weight[order], starts)
  total_pos, total_neg = pos.sum(), neg.sum()
  if total_pos <= 0 or total_neg <= 0:
    return float("nan")
  neg_below = np.cumsum(neg) - neg
  return float(np.sum(pos * (neg_below + 0.5 * neg)) / (total_pos * total_neg))


def group_aucs(labels, scores, groups, weights=None):
  """Exact AUC of every group, in one sort (no Python loop over groups).

  Args:
    labels: [N] in {0, 1}. scores: [N] float. groups: [N] integer group keys.
    weights: optional [N] >= 0 row weights.
  Returns:
    (keys [G] sorted group keys, aucs float64 [G] with NaN for single-class groups,
     impressions float64 [G] = the summed row weight of each group).
  """
  labels, scores, weights = _check_inputs("group_aucs", labels, scores, weights)
  groups = np.asarray(groups).ravel()
  if groups.shape != labels.shape:
    raise ValueError(f"group_aucs: groups {groups.shape} and labels {labels.shape} differ "
                     "in shape")
  if not len(groups):
    empty = np.zeros(0)
    return groups[:0], empty, empty
  order = np.lexsort((scores, groups))  # by group, then by score within the group.
  g, s, y, w = groups[order], scores[order], labels[order], weights[order]
  new_group = np.r_[True, g[1:] != g[:-1]]
  # A run is a maximal block of equal (group, score): ties within a group.
  starts = np.flatnonzero(new_group | np.r_[True, s[1:] != s[:-1]])
  pos = np.add.reduceat(w * y, starts)
  neg = np.add.reduceat(w * (1 - y), starts)
  group_of_run = np.cumsum(new_group[starts]) - 1
  num_groups = int(group_of_run[-1]) + 1
  cum_neg = np.cumsum(neg) - neg  # negatives below the run, over all earlier groups too.
  first_run = np.flatnonzero(new_group[starts])
  neg_below = cum_neg - cum_neg[first_run][group_of_run]
  numer = np.bincount(group_of_run, pos * (neg_below + 0.5 * neg), num_groups)
  total_pos = np.bincount(group_of_run, pos, num_groups)
  total_neg = np.bincount(group_of_run, neg, num_groups)
  with np.errstate(invalid="ignore", divide="ignore"):
    aucs = np.where((total_pos > 0) & (total_neg > 0), numer / (total_pos * total_neg),
                    np.nan)
  return g[new_group], aucs, total_pos + total_neg


def gauc(labels, scores, groups, weights=None) -> dict[str, float]:
  """Group AUC: sum_g n_g AUC_g / sum_g n_g over groups holding both classes.

  Args:
    labels, scores, groups, weights: as ``group_aucs``.
  Returns:
    {"gauc": value (NaN if no group has both classes), "groups": groups used,
     "skipped_groups": single-class groups left out}.
  """
  _, aucs, impressions = group_aucs(labels, scores, groups, weights)
  valid = ~np.isnan(aucs)
  used = int(valid.sum())
  value = (float(np.sum(impressions[valid] * aucs[valid]) / np.sum(impressions[valid]))
           if used and np.sum(impressions[valid]) > 0 else float("nan"))
  return {"gauc": value, "groups": used, "skipped_groups": int((~valid).sum())}


def logloss(labels, probs, weights=None, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps] (NaN if empty)."""
  labels, p, weights = _check_inputs("logloss", labels, probs, weights)
  if not len(labels) or weights.sum() <= 0:
    return float("nan")
  p = np.clip(p, eps, 1 - eps)
  per_row = -(labels * np.log(p) + (1 - labels) * np.log1p(-p))
  return float(np.average(per_row, weights=weights))


def pcoc(labels, probs, weights=None) -> float:
  """Predicted over observed: sum_i w_i p_i / sum_i w_i y_i (1 when calibrated on
  average; NaN when there is no positive weight).

  Args:
    labels: [N] in {0, 1}. probs: [N] probabilities. weights: optional [N] >= 0.
  """
  labels, p, weights = _check_inputs("pcoc", labels, probs, weights)
  observed = float(np.sum(weights * labels))
  return float(np.sum(weights * p)) / observed if observed > 0 else float("nan")


def reliability_curve(labels, probs, num_bins: int = RELIABILITY_BINS, weights=None):
  """Equal-mass bins of the predicted probability and the observed rate in each.

  Rows are sorted by p (stably); row i of the sorted order, with weight W_<i before it
  out of W in all, falls in bin floor(num_bins * W_<i / W), so every bin holds about
  W / num_bins of the weight (with unit weights: N / num_bins rows, +-1). Tied
  predictions may straddle two bins.

  Args:
    labels: [N] in {0, 1}. probs: [N] probabilities. weights: optional [N] >= 0.
    num_bins: K >= 1.
  Returns:
    (predicted float64 [K]: weighted mean p per bin, observed float64 [K]: weighted
     label rate per bin, mass float64 [K]: weight per bin); NaN for an empty bin.
  """
  labels, p, weights = _check_inputs("reliability_curve", labels, probs, weights)
  if num_bins < 1:
    raise ValueError(f"reliability_curve: num_bins={num_bins} must be >= 1")
  order = np.argsort(p, kind="stable")
  p, y, w = p[order], labels[order], weights[order]
  total = w.sum()
  if total <= 0:
    nan = np.full(num_bins, np.nan)
    return nan, nan, np.zeros(num_bins)
  before = np.cumsum(w) - w
  bins = np.minimum((num_bins * before / total).astype(np.int64), num_bins - 1)
  mass = np.bincount(bins, w, num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    predicted = np.bincount(bins, w * p, num_bins) / mass
    observed = np.bincount(bins, w * y, num_bins) / mass
  return predicted, observed, mass


def ece(labels, probs, num_bins: int = RELIABILITY_BINS, weights=None) -> float:
  """Expected calibration error over ``reliability_curve``'s equal-mass bins:
  sum_k (mass_k / W) |predicted_k - observed_k| (NaN when there is no weight)."""
  predicted, observed, mass = reliability_curve(labels, probs, num_bins, weights)
  if mass.sum() <= 0:
    return float("nan")
  used = mass > 0
  return float(np.sum(mass[used] * np.abs(predicted[used] - observed[used])) / mass.sum())


def calibration_metrics(prefix: str, labels, probs, num_bins: int = RELIABILITY_BINS):
  """``{prefix}_pcoc``, ``{prefix}_ece`` and the reliability curve as
  ``{prefix}_reliability_predicted_<k>`` / ``{prefix}_reliability_observed_<k>``,
  k = 0..num_bins-1 (flat floats, so they travel with the other metrics)."""
  predicted, observed, _ = reliability_curve(labels, probs, num_bins)
  out = {f"{prefix}_pcoc": pcoc(labels, probs), f"{prefix}_ece": ece(labels, probs, num_bins)}
  for k in range(num_bins):
    out[f"{prefix}_reliability_predicted_{k}"] = float(predicted[k])
    out[f"{prefix}_reliability_observed_{k}"] = float(observed[k])
  return out


def is_reliability_point(name: str) -> bool:
  """Whether the metric ``name`` is a point of a reliability curve
  (``calibration_metrics``): TensorBoard gets each curve as one figure, not as scalars."""
  return re.search(r"_reliability_(predicted|observed)_\d+$", name) is not None


def reliability_from_metrics(metrics: dict, prefix: str):
  """(predicted [K], observed [K]) of ``calibration_metrics``' flat keys in ``metrics``;
  empty arrays when ``prefix`` has none."""
  keys = sorted((int(k.rsplit("_", 1)[1]), k) for k in metrics
                if k.startswith(f"{prefix}_reliability_predicted_"))
  predicted = np.array([metrics[k] for _, k in keys], np.float64)
  observed = np.array([metrics[k.replace("_predicted_", "_observed_")] for _, k in keys],
                      np.float64)
  return predicted, observed


def varies(values) -> bool:
  """Whether ``values`` (float [N]) differ by more than float rounding: a fixed tau does
  not, and then has no correlation, plot or histogram."""
  values = np.asarray(values, np.float64)
  return values.size > 1 and np.ptp(values) > 1e-6 * max(np.abs(values).max(), 1e-12)


def spearman(x, y) -> float:
  """Spearman rank correlation with average ranks for ties (NaN if a side is constant)."""
  rx, ry = _average_ranks(x), _average_ranks(y)
  if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
    return float("nan")
  return float(np.corrcoef(rx, ry)[0, 1])


def _average_ranks(x):
  x = np.asarray(x, np.float64).ravel()
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]
  ranks = np.empty(len(x))
  ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
  return ranks


def _group_metrics(prefix, labels, scores, groups):
  g = gauc(labels, scores, groups)
  return {f"{prefix}_gauc": g["gauc"], f"{prefix}_gauc_groups": float(g["groups"]),
          f"{prefix}_gauc_skipped_groups": float(g["skipped_groups"])}


def task_metrics(predictions, columns, info: dict | None = None) -> dict[str, float]:
  """CTR, CVR and CTCVR metrics of one whole split.

  Args:
    predictions: dict with ``p_ctr``, ``p_cvr``, ``p_ctcvr`` [N] (and optionally
      ``tau``) for every row of the split, in row order.
    columns: the split's columns: ``click``, ``conversion`` [N]; used when present:
      ``group`` (GAUC), ``segment`` (tau per segment), ``p_ctr_true`` /
      ``p_cvr_true`` (oracle and expected AUCs of synthetic data), ``r_true``.
    info: the dataset's info dict: ``task_relation`` ("independent" adds
      ``cvr_auc_all_rows``), ``rho`` per segment (adds ``tau_rho_spearman`` when tau
      varies).
  Returns:
    Flat dict of metric name -> float: ``{ctr,cvr,ctcvr}_{auc,logloss,pcoc,ece}`` and
    the reliability curves (``calibration_metrics``; ``cvr_all_rows_*`` as well for
    independent tasks),
    ``mean_auc`` (the mean of the two task AUCs, the early-stopping default),
    ``{ctr,cvr,ctcvr}_gauc`` with ``_gauc_groups`` and ``_gauc_skipped_groups``,
    ``oracle_*_auc`` and the expected AUCs ``{ctr,cvr,ctcvr,mean}_eauc`` (synthetic data:
    ``expected_auc`` against the true probabilities), ``tau_mean``,
    ``tau_r_spearman`` (per-row tau against the true relatedness ``r_true``, when tau
    varies), ``tau_segment_<s>``, row counts, ``click_rate``
    and ``conversions_per_click`` (the split's realised rates).
  Raises:
    ValueError: a row with conversion 1 and click 0 in a dataset whose conversion is
      post-click (the CVR rows would be wrong), or predictions of the wrong length.
  """
  info = info or {}
  independent = info.get("task_relation") == INDEPENDENT
  click = np.asarray(columns[B.CLICK], np.float64)
  conv = np.asarray(columns[B.CONVERSION], np.float64)
  n = len(click)
  for key in ("p_ctr", "p_cvr", "p_ctcvr"):
    if len(predictions[key]) != n:
      raise ValueError(f"task_metrics: predictions[{key!r}] has {len(predictions[key])} "
                       f"rows, the split has {n}")
  bad = (conv > 0) & (click <= 0)
  if bad.any() and not independent:
    raise ValueError(
        f"task_metrics: {int(bad.sum())} rows have conversion=1 and click=0 (first: row "
        f"{int(np.argmax(bad))}); CVR is scored on clicked rows, so this is bad input "
        "unless the dataset's info sets task_relation='independent'")
  clicked = click > 0
  p_ctr, p_cvr, p_ctcvr = (np.asarray(predictions[k], np.float64)
                           for k in ("p_ctr", "p_cvr", "p_ctcvr"))
  out = {
      "num_rows": float(n), "num_clicks": float(click.sum()),
      "num_conversions": float((click * conv).sum()),
      # The scarcity of the split as generated: the RESULTS.md regime levels.
      "click_rate": float(click.mean()) if n else float("nan"),
      "conversions_per_click": (float((click * conv).sum() / click.sum()) if click.any()
                                else float("nan")),
      "ctr_auc": auc(click, p_ctr),
      "cvr_auc": auc(conv[clicked], p_cvr[clicked]),
      "ctcvr_auc": auc(click * conv, p_ctcvr),
      "ctr_logloss": logloss(click, p_ctr),
      "cvr_logloss": logloss(conv[clicked], p_cvr[clicked]),
      "ctcvr_logloss": logloss(click * conv, p_ctcvr),
  }
  out.update(calibration_metrics("ctr", click, p_ctr))
  out.update(calibration_metrics("cvr", conv[clicked], p_cvr[clicked]))
  out.update(calibration_metrics("ctcvr", click * conv, p_ctcvr))
  if independent:
    out["cvr_auc_all_rows"] = auc(conv, p_cvr)
    out["cvr_logloss_all_rows"] = logloss(conv, p_cvr)
    out.update(calibration_metrics("cvr_all_rows", conv, p_cvr))
    out["mean_auc"] = (out["ctr_auc"] + out["cvr_auc_all_rows"]) / 2
  else:
    out["mean_auc"] = (out["ctr_auc"] + out["cvr_auc"]) / 2
  if B.GROUP in columns:
    groups = np.asarray(columns[B.GROUP])
    out.update(_group_metrics("ctr", click, p_ctr, groups))
    out.update(_group_metrics("cvr", conv[clicked], p_cvr[clicked], groups[clicked]))
    out.update(_group_metrics("ctcvr", click * conv, p_ctcvr, groups))
  if B.P_CTR_TRUE in columns:
    true_ctr = np.asarray(columns[B.P_CTR_TRUE], np.float64)
    true_cvr = np.asarray(columns[B.P_CVR_TRUE], np.float64)
    out["oracle_ctr_auc"] = auc(click, true_ctr)
    out["oracle_cvr_auc"] = auc(conv[clicked], true_cvr[clicked])
    out["oracle_ctcvr_auc"] = auc(click * conv, true_ctr * true_cvr)
    # Expected AUCs against the true probabilities (CVR on clicked rows, as cvr_auc).
    out["ctr_eauc"] = expected_auc(true_ctr, p_ctr)
    out["cvr_eauc"] = expected_auc(true_cvr[clicked], p_cvr[clicked])
    out["ctcvr_eauc"] = expected_auc(true_ctr * true_cvr, p_ctcvr)
    out["mean_eauc"] = (out["ctr_eauc"] + out["cvr_eauc"]) / 2
  if "tau" in predictions:
    tau = np.asarray(predictions["tau"], np.float64)
    out["tau_mean"] = float(tau.mean())
    out["tau_std"] = float(tau.std())
    # A constant tau (contrast.mode=fixed) has no rank correlation with anything.
    tau_varies = varies(tau)
    if B.SEGMENT in columns:
      seg = np.asarray(columns[B.SEGMENT])
      segments = np.unique(seg)
      means = [float(tau[seg == s].mean()) for s in segments]
      for s, m in zip(segments, means):
        out[f"tau_segment_{int(s)}"] = m
      rho = info.get("rho")
      if rho is not None and len(segments) > 1 and tau_varies:
        out["tau_rho_spearman"] = spearman(means, [rho[int(s)] for s in segments])
    if B.R_TRUE in columns and tau_varies:  # per instance: tau should fall as r rises.
      out["tau_r_spearman"] = spearman(tau, columns[B.R_TRUE])
  return out
