"""The gradient-agreement temperature (contrast.tau_gradient="gradient_agreement") and
the notice that a learned temperature sits at its floor."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import small_config, small_model
from pico_jax import batch as B
from pico_jax import config as config_lib
from pico_jax.contrast import diagnostics
from pico_jax.losses import agreement_target, pico_objective, task_gradient_cosine
from pico_jax.models import serving_params, task_gradients
from pico_jax.train import loop
from pico_jax.train.step import eval_step

RULE = {"contrast.tau_gradient": "gradient_agreement"}
WEIGHTS = dict(ctr_weight=1.0, ctcvr_weight=1.0, cvr_weight=0.0)




def _loss_fn(tiny_data, **overrides):
  """(terms(params) -> dict of the objective's terms, params), the rule's model path."""
  model, params, batch, objective = small_model(tiny_data, **overrides)

  def terms(p):
    outputs = task_gradients.apply_model(
        model, {"params": p}, B.features(batch), train=True,
        logit_gradients=objective["tau_gradient"] == "gradient_agreement")
    return pico_objective(outputs, batch, **objective)[1]
  return terms, params


def _grad(terms, params, *names):
  return jax.jit(jax.grad(lambda p: sum(terms(p)[n] for n in names)))(params)


def _norm(tree):
  return float(optax.tree.norm(tree))


def _rest(params):
  """Every param outside the relatedness network."""
  c = {k: v for k, v in params["contrast"].items()
       if k not in ("relatedness", "relatedness_logit")}
  return {**{k: v for k, v in params.items() if k != "contrast"}, "contrast": c}


@pytest.mark.parametrize("backbone", ["mmoe", "ple", "aitm", "shared_bottom"])
def test_logit_gradients_are_each_rows_own(tiny_data, backbone):
  model, params, batch, _ = small_model(tiny_data, **RULE, **{"model.backbone": backbone})
  features = B.features(batch)
  out = task_gradients.apply_model(model, {"params": params}, features, train=True,
                                   logit_gradients=True)
  plain = model.apply({"params": params}, features, train=True)
  for key in plain:  # the outputs themselves are unchanged.
    np.testing.assert_array_equal(out[key], plain[key])
  for logit, key in task_gradients.GRADIENT_KEYS.items():
    jac = jax.jacrev(lambda d: model.apply(
        {"params": params, "perturbations": {task_gradients.EMBEDDING: d}}, features,
        train=True)[logit])(jnp.zeros(out[key].shape))  # [B, B, d_e]
    own = jnp.einsum("iid->id", jac)
    np.testing.assert_allclose(out[key], own, atol=1e-6)
    assert float(jnp.abs(jac).sum() - jnp.abs(own).sum()) == pytest.approx(0, abs=1e-4)
    assert float(jnp.abs(own).sum()) > 0


def test_cosine_and_target_on_a_hand_built_batch():
  """Rows: aligned Jacobians with agreeing loss signs (+1), opposite Jacobians (-1),
  orthogonal (0), aligned but a click without a conversion (the losses pull the two
  logits apart: -1), a converted click (+1), a padding row (0)."""
  u, v = np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 3.0])
  j_ctr = np.stack([u, u, u, u, u, u])
  j_cvr = np.stack([2 * u, -u, v, 0.5 * u, u, u])
  click = np.array([0, 0, 0, 1, 1, 0], np.float32)
  conversion = np.array([0, 0, 0, 0, 1, 0], np.float32)
  mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
  outputs = {"ctr_logit": jnp.full(6, -0.5), "cvr_logit": jnp.full(6, -1.0),
             "ctr_logit_grad": jnp.asarray(j_ctr), "cvr_logit_grad": jnp.asarray(j_cvr)}
  batch = {"click": click, "conversion": conversion, "mask": mask}
  cos = task_gradient_cosine(outputs, batch, **WEIGHTS)
  np.testing.assert_allclose(cos, [1, -1, 0, -1, 1, 0], atol=1e-6)
  np.testing.assert_allclose(agreement_target(cos), [0, 1, 1, 1, 0, 1], atol=1e-6)
  # The clicked-only CVR loss alone has no gradient on unclicked rows: no agreement.
  cvr_only = task_gradient_cosine(outputs, batch, ctr_weight=1.0, ctcvr_weight=0.0,
                                  cvr_weight=1.0)
  np.testing.assert_allclose(cvr_only, [0, 0, 0, -1, 1, 0], atol=1e-6)


def test_the_rule_trains_tau_towards_its_target():
  """Through pico_objective: the rule's loss is the soft-label BCE of sigmoid(r) against
  the target, and its gradient lowers r (tau) on agreeing rows and raises it on
  opposing ones."""
  u = jnp.array([[1.0, 2.0], [1.0, 2.0]])
  outputs = {"ctr_logit": jnp.zeros(2), "cvr_logit": jnp.zeros(2), "ctr_logit_grad": u,
             "cvr_logit_grad": jnp.stack([u[0], -u[1]]), "z_ctr": jnp.eye(2),
             "z_cvr": jnp.eye(2), "tau": jnp.full(2, 0.2)}
  batch = {"click": np.zeros(2, np.float32), "conversion": np.zeros(2, np.float32),
           "mask": np.ones(2, np.float32)}

  def terms(r):
    return pico_objective({**outputs, "relatedness_logit": r}, batch, **WEIGHTS,
                          contrast_weight=0.1, tau_gradient="gradient_agreement")[1]
  r = jnp.array([0.3, 0.3])
  out = terms(r)
  p = jax.nn.sigmoid(0.3)
  want = -(np.log(1 - p) + np.log(p)) / 2  # targets 0 (agreeing) and 1 (opposing)
  assert float(out["loss_tau_agreement"]) == pytest.approx(want, rel=1e-5)
  assert float(out["task_gradient_cosine"]) == pytest.approx(0.0, abs=1e-6)
  grad = jax.grad(lambda r: terms(r)["loss"])(r)
  assert grad[0] > 0 > grad[1]  # descent: r_0 (tau_0) falls, r_1 (tau_1) rises.


def test_only_the_rule_trains_the_relatedness_network(tiny_data):
  terms, params = _loss_fn(tiny_data, **RULE, **{"contrast.weight": 1.0})
  rule = _grad(terms, params, "loss_tau_agreement")
  others = _grad(terms, params, "loss_ctr", "loss_ctcvr", "loss_contrast")
  # The rule's loss reaches the relatedness network and nothing else: its target is a
  # measurement under stop_gradient and the network reads stop_gradient(e).
  assert _norm(rule["contrast"]["relatedness"]) > 0
  assert _norm(rule["contrast"]["relatedness_logit"]) > 0
  assert _norm(_rest(rule)) == 0
  # The InfoNCE does not move tau, and the encoders still get its gradient.
  assert _norm(others["contrast"]["relatedness"]) == 0
  assert _norm(others["contrast"]["relatedness_logit"]) == 0
  assert _norm(others["cvr_tower"]) > 0 and _norm(others["backbone"]) > 0


def test_the_measurement_leaves_the_other_gradients_as_they_were(tiny_data):
  """Task and contrast gradients under the rule equal those of tau_gradient=supervision
  (tau also under stop_gradient there) with no supervision: the logit gradients'
  forward and backward passes add nothing to them."""
  terms, params = _loss_fn(tiny_data, **RULE)
  rule = _grad(terms, params, "loss")
  plain_terms, _ = _loss_fn(tiny_data, **{"contrast.tau_gradient": "supervision"})
  plain = _grad(plain_terms, params, "loss")
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(_rest(rule))[0],
                          jax.tree.leaves(_rest(plain))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8, err_msg=str(path))


def test_the_objective_asks_for_the_logit_gradients(tiny_data):
  model, params, batch, objective = small_model(tiny_data, **RULE)
  outputs = model.apply({"params": params}, B.features(batch), train=True)
  with pytest.raises(ValueError, match="task_gradients.apply_model"):
    pico_objective(outputs, batch, **objective)


def test_the_config_accepts_the_rule_alone():
  config_lib.validate(small_config(**RULE))


def test_serving_does_not_depend_on_the_relatedness_network(tiny_data):
  model, params, batch, _ = small_model(tiny_data, **RULE)
  features = B.features(batch)
  assert "contrast" not in serving_params(params)
  assert task_gradients.EMBEDDING not in params  # the perturbation is no parameter.
  shifted = jax.tree.map(lambda x: x + 1.0, params["contrast"])
  served = model.apply({"params": serving_params(params)}, features, with_contrast=False)
  other = model.apply({"params": {**params, "contrast": shifted}}, features,
                      with_contrast=False)
  for key in ("p_ctr", "p_cvr", "p_ctcvr"):
    np.testing.assert_array_equal(served[key], other[key])
  assert set(eval_step(params, batch, model=model)) == {"p_ctr", "p_cvr", "p_ctcvr", "tau"}


def _run(tmp_path, name, **overrides):
  config = small_config(**{"train.steps": 40, "train.eval_every": 20, **overrides})
  workdir = str(tmp_path / name)
  result = loop.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
    return result, [json.loads(line) for line in f]


def test_the_rule_trains_with_the_row_sparse_table_optimizer(tmp_path):
  result, records = _run(tmp_path, "lazy", **RULE,
                         **{"optimizer.embedding_optimizer": "lazy_adam"})
  assert np.isfinite(records[-1]["loss_tau_agreement"]) and result["tau_mean"] > 0.2


def test_training_with_the_rule_is_deterministic_and_tau_does_not_collapse(tmp_path,
                                                                           caplog):
  with caplog.at_level(logging.WARNING, logger="pico_jax"):
    first, records = _run(tmp_path, "a", **RULE)
  again, records_again = _run(tmp_path, "b", **RULE)
  untimed = lambda rs: [{k: v for k, v in r.items() if not k.endswith("_per_sec")}
                        for r in rs]
  assert untimed(records) == untimed(records_again)
  assert first == again
  assert "loss_tau_agreement" in records[-1] and "task_gradient_cosine" in records[-1]
  assert first["tau_mean"] > 0.2  # tau_init: the rule holds tau off its floor.
  assert "temperature is inactive" not in caplog.text


def test_inactive_notice_decides_from_the_segment_means():
  c = small_config().contrast
  at_floor = {"tau_segment_0": 0.0501, "tau_segment_1": 0.0502, "tau_mean": 0.0501}
  notice = diagnostics.inactive_temperature_notice(at_floor, c)
  assert notice.startswith("the personalised temperature is inactive: tau is at "
                           "tau_min=0.05 for every segment")
  assert "contrast.tau_gradient=gradient_agreement" in notice
  assert diagnostics.inactive_temperature_notice({**at_floor, "tau_segment_2": 0.3}, c) is None
  assert diagnostics.inactive_temperature_notice({"tau_mean": 0.0501}, c) is not None
  assert diagnostics.inactive_temperature_notice({"auc": 0.7}, c) is None
  fixed = small_config(**{"contrast.mode": "fixed", "contrast.tau_init": 0.2}).contrast
  assert diagnostics.inactive_temperature_notice({"tau_mean": 0.2}, fixed).startswith(
      "the personalised temperature is inactive: contrast.mode=fixed gives every instance "
      "tau=0.2")
  none = small_config(**{"contrast.mode": "none"}).contrast
  assert diagnostics.inactive_temperature_notice(at_floor, none) is None


def test_the_temperature_report_logs_tau_beside_rho_and_the_notice_once(caplog):
  report = diagnostics.TemperatureReport(small_config().contrast, rho=[0.0, 0.5])
  at_floor = {"tau_segment_0": 0.0501, "tau_segment_1": 0.05012, "ctr_auc": 0.7}
  with caplog.at_level(logging.INFO, logger="pico_jax"):
    report(at_floor)
    report(at_floor)
    report({"ctr_auc": 0.7})  # no segments: nothing to say.
  assert [(r.levelname, r.message[:48]) for r in caplog.records] == [
      ("INFO", "mean tau per segment (rho = true relatedness): s"),
      ("WARNING", "the personalised temperature is inactive: tau is"),
      ("INFO", "mean tau per segment (rho = true relatedness): s")]
  assert caplog.records[0].message.endswith(
      ": seg 0: tau=0.050 rho=0.00, seg 1: tau=0.050 rho=0.50")
  caplog.clear()
  fixed = small_config(**{"contrast.mode": "fixed", "contrast.tau_init": 0.2}).contrast
  with caplog.at_level(logging.INFO, logger="pico_jax"):
    diagnostics.TemperatureReport(fixed, rho=[0.0, 0.5])(
        {"tau_segment_0": 0.2, "tau_segment_1": 0.2})
  assert [r.levelname for r in caplog.records] == ["INFO"]  # a fixed tau is a choice,
  assert "mean tau per segment" not in caplog.records[0].message  # and has no segments.
  assert diagnostics.tau_rho_line({"tau_segment_0": 0.2}, None) is None


def test_the_training_log_says_once_when_tau_sits_at_its_floor(tmp_path, caplog):
  # tau starts (and stays, over 40 steps) within 1% of the span above tau_min.
  with caplog.at_level(logging.WARNING, logger="pico_jax"):
    _run(tmp_path, "floor", **{"contrast.tau_init": 0.0501})
  lines = [r.message for r in caplog.records if "temperature is inactive" in r.message]
  assert len(lines) == 1, lines
