"""Faults: SIGKILL and SIGTERM mid-run, NaN losses, incompatible resumes."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, small_config
from pico_jax import batch as B
from pico_jax.data import load_dataset, pipeline
from pico_jax.train import checkpoint as ckpt_lib
from pico_jax.train import loop
from pico_jax.train import step as step_lib
from pico_jax.train import trainer as trainer_lib
from pico_jax.train.optimizer import learning_rate_schedule

# A tiny model that compiles fast; the kill test runs it in fresh processes.
TINY = {"model.backbone": "shared_bottom", "train.steps": 120, "train.log_every": 1,
        "train.eval_every": 40, "checkpoint.enabled": True, "checkpoint.every_steps": 10,
        "checkpoint.keep": 2, "mesh.data": 2}
# The kill test runs under a learning-rate schedule: resuming must restore its position.
SCHEDULE = {"optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 30}


def write_config(path, overrides: dict) -> str:
  """A config file for launch/train.py: the test suite's small config + ``overrides``."""
  # The whole config as a literal: importing conftest there would reset the device count.
  with open(path, "w") as f:
    f.write("import ml_collections\n\n"
            "def get_config():\n"
            f"  return ml_collections.ConfigDict({small_config(**overrides).to_dict()!r})\n")
  return str(path)


def launch_env(devices: int, cache_dir) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             # Restarts load their compiled steps instead of compiling them again.
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def train_command(config_path, workdir, *flags):
  return [sys.executable, os.path.join(ROOT, "launch", "train.py"), f"--config={config_path}",
          f"--workdir={workdir}", *flags]


def _run_until(cmd, env, *, step: int, sig: int) -> tuple[int, str]:
  """Runs ``cmd``, sends ``sig`` once it logs training step ``step``; (exit code, log)."""
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines = []
  sent = False
  for line in proc.stdout:
    lines.append(line)
    if not sent and f" step {step}/" in line:
      proc.send_signal(sig)
      sent = True
  code = proc.wait(timeout=120)
  assert sent, "".join(lines[-30:])
  return code, "".join(lines)


def saved_state(workdir, step=None) -> dict:
  """The saved train state of ``step`` (default: the latest) as host numpy arrays, read
  onto one device whatever mesh saved it."""
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    step = ckpt.latest_step() if step is None else step
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          ckpt.manager.item_metadata(step).state)
    return jax.tree.map(np.asarray, ckpt.restore_state(step, target))
  finally:
    ckpt.close()


def _records(workdir, filename="metrics.jsonl"):
  with open(os.path.join(workdir, filename)) as f:
    return [json.loads(line) for line in f]


def test_killed_and_preempted_runs_resume_to_the_uninterrupted_result(tmp_path):
  config = write_config(tmp_path / "tiny.py", {**TINY, **SCHEDULE})
  env = launch_env(2, tmp_path / "jax_cache")
  reference = str(tmp_path / "reference")
  subprocess.run(train_command(config, reference), env=env, check=True, timeout=300,
                 capture_output=True)
  workdir = str(tmp_path / "interrupted")
  rng = np.random.default_rng(0)
  first, second, third = sorted(rng.choice(np.arange(5, 115), size=3, replace=False))
  # SIGKILL: no chance to clean up; the step's checkpoint may be half-written.
  code, _ = _run_until(train_command(config, workdir), env, step=first, sig=signal.SIGKILL)
  assert code == -signal.SIGKILL
  # SIGTERM (preemption): saves the current step and exits cleanly.
  code, log = _run_until(train_command(config, workdir), env, step=second, sig=signal.SIGTERM)
  assert code == 0, log[-3000:]
  assert "preempted (SIGTERM) at step" in log
  stopped = int(log.split("preempted (SIGTERM) at step ")[1].split(":")[0])
  assert stopped >= second
  assert ckpt_lib.Checkpointer(workdir, read_only=True).latest_step() == stopped
  code, _ = _run_until(train_command(config, workdir), env, step=third, sig=signal.SIGKILL)
  assert code == -signal.SIGKILL
  done = subprocess.run(train_command(config, workdir), env=env, timeout=300,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resumed from the checkpoint of step" in done.stderr

  expected, got = saved_state(reference), saved_state(workdir)
  assert int(got["step"]) == TINY["train.steps"]
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  assert _records(workdir) == _records(reference)
  # The logged rate of every step is the schedule's, in both runs (log_every = 1).
  schedule = learning_rate_schedule(small_config(**{**TINY, **SCHEDULE}).optimizer,
                                    TINY["train.steps"])
  for run in (reference, workdir):
    logged = {r["step"]: r["learning_rate"] for r in _records(run, "train_metrics.jsonl")}
    assert sorted(logged) == list(range(1, TINY["train.steps"] + 1))
    for step, lr in logged.items():  # the update that made step s ran at s - 1.
      assert lr == pytest.approx(float(schedule(step - 1)), rel=1e-5, abs=1e-12), step


_DIVERGE = {**TINY, "train.steps": 12, "train.log_every": 5, "train.eval_every": 100,
            "checkpoint.every_steps": 4, "mesh.data": -1}
_SENTINEL = 7777.0  # a dense value marking the rows of the poisoned batches.


def _poisoned_loader(first_bad_batch: int, value: float):
  """load_dataset, with ``value`` as the dense features of the rows of training batches
  from ``first_bad_batch`` on (epoch 0 order)."""
  def load(cfg):
    dataset = load_dataset(cfg)
    train = dataset.splits["train"]
    order = pipeline.epoch_permutation(len(train[B.CLICK]), cfg.seed, 0)
    bad = order[first_bad_batch * cfg.train.batch_size:]
    train[B.DENSE] = train[B.DENSE].copy()
    train[B.DENSE][bad] = value
    return dataset
  return load


def _nan_gradients(monkeypatch):
  """NaN gradients under a finite loss in the batches marked with _SENTINEL: the loss
  gains 0 * sqrt(x - x), whose value is 0 and whose gradient is 0 * inf."""
  objective = step_lib.pico_objective

  def poisoned(outputs, batch, **kwargs):
    loss, metrics = objective(outputs, batch, **kwargs)
    x = outputs["p_ctr"][0]
    term = jax.lax.cond(jnp.any(batch[B.DENSE] == _SENTINEL),
                        lambda v: 0.0 * jnp.sqrt(v - v), lambda v: 0.0 * v, x)
    return loss + term, metrics
  monkeypatch.setattr(step_lib, "pico_objective", poisoned)
  monkeypatch.setattr(trainer_lib, "load_dataset", _poisoned_loader(5, _SENTINEL))


def _inf_optimizer_state(monkeypatch):
  """An optimizer whose state (only: loss, gradients and params stay finite) holds an
  inf after its 6th update."""
  def poison():
    def update(updates, state, params=None):
      count = state["count"] + 1
      return updates, {"count": count, "x": jnp.where(count >= 6, jnp.inf, 0.0)}
    return optax.GradientTransformation(
        lambda _: {"count": jnp.zeros((), jnp.int32), "x": jnp.zeros(())}, update)
  make = trainer_lib.make_optimizer
  monkeypatch.setattr(trainer_lib, "make_optimizer",
                      lambda *args: optax.chain(make(*args), poison()))


@pytest.mark.parametrize("fault", ["nan_loss", "nan_gradients", "nan_gradients_lazy_adam",
                                   "inf_optimizer_state"])
def test_divergence_stops_with_a_clear_error_and_never_reaches_a_checkpoint(
    tmp_path, monkeypatch, fault):
  """Batch index 5 is step 6: steps 1-5 are finite, the checkpoint of step 4 is the
  last one; the state of step 6 (due at 8) is never saved."""
  if fault == "nan_loss":
    monkeypatch.setattr(trainer_lib, "load_dataset", _poisoned_loader(5, np.nan))
  elif fault.startswith("nan_gradients"):
    _nan_gradients(monkeypatch)
  else:
    _inf_optimizer_state(monkeypatch)
  with pytest.raises(loop.DivergenceError) as e:
    # The row-sparse optimizer checks the rows it touched (its own finite flag).
    lazy = {"optimizer.embedding_optimizer": "lazy_adam"} if fault.endswith("lazy_adam") else {}
    loop.train_and_evaluate(small_config(**_DIVERGE, **lazy), str(tmp_path))
  message = str(e.value)
  assert "diverged at step 6" in message and "(step 4," in message, message
  assert "learning_rate" in message
  if fault == "inf_optimizer_state":
    assert "loss=" in message and "non-finite opt_state/1/x" in message, message
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.all_steps() == [4]
  ckpt.close()
  state = saved_state(str(tmp_path))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def test_resuming_a_different_model_names_the_mismatch(tmp_path):
  overrides = {**TINY, "mesh.data": -1}
  config = small_config(**overrides)
  # A checkpoint of this config, written without training (quicker to build).
  trainer = trainer_lib.build(config, str(tmp_path))
  trainer.checkpointer.save(10, trainer.state, trainer.data, config)
  trainer.close()
  with pytest.raises(ckpt_lib.CheckpointMismatchError) as e:
    loop.train_and_evaluate(
        small_config(**{**overrides, "model.shared_bottom.hidden": (32,)}), str(tmp_path))
  message = str(e.value)
  assert "params/backbone/bottom/dense_0/kernel: saved shape" in message
  assert "model.shared_bottom.hidden: [16] -> [32]" in message
