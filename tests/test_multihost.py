"""Multi-process training: 2 local processes x 4 CPU devices equal 1 process x 8."""

import json
import os
import socket
import subprocess

import jax
import numpy as np
import pytest

from pico_jax import parallel
from pico_jax.train import checkpoint as ckpt_lib
from test_faults import launch_env, train_command, write_config

OVERRIDES = {"model.backbone": "shared_bottom", "train.steps": 6, "train.log_every": 3,
             "train.eval_every": 6, "checkpoint.enabled": True, "checkpoint.every_steps": 3}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_two_processes_train_like_one(tmp_path):
  config = write_config(tmp_path / "config.py", OVERRIDES)
  cache = tmp_path / "jax_cache"
  single = str(tmp_path / "single")
  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [subprocess.Popen(
      train_command(config, multi, "--distributed=on", f"--coordinator_address=localhost:{port}",
                    "--num_processes=2", f"--process_id={i}"),
      env=launch_env(4, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  reference = subprocess.run(train_command(config, single, "--distributed=off"),
                             env=launch_env(8, cache), capture_output=True, text=True,
                             timeout=300)
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i}:\n{log[-4000:]}"
  assert reference.returncode == 0, reference.stderr[-4000:]
  assert "process 0 of 2 joined the job" in logs[0]
  # Logs and metrics come from process 0 only.
  assert "eval test step 6" in logs[0] and "eval test step 6" not in logs[1]

  expected, got = ckpt_lib.load_state_arrays(single), ckpt_lib.load_state_arrays(multi)
  assert int(got["step"]) == OVERRIDES["train.steps"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               got, expected)
  for a, b in zip(_records(multi), _records(single), strict=True):
    assert (a.keys(), a["split"], a["step"]) == (b.keys(), b["split"], b["step"])
    numbers = sorted(k for k in a if k not in ("split", "step"))
    np.testing.assert_allclose([a[k] for k in numbers], [b[k] for k in numbers], rtol=1e-4)


def test_distributed_auto_stays_single_process_without_a_launcher(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
               "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize_distributed("auto") is False
  assert parallel.initialize_distributed("off", coordinator_address="localhost:1") is False
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert parallel._cluster_detected() == "SLURM"
  with pytest.raises(ValueError, match="--distributed='maybe'"):
    parallel.initialize_distributed("maybe")
