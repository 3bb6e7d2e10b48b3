"""Temperature remedies and transfer options: their gradient structure and that each
changes training; the paired intervals and scarcity rates of the experiment tables."""

import math

import jax
import numpy as np
import optax
import pytest

from conftest import small_config, small_model
from pico_jax import batch as B
from pico_jax import config as config_lib
from pico_jax.config_keys import ConfigError
from pico_jax import diagnostics, metrics, stats
from pico_jax.losses import pico_objective




def _setup(tiny_data, **overrides):
  """(loss_fn(params) -> (total, terms), params) on the batch of ``_model``."""
  model, params, batch, objective = small_model(tiny_data, **overrides)

  def loss_fn(p):
    return pico_objective(model.apply({"params": p}, B.features(batch), train=True), batch,
                          **objective)
  return loss_fn, params


def _norm(tree):
  return float(optax.tree.norm(tree))


def _contrast_grads(tiny_data, **overrides):
  """Gradient of the contrastive term alone (task and supervision weights 0)."""
  loss_fn, params = _setup(tiny_data, **{"loss.ctr_weight": 0.0, "loss.ctcvr_weight": 0.0,
                                    "contrast.weight": 1.0, **overrides})
  return jax.jit(jax.grad(lambda p: loss_fn(p)[0]))(params)


def test_supervision_only_tau_gets_no_contrastive_gradient(tiny_data):
  default = _contrast_grads(tiny_data)
  assert _norm(default["contrast"]["relatedness"]) > 0
  # (No supervision term either: the config check that asks for one is not run here.)
  stopped = _contrast_grads(tiny_data, **{"contrast.tau_gradient": "supervision"})
  assert _norm(stopped["contrast"]["relatedness"]) == 0
  assert _norm(stopped["contrast"]["relatedness_logit"]) == 0
  # The encoders still get the contrast's gradient.
  assert _norm(stopped["cvr_tower"]) > 0 and _norm(stopped["ctr_tower"]) > 0


@pytest.mark.parametrize("side,frozen,free", [("ctr", "ctr_tower", "cvr_tower"),
                                              ("cvr", "cvr_tower", "ctr_tower")])
def test_detach_stops_the_contrast_at_one_side(tiny_data, side, frozen, free):
  grads = _contrast_grads(tiny_data, **{"contrast.detach": side})
  assert _norm(grads[frozen]) == 0
  assert _norm(grads[free]) > 0
  # The detached side's projection head still learns to match the other side.
  assert _norm(grads["contrast"][f"projection_{side}"]) > 0


def test_backbone_representation_leaves_the_towers_alone(tiny_data):
  towers = _contrast_grads(tiny_data)
  assert _norm(towers["cvr_tower"]) > 0
  grads = _contrast_grads(tiny_data, **{"contrast.representation": "backbone"})
  assert _norm(grads["cvr_tower"]) == 0 and _norm(grads["ctr_tower"]) == 0
  assert _norm(grads["backbone"]) > 0


def test_term_gradients_measure_each_term_at_each_module(tiny_data):
  def measure(overrides):
    model, params, batch, objective = small_model(tiny_data, **overrides)
    return jax.jit(lambda p, b: diagnostics.term_gradients(model, p, b, objective))(
        params, batch)
  out = measure({})
  assert float(out["grad_loss_contrast_cvr_tower"]) > 0
  assert float(out["grad_loss_ctcvr_cvr_tower"]) > 0
  assert -1 <= float(out["cos_contrast_ctcvr_cvr_tower"]) <= 1
  assert "grad_loss_cvr_cvr_tower" not in out  # cvr_weight is 0 in the default recipe
  assert float(measure({"contrast.detach": "cvr"})["grad_loss_contrast_cvr_tower"]) == 0


def _mean_tau_after(tiny_data, steps=40, **overrides):
  loss_fn, params = _setup(tiny_data, **overrides)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(lambda p: loss_fn(p)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  for _ in range(steps):
    params, opt_state = step(params, opt_state)
  return float(loss_fn(params)[1]["tau_mean"])


def test_remedies_change_where_tau_goes(tiny_data):
  """The InfoNCE alone drives tau from tau_init = 0.2 down; each remedy holds it up."""
  collapsed = _mean_tau_after(tiny_data)
  assert collapsed < 0.15
  prior = _mean_tau_after(tiny_data, **{"contrast.tau_prior_weight": 1.0,
                                   "contrast.tau_prior": 0.3})
  assert prior > 0.2
  # Stopped InfoNCE gradient and only the prior: tau goes to the prior exactly.
  stopped = _mean_tau_after(tiny_data, **{"contrast.tau_gradient": "supervision",
                                     "contrast.tau_prior_weight": 1.0,
                                     "contrast.tau_prior": 0.3})
  assert abs(stopped - 0.3) < 0.02


def test_supervision_only_tau_needs_a_trainer():
  config = small_config(**{"contrast.tau_gradient": "supervision"})
  with pytest.raises(ConfigError, match="tau_gradient"):
    config_lib.validate(config)


def test_paired_interval_matches_student_t():
  scipy_stats = pytest.importorskip("scipy.stats")
  for df in (1, 2, 5, 30, 31, 60, 200):
    assert stats.t_critical_95(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-4)
  d = [0.01, 0.012, 0.011]
  mean, low, high = stats.paired_interval(d)
  half = scipy_stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / math.sqrt(3)
  assert mean == pytest.approx(0.011)
  assert (low, high) == pytest.approx((0.011 - half, 0.011 + half), abs=1e-9)
  assert math.isnan(stats.paired_interval([0.5])[1])
  assert stats.format_interval(mean, low, high).endswith("*")
  assert not stats.format_interval(0.0, -0.1, 0.1).endswith("*")


def test_intervals_and_gaps_per_point():
  runs = [{"point": "pico", "delta_cvr_auc": v, "cvr_auc": 0.6, "oracle_cvr_auc": 0.8}
          for v in (-0.01, -0.012, -0.011)]
  runs = stats.add_oracle_gaps(runs)
  assert runs[0]["gap_cvr_auc"] == pytest.approx(0.2)
  (row,) = stats.add_intervals([{"point": "pico"}], runs)
  _, low, high = stats.paired_interval([-0.01, -0.012, -0.011])
  assert (row["delta_cvr_auc_ci_low"], row["delta_cvr_auc_ci_high"]) == (low, high)
  assert high < 0
  assert "gap_cvr_auc_ci_low" not in row  # only paired deltas get intervals


def test_task_metrics_report_the_realised_rates():
  columns = {B.CLICK: np.array([1, 1, 0, 1, 0], np.float32),
             B.CONVERSION: np.array([1, 0, 0, 0, 0], np.float32)}
  p = np.linspace(0.1, 0.9, 5)
  out = metrics.task_metrics({"p_ctr": p, "p_cvr": p, "p_ctcvr": p}, columns)
  assert out["click_rate"] == pytest.approx(0.6)
  assert out["conversions_per_click"] == pytest.approx(1 / 3)
