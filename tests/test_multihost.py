"""Multi-process training: 2 local processes x 4 CPU devices equal 1 process x 8, and
a SIGTERM (or a Ctrl-C) to the two-process job stops both at one step and resumes
bit-identically."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pico_jax import parallel
from pico_jax.train import checkpoint as ckpt_lib
from test_faults import launch_env, saved_state, train_command, write_config

STEPS = 12
OVERRIDES = {"model.backbone": "shared_bottom", "train.steps": STEPS, "train.log_every": 1,
             "train.eval_every": 6, "checkpoint.enabled": True, "checkpoint.every_steps": 6}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _launch(config, workdir, cache) -> list[subprocess.Popen]:
  """The two processes of one job (4 CPU devices each), logging to pipes."""
  port = _free_port()
  return [subprocess.Popen(
      train_command(config, workdir, "--distributed=on",
                    f"--coordinator_address=localhost:{port}", "--num_processes=2",
                    f"--process_id={i}"),
      env=launch_env(4, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]


def _finish(procs, codes=(0, 0)) -> list[str]:
  logs = [p.communicate(timeout=300)[0] for p in procs]
  expected = [codes[i] if i < len(codes) else 0 for i in range(len(procs))]
  # On a failure every process's log is shown: the one that failed first may be another.
  assert [p.returncode for p in procs] == expected, "\n".join(
      f"process {i} (exit {p.returncode}):\n{log[-3000:]}"
      for i, (p, log) in enumerate(zip(procs, logs)))
  return logs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """(directory, config file, work directory, logs) of an uninterrupted 2-process run;
  the same run in one process (8 devices) is trained beside it in ``<directory>/single``."""
  tmp = tmp_path_factory.mktemp("multihost")
  config = write_config(tmp / "config.py", OVERRIDES)
  workdir = str(tmp / "multi")
  procs = _launch(config, workdir, tmp / "jax_cache") + [subprocess.Popen(
      train_command(config, str(tmp / "single"), "--distributed=off"),
      env=launch_env(8, tmp / "jax_cache"), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)]
  return tmp, config, workdir, _finish(procs)[:2]


def test_two_processes_train_like_one(two_process_run):
  tmp, _, multi, logs = two_process_run
  single = str(tmp / "single")
  assert "process 0 of 2 joined the job" in logs[0]
  # Logs and metrics come from process 0 only.
  assert f"eval test step {STEPS}" in logs[0] and "eval test step" not in logs[1]

  expected, got = saved_state(single), saved_state(multi)
  assert int(got["step"]) == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               got, expected)
  for a, b in zip(_records(multi), _records(single), strict=True):
    assert (a.keys(), a["split"], a["step"]) == (b.keys(), b["split"], b["step"])
    numbers = sorted(k for k in a if k not in ("split", "step"))
    np.testing.assert_allclose([a[k] for k in numbers], [b[k] for k in numbers], rtol=1e-4)


def test_sigterm_or_ctrl_c_stops_both_processes_at_one_step_and_the_rerun_is_identical(
    two_process_run):
  tmp, config, uninterrupted, _ = two_process_run
  workdir = str(tmp / "preempted")
  procs = _launch(config, workdir, tmp / "jax_cache")
  head = []
  for line in procs[0].stdout:  # process 0 logs every step.
    head.append(line)
    if " step 2/" in line:  # early: the sync point needs a few steps to agree.
      procs[0].send_signal(signal.SIGTERM)
      procs[1].send_signal(signal.SIGINT)  # a Ctrl-C joins the same protocol.
      break
  logs = _finish(procs, codes=(0, 130))
  logs[0] = "".join(head) + logs[0]
  stopped = [re.findall(r"preempted \(SIGTERM\) at step (\d+)", logs[0]),
             re.findall(r"error: interrupted \(Ctrl-C\) at step (\d+): state saved", logs[1])]
  assert len(stopped[0]) == 1 and stopped[0] == stopped[1], logs
  assert "Traceback" not in logs[1], logs[1]
  step = int(stopped[0][0])
  assert 2 <= step < STEPS
  assert ckpt_lib.Checkpointer(workdir, read_only=True).latest_step() == step

  logs = _finish(_launch(config, workdir, tmp / "jax_cache"))
  assert f"resumed from the checkpoint of step {step}" in logs[0]
  expected = saved_state(uninterrupted)
  jax.tree.map(np.testing.assert_array_equal, saved_state(workdir), expected)
  assert _records(workdir) == _records(uninterrupted)


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


class _ShutDownClient:
  """A coordination client that answers until ``shut_down`` is set, then raises like
  jax's client after ``jax.distributed.shutdown``."""

  def __init__(self):
    self.store, self.shut_down = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.shut_down:
      raise RuntimeError("UNAVAILABLE: the coordination client was shut down")
    self.store[key] = value

  def key_value_try_get(self, key):
    if self.shut_down:
      raise RuntimeError("UNAVAILABLE: the coordination client was shut down")
    if key not in self.store:
      raise RuntimeError(f"NOT_FOUND: {key}")
    return self.store[key]


@pytest.mark.parametrize("ends_normally", [True, False])
def test_the_watch_of_a_process_that_ends_normally_never_reports_the_shutdown(
    monkeypatch, ends_normally):
  """jax's exit hook shuts the coordination client down after the watch's own hook: a
  watch still running then would take it for a lost coordinator and turn a finished run
  into exit 1 (it did, in CI). A watch whose process did not end is still told."""
  exits = []
  watch = parallel.PeerWatch(interval=0.01)
  monkeypatch.setattr(watch, "client", _ShutDownClient())
  watch.count, watch.index = 2, 0
  monkeypatch.setattr(parallel.os, "_exit", exits.append)
  watch.start()
  while "pico_jax/alive/0" not in watch.client.store:
    time.sleep(0.01)
  if ends_normally:
    watch._done()  # what atexit runs first.
    assert not watch.is_alive() and watch.client.store["pico_jax/done/0"] == "1"
  watch.client.shut_down = True
  reported = watch.lost.wait(timeout=0.5 if ends_normally else 10)
  watch._stopping.set()
  watch.join(timeout=5)
  if ends_normally:
    assert not reported and exits == []
  else:
    assert reported and set(exits) == {1}


def test_a_lost_process_ends_the_job_with_one_line(two_process_run):
  """SIGKILL of process 1 mid-run: process 0 exits with one line naming the lost
  process and the intact checkpoint (issue 19: it aborted after about 100 s with 81
  lines of thread dumps). The 60 s bound is a hang check: jax's heartbeat backstop
  would take 60 s plus its abort."""
  tmp = two_process_run[0]  # its compilation cache: the same steps, compiled once.
  config = write_config(tmp / "long.py", {**OVERRIDES, "train.steps": 400,
                                           "checkpoint.every_steps": 4})
  procs = _launch(config, str(tmp / "lost"), tmp / "jax_cache")
  for line in procs[0].stdout:
    if " step 9/" in line:
      procs[1].kill()
      break
  procs[1].wait(timeout=60)
  out = procs[0].communicate(timeout=60)[0]
  assert procs[0].returncode == 1, out[-3000:]
  errors = [line for line in out.splitlines()
            if "rror" in line or "Traceback" in line or "Fatal" in line]
  assert len(errors) == 1, out[-5000:]
  assert errors[0].startswith("error: process 1 of 2 was lost (no sign of life for 10 s); "
                              "process 0 stops too. The latest checkpoint, step "), errors
  assert "is intact: run the same command on every process to resume" in errors[0]


def test_a_process_that_never_joins_ends_the_wait_with_one_line(tmp_path):
  """Process 1 of 2 never starts (e.g. SIGTERM before jax.distributed.initialize):
  process 0 gives up after the initialization timeout (5 s here, 60 by default) with
  one line instead of jax's abort and stack dump."""
  code = ("from pico_jax import parallel\n"
          f"parallel.initialize_distributed('on', coordinator_address='localhost:{_free_port()}',"
          " num_processes=2, process_id=0, initialization_timeout=5)\n")
  proc = subprocess.run([sys.executable, "-c", code], env=launch_env(1, tmp_path / "jax_cache"),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
      f"error: process 0 of 2: not every process joined the job at localhost:"
      f"{proc.stderr.split('localhost:')[1].split()[0]} within 5 s (one was stopped or "
      "never started); start all of them with the same --coordinator_address and "
      "--num_processes"], proc.stderr


def test_two_processes_stream_a_sharded_store_and_resume_identically(tmp_path):
  """Each process streams its half of 3 shards (row ranges inside the middle one); a
  SIGTERM mid-epoch and the rerun end where the uninterrupted 2-process run does."""
  from pico_jax.data import synthetic
  from test_sharded_store import write
  write(tmp_path / "store", synthetic.generate(seed=0, num_rows=1_250, num_users=50,
                                               num_items=40), num_shards=3)
  config = write_config(tmp_path / "config.py", {
      **OVERRIDES, "data.name": "store", "data.path": str(tmp_path / "store"),
      "data.shuffle_window": 256, "train.steps": 24, "checkpoint.every_steps": 4})
  reference = str(tmp_path / "reference")
  logs = _finish(_launch(config, reference, tmp_path / "jax_cache"))
  assert "process 0 of 2 joined the job" in logs[0]
  workdir = str(tmp_path / "preempted")
  procs = _launch(config, workdir, tmp_path / "jax_cache")
  for line in procs[0].stdout:
    if " step 9/" in line:  # mid-epoch: 1,000 rows, 64 a step.
      for p in procs:
        p.send_signal(signal.SIGTERM)
      break
  _finish(procs)
  step = ckpt_lib.Checkpointer(workdir, read_only=True).latest_step()
  assert 9 <= step < 24
  logs = _finish(_launch(config, workdir, tmp_path / "jax_cache"))
  assert f"resumed from the checkpoint of step {step}" in logs[0]
  jax.tree.map(np.testing.assert_array_equal, saved_state(workdir), saved_state(reference))
  assert _records(workdir) == _records(reference)
