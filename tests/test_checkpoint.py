"""Orbax checkpoints: retention, restore, half-written and incompatible checkpoints.

Resuming a whole training run is tested end to end in test_faults.py."""

import logging
import os
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import small_config
from pico_jax import config as config_lib
from pico_jax.config_keys import ConfigError
from pico_jax.data import pipeline
from pico_jax.train import checkpoint as ckpt_lib
from test_faults import saved_state


def _iterator():
  columns = {"click": np.arange(64, dtype=np.float32)}
  return pipeline.train_iterator(columns, global_batch_size=8, num_batches=100, seed=0,
                                 num_threads=1, prefetch=0)


def _state(value=0.0, width=4):
  return {"params": {"table": jnp.full((8, width), value, jnp.float32)},
          "step": jnp.asarray(int(value), jnp.int32)}


def _config(**model):
  c = ml_collections.ConfigDict({"model": {"embed_dim": 4, **model}, "train": {"steps": 10}})
  return c


def _checkpointer(tmp_path, mode="max", **kwargs):
  kwargs = {"keep": 2, "keep_best": 1, "best": ckpt_lib.BestCriterion("val", "ctr_auc", mode), **kwargs}
  return ckpt_lib.Checkpointer(str(tmp_path), **kwargs)


@pytest.mark.parametrize("mode,best", [("max", 2), ("min", 1)])
def test_keeps_the_latest_and_the_best(tmp_path, mode, best):
  ckpt = _checkpointer(tmp_path, mode)
  it = _iterator()
  aucs = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.7, 5: float("nan"), 6: 0.55}
  for step, auc in aucs.items():
    next(it)
    ckpt.save(step, _state(step), it, _config(), metrics={"val/ctr_auc": auc, "val/x": 1.0})
  ckpt.save(7, _state(7), it, _config())  # no evaluation at this step.
  ckpt.wait()
  assert ckpt.all_steps() == sorted({best, 6, 7})
  assert ckpt.best_step() == best
  ckpt.close()


def test_saving_an_existing_step_is_an_error_unless_overwritten(tmp_path):
  ckpt = _checkpointer(tmp_path)
  it = _iterator()
  ckpt.save(5, _state(5), it, _config())
  ckpt.wait()
  with pytest.raises(ckpt_lib.CheckpointExistsError, match="checkpoint 5 already exists"):
    ckpt.save(5, _state(6), it, _config())
  ckpt.save(5, _state(6), it, _config(), overwrite=True)
  ckpt.wait()
  ckpt.close()
  state = saved_state(str(tmp_path), 5)
  np.testing.assert_array_equal(state["params"]["table"], np.full((8, 4), 6.0))


def test_restore_brings_back_state_and_data_position(tmp_path):
  ckpt = _checkpointer(tmp_path)
  it = _iterator()
  next(it), next(it)
  ckpt.save(2, _state(2.0), it, _config())
  expected_next = next(it)
  ckpt.close()
  again = _checkpointer(tmp_path)
  fresh = _iterator()
  state, step = again.restore_latest(ckpt_lib.abstract_like(_state()), fresh, _config())
  assert step == 2
  np.testing.assert_array_equal(state["params"]["table"], np.full((8, 4), 2.0))
  np.testing.assert_array_equal(next(fresh)["click"], expected_next["click"])
  again.close()


def test_a_save_cut_short_is_skipped_with_a_warning(tmp_path, caplog):
  ckpt = _checkpointer(tmp_path, keep=3)
  it = _iterator()
  for step in (1, 2):
    ckpt.save(step, _state(step), it, _config())
  ckpt.close()
  directory = os.path.join(tmp_path, "checkpoints")
  # A save killed before it finished: orbax's temporary directory, half full.
  shutil.copytree(os.path.join(directory, "2"),
                  os.path.join(directory, "3.orbax-checkpoint-tmp-1234567"))
  with caplog.at_level(logging.WARNING, logger="pico_jax"):
    again = _checkpointer(tmp_path, keep=3)
    state, step = again.restore_latest(ckpt_lib.abstract_like(_state()), _iterator(),
                                       _config())
  assert step == 2
  np.testing.assert_array_equal(state["params"]["table"], np.full((8, 4), 2.0))
  assert "half-written" in caplog.text and "3.orbax-checkpoint-tmp-1234567" in caplog.text
  again.close()


def test_incompatible_model_fails_naming_the_mismatch(tmp_path):
  ckpt = _checkpointer(tmp_path)
  ckpt.save(1, _state(1.0, width=4), _iterator(), _config(embed_dim=4))
  ckpt.close()
  again = _checkpointer(tmp_path)
  with pytest.raises(ckpt_lib.CheckpointMismatchError) as e:
    again.restore_latest(ckpt_lib.abstract_like(_state(width=2)), _iterator(),
                         _config(embed_dim=2))
  message = str(e.value)
  assert "params/table: saved shape (8, 4), this config needs (8, 2)" in message
  assert "model.embed_dim: 4 -> 2" in message
  assert "train.steps" not in message
  again.close()


@pytest.mark.parametrize("key,value", [("checkpoint.best_metric", "ctr_auc"),
                                       ("checkpoint.keep", 0), ("checkpoint.keep_best", -1)])
def test_bad_checkpoint_settings_name_the_key(key, value):
  with pytest.raises(ConfigError, match=f"config.{key}"):
    config_lib.validate(small_config(**{key: value}))


def test_best_checkpoint_survives_a_restart(tmp_path):
  ckpt = _checkpointer(tmp_path, keep=1)
  it = _iterator()
  for step, auc in {1: 0.9, 2: 0.5}.items():
    ckpt.save(step, _state(step), it, _config(), metrics={"val/ctr_auc": auc})
  ckpt.close()
  again = _checkpointer(tmp_path, keep=1)
  again.save(3, _state(3), it, _config(), metrics={"val/ctr_auc": 0.6})
  again.wait()
  assert again.all_steps() == [1, 3]
  assert again.best_step() == 1
  again.close()


@pytest.mark.parametrize("key,value", [("train.batch_size", 16), ("seed", 1)])
def test_resuming_with_a_different_data_order_names_the_key(tmp_path, key, value):
  base = ml_collections.ConfigDict({"seed": 0, "model": {"embed_dim": 4},
                                    "train": {"steps": 10, "batch_size": 8}})
  ckpt = _checkpointer(tmp_path)
  ckpt.save(1, _state(1.0), _iterator(), base)
  ckpt.close()
  changed = ml_collections.ConfigDict(base.to_dict())
  section, _, leaf = key.rpartition(".")
  (changed[section] if section else changed)[leaf] = value
  again = _checkpointer(tmp_path)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=key):
    again.restore_latest(ckpt_lib.abstract_like(_state()), _iterator(), changed)
  # The same config resumes; a changed runtime-only key resumes too.
  base.train.steps = 20
  state, step = again.restore_latest(ckpt_lib.abstract_like(_state()), _iterator(), base)
  assert step == 1
  again.close()
