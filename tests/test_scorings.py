"""The pCTR baselines (pico_jax/scorings.py): ctr_as_cvr and the validation-fitted blend."""

import numpy as np
import pytest

from conftest import small_config
from pico_jax import batch as B
from pico_jax import metrics, scorings


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def test_blend_weight_recovers_the_generating_weight_and_is_the_loss_minimum():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=40_000) - 2, rng.normal(size=40_000)
  y = (rng.random(40_000) < _sigmoid(a + 1.5 * b)).astype(float)
  w = scorings.fit_blend_weight(a, b, y)
  assert w == pytest.approx(1.5, abs=0.1)
  grid = np.linspace(0, 5, 501)
  losses = [scorings.blend_logloss(v, a, b, y) for v in grid]
  assert w == pytest.approx(grid[int(np.argmin(losses))], abs=0.011)


def test_blend_weight_is_never_negative_and_zero_on_one_class():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=5_000) - 2, rng.normal(size=5_000)
  y = (rng.random(5_000) < _sigmoid(a - 1.0 * b)).astype(float)
  assert scorings.fit_blend_weight(a, b, y) == pytest.approx(0.0, abs=1e-6)
  assert scorings.fit_blend_weight(a, b, np.zeros(5_000)) == 0.0


def _split(seed, n=3_000):
  rng = np.random.default_rng(seed)
  p_ctr, p_cvr = rng.uniform(0.05, 0.6, n), rng.uniform(0.01, 0.2, n)
  click = (rng.random(n) < p_ctr).astype(np.float32)
  conv = click * (rng.random(n) < p_ctr).astype(np.float32)  # conversion follows pCTR.
  return ({"p_ctr": p_ctr, "p_cvr": p_cvr, "p_ctcvr": p_ctr * p_cvr},
          {B.CLICK: click, B.CONVERSION: conv})


def test_rescore_fits_on_the_fit_split_only():
  fit_pred, fit_cols = _split(0)
  pred, cols = _split(1)
  scored, w = scorings.rescore(fit_pred, fit_cols, pred)
  assert w > 0.5  # conversion follows pCTR: the blend leans on it.
  np.testing.assert_array_equal(scored["ctr_as_cvr"]["p_cvr"], pred["p_ctr"])
  np.testing.assert_allclose(scored["blend"]["p_ctcvr"],
                             pred["p_ctr"] * scored["blend"]["p_cvr"])
  # The scored split's labels never reach w.
  flipped = {**cols, B.CONVERSION: cols[B.CLICK] - cols[B.CONVERSION]}
  assert scorings.rescore(fit_pred, fit_cols, pred)[1] == w
  out = scorings.scoring_metrics(fit_pred, fit_cols, pred, flipped)
  assert out[scorings.BLEND_WEIGHT] == w
  clicked = cols[B.CLICK] > 0
  assert out["ctr_as_cvr/cvr_auc"] == pytest.approx(
      metrics.auc(flipped[B.CONVERSION][clicked], pred["p_ctr"][clicked]))


def test_scored_runs_make_a_variant_from_the_scorings_metrics():
  runs = [{"point": "r=1 none", "seed": 0, "cvr_eauc": 0.6, "val_cvr_auc": 0.7,
           "blend/cvr_eauc": 0.65, "ctr_as_cvr/cvr_eauc": 0.55},
          {"point": "r=1 pico", "seed": 0, "cvr_eauc": 0.62}]
  out = scorings.scored_runs(runs, "blend", "none", "blend")
  added = out[-1]
  assert added["point"] == "r=1 blend" and added["cvr_eauc"] == 0.65
  assert "val_cvr_auc" not in added and len(out) == 3
  with pytest.raises(ValueError, match="baseline_scorings"):
    scorings.scored_runs(runs, "x", "pico", "blend")
  assert scorings.parse_scored("blend=none:blend") == ("blend", "none", "blend")
  with pytest.raises(ValueError, match="--scored"):
    scorings.parse_scored("blend=none:mean")


def test_a_run_reports_its_baseline_scorings(tmp_path):
  from pico_jax.train.loop import train_and_evaluate
  config = small_config(**{
      "data.synthetic.kind": "positive_control", "contrast.mode": "none",
      "data.synthetic.positive_control.num_rows": 4_000,
      "train.baseline_scorings": True})
  result = train_and_evaluate(config, str(tmp_path))
  assert result["ctr_as_cvr/ctr_auc"] == result["ctr_auc"]
  assert result["blend/ctr_auc"] == result["ctr_auc"]
  for key in ("ctr_as_cvr/cvr_eauc", "blend/cvr_eauc", "blend/cvr_auc"):
    assert 0 <= result[key] <= 1, key
  assert 0 <= result[scorings.BLEND_WEIGHT] <= 5
  plain = train_and_evaluate(small_config(**{
      "data.synthetic.kind": "positive_control", "contrast.mode": "none",
      "data.synthetic.positive_control.num_rows": 4_000}), str(tmp_path / "plain"))
  assert not any("/" in k for k in plain)
  assert plain["cvr_eauc"] == result["cvr_eauc"]
