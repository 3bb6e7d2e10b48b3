"""Checkpoint integrity: every restore checks the checksums recorded at save (issue 19:
a flipped byte in a checkpoint resumed silently with other numbers)."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import small_config
from pico_jax import parallel
from pico_jax.train import checkpoint as ckpt_lib
from pico_jax.train import checkpoint_integrity as integrity
from pico_jax.train import trainer as trainer_lib

RUN = {"model.backbone": "shared_bottom", "train.steps": 4, "checkpoint.enabled": True,
       "checkpoint.every_steps": 2, "checkpoint.keep": 3, "mesh.data": -1}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A work directory with the checkpoints of steps 2 and 4 of a real (small) model."""
  workdir = str(tmp_path_factory.mktemp("integrity") / "run")
  trainer = trainer_lib.build(small_config(**RUN), workdir)
  for step in (2, 4):
    trainer.checkpointer.save(step, trainer.state, trainer.data, trainer.config)
  trainer.close()
  return workdir


def _copy(workdir, tmp_path):
  import shutil
  target = str(tmp_path / "run")
  shutil.copytree(workdir, target)
  return target


def _flip_byte(path, fraction):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[int(len(data) * fraction)] ^= 0xFF
    f.seek(0)
    f.write(data)


def test_a_flipped_byte_is_named_never_resumed(saved_run, tmp_path):
  """The issue's repro: XOR one byte at 50% of the largest array file of the latest
  checkpoint, then resume."""
  workdir = _copy(saved_run, tmp_path)
  files = glob.glob(os.path.join(workdir, "checkpoints", "4", "state", "ocdbt.process_0",
                                 "d", "*"))
  _flip_byte(max(files, key=os.path.getsize), 0.5)
  with pytest.raises(ckpt_lib.CheckpointRestoreError) as e:
    trainer_lib.build(small_config(**RUN), workdir)
  message = str(e.value)
  assert "checkpoint 4 in" in message and "'state' item" in message, message
  assert "to resume from step 2 (earlier complete checkpoints: 2)" in message, message


def test_a_changed_value_names_the_leaf(saved_run, tmp_path):
  """A value changed in place (a decodable corruption) is named by its leaf."""
  workdir = _copy(saved_run, tmp_path)
  ckpt = ckpt_lib.Checkpointer(workdir, keep=3)
  record = ckpt._recorded(4)
  ckpt.close()
  leaf = "params/backbone/bottom/dense_0/kernel"
  record["items"]["state"][leaf] = "00000000:00000000"
  with open(os.path.join(workdir, "checkpoints", "4", "integrity", "metadata"), "w") as f:
    json.dump(record, f)
  with pytest.raises(ckpt_lib.CheckpointIntegrityError,
                     match=f"checkpoint 4 .* is damaged: its 'state' item: leaf '{leaf}' does "
                           "not match the checksum recorded when it was saved"):
    trainer_lib.build(small_config(**RUN), workdir)


def test_a_changed_config_is_named(saved_run, tmp_path):
  workdir = _copy(saved_run, tmp_path)
  path = os.path.join(workdir, "checkpoints", "4", "config", "metadata")
  with open(path) as f:
    config = json.load(f)
  config["model"]["embed_dim"] = 9
  with open(path, "w") as f:
    json.dump(config, f)
  with pytest.raises(ckpt_lib.CheckpointIntegrityError, match="its 'config' item"):
    trainer_lib.build(small_config(**RUN), workdir)


def test_a_saved_inf_is_refused_on_restore(tmp_path):
  """A state holding inf (saved by an older version, which did not check the optimizer
  state) is not resumed."""
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  state = {"params": {"w": jnp.ones(4)}, "nu": jnp.asarray([1.0, jnp.inf])}
  from test_resume import _CONFIG, _iterator
  ckpt.save(1, state, _iterator(), _CONFIG)
  ckpt.wait()
  with pytest.raises(ckpt_lib.CheckpointIntegrityError, match="leaf 'nu' holds NaN or inf"):
    ckpt.restore_state(1, ckpt_lib.abstract_like(state))
  ckpt.close()


def test_checksums_do_not_depend_on_the_mesh():
  x = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)
  on_eight = jax.device_put(x, jax.sharding.NamedSharding(parallel.make_mesh(8, 1),
                                                          jax.sharding.PartitionSpec("data")))
  on_one = jax.device_put(x, jax.devices()[0])
  assert integrity.summarize({"a": on_eight}) == integrity.summarize({"a": on_one})
  changed = x.copy()
  changed.view(np.uint32)[17, 2] ^= 1  # one bit of one value.
  assert integrity.summarize({"a": changed})["a"][0] != integrity.summarize({"a": x})["a"][0]
