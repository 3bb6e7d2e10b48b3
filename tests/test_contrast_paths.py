"""The contrast head's less used settings: the relatedness network reading the towers
(``contrast.relatedness_input``), gradients into its input
(``contrast.relatedness_stop_gradient``) and the label-agreement supervision of the
relatedness logit (``contrast.relatedness_supervision_weight``). docs/method.md
describes them."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import small_config
from pico_jax import batch as B
from pico_jax import parallel
from pico_jax.data import load_dataset, pipeline
from pico_jax.losses import pico_objective
from pico_jax.models import build_model
from pico_jax.train.state import example_features
from pico_jax.train.step import objective_kwargs
from pico_jax.train.trainer import build

BATCH = 64


@pytest.fixture(scope="module")
def data():
  """(schema, one training batch with its mask) of the small synthetic dataset."""
  dataset = load_dataset(small_config())
  batch = next(pipeline.train_iterator(dataset.splits["train"], global_batch_size=BATCH,
                                       num_batches=1, seed=0, num_threads=1))
  # Both label values must occur, or the agreement supervision has one class only.
  assert 0 < batch[B.CLICK].sum() < BATCH and (batch[B.CLICK] == batch[B.CONVERSION]).any()
  return dataset.schema, batch


def _config(**overrides):
  return small_config(**{"contrast.mode": "personalized", **overrides})


def _init(config, schema):
  model = build_model(config, schema)
  params = model.init(jax.random.PRNGKey(0), example_features(schema), train=False)["params"]
  return model, nn.meta.unbox(params)


def _term_grads(config, schema, batch):
  """{loss term: its gradient w.r.t. the params} at a fixed init, one compilation for
  every term (the terms are ``pico_objective``'s: loss_ctr, loss_contrast, ...)."""
  model, params = _init(config, schema)
  objective = objective_kwargs(config, parallel.make_mesh(1, 1, jax.devices()[:1]))

  def terms(p):
    out = model.apply({"params": p}, B.features(batch), train=True)
    return {k: v for k, v in pico_objective(out, batch, **objective)[1].items()
            if k.startswith("loss_")}

  return jax.jit(jax.jacrev(terms))(params)


@pytest.fixture(scope="module")
def term_grads(data):
  """(source, stop_gradient) -> ``_term_grads`` of the personalized model with every
  loss term present (supervision weight 1), flattened by parameter path; cached, so the
  gradient tests share four compilations."""
  cache = {}

  def get(source, stop_gradient):
    if (source, stop_gradient) not in cache:
      config = _config(**{"contrast.relatedness_input": source,
                          "contrast.relatedness_stop_gradient": stop_gradient,
                          "contrast.relatedness_supervision_weight": 1.0})
      cache[source, stop_gradient] = {
          term: _paths(g) for term, g in _term_grads(config, *data).items()}
    return cache[source, stop_gradient]

  return get


def _paths(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(k.key for k in path): np.asarray(leaf) for path, leaf in flat}


def _reached(grads):
  """The parameter paths of ``grads`` ({path: gradient}) whose gradient is not exactly
  zero."""
  return {path for path, g in grads.items() if np.any(g != 0)}


def _under(grads, *prefixes):
  return {path for path in grads if path.startswith(prefixes)}


def _train(config, steps):
  """``steps`` compiled train steps on one device: (initial params, final params,
  host metrics of every step)."""
  config.train.steps = steps
  trainer = build(config, mesh=parallel.make_mesh(1, 1, jax.devices()[:1]))
  before = jax.device_get(trainer.state.params)
  metrics = []
  for batch in trainer.batches():
    trainer.state, m = trainer.train_step(trainer.state, batch)
    metrics.append(m)
  return before, jax.device_get(trainer.state.params), jax.device_get(metrics)


# --------------------------------------------------------------- relatedness input


def test_relatedness_network_reads_the_tower_representations(data):
  schema, batch = data
  c = _config()
  e_dim = (len(schema.sparse) + len(schema.multi)) * c.model.embed_dim + c.model.dense_dim
  h_dim = c.model.tower_hidden[-1]
  taus = {}
  for source, in_dim in (("embedding", e_dim), ("towers", 2 * h_dim)):
    model, params = _init(_config(**{"contrast.relatedness_input": source}), schema)
    kernel = params["contrast"]["relatedness"]["dense_0"]["kernel"]
    assert kernel.shape == (in_dim, c.contrast.relatedness_hidden[0]), source
    tau = jax.jit(lambda p: model.apply({"params": p}, B.features(batch))["tau"])
    # Changing only the CTR tower's hidden layer (not its logit, not the embeddings)
    # must move tau exactly when tau is computed from the towers' representations.
    moved = jax.tree.map(lambda x: x, params)
    moved["ctr_tower"]["mlp"]["dense_0"]["kernel"] = (
        params["ctr_tower"]["mlp"]["dense_0"]["kernel"] * 3.0 + 0.1)
    taus[source] = np.asarray(tau(params)), np.asarray(tau(moved))
  np.testing.assert_array_equal(*taus["embedding"])
  assert np.max(np.abs(taus["towers"][0] - taus["towers"][1])) > 1e-4


def test_towers_input_with_supervision_trains_and_reports_the_supervision_loss():
  weight = 0.5
  config = _config(**{"contrast.relatedness_input": "towers",
                      "contrast.relatedness_supervision_weight": weight,
                      "optimizer.learning_rate": 1e-2})
  before, after, metrics = _train(config, 4)
  for m in metrics:
    assert all(np.isfinite(v) for v in m.values())
    # The supervision term is reported and is part of the optimised total.
    w = config.loss
    total = (w.ctr_weight * m["loss_ctr"] + w.ctcvr_weight * m["loss_ctcvr"]
             + w.cvr_weight * m["loss_cvr"] + config.contrast.weight * m["loss_contrast"]
             + weight * m["loss_relatedness"])
    np.testing.assert_allclose(m["loss"], total, rtol=1e-5)
  tau = [float(m["tau_mean"]) for m in metrics]
  assert all(config.contrast.tau_min <= t <= config.contrast.tau_max for t in tau)
  assert tau[-1] != tau[0]  # the temperature is learned, not constant.
  for name in ("relatedness", "relatedness_logit"):
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before["contrast"][name],
                           after["contrast"][name])
    assert all(jax.tree.leaves(changed)), name


def test_supervision_loss_value_and_absence_at_weight_zero(data):
  """loss_relatedness = BCE of sigmoid(-r) against agreement (click == conversion);
  sigmoid(-r) is high where r, and so tau, is low: a low tau predicts related tasks."""
  schema, batch = data
  config = _config(**{"contrast.relatedness_supervision_weight": 1.0})
  model, params = _init(config, schema)
  out = jax.jit(lambda p: model.apply({"params": p}, B.features(batch)))(params)
  mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
  _, terms = pico_objective(out, batch, **objective_kwargs(config, mesh))
  r = np.asarray(out["relatedness_logit"], np.float64)
  agree = (batch[B.CLICK] == batch[B.CONVERSION]).astype(np.float64)
  p_agree = 1 / (1 + np.exp(r))
  expected = -np.mean(agree * np.log(p_agree) + (1 - agree) * np.log1p(-p_agree))
  np.testing.assert_allclose(terms["loss_relatedness"], expected, rtol=1e-5)
  _, plain = pico_objective(out, batch, **objective_kwargs(_config(), mesh))
  assert "loss_relatedness" not in plain


# ---------------------------------------------------------- stop-gradient structure

# The parameters that compute the relatedness network's input: the embeddings, or the
# embeddings, backbone and tower hidden layers (never the tower logits: the
# representations h come before them).
_INPUT_PATH = {"embedding": ("embedding/",),
               "towers": ("embedding/", "backbone/", "ctr_tower/mlp/", "cvr_tower/mlp/")}


@pytest.mark.parametrize("source", ["embedding", "towers"])
@pytest.mark.parametrize("stop_gradient", [True, False])
def test_supervision_gradient_reaches_the_input_only_without_stop_gradient(
    term_grads, source, stop_gradient):
  """The supervision loss depends on the parameters through the relatedness logit
  alone: its gradient reaches the relatedness network and, only when the stop-gradient
  is off, the parameters that compute the network's input."""
  grads = term_grads(source, stop_gradient)["loss_relatedness"]
  prefixes = ("contrast/relatedness",) + (() if stop_gradient else _INPUT_PATH[source])
  assert _reached(grads) == _under(grads, *prefixes)


@pytest.mark.parametrize("source", ["embedding", "towers"])
def test_contrastive_gradient_through_tau_reaches_the_input_without_stop_gradient(
    term_grads, source):
  """The contrastive loss: switching the stop-gradient off adds the path through tau
  to the gradient of the relatedness input's parameters and changes no other one."""
  on, off = (term_grads(source, sg)["loss_contrast"] for sg in (True, False))
  for path, g in on.items():
    if not path.startswith(_INPUT_PATH[source]):
      np.testing.assert_allclose(off[path], g, rtol=1e-5, atol=1e-8, err_msg=path)
    elif path.endswith("kernel") or path == "embedding/table":
      assert np.max(np.abs(off[path] - g)) > 1e-6 * np.max(np.abs(g)), path
  # With the stop-gradient on, tau is still learned from the contrastive loss.
  assert {"contrast/relatedness/dense_0/kernel",
          "contrast/relatedness_logit/kernel"} <= _reached(on)
