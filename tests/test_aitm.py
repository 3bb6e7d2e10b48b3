"""AITM: shapes, parameters, the serving set, the transfer path, training and export."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import small_config
from pico_jax import batch as B
from pico_jax import export
from pico_jax.losses import pico_objective
from pico_jax.models import build_model, serving_params
from pico_jax.models.backbones import AdaptiveInformationTransfer
from pico_jax.train.state import example_features
from test_models import schema  # noqa: F401 (the fixture)
from test_train import run_steps

AITM = {"model.backbone": "aitm", "model.aitm.bottom_hidden": (12, 6)}


def _init(config, schema, batch=5):
  model = build_model(config, schema)
  features = example_features(schema, batch)
  features[B.DENSE] = np.random.default_rng(0).normal(size=features[B.DENSE].shape).astype(
      np.float32)
  params = jax.jit(lambda k: model.init(k, features))(jax.random.PRNGKey(0))["params"]
  return model, nn.meta.unbox(params), features


@pytest.fixture(scope="module")
def initialised(schema):
  return _init(small_config(**AITM), schema)


def _size(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_shapes_and_parameter_count(initialised, schema):
  model, params, features = initialised
  out = jax.jit(model.apply)({"params": params}, features)
  for key in ("ctr_logit", "cvr_logit", "p_ctr", "p_cvr", "p_ctcvr", "tau"):
    assert out[key].shape == (5,) and out[key].dtype == np.float32, key
  assert out["z_ctr"].shape == (5, small_config().contrast.proj_dim)
  d = (len(schema.sparse) + len(schema.multi)) * 8 + 8  # embed_dim and dense_dim 8
  backbone = params["backbone"]
  assert set(backbone) == {"bottom_0", "bottom_1", "transfer_1", "ait_1"}
  mlp = d * 12 + 12 + 12 * 6 + 6
  # Two task networks, the transfer Dense(6) + ReLU, query/key/value 6 x 6 without bias.
  assert _size(backbone) == 2 * mlp + (6 * 6 + 6) + 3 * 6 * 6
  assert _size(backbone["ait_1"]) == 3 * 6 * 6
  # The towers read width-6 inputs.
  assert params["ctr_tower"]["mlp"]["dense_0"]["kernel"].shape == (6, 8)


def test_attention_mixes_with_weights_that_sum_to_one():
  ait = AdaptiveInformationTransfer(4)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
  variables = nn.meta.unbox(ait.init(jax.random.PRNGKey(0), x, x))
  value = variables["params"]["value"]["kernel"]
  # Identical inputs: whatever the weights, z = h3(x).
  np.testing.assert_allclose(ait.apply(variables, x, x), x @ value, rtol=1e-5, atol=1e-6)
  y = jax.random.normal(jax.random.PRNGKey(2), (3, 4))
  z = ait.apply(variables, x, y)
  # z lies on the segment between h3(x) and h3(y), coordinate-wise.
  lo, hi = jnp.minimum(x @ value, y @ value), jnp.maximum(x @ value, y @ value)
  assert bool(jnp.all((z >= lo - 1e-5) & (z <= hi + 1e-5)))


def test_serving_params_hold_the_transfer_and_nothing_of_the_contrast(initialised):
  model, params, features = initialised
  served_init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), features,
                                                  with_contrast=False))["params"]
  assert set(served_init) == set(serving_params(params)) == {
      "embedding", "backbone", "ctr_tower", "cvr_tower"}
  assert _size(served_init) == _size(serving_params(params))
  assert _size(serving_params(params)) + _size(params["contrast"]) == _size(params)
  apply = jax.jit(model.apply, static_argnames="with_contrast")
  served = apply({"params": serving_params(params)}, features, with_contrast=False)
  full = apply({"params": params}, features)
  for key in ("p_ctr", "p_cvr", "p_ctcvr"):
    np.testing.assert_array_equal(served[key], full[key])


def test_cvr_loss_reaches_the_ctr_network_through_the_transfer(schema):
  model, params, features = _init(small_config(**{**AITM, "contrast.mode": "none"}), schema)
  rng = np.random.default_rng(0)
  batch = {"click": jnp.ones(5), "conversion": jnp.asarray(rng.random(5) < 0.5, jnp.float32),
           "mask": jnp.ones(5)}

  def cvr_loss(params):
    outputs = model.apply({"params": params}, features)
    return pico_objective(outputs, batch, ctr_weight=0.0, ctcvr_weight=0.0, cvr_weight=1.0,
                          contrast_weight=0.0)[0]

  grad = jax.jit(jax.grad(cvr_loss))
  grads = grad(params)
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))
  assert norm(grads["backbone"]["bottom_0"]) > 0  # only path: transfer_1 -> ait_1
  assert norm(grads["backbone"]["transfer_1"]) > 0
  assert norm(grads["ctr_tower"]) == 0
  # Cutting the transfer (h3 of the transferred vector gets no say) removes that path.
  cut = jax.tree.map(lambda x: x, params)
  cut["backbone"]["transfer_1"] = jax.tree.map(jnp.zeros_like, params["backbone"]["transfer_1"])
  assert norm(grad(cut)["backbone"]["bottom_0"]) == 0


@pytest.mark.parametrize("mode", ["none", "fixed", "global", "personalized"])
def test_trains_with_every_contrast_variant_and_exports(mode, schema, tmp_path):
  config = small_config(**{**AITM, "contrast.mode": mode, "data.synthetic.num_rows": 2_000})
  losses, params = run_steps(config, jax.devices()[:1], 2)
  assert np.all(np.isfinite(losses))
  if mode != "personalized":
    return
  from pico_jax.data import load_dataset
  dataset = load_dataset(config)
  model = build_model(config, dataset.schema)
  manifest = export.export_model(model, params, dataset.schema, str(tmp_path),
                                 platforms=("cpu",))
  assert manifest["num_params"] == _size(serving_params(params)) < _size(params)
  assert any(p["name"].startswith("backbone/ait_1") for p in manifest["params"])
  features = {k: v[:7] for k, v in dataset.splits["test"].items() if k in B.FEATURE_KEYS}
  got = export.load(str(tmp_path))(features)
  want = model.apply({"params": params}, features, with_contrast=False)
  for key in export.OUTPUTS:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7)


def test_calibrator_is_zero_under_esmm_and_acts_on_an_entire_space_cvr_tower():
  ctr_logit, cvr_logit = jnp.array([-1.0, 0.0, 2.0]), jnp.array([3.0, 1.0, 0.5])
  batch = {"click": jnp.array([1.0, 0.0, 1.0]), "conversion": jnp.array([1.0, 0.0, 0.0]),
           "mask": jnp.ones(3)}

  def calibrator(logits, cvr_rows):
    a, b = logits
    p_ctr, p_cvr = jax.nn.sigmoid(a), jax.nn.sigmoid(b)
    outputs = dict(ctr_logit=a, cvr_logit=b, p_ctr=p_ctr, p_cvr=p_cvr, p_ctcvr=p_ctr * p_cvr)
    return pico_objective(outputs, batch, ctr_weight=0.0, ctcvr_weight=0.0, cvr_weight=0.0,
                          contrast_weight=0.0, cvr_rows=cvr_rows,
                          calibrator_weight=1.0)[1]["loss_calibrator"]

  logits = (ctr_logit, cvr_logit)
  # ESMM: p_ctcvr = p_ctr * p_cvr never exceeds p_ctr; nothing to penalise, no gradient.
  assert float(calibrator(logits, "clicked")) == 0.0
  assert all(float(jnp.abs(g).sum()) == 0 for g in jax.grad(calibrator)(logits, "clicked"))
  # An entire-space CVR tower above the CTR one (rows 0 and 1) is pushed down.
  p_ctr, p_cvr = jax.nn.sigmoid(ctr_logit), jax.nn.sigmoid(cvr_logit)
  assert float(calibrator(logits, "all")) == pytest.approx(
      float(jnp.mean(jnp.maximum(p_cvr - p_ctr, 0))), rel=1e-6)
  grad_ctr, grad_cvr = jax.grad(calibrator)(logits, "all")
  assert bool(jnp.all(grad_cvr[:2] > 0)) and float(grad_cvr[2]) == 0
  assert bool(jnp.all(grad_ctr[:2] < 0))


def test_bad_aitm_widths_name_the_key():
  from pico_jax.config import validate
  from pico_jax.config_keys import ConfigError
  for hidden in ((), (16, 0)):
    with pytest.raises(ConfigError, match=r"model\.aitm\.bottom_hidden"):
      validate(small_config(**{**AITM, "model.aitm.bottom_hidden": hidden}))
  validate(small_config(**AITM))
