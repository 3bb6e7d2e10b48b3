"""Explicit CTR -> CVR transfer and the oracle input (pico_jax/models/transfer.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import small_config
from pico_jax import batch as B
from pico_jax import config as config_lib
from pico_jax.config_keys import ConfigError
from pico_jax.data import positive_control
from pico_jax.models import build_model, serving_params
from pico_jax.train.state import example_features


@pytest.fixture(scope="module")
def data():
  return positive_control.generate(seed=0, num_rows=2_000, num_users=50, num_items=40)


def _model(data, **overrides):
  config = small_config(**{"data.synthetic.kind": "positive_control",
                           "contrast.mode": "none", **overrides})
  config_lib.validate(config)
  model = build_model(config, data.schema)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0),
                                    example_features(data.schema))["params"])
  batch = {k: jnp.asarray(v[:16]) for k, v in data.splits["train"].items()}
  return model, params, B.features(batch)


def _bce(logit, y):
  return jnp.mean(jnp.logaddexp(0.0, logit) - y * logit)


@pytest.mark.parametrize("transfer", ["ctr_logit", "ctr_representation"])
def test_transfer_starts_closed_and_its_gate_learns(data, transfer):
  model, params, features = _model(data, **{"model.transfer": transfer})
  none_model, _, _ = _model(data)
  out = model.apply({"params": params}, features)
  base = none_model.apply({"params": {k: v for k, v in params.items() if k != "transfer"}},
                          features)
  # The gate starts at 0: exactly the model without transfer.
  np.testing.assert_allclose(out["cvr_logit"], base["cvr_logit"], atol=1e-6)
  y = features[B.SPARSE][:, 0] % 2  # any labels: the gate's gradient is not zero.
  grads = jax.grad(lambda p: _bce(model.apply({"params": p}, features)["cvr_logit"], y))(
      params)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["transfer"]))


@pytest.mark.parametrize("transfer", ["ctr_logit", "ctr_representation"])
def test_cvr_loss_does_not_reach_the_ctr_path_through_the_transfer(data, transfer):
  """With the backbone's CTR side and the CTR tower shared by nothing else, the CVR
  loss's gradient at the CTR tower is zero: the transfer stops it."""
  model, params, features = _model(data, **{"model.transfer": transfer,
                                           "model.backbone": "aitm"})
  # Open the gate so that the CTR signal does reach the CVR logit.
  params = jax.tree.map(lambda x: x + 0.5, params)
  y = features[B.SPARSE][:, 1] % 2
  cvr_loss = lambda p: _bce(model.apply({"params": p}, features)["cvr_logit"], y)
  grads = jax.grad(cvr_loss)(params)
  for leaf in jax.tree.leaves(grads["ctr_tower"]):
    assert float(jnp.abs(leaf).max()) == 0.0
  # ... while the CTR tower does move the CVR logit (the transfer is on).
  moved = jax.tree.map(lambda x: x * 1.1, params["ctr_tower"])
  changed = model.apply({"params": {**params, "ctr_tower": moved}}, features)["cvr_logit"]
  assert float(jnp.abs(changed - model.apply({"params": params}, features)["cvr_logit"]
                       ).max()) > 1e-4


def test_oracle_reaches_only_the_cvr_tower(data):
  model, params, features = _model(data, **{"model.oracle_feature": True})
  def logits(oracle):
    out = model.apply({"params": params}, {**features, B.ORACLE_SHARED: oracle})
    return out["ctr_logit"].sum(), out["cvr_logit"].sum()
  oracle = features[B.ORACLE_SHARED]
  d_ctr = jax.grad(lambda o: logits(o)[0])(oracle)
  d_cvr = jax.grad(lambda o: logits(o)[1])(oracle)
  assert float(jnp.abs(d_ctr).max()) == 0.0 and float(jnp.abs(d_cvr).max()) > 0.0
  # The CVR tower's first layer has one more input than without the oracle.
  plain, plain_params, _ = _model(data)
  kernel = lambda p: p["cvr_tower"]["mlp"]["dense_0"]["kernel"]
  assert kernel(params).shape[0] == kernel(plain_params).shape[0] + 1
  # Without the column, the model refuses rather than read zeros.
  with pytest.raises(ValueError, match="oracle_shared"):
    model.apply({"params": params}, {k: v for k, v in features.items()
                                     if k != B.ORACLE_SHARED})


def test_oracle_is_off_by_default_and_needs_positive_control_data():
  assert small_config().model.oracle_feature is False
  with pytest.raises(ConfigError, match="oracle_feature"):
    config_lib.validate(small_config(**{"model.oracle_feature": True}))


@pytest.mark.parametrize("transfer", ["ctr_logit", "ctr_representation"])
def test_serving_path_keeps_the_transfer(data, transfer):
  model, params, features = _model(data, **{"model.transfer": transfer,
                                           "contrast.mode": "fixed"})
  serving = serving_params(params)
  assert "transfer" in serving and "contrast" not in serving
  out = model.apply({"params": serving}, features, with_contrast=False)
  assert set(out) == {"ctr_logit", "cvr_logit", "p_ctr", "p_cvr", "p_ctcvr"}
  assert all(v.shape == (16,) for v in out.values())
