"""The compiled train step: learning, device-count invariance, variants, the loop."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import small_config
from pico_jax import parallel
from pico_jax.train.loop import train_and_evaluate
from pico_jax.train.step import objective_kwargs
from pico_jax.train.trainer import build


def run_steps(config, devices, num_steps):
  """Trains ``num_steps`` on a mesh over ``devices``; returns (losses, host params)."""
  config.train.steps = num_steps
  trainer = build(config, mesh=parallel.make_mesh(len(devices), 1, devices))
  losses = []
  for batch in trainer.batches():
    trainer.state, metrics = trainer.train_step(trainer.state, batch)
    losses.append(float(metrics["loss"]))
  trainer.close()
  return np.array(losses), jax.device_get(trainer.state.params)


@pytest.fixture(scope="module")
def one_and_eight():
  config = small_config()
  return run_steps(config, jax.devices()[:1], 4), run_steps(config, jax.devices()[:8], 4)


def test_eight_devices_give_the_same_numbers_as_one(one_and_eight):
  (loss_1, params_1), (loss_8, params_8) = one_and_eight
  assert len(jax.devices()) >= 8
  np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params_8, params_1)


@pytest.mark.parametrize("device_prefetch", [0, 2])
def test_same_seed_same_numbers(one_and_eight, device_prefetch):
  """Also with the batches placed on the devices ahead by a background thread."""
  (loss_1, _), _ = one_and_eight
  again, _ = run_steps(small_config(**{"data.device_prefetch": device_prefetch}),
                       jax.devices()[:1], 4)
  np.testing.assert_array_equal(again, loss_1)


def test_loss_decreases_over_training():
  config = small_config(**{"optimizer.learning_rate": 3e-3})
  losses, _ = run_steps(config, jax.devices()[:1], 120)
  assert np.all(np.isfinite(losses))
  assert losses[-30:].mean() < 0.8 * losses[:10].mean()


@pytest.mark.parametrize("mode", ["none", "fixed", "global", "personalized"])
def test_every_variant_trains(mode):
  config = small_config(**{"contrast.mode": mode, "model.backbone": "shared_bottom"})
  losses, params = run_steps(config, jax.devices()[:1], 3)
  assert np.all(np.isfinite(losses))
  assert ("contrast" in params) == (mode != "none")


def test_local_negatives_group_by_data_shard():
  """Shard-local negatives use one group per data shard (the loss itself is checked in
  test_sharding.py)."""
  mesh = parallel.make_mesh(4, 2)
  assert objective_kwargs(small_config(), mesh)["negative_groups"] == 1
  local = small_config(**{"contrast.negatives": "local"})
  assert objective_kwargs(local, mesh)["negative_groups"] == 4


def test_train_and_evaluate_writes_metrics_and_checkpoint(tmp_path):
  config = small_config(**{"checkpoint.enabled": True, "checkpoint.every_steps": 10})
  result = train_and_evaluate(config, str(tmp_path))
  for key in ("ctr_auc", "cvr_auc", "ctcvr_auc", "ctr_logloss", "oracle_ctr_auc",
              "tau_segment_0"):
    assert key in result and np.isfinite(result[key]), key
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [10, 20, 20]
  assert records[-1]["split"] == "test" and records[-1]["ctr_auc"] == result["ctr_auc"]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]
