"""The positive-control generator: shapes, seeding, calibrated rates, what r controls."""

import numpy as np
import pytest

from conftest import small_config
from pico_jax import batch as B
from pico_jax import config as config_lib
from pico_jax.config_keys import ConfigError
from pico_jax.data import load_dataset, positive_control

SMALL = dict(num_rows=40_000, num_users=200, num_items=100)


def _all_rows(d):
  return {k: np.concatenate([d.splits[s][k] for s in ("train", "val", "test")])
          for k in d.splits["train"]}


@pytest.fixture(scope="module")
def mixed():
  return positive_control.generate(seed=1, relatedness="mixed", **SMALL)


def test_shapes_dtypes_and_inputs_are_ids_only(mixed):
  train = mixed.splits["train"]
  n = len(train[B.CLICK])
  assert n == 32_000 and len(mixed.splits["val"][B.CLICK]) == 4_000
  assert train[B.SPARSE].shape == (n, 5) and train[B.SPARSE].dtype == np.int32
  for key in (B.CLICK, B.CONVERSION, B.P_CTR_TRUE, B.P_CVR_TRUE, B.R_TRUE, B.ORACLE_SHARED):
    assert train[key].shape == (n,) and train[key].dtype == np.float32, key
  # No dense inputs at all, so no copy of a latent: the shared factor is learned.
  assert mixed.schema.dense == () and mixed.schema.multi == ()
  assert B.DENSE not in train and B.MULTI not in train
  for j, field in enumerate(mixed.schema.sparse):
    assert 1 <= train[B.SPARSE][:, j].min() and train[B.SPARSE][:, j].max() < field.vocab_size
  # The oracle column is an extra, never in B.FEATURE_KEYS (the model reads it only with
  # config.model.oracle_feature).
  assert B.ORACLE_SHARED in mixed.schema.extras and B.ORACLE_SHARED not in B.FEATURE_KEYS


def test_same_seed_same_arrays_other_seed_other_arrays(mixed):
  again = positive_control.generate(seed=1, relatedness="mixed", **SMALL)
  other = positive_control.generate(seed=2, relatedness="mixed", **SMALL)
  for key, col in mixed.splits["train"].items():
    np.testing.assert_array_equal(col, again.splits["train"][key])
  assert mixed.info["cvr_bias"] == again.info["cvr_bias"]
  assert not np.array_equal(mixed.splits["train"][B.CLICK], other.splits["train"][B.CLICK])


@pytest.mark.parametrize("relatedness", ["zero", "one", "mixed"])
@pytest.mark.parametrize("rate", [0.005, 0.02, 0.1])
def test_conversions_per_click_are_calibrated(relatedness, rate):
  d = positive_control.generate(seed=0, relatedness=relatedness, conversions_per_click=rate,
                                **SMALL)
  cols = _all_rows(d)
  clicked = cols[B.CLICK] > 0
  # b_v is bisected so that the expected rate over the clicks is the target exactly;
  # the realised rate is within 4 binomial standard errors of it.
  assert cols[B.P_CVR_TRUE][clicked].mean() == pytest.approx(rate, rel=1e-4)
  realised = cols[B.CONVERSION][clicked].mean()
  assert abs(realised - rate) < 4 * np.sqrt(rate * (1 - rate) / clicked.sum())
  assert np.all(cols[B.CONVERSION] <= cols[B.CLICK])


def test_r_controls_whether_conversion_follows_the_click_factor():
  logit = lambda p: np.log(p / (1 - p))
  corr = {}
  for relatedness in ("zero", "one", "mixed"):
    cols = _all_rows(positive_control.generate(seed=0, relatedness=relatedness, **SMALL))
    corr[relatedness] = np.corrcoef(cols[B.ORACLE_SHARED], logit(cols[B.P_CVR_TRUE]))[0, 1]
  assert corr["one"] > 0.85 and abs(corr["zero"]) < 0.05
  assert 0.2 < corr["mixed"] < corr["one"]


def test_mixed_r_follows_the_context_and_varies_within_it(mixed):
  cols = _all_rows(mixed)
  r, context = cols[B.R_TRUE], cols[B.SEGMENT]
  means = [r[context == s].mean() for s in range(positive_control.NUM_CONTEXTS)]
  assert np.all(np.diff(means) > 0)  # ordered by the observed context field.
  assert np.mean([r[context == s].std() for s in range(positive_control.NUM_CONTEXTS)]) > 0.05
  assert mixed.info["rho"] == pytest.approx(means, abs=1e-6)
  # The signal's variance does not depend on r: r shared + sqrt(1 - r^2) indep.
  assert np.all((r > 0) & (r < 1))


def test_bad_settings_are_rejected():
  with pytest.raises(ValueError, match="relatedness='half'"):
    positive_control.generate(seed=0, relatedness="half", num_rows=100)
  with pytest.raises(ValueError, match="conversions_per_click=1.5"):
    positive_control.generate(seed=0, conversions_per_click=1.5, num_rows=100)


def test_data_seed_is_separate_from_the_model_seed():
  """data.synthetic.seed fixes the data whatever config.seed is; -1 follows config.seed."""
  def data(**overrides):
    config = small_config(**{"data.synthetic.kind": "positive_control",
                             "data.synthetic.positive_control.num_rows": 2_000,
                             **overrides})
    return load_dataset(config_lib.validate(config)).splits["train"][B.CLICK]
  np.testing.assert_array_equal(data(**{"seed": 1, "data.synthetic.seed": 5}),
                                data(**{"seed": 2, "data.synthetic.seed": 5}))
  assert not np.array_equal(data(seed=1), data(seed=2))  # -1: the data follow the seed.
  np.testing.assert_array_equal(data(seed=5), data(**{"seed": 0, "data.synthetic.seed": 5}))
  with pytest.raises(ConfigError, match="data.synthetic.seed"):
    data(**{"data.synthetic.seed": -2})


@pytest.mark.parametrize("arm", [{"model.transfer": "ctr_logit"},
                                 {"model.oracle_feature": True}])
def test_a_positive_control_run_reports_expected_aucs(tmp_path, caplog, arm):
  """End to end: the arms train on the positive control, and the expected AUCs reach
  the metrics file, TensorBoard's scalars (the same records) and the eval log line."""
  import json
  import logging
  from pico_jax.train.loop import train_and_evaluate
  config = small_config(**{"data.synthetic.kind": "positive_control",
                           "data.synthetic.positive_control.num_rows": 4_000,
                           "data.synthetic.positive_control.relatedness": "mixed",
                           "contrast.mode": "none", "train.early_stopping_metric": "cvr_eauc",
                           **arm})
  with caplog.at_level(logging.INFO, logger="pico_jax"):
    result = train_and_evaluate(config_lib.validate(config), str(tmp_path))
  for key in ("ctr_eauc", "cvr_eauc", "ctcvr_eauc", "mean_eauc", "oracle_cvr_auc"):
    assert 0 < result[key] < 1, key
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert all("cvr_eauc" in r for r in records if r["split"] in ("val", "test"))
  assert any("cvr_eauc=" in m for m in caplog.messages if m.startswith("eval val"))


def _digest(d) -> str:
  import hashlib
  h = hashlib.sha256()
  for s in ("train", "val", "test"):
    for k in sorted(d.splits[s]):
      h.update(k.encode())
      h.update(np.ascontiguousarray(d.splits[s][k]).tobytes())
  h.update(repr(d.info["cvr_bias"]).encode())
  return h.hexdigest()


@pytest.mark.parametrize("relatedness,expected", [
    ("one", "da7917d0a9bfb327b9422230e9b074916e47f2eff6829d328226eff18b51cb86"),
    ("zero", "9c817d98801656569840851fe81fd34f7b93909882af2b7b0b2883de727119a5"),
    ("mixed", "4ba4938d2c0f569c0f5bf45eb0181a07966d0681f36c24ea67fecd86b2427916")])
def test_shares_scores_is_bit_identical_to_the_generator_before_the_axis(relatedness,
                                                                          expected):
  # Digests of the generator as it was before `shares` existed (section 4's data).
  d = positive_control.generate(seed=3, num_rows=20_000, num_users=100, num_items=80,
                                conversions_per_click=0.005, relatedness=relatedness)
  assert _digest(d) == expected
  assert _digest(positive_control.generate(
      seed=3, num_rows=20_000, num_users=100, num_items=80, conversions_per_click=0.005,
      relatedness=relatedness, shares="scores")) == expected


def _corr(x, y):
  return float(np.corrcoef(x, y)[0, 1])


def test_representations_share_the_latents_not_the_score():
  kw = dict(seed=4, relatedness="one", conversions_per_click=0.02, num_rows=60_000)
  scores = _all_rows(positive_control.generate(shares="scores", **kw))
  reps = _all_rows(positive_control.generate(shares="representations", **kw))
  # The click side is the same draw under both: only the conversion's factor changes.
  np.testing.assert_array_equal(scores[B.P_CTR_TRUE], reps[B.P_CTR_TRUE])
  np.testing.assert_array_equal(scores[B.CLICK], reps[B.CLICK])
  ctr_logit = np.log(reps[B.P_CTR_TRUE] / (1 - reps[B.P_CTR_TRUE]))
  # scores: the conversion factor is the click factor; representations: nearly
  # uncorrelated with it (tr M = 0), yet a function of the same latents.
  assert _corr(scores[B.ORACLE_SHARED], ctr_logit) > 0.8
  assert abs(_corr(reps[B.ORACLE_SHARED], ctr_logit)) < 0.1
  clicked = reps[B.CLICK] > 0
  cvr_logit = np.log(reps[B.P_CVR_TRUE] / (1 - reps[B.P_CVR_TRUE]))
  # At r = 1 the conversion logit is b_v + q_i + signal * shared_cvr: the oracle column
  # carries all of it but the item quality.
  assert _corr(reps[B.ORACLE_SHARED][clicked], cvr_logit[clicked]) > 0.9


def test_cross_map_is_a_traceless_rotation_and_seeded():
  m = positive_control._cross_map(np.random.default_rng(0), 4)
  np.testing.assert_allclose(m @ m.T, np.eye(4), atol=1e-12)
  assert abs(np.trace(m)) < 1e-12
  x = np.random.default_rng(1).normal(size=4)
  assert abs(x @ m @ x) < 1e-12
  np.testing.assert_array_equal(m, positive_control._cross_map(np.random.default_rng(0), 4))
  assert not np.allclose(m, positive_control._cross_map(np.random.default_rng(1), 4))
  a = positive_control.generate(seed=5, shares="representations", num_rows=5_000)
  b = positive_control.generate(seed=5, shares="representations", num_rows=5_000)
  np.testing.assert_array_equal(a.splits["train"][B.P_CVR_TRUE], b.splits["train"][B.P_CVR_TRUE])


@pytest.mark.parametrize("shares", ["scores", "representations"])
def test_r_zero_owes_nothing_to_the_latents_the_click_uses(shares):
  d = _all_rows(positive_control.generate(seed=6, relatedness="zero", shares=shares,
                                          num_rows=40_000))
  cvr_logit = np.log(d[B.P_CVR_TRUE] / (1 - d[B.P_CVR_TRUE]))
  assert abs(_corr(d[B.ORACLE_SHARED], cvr_logit)) < 0.05


def test_bad_shares_and_odd_latent_dim_are_refused():
  with pytest.raises(ValueError, match="shares='both'"):
    positive_control.generate(seed=0, shares="both", num_rows=1_000)
  with pytest.raises(ValueError, match="latent_dim=3"):
    positive_control.generate(seed=0, shares="representations", latent_dim=3, num_rows=1_000)
  config = small_config()
  config.data.synthetic.positive_control.shares = "both"
  with pytest.raises(config_lib.ConfigError, match="shares"):
    config_lib.validate(config)
