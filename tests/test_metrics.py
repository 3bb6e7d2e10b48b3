"""Metrics: exact AUC against sklearn, GAUC, task rows, whole-split evaluation."""

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from pico_jax import batch as B
from pico_jax import metrics


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_with_ties_and_weights(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(50, 3000))
  labels = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(np.float32)
  # Few distinct score values: many ties, inside and across classes.
  scores = rng.integers(0, int(rng.integers(2, 40)), n) / 7.0
  weights = rng.uniform(0, 3, n) * (rng.random(n) < 0.9)
  assert abs(metrics.auc(labels, scores) - roc_auc_score(labels, scores)) < 1e-9
  assert abs(metrics.auc(labels, scores, weights)
             - roc_auc_score(labels, scores, sample_weight=weights)) < 1e-9
  continuous = rng.normal(size=n).astype(np.float32)
  assert abs(metrics.auc(labels, continuous) - roc_auc_score(labels, continuous)) < 1e-9


def test_auc_single_class_is_nan_and_bad_input_raises():
  assert np.isnan(metrics.auc([1, 1, 1], [0.1, 0.2, 0.3]))
  assert np.isnan(metrics.auc([], []))
  with pytest.raises(ValueError, match="labels must be 0 or 1; row 1"):
    metrics.auc([0, 2, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.auc([0, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="non-finite scores, first at row 2"):
    metrics.auc([0, 1, 1], [0.1, 0.2, np.nan])
  with pytest.raises(ValueError, match="weights must be finite and >= 0"):
    metrics.auc([0, 1], [0.1, 0.2], [1.0, -1.0])


def test_gauc_matches_per_group_loop_and_skips_single_class_groups():
  rng = np.random.default_rng(0)
  n = 4000
  groups = rng.integers(0, 120, n) * 3  # sparse, unsorted keys
  labels = (rng.random(n) < 0.3).astype(float)
  scores = rng.integers(0, 10, n) / 10.0  # ties within groups
  result = metrics.gauc(labels, scores, groups)
  num, den, skipped, used = 0.0, 0.0, 0, 0
  for g in np.unique(groups):
    m = groups == g
    if labels[m].min() == labels[m].max():
      skipped += 1
      continue
    num += m.sum() * roc_auc_score(labels[m], scores[m])
    den += m.sum()
    used += 1
  assert skipped > 0 or used == len(np.unique(groups))
  assert result["groups"] == used and result["skipped_groups"] == skipped
  assert abs(result["gauc"] - num / den) < 1e-9


def test_gauc_counts_single_class_groups():
  labels = np.array([1, 0, 1, 1, 0, 0])
  scores = np.array([0.9, 0.1, 0.5, 0.6, 0.2, 0.3])
  groups = np.array([7, 7, 8, 8, 9, 9])  # group 7 has both classes; 8 and 9 do not.
  assert metrics.gauc(labels, scores, groups) == {"gauc": 1.0, "groups": 1,
                                                  "skipped_groups": 2}
  assert np.isnan(metrics.gauc([1, 1], [0.1, 0.2], [0, 1])["gauc"])


def test_logloss_matches_sklearn():
  rng = np.random.default_rng(1)
  y = (rng.random(500) < 0.4).astype(float)
  p = rng.uniform(0.01, 0.99, 500)
  w = rng.uniform(0, 2, 500)
  assert abs(metrics.logloss(y, p) - log_loss(y, p)) < 1e-9
  assert abs(metrics.logloss(y, p, w) - log_loss(y, p, sample_weight=w)) < 1e-9


def test_spearman():
  assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  assert metrics.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)
  assert np.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


def _split(n=3000, seed=0):
  rng = np.random.default_rng(seed)
  click = (rng.random(n) < 0.3).astype(np.float32)
  conv = click * (rng.random(n) < 0.4).astype(np.float32)
  cols = {B.CLICK: click, B.CONVERSION: conv, B.GROUP: rng.integers(0, 50, n),
          B.SEGMENT: rng.integers(0, 4, n)}
  preds = {"p_ctr": rng.random(n).astype(np.float32) * 0.5 + 0.25 * click,
           "p_cvr": rng.random(n).astype(np.float32) * 0.5 + 0.25 * conv,
           "tau": 0.1 + 0.1 * cols[B.SEGMENT] + rng.random(n) * 0.01}
  preds["p_ctcvr"] = preds["p_ctr"] * preds["p_cvr"]
  return preds, cols


def test_task_metrics_rows_per_task():
  preds, cols = _split()
  out = metrics.task_metrics(preds, cols, {"rho": [1.0, 0.6, 0.3, 0.0]})
  clicked = cols[B.CLICK] > 0
  assert out["ctr_auc"] == pytest.approx(roc_auc_score(cols[B.CLICK], preds["p_ctr"]), abs=1e-9)
  assert out["cvr_auc"] == pytest.approx(
      roc_auc_score(cols[B.CONVERSION][clicked], preds["p_cvr"][clicked]), abs=1e-9)
  assert out["ctcvr_auc"] == pytest.approx(
      roc_auc_score(cols[B.CLICK] * cols[B.CONVERSION], preds["p_ctcvr"]), abs=1e-9)
  assert out["cvr_logloss"] == pytest.approx(
      log_loss(cols[B.CONVERSION][clicked], preds["p_cvr"][clicked]), abs=1e-7)
  assert out["mean_auc"] == pytest.approx((out["ctr_auc"] + out["cvr_auc"]) / 2)
  assert out["cvr_gauc"] == pytest.approx(metrics.gauc(
      cols[B.CONVERSION][clicked], preds["p_cvr"][clicked], cols[B.GROUP][clicked])["gauc"])
  assert out["ctr_gauc_groups"] + out["ctr_gauc_skipped_groups"] == 50
  assert "cvr_auc_all_rows" not in out
  # tau rises with the segment, rho falls: a rank correlation of -1.
  assert out["tau_rho_spearman"] == pytest.approx(-1.0)
  assert out["tau_segment_0"] < out["tau_segment_3"]


def test_a_constant_tau_has_no_rank_correlations():
  """A fixed temperature: no tau_rho_spearman nor tau_r_spearman (they would be NaN,
  which TensorBoard's writer left out with a warning at every default run)."""
  preds, cols = _split()
  cols[B.R_TRUE] = np.linspace(0, 1, len(cols[B.CLICK]))
  preds["tau"] = np.full(len(cols[B.CLICK]), 0.2, np.float32)
  out = metrics.task_metrics(preds, cols, {"rho": [1.0, 0.6, 0.3, 0.0]})
  assert out["tau_mean"] == pytest.approx(0.2) and out["tau_segment_3"] == pytest.approx(0.2)
  assert "tau_rho_spearman" not in out and "tau_r_spearman" not in out
  assert all(np.isfinite(v) for k, v in out.items() if k.startswith("tau"))


def test_task_metrics_independent_tasks_score_cvr_on_all_rows():
  preds, cols = _split()
  rng = np.random.default_rng(3)
  cols[B.CONVERSION] = (rng.random(len(cols[B.CLICK])) < 0.5).astype(np.float32)
  with pytest.raises(ValueError, match="conversion=1 and click=0"):
    metrics.task_metrics(preds, cols)
  out = metrics.task_metrics(preds, cols, {"task_relation": "independent"})
  assert out["cvr_auc_all_rows"] == pytest.approx(
      roc_auc_score(cols[B.CONVERSION], preds["p_cvr"]), abs=1e-9)
  assert out["mean_auc"] == pytest.approx((out["ctr_auc"] + out["cvr_auc_all_rows"]) / 2)


def test_task_metrics_rejects_wrong_length():
  preds, cols = _split()
  preds["p_cvr"] = preds["p_cvr"][:-1]
  with pytest.raises(ValueError, match="p_cvr.*2999 rows, the split has 3000"):
    metrics.task_metrics(preds, cols)


def test_split_metrics_are_not_batch_averages(config):
  """The loop's evaluation scores the whole gathered split in one call; it equals
  sklearn on the concatenated predictions, which a mean of per-batch AUCs does not."""
  import jax
  from pico_jax.train.trainer import build

  config.train.eval_batch_size = 256
  trainer = build(config)
  dataset = trainer.dataset
  cols = dataset.splits["val"]
  preds = trainer.predict("val")
  assert len(preds["p_ctr"]) == len(cols[B.CLICK]) == 800
  out = metrics.task_metrics(preds, cols, dataset.info)
  assert out["ctr_auc"] == pytest.approx(roc_auc_score(cols[B.CLICK], preds["p_ctr"]), abs=1e-9)
  per_batch = np.mean([roc_auc_score(cols[B.CLICK][i:i + 256], preds["p_ctr"][i:i + 256])
                       for i in range(0, 800, 256)])
  assert abs(per_batch - out["ctr_auc"]) > 1e-6
  assert jax.device_count() == 8


def _expected_auc_brute_force(p, scores, weights):
  """O(N^2): sum over ordered pairs (i as positive, j as negative, i != j) of
  w_i p_i w_j (1 - p_j) ([s_i > s_j] + [s_i = s_j] / 2), over the total pair weight."""
  p, s, w = (np.asarray(a, np.float64) for a in (p, scores, weights))
  pos, neg = w * p, w * (1 - p)
  wins = (s[:, None] > s[None, :]) + 0.5 * (s[:, None] == s[None, :])
  # Each row is split into a positive and a negative part; a row also pairs with itself
  # (its positive part against its negative part), as the weighted Mann-Whitney does.
  return float(pos @ wins @ neg / (pos.sum() * neg.sum()))


@pytest.mark.parametrize("seed", range(4))
def test_expected_auc_matches_brute_force_with_ties_and_weights(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(20, 400))
  p = rng.uniform(0, 1, n) ** 2
  p[: n // 10] = 0.0  # certain negatives and positives count with weight 0 / 1.
  p[n // 10: n // 5] = 1.0
  scores = rng.integers(0, int(rng.integers(2, 12)), n) / 3.0  # many ties.
  weights = rng.uniform(0, 2, n) * (rng.random(n) < 0.9)
  assert metrics.expected_auc(p, scores, weights) == pytest.approx(
      _expected_auc_brute_force(p, scores, weights), abs=1e-12)
  assert metrics.expected_auc(p, scores) == pytest.approx(
      _expected_auc_brute_force(p, scores, np.ones(n)), abs=1e-12)


def test_expected_auc_with_certain_labels_is_the_auc_and_bad_input_raises():
  rng = np.random.default_rng(0)
  labels = (rng.random(500) < 0.3).astype(np.float64)
  scores = rng.integers(0, 9, 500).astype(np.float64)
  assert metrics.expected_auc(labels, scores) == pytest.approx(metrics.auc(labels, scores))
  # Scoring by the true probability beats a noisy view of it.
  p = rng.uniform(0, 1, 500)
  assert metrics.expected_auc(p, p) > metrics.expected_auc(p, p + rng.normal(0, 0.3, 500))
  assert np.isnan(metrics.expected_auc([0.0, 0.0], [0.1, 0.2]))
  with pytest.raises(ValueError, match="p_true must lie in \\[0, 1\\]; row 1"):
    metrics.expected_auc([0.5, 1.5], [0.1, 0.2])
  with pytest.raises(ValueError, match="non-finite scores"):
    metrics.expected_auc([0.5, 0.5], [0.1, np.inf])


def test_task_metrics_report_expected_aucs_on_each_task_rows():
  rng = np.random.default_rng(1)
  n = 2_000
  true_ctr, true_cvr = rng.uniform(0.05, 0.6, n), rng.uniform(0.01, 0.3, n)
  click = (rng.random(n) < true_ctr).astype(np.float32)
  conv = click * (rng.random(n) < true_cvr)
  p_ctr, p_cvr = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
  r_true = rng.uniform(0, 1, n)
  columns = {B.CLICK: click, B.CONVERSION: conv, B.P_CTR_TRUE: true_ctr,
             B.P_CVR_TRUE: true_cvr, B.R_TRUE: r_true}
  out = metrics.task_metrics({"p_ctr": p_ctr, "p_cvr": p_cvr, "p_ctcvr": p_ctr * p_cvr,
                              "tau": 1 - r_true}, columns)
  clicked = click > 0
  assert out["ctr_eauc"] == metrics.expected_auc(true_ctr, p_ctr)
  assert out["cvr_eauc"] == metrics.expected_auc(true_cvr[clicked], p_cvr[clicked])
  assert out["ctcvr_eauc"] == metrics.expected_auc(true_ctr * true_cvr, p_ctr * p_cvr)
  assert out["mean_eauc"] == pytest.approx((out["ctr_eauc"] + out["cvr_eauc"]) / 2)
  assert out["tau_r_spearman"] == pytest.approx(-1.0)  # tau falls as r rises, per row.
