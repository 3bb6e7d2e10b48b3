"""What a checkpoint says about itself (issue 26 rows 1, 4, 6, 8; issue 25 item 4): the
data it was trained on, its version marker, its saved metrics, and which step the
readers (evaluate, export, predict) use by default."""

import json
import logging
import os
import shutil

import pytest

from conftest import run_script, small_config
from test_checkpoint import _checkpointer, _config, _iterator, _state
from test_cli import one_error_line
from test_store import write_store
from pico_jax.data import integrity as store_integrity
from pico_jax.data import store
from pico_jax.train import checkpoint as ckpt_lib
from pico_jax.train import checkpoint_compat as compat
from pico_jax.train import restore as restore_lib
from pico_jax.train import trainer as trainer_lib
from pico_jax.train.loop import train_and_evaluate

_ROWS = {"train": 256, "val": 64, "test": 64}
_RUN = {"model.backbone": "shared_bottom", "contrast.mode": "none", "train.steps": 4,
        "train.log_every": 2, "train.eval_every": 2, "checkpoint.enabled": True,
        "checkpoint.every_steps": 2, "checkpoint.keep": 3, "mesh.data": -1,
        "data.name": "store"}


def _built_store(path, seed):
  """A store at ``path`` as a build writes it: its meta sealed with a fingerprint."""
  if os.path.exists(path):
    shutil.rmtree(path)
  write_store(path, _ROWS, seed=seed)
  meta = store.read_meta(str(path))
  if store_integrity.FINGERPRINT not in meta:
    files = [os.path.relpath(os.path.join(d, n), path).replace(os.sep, "/")
             for d, _, names in os.walk(path) for n in names if n != store.META]
    with open(os.path.join(path, store.META), "w") as f:
      json.dump(store_integrity.seal(meta, str(path), files), f)
  return store.read_meta(str(path))[store_integrity.FINGERPRINT]


@pytest.fixture(scope="module")
def store_run(tmp_path_factory):
  """(workdir, store path, its fingerprint) of a 4-step run on a store."""
  root = tmp_path_factory.mktemp("data")
  path = root / "store"
  fingerprint = _built_store(path, seed=0)
  workdir = str(root / "run")
  train_and_evaluate(small_config(**_RUN, **{"data.path": str(path)}), workdir)
  return workdir, path, fingerprint


def test_a_rebuilt_store_is_refused_on_resume_and_restore_naming_both(store_run, caplog):
  workdir, path, old = store_run
  new = _built_store(path, seed=1)
  try:
    config = small_config(**{**_RUN, "data.path": str(path), "train.steps": 6})
    with pytest.raises(ckpt_lib.CheckpointMismatchError) as error:
      trainer_lib.build(config, workdir)
    assert f"fingerprint {old}; this run reads store {path} with fingerprint {new}" in str(
        error.value) and "config.data.allow_new_data=True" in str(error.value)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match=f"fingerprint {new}"):
      restore_lib.restore(workdir)
    with caplog.at_level(logging.WARNING, logger="pico_jax"):
      trainer = restore_lib.restore(workdir, allow_new_data=True)
    assert "continuing on the new data" in caplog.text
    assert trainer.resumed_step == 4
  finally:
    _built_store(path, seed=0)


def test_a_store_without_a_fingerprint_compares_its_sources(caplog):
  saved = {"store": "/s", "fingerprint": None, "sources": ["aa", "bb"]}
  with caplog.at_level(logging.WARNING, logger="pico_jax"):
    compat.check_same_data("ckpt/2", saved, dict(saved), False)
  assert "compared the store's sources' BLAKE3 only" in caplog.text
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"sources' BLAKE3 \['aa', 'cc'\]"):
    compat.check_same_data("ckpt/2", saved, dict(saved, sources=["aa", "cc"]), False)


def _saved(workdir, steps=(2, 4), metrics=None):
  ckpt = _checkpointer(workdir, keep=3)
  it = _iterator()
  for step in steps:
    next(it)
    ckpt.save(step, _state(step), it, _config(), metrics=(metrics or {}).get(step))
  ckpt.close()
  return os.path.join(str(workdir), "checkpoints")


def _restore_state(workdir, step):
  ckpt = _checkpointer(workdir, keep=3)
  try:
    return ckpt.restore_state(step, ckpt_lib.abstract_like(_state(0)))
  finally:
    ckpt.close()


def test_a_deleted_integrity_item_is_damage_and_names_every_complete_checkpoint(tmp_path):
  directory = _saved(tmp_path, steps=(2, 4, 6))
  shutil.rmtree(os.path.join(directory, "4", "integrity"))
  with pytest.raises(ckpt_lib.CheckpointIntegrityError,
                     match=r"checkpoint 4 .* is damaged: its 'integrity' item: it is missing.*"
                           r"remove .*checkpoints/4 to resume from step 2 \(earlier complete "
                           r"checkpoints: 2; complete checkpoints after it: 6\)"):
    _restore_state(tmp_path, 4)
  # Deleting orbax's metadata as well does not make it old either.
  os.remove(os.path.join(directory, "4", "_CHECKPOINT_METADATA"))
  with pytest.raises(ckpt_lib.CheckpointIntegrityError, match=r"'integrity' item: it is missing"):
    _restore_state(tmp_path, 4)
  shutil.rmtree(os.path.join(directory, "2", "integrity"))
  with pytest.raises(ckpt_lib.CheckpointIntegrityError,
                     match=r"no earlier complete checkpoint is kept in .*; complete checkpoints "
                           r"after it: 6: restore"):
    _restore_state(tmp_path, 2)


def test_only_a_checkpoint_without_the_marker_is_old(tmp_path, caplog):
  directory = _saved(tmp_path, steps=(2,))
  meta_path = os.path.join(directory, "2", "_CHECKPOINT_METADATA")
  with open(meta_path) as f:
    meta = json.load(f)
  assert meta["custom_metadata"] == {"pico_jax_checkpoint_version": 2}
  meta["custom_metadata"] = {}
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  shutil.rmtree(os.path.join(directory, "2", "integrity"))
  with caplog.at_level(logging.WARNING, logger="pico_jax"):
    state = _restore_state(tmp_path, 2)
  assert int(state["step"]) == 2
  assert "checkpoint 2 in" in caplog.text and "is old: saved by a version before checksums" \
      in caplog.text


def test_a_garbled_metrics_item_is_one_line_naming_the_step(tmp_path):
  directory = _saved(tmp_path, metrics={2: {"val/ctr_auc": 0.6}, 4: {"val/ctr_auc": 0.7}})
  with open(os.path.join(directory, "4", "metrics", "metrics"), "w") as f:
    f.write('{"val/ctr_auc": 0.7')
  with pytest.raises(ckpt_lib.CheckpointIntegrityError,
                     match=r"checkpoint 4 .* is damaged: its 'metrics' item: its file "
                           r"metrics/metrics does not parse"):
    ckpt_lib.Checkpointer(str(tmp_path), read_only=True)


def test_the_readers_default_to_the_best_step_and_say_which(tmp_path, caplog):
  _saved(tmp_path, steps=(2, 4, 6),
         metrics={2: {"val/ctr_auc": 0.6}, 4: {"val/ctr_auc": 0.8}, 6: {"val/ctr_auc": 0.7}})
  ckpt = _checkpointer(tmp_path, keep=3)
  with caplog.at_level(logging.INFO, logger="pico_jax"):
    assert restore_lib.resolve_step(ckpt, restore_lib.DEFAULT) == 4
    assert restore_lib.resolve_step(ckpt, "latest") == 6
  ckpt.close()
  assert "using checkpoint 4 of" in caplog.text and "(the best by val/ctr_auc)" in caplog.text
  unevaluated = tmp_path / "unevaluated"
  _saved(unevaluated, steps=(2, 4))
  ckpt = _checkpointer(unevaluated, keep=3)
  with caplog.at_level(logging.INFO, logger="pico_jax"):
    assert restore_lib.resolve_step(ckpt, restore_lib.DEFAULT) == 4
  ckpt.close()
  assert "(the latest: none was saved with an evaluation of val/ctr_auc)" in caplog.text


def test_evaluate_reports_garbled_metrics_and_a_rebuilt_store_in_one_line(store_run, tmp_path):
  workdir, path, old = store_run
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  with open(os.path.join(copy, "checkpoints", "4", "metrics", "metrics"), "w") as f:
    f.write("garbled")
  line = one_error_line(run_script("evaluate", f"--workdir={copy}", "--checkpoint=best"))
  assert "checkpoint 4 in" in line and "its 'metrics' item" in line, line
  new = _built_store(path, seed=2)
  try:
    line = one_error_line(run_script("evaluate", f"--workdir={workdir}"))
    assert old in line and new in line, line
  finally:
    _built_store(path, seed=0)
