"""Resume safety: a resume continues the run exactly or stops with one clear error.

Only a save cut short is skipped (test_checkpoint.py); everything else that keeps the
latest checkpoint from resuming names the step, the item and the cause, and never
falls back to an older checkpoint or to step 0. Two-process preemption is in
test_multihost.py.
"""

import glob
import json
import os
import signal
import subprocess

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import small_config
from pico_jax import parallel
from pico_jax.data import pipeline
from pico_jax.train import checkpoint as ckpt_lib
from pico_jax.train import trainer as trainer_lib
from test_faults import launch_env, train_command, write_config

_CONFIG = ml_collections.ConfigDict({"model": {"embed_dim": 4}, "train": {"steps": 10}})


def _iterator():
  return pipeline.train_iterator({"click": np.arange(64, dtype=np.float32)},
                                 global_batch_size=8, num_batches=100, seed=0,
                                 num_threads=1, prefetch=0)


def _state(value, mesh):
  table = jnp.full((64, 4), value, jnp.float32)
  return {"params": {"table": jax.device_put(table, NamedSharding(mesh, P("data")))},
          "step": jnp.asarray(int(value), jnp.int32)}


@pytest.fixture
def two_checkpoints(tmp_path):
  """A work directory with complete checkpoints of steps 1 and 2 (8-device mesh)."""
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
  it = _iterator()
  mesh = parallel.make_mesh(8, 1)
  for step in (1, 2):
    next(it)
    ckpt.save(step, _state(step, mesh), it, _CONFIG)
  ckpt.close()
  return str(tmp_path), os.path.join(str(tmp_path), "checkpoints", "2")


def _resume(workdir, mesh=None):
  ckpt = ckpt_lib.Checkpointer(workdir, keep=3)
  try:
    target = ckpt_lib.abstract_like(_state(0, mesh or parallel.make_mesh(8, 1)))
    return ckpt.restore_latest(target, _iterator(), _CONFIG)
  finally:
    ckpt.close()


def test_a_changed_iterator_state_stops_naming_the_step(two_checkpoints):
  workdir, latest = two_checkpoints
  with open(os.path.join(latest, "data", "process_0-of-1.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(ckpt_lib.CheckpointIntegrityError,
                     match=r"checkpoint 2 in .* is damaged: its 'data' item: file "
                           r"'process_0-of-1.json' does not match the checksum .* remove "
                           r".*checkpoints/2 to resume from step 1"):
    _resume(workdir)


def test_another_process_count_stops_saying_what_to_do(two_checkpoints):
  workdir, latest = two_checkpoints
  data = os.path.join(latest, "data")
  os.rename(os.path.join(data, "process_0-of-1.json"), os.path.join(data, "process_0-of-2.json"))
  with open(os.path.join(data, "process_1-of-2.json"), "w") as f:
    f.write("{}")
  with pytest.raises(ckpt_lib.CheckpointRestoreError,
                     match=r"checkpoint 2 .* written by 2 process\(es\); this job has 1\. .*"
                           r"rerun with 2 process\(es\)"):
    _resume(workdir)


def test_a_failing_read_stops_naming_the_step_and_cause(two_checkpoints, monkeypatch):
  workdir, _ = two_checkpoints

  def denied(self, step, args=None):
    raise PermissionError(13, "Permission denied", f"checkpoints/{step}/state")
  monkeypatch.setattr(ocp.CheckpointManager, "restore", denied)
  with pytest.raises(ckpt_lib.CheckpointRestoreError,
                     match=r"checkpoint 2 .*PermissionError: .*Permission denied"):
    _resume(workdir)


def test_another_mesh_with_the_same_process_count_resumes(two_checkpoints):
  workdir, _ = two_checkpoints
  state, step = _resume(workdir, parallel.make_mesh(2, 1, jax.devices()[:2]))
  assert step == 2 and len(state["params"]["table"].sharding.device_set) == 2
  np.testing.assert_array_equal(state["params"]["table"], np.full((64, 4), 2.0))


def test_damaged_arrays_give_one_readable_error(tmp_path):
  """The last two checkpoints of a real run truncated on disk: the resume stops at once
  with one error naming the step and the array, not pages of asyncio tracebacks."""
  overrides = {"model.backbone": "shared_bottom", "train.steps": 4, "train.log_every": 2,
               "train.eval_every": 4, "checkpoint.enabled": True, "checkpoint.every_steps": 2,
               "mesh.data": -1}
  workdir = str(tmp_path / "run")
  trainer = trainer_lib.build(small_config(**overrides), workdir)
  for step in (2, 4):
    trainer.checkpointer.save(step, trainer.state, trainer.data, trainer.config)
  trainer.close()
  for step in (2, 4):
    for path in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "d",
                                       "*"), recursive=True):
      os.truncate(path, 8)
  config = write_config(tmp_path / "config.py", overrides)
  proc = subprocess.run(train_command(config, workdir), env=launch_env(8, tmp_path / "cache"),
                        capture_output=True, text=True, timeout=300)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 1, output[-3000:]
  assert "error: checkpoint 4 in" in output
  assert "cannot read its 'state' item: array '" in output
  assert "Event loop is closed" not in output
  assert len(output.splitlines()) < 40, output[-5000:]


def test_preempted_grid_exits_cleanly_and_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch):
  """pico_jax.experiments: SIGTERM in the middle of a run with early stopping returns
  cleanly; the rerun resumes that run from its checkpoint, replays its evaluations and
  finishes with the numbers of a run that was never interrupted."""
  from pico_jax import experiments
  base = small_config(**{"model.backbone": "shared_bottom", "train.steps": 24,
                         "train.log_every": 4, "train.eval_every": 4,
                         "train.early_stopping_metric": "ctr_logloss", "train.patience": 3,
                         "checkpoint.enabled": True, "checkpoint.every_steps": 100})
  reference = experiments.run_grid(base.copy_and_resolve_references(), str(tmp_path / "ref"),
                                  [], [], [0])
  batches = trainer_lib.Trainer.batches

  def preempted_after(n):
    def wrapped(self):
      for i, batch in enumerate(batches(self)):
        if i == n:
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch
    return wrapped
  workdir = str(tmp_path / "grid")
  monkeypatch.setattr(trainer_lib.Trainer, "batches", preempted_after(10))
  assert experiments.run_grid(base.copy_and_resolve_references(), workdir, [], [], [0]) is None
  run_dir = os.path.join(workdir, "seed=0")
  assert not os.path.exists(os.path.join(run_dir, "result.json"))
  assert ckpt_lib.Checkpointer(run_dir, read_only=True).all_steps() == [11]
  assert os.path.isdir(os.path.join(run_dir, "checkpoints", "11", "best"))  # best params.
  monkeypatch.setattr(trainer_lib.Trainer, "batches", batches)
  (row,) = experiments.run_grid(base.copy_and_resolve_references(), workdir, [], [], [0])
  (expected,) = reference
  for key in ("ctr_auc", "cvr_auc", "ctcvr_auc", "best_step", "steps_trained"):
    assert row[key] == expected[key], key
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    got = [json.loads(line) for line in f]
  with open(os.path.join(str(tmp_path / "ref"), "seed=0", "metrics.jsonl")) as f:
    assert got == [json.loads(line) for line in f]


class _Killed(Exception):
  """Stands for a SIGKILL: the run stops between two steps, after its last save."""


def _killed_after(n):
  batches = trainer_lib.Trainer.batches

  def wrapped(self):
    for i, batch in enumerate(batches(self)):
      if i == n:
        raise _Killed()
      yield batch
  return wrapped


def killed_and_resumed(config, tmp_path, monkeypatch) -> tuple[str, str]:
  """(reference, workdir): ``config`` trained uninterrupted into ``reference``, and into
  ``workdir`` killed after step 17 (its checkpoint every 5 steps: 15 is the latest) and
  resumed to the end."""
  from pico_jax.train import loop
  reference, workdir = str(tmp_path / "reference"), str(tmp_path / "run")
  loop.train_and_evaluate(config.copy_and_resolve_references(), reference)
  batches = trainer_lib.Trainer.batches
  monkeypatch.setattr(trainer_lib.Trainer, "batches", _killed_after(17))
  with pytest.raises(_Killed):
    loop.train_and_evaluate(config.copy_and_resolve_references(), workdir)
  assert ckpt_lib.Checkpointer(workdir, read_only=True).latest_step() == 15
  monkeypatch.setattr(trainer_lib.Trainer, "batches", batches)
  loop.train_and_evaluate(config.copy_and_resolve_references(), workdir)
  return reference, workdir


def _without_throughput(path) -> list[str]:
  """The lines of train_metrics.jsonl up to the wall-clock rates (the last two keys, the
  only ones that depend on the machine's speed), as bytes on disk."""
  with open(path) as f:
    return [line.split(', "steps_per_sec"')[0] for line in f]


def test_train_metrics_after_a_resume_equal_the_uninterrupted_run(tmp_path, monkeypatch):
  """Logging every 10 steps, saving every 5: a run killed after step 17 resumes from 15,
  inside the window of steps 11-20; its record of step 20 must still average steps
  11-20, as the run that never stopped logged it (issue 19: it averaged 16-20)."""
  config = small_config(**{"model.backbone": "shared_bottom", "train.steps": 20,
                           "train.log_every": 10, "train.eval_every": 100,
                           "checkpoint.enabled": True, "checkpoint.every_steps": 5,
                           "mesh.data": -1})
  reference, workdir = killed_and_resumed(config, tmp_path, monkeypatch)
  got = _without_throughput(os.path.join(workdir, "train_metrics.jsonl"))
  assert got == _without_throughput(os.path.join(reference, "train_metrics.jsonl"))
  assert len(got) == 2 and got[1].startswith('{"step": 20, "split": "train", ')
