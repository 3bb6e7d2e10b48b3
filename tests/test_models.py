"""Model shapes, temperature range, variants and the serving path."""

import jax
import numpy as np
import pytest

from conftest import small_config
from pico_jax.data import synthetic
from pico_jax.models import build_model, serving_params
from pico_jax.models.backbones import BACKBONES, Backbone
from pico_jax.train.state import example_features


@pytest.fixture(scope="module")
def schema():
  return synthetic.generate(seed=0, num_rows=1_000, num_users=50, num_items=40).schema


def _init(config, schema, batch=4):
  model = build_model(config, schema)
  features = example_features(schema, batch)
  params = jax.jit(lambda k: model.init(k, features))(jax.random.PRNGKey(0))["params"]
  return model, params, features


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_backbone_output_shapes(backbone, schema):
  config = small_config(**{"model.backbone": backbone})
  model, params, features = _init(config, schema, batch=5)
  out = model.apply({"params": params}, features)
  for key in ("ctr_logit", "cvr_logit", "p_ctr", "p_cvr", "p_ctcvr", "tau",
              "relatedness_logit"):
    assert out[key].shape == (5,), key
    assert out[key].dtype == np.float32, key
  assert out["z_ctr"].shape == out["z_cvr"].shape == (5, config.contrast.proj_dim)
  np.testing.assert_allclose(out["p_ctcvr"], out["p_ctr"] * out["p_cvr"], rtol=1e-6)


def test_backbone_towers_differ_per_task(schema):
  """MMoE/PLE give each task its own input: towers must not see identical vectors."""
  from pico_jax.models import backbones
  import jax.numpy as jnp
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 12))
  for module in (backbones.MMoE(4, (8,)), backbones.PLE(2, 2, 2, (8,))):
    variables = module.init(jax.random.PRNGKey(0), x)
    outs = module.apply(variables, x)
    assert outs[0].shape == outs[1].shape == (3, 8)
    assert not jnp.allclose(outs[0], outs[1])


def test_backbones_come_by_name_from_one_table(schema, monkeypatch):
  """``BACKBONES`` is the one place a backbone is named: the config's choices, and
  ``build_model`` makes whatever module a row names, with the fields of
  ``config.model.<name>``, which are the module's own."""
  import dataclasses
  import flax.linen as nn
  from configs import default
  from pico_jax.config import CHOICES
  assert CHOICES["model.backbone"] == tuple(BACKBONES)
  model_config = default.get_config().model
  for name, module in BACKBONES.items():
    fields = {f.name for f in dataclasses.fields(module)}
    assert set(model_config.get(name, {})) <= fields, name

  class Twin(Backbone):  # a new backbone: its module and its row, nothing else.
    width: int

    @nn.compact
    def __call__(self, x, *, train=False):
      return [nn.Dense(self.width, name=f"task_{t}")(x) for t in range(self.num_tasks)]

  monkeypatch.setitem(BACKBONES, "twin", Twin)
  config = small_config(**{"model.backbone": "twin"})
  config.model.twin = {"width": 6}
  _, params, _ = _init(config, schema)
  assert params["backbone"]["task_1"]["kernel"].shape[1] == 6
  config.model.backbone = "moe"
  with pytest.raises(ValueError, match=r"config\.model\.backbone='moe'; expected one of "
                     r"\('shared_bottom', 'mmoe', 'ple', 'aitm', 'twin'\)"):
    build_model(config, schema)


def test_ple_levels_stack(schema):
  config = small_config(**{"model.backbone": "ple", "model.ple.num_levels": 2})
  _, params, _ = _init(config, schema)
  assert {"cgc_0", "cgc_1"} <= set(params["backbone"])
  assert "gate_shared" in params["backbone"]["cgc_0"]
  assert "gate_shared" not in params["backbone"]["cgc_1"]


def test_tau_stays_in_range_for_extreme_inputs(schema):
  config = small_config(**{"contrast.tau_min": 0.07, "contrast.tau_max": 0.5})
  model, params, features = _init(config, schema, batch=8)
  rng = np.random.default_rng(0)
  features = dict(features)
  features["dense"] = rng.normal(0, 1e4, features["dense"].shape).astype(np.float32)
  big = jax.tree.map(lambda p: p * 100.0, params)
  for p in (params, big):
    tau = np.asarray(model.apply({"params": p}, features)["tau"])
    assert np.all(tau >= 0.07) and np.all(tau <= 0.5)


@pytest.mark.parametrize("mode,expected,absent", [
    ("none", set(), {"contrast"}),
    ("fixed", {"projection_ctr", "projection_cvr"}, {"relatedness", "tau_logit"}),
    ("global", {"projection_ctr", "projection_cvr", "tau_logit"}, {"relatedness"}),
    ("personalized", {"projection_ctr", "projection_cvr", "relatedness",
                      "relatedness_logit"}, {"tau_logit"}),
])
def test_variants_have_their_parameters(mode, expected, absent, schema):
  config = small_config(**{"contrast.mode": mode})
  model, params, features = _init(config, schema)
  contrast = set(params.get("contrast", {}))
  assert expected <= contrast
  assert not (absent & (contrast | set(params)))
  out = model.apply({"params": params}, features)
  if mode == "none":
    assert "tau" not in out
  else:
    tau = np.asarray(out["tau"])
    if mode in ("fixed", "global"):
      np.testing.assert_allclose(tau, config.contrast.tau_init, rtol=1e-5)


def test_serving_apply_has_no_contrast_parameters(schema):
  config = small_config()
  model, params, features = _init(config, schema)
  serving_init = model.init(jax.random.PRNGKey(0), features, with_contrast=False)["params"]
  assert "contrast" not in serving_init
  assert set(serving_init) == set(serving_params(params))
  served = model.apply({"params": serving_params(params)}, features, with_contrast=False)
  full = model.apply({"params": params}, features)
  assert not {"z_ctr", "z_cvr", "tau"} & set(served)
  for key in ("p_ctr", "p_cvr", "p_ctcvr"):
    np.testing.assert_array_equal(served[key], full[key])
  n_serving = sum(x.size for x in jax.tree.leaves(serving_params(params)))
  n_contrast = sum(x.size for x in jax.tree.leaves(params["contrast"]))
  assert n_serving + n_contrast == sum(x.size for x in jax.tree.leaves(params))


def test_multi_valued_pooling_respects_mask(schema):
  config = small_config()
  model, params, features = _init(config, schema, batch=2)
  features = dict(features)
  features["multi"] = np.array([[[3, 5, 0, 0]], [[3, 5, 7, 9]]], np.int32)
  features["multi_mask"] = np.array([[[1, 1, 0, 0]], [[1, 1, 0, 0]]], bool)
  out = model.apply({"params": params}, features)
  # Ids behind a False mask must not change anything.
  np.testing.assert_allclose(out["p_ctr"][0], out["p_ctr"][1], rtol=1e-6)
