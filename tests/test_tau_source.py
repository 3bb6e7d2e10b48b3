"""The temperature's source in the InfoNCE: learned, oracle (the true relatedness) or
shuffled (the learned one permuted); neither of the last two ever reaches serving."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import small_config
from pico_jax import batch as B
from pico_jax import config as config_lib
from pico_jax import export
from pico_jax.losses import oracle_tau, pico_objective, source_tau
from pico_jax.models import serving_params
from pico_jax.train.trainer import build


def test_oracle_tau_is_decreasing_log_linear_with_declared_ends():
  r = jnp.linspace(0, 1, 11)
  tau = np.asarray(oracle_tau(r, 0.1, 1.0))
  assert tau[0] == pytest.approx(1.0) and tau[-1] == pytest.approx(0.1)
  assert (np.diff(tau) < 0).all()
  np.testing.assert_allclose(tau, 0.1 ** np.asarray(r), rtol=1e-5)


def test_shuffled_is_a_seeded_permutation_and_learned_the_identity():
  tau = jnp.arange(16.0)
  key = jax.random.PRNGKey(3)
  shuffled = np.asarray(source_tau(tau, {}, "shuffled", rng=key))
  assert sorted(shuffled) == list(range(16)) and not (shuffled == np.arange(16)).all()
  np.testing.assert_array_equal(shuffled, source_tau(tau, {}, "shuffled", rng=key))
  assert not (shuffled == np.asarray(source_tau(tau, {}, "shuffled",
                                                rng=jax.random.PRNGKey(4)))).all()
  assert source_tau(tau, {}, "learned") is tau
  with pytest.raises(ValueError, match="r_true"):
    source_tau(tau, {}, "oracle")
  with pytest.raises(ValueError, match="PRNG"):
    source_tau(tau, {}, "shuffled")


def _outputs_and_batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  outputs = {"ctr_logit": jnp.asarray(rng.normal(size=n), jnp.float32),
             "cvr_logit": jnp.asarray(rng.normal(size=n), jnp.float32),
             "z_ctr": jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
             "z_cvr": jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
             "tau": jnp.asarray(rng.uniform(0.1, 1.0, n), jnp.float32),
             "relatedness_logit": jnp.zeros(n, jnp.float32)}
  outputs["p_ctr"], outputs["p_cvr"] = (jax.nn.sigmoid(outputs[k])
                                        for k in ("ctr_logit", "cvr_logit"))
  outputs["p_ctcvr"] = outputs["p_ctr"] * outputs["p_cvr"]
  batch = {"click": jnp.asarray(rng.random(n) < 0.5, jnp.float32),
           "conversion": jnp.zeros(n, jnp.float32), "mask": jnp.ones(n, jnp.float32),
           "r_true": jnp.asarray(rng.random(n), jnp.float32)}
  return outputs, batch


def _contrast(outputs, batch, **kwargs):
  return float(pico_objective(outputs, batch, ctr_weight=1.0, ctcvr_weight=1.0,
                              cvr_weight=0.0, contrast_weight=1.0, **kwargs)[1]["loss_contrast"])


def test_the_objective_reads_its_tau_from_the_source():
  outputs, batch = _outputs_and_batch()
  learned = _contrast(outputs, batch)
  oracle = _contrast(outputs, batch, tau_source="oracle", tau_range=(0.1, 1.0))
  as_tau = _contrast({**outputs, "tau": oracle_tau(batch["r_true"], 0.1, 1.0)}, batch)
  assert oracle == pytest.approx(as_tau) and oracle != pytest.approx(learned)
  # The oracle reads r_true: another relatedness, another loss.
  other = {**batch, "r_true": 1 - batch["r_true"]}
  assert _contrast(outputs, other, tau_source="oracle") != pytest.approx(oracle)
  key = jax.random.PRNGKey(0)
  shuffled = _contrast(outputs, batch, tau_source="shuffled", rng=key)
  assert shuffled != pytest.approx(learned)
  same = {**outputs, "tau": jnp.full(32, 0.3)}  # a constant tau: permuting changes nothing.
  assert _contrast(same, batch, tau_source="shuffled", rng=key) == pytest.approx(
      _contrast(same, batch))


def test_config_refuses_sources_without_their_inputs():
  pc = {"data.synthetic.kind": "positive_control"}
  with pytest.raises(config_lib.ConfigError, match="positive-control"):
    config_lib.validate(small_config(**{"contrast.tau_source": "oracle"}))
  with pytest.raises(config_lib.ConfigError, match="shuffled"):
    config_lib.validate(small_config(**pc, **{"contrast.tau_source": "shuffled",
                                              "contrast.mode": "fixed"}))
  with pytest.raises(config_lib.ConfigError, match="tau_source"):
    config_lib.validate(small_config(**pc, **{"contrast.tau_source": "best"}))
  config_lib.validate(small_config(**pc, **{"contrast.tau_source": "oracle",
                                            "contrast.mode": "fixed"}))


@pytest.mark.parametrize("source,mode", [("oracle", "fixed"), ("shuffled", "personalized")])
def test_the_source_trains_but_never_reaches_serving(source, mode):
  config = small_config(**{
      "data.synthetic.kind": "positive_control", "contrast.mode": mode,
      "contrast.tau_source": source, "data.synthetic.positive_control.num_rows": 2_000,
      "data.synthetic.positive_control.relatedness": "mixed"})
  trainer = build(config)
  batch = next(iter(trainer.batches()))
  assert B.R_TRUE in batch  # the true relatedness travels as a non-feature column.
  start = trainer.state
  step = lambda b: trainer.train_step(jax.tree.map(jnp.copy, start), b)  # state donated.
  state, metrics = step(batch)
  # Seeded from the config seed: the same state and batch give the same step.
  assert float(metrics["loss_contrast"]) == float(step(batch)[1]["loss_contrast"])
  if source == "oracle":  # the training loss reads r_true ...
    moved = {**batch, B.R_TRUE: 1 - batch[B.R_TRUE]}
    assert float(step(moved)[1]["loss_contrast"]) != float(metrics["loss_contrast"])
  # ... serving neither holds the contrast head nor reads anything but the features.
  params = serving_params(jax.device_get(state.params))
  assert "contrast" not in params
  host = jax.device_get(batch)
  features = {k: v for k, v in host.items() if k in B.FEATURE_KEYS}
  assert B.R_TRUE not in B.features(host)
  out = export.serving_function(trainer.model)(params, features)
  assert set(out) == set(export.OUTPUTS)
  moved = trainer.eval_step(state.params, {**batch, B.R_TRUE: 1 - batch[B.R_TRUE]})
  np.testing.assert_allclose(out["p_cvr"], moved["p_cvr"], rtol=1e-5)


@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_a_fixed_tau_may_sit_at_either_end_of_its_range(tau):
  # The config accepts tau_min <= tau_init <= tau_max for a fixed tau; the head too.
  config = config_lib.validate(small_config(**{"contrast.mode": "fixed",
                                               "contrast.tau_init": tau}))
  trainer = build(config)
  out = trainer.eval_step(trainer.state.params, next(iter(trainer.batches())))
  np.testing.assert_allclose(out["tau"], tau)
