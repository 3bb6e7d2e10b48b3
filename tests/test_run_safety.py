"""One writer per work directory, and a Ctrl-C that saves (issue 26, rows 4 and 7)."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from test_cli import one_error_line
from test_faults import launch_env, train_command, write_config
from pico_jax import workdir as workdir_lib

# Long enough that the second run starts while the first trains; the first is stopped
# by Ctrl-C once the second was refused.
_LONG = {"model.backbone": "shared_bottom", "train.steps": 400, "train.log_every": 5,
         "train.eval_every": 10, "checkpoint.enabled": True, "checkpoint.every_steps": 10,
         "data.synthetic.num_rows": 2_000, "mesh.data": 1}


def _wait_for(proc, lines, text, timeout=240):
  """Reads ``proc``'s output into ``lines`` until a line holds ``text``."""
  deadline = time.time() + timeout
  for line in proc.stdout:
    lines.append(line)
    if text in line:
      return
    assert time.time() < deadline, "".join(lines[-20:])
  raise AssertionError(f"{text!r} never came:\n" + "".join(lines[-30:]))


def _records(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_a_second_run_is_refused_and_ctrl_c_saves(tmp_path):
  config = write_config(tmp_path / "long.py", _LONG)
  env = launch_env(1, tmp_path / "jax_cache")
  workdir = str(tmp_path / "run")
  first = subprocess.Popen(train_command(config, workdir), env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  lines = []
  try:
    _wait_for(first, lines, " step 5/")
    second = subprocess.run(train_command(config, workdir), env=env, capture_output=True,
                            text=True, timeout=120)
    line = one_error_line(second)
    assert f"is in use by another training run: pid {first.pid} on host " \
           f"{socket.gethostname()!r}" in line, line
    assert first.poll() is None, "the first run ended before the second was refused"
    first.send_signal(signal.SIGINT)
    rest, _ = first.communicate(timeout=120)
  finally:
    first.kill()
  out = "".join(lines) + rest
  assert first.returncode == 130, out[-3000:]
  assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
  last = out.strip().splitlines()[-1]
  assert last.startswith("error: interrupted (Ctrl-C) at step "), last
  step = int(last.split(" at step ")[1].split(":")[0])
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*orbax-checkpoint-tmp*"))
  # One writer: every evaluation once, in step order.
  keys = [(r["step"], r["split"]) for r in _records(os.path.join(workdir, "metrics.jsonl"))]
  assert keys == sorted(set(keys)) and keys, keys
  steps = [r["step"] for r in _records(os.path.join(workdir, "train_metrics.jsonl"))]
  assert steps == sorted(set(steps)), steps


_WATCH = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from pico_jax.train.periodic import PreemptionWatch
with PreemptionWatch() as watch:
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(0.2)
  print("first", watch.requested(0), watch.interrupted, flush=True)
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(5)
print("not aborted", flush=True)
"""


def test_a_second_ctrl_c_aborts_at_once_in_one_line():
  proc = subprocess.run([sys.executable, "-c", _WATCH.format(root=ROOT)], text=True,
                        capture_output=True, timeout=60,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 130, proc.stderr
  assert proc.stdout == "first True True\n"
  assert proc.stderr.splitlines() == [
      "error: aborted by a second Ctrl-C, without saving; the same command resumes from "
      "the latest complete checkpoint"], proc.stderr


def _dead_pid() -> int:
  child = subprocess.Popen(["true"])
  child.wait()
  return child.pid


def test_a_stale_lock_is_taken_over_with_one_line(tmp_path, caplog):
  path = tmp_path / workdir_lib.LOCK_FILE
  path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                              "started": "2026-01-01T00:00:00+00:00"}))
  with caplog.at_level("WARNING", logger="pico_jax"):
    with workdir_lib.writer_lock(str(tmp_path)):
      assert json.loads(path.read_text())["pid"] == os.getpid()
  assert [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
  assert not path.exists()


@pytest.mark.parametrize("holder,expect", [
    ({"pid": os.getppid(), "host": socket.gethostname()}, "is in use by another training run"),
    ({"pid": _dead_pid(), "host": "elsewhere"}, "if that run is gone, remove the lock file"),
    (None, "the work directory's lock file is unreadable"),
])
def test_a_held_or_unreadable_lock_refuses_and_names_it(tmp_path, holder, expect):
  path = tmp_path / workdir_lib.LOCK_FILE
  path.write_text("{garbled" if holder is None else json.dumps(holder))
  with pytest.raises(workdir_lib.WorkdirBusyError, match=expect) as error:
    with workdir_lib.writer_lock(str(tmp_path)):
      pass
  assert str(path) in str(error.value)
  assert path.exists() and not glob.glob(str(tmp_path / "*.tmp"))


def test_the_lock_works_without_hard_links(tmp_path, monkeypatch):
  def no_links(*_):
    raise OSError(1, "Operation not permitted")
  monkeypatch.setattr(os, "link", no_links)
  with workdir_lib.writer_lock(str(tmp_path)):
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {os.getpid()} on host"):
      with workdir_lib.writer_lock(str(tmp_path)):
        pass
  assert os.listdir(tmp_path) == []


def test_a_uri_work_directory_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  """os.makedirs('gs://b/run') would make a local directory 'gs:' and train into it."""
  from conftest import small_config
  from pico_jax.train import loop
  monkeypatch.chdir(tmp_path)
  with pytest.raises(workdir_lib.WorkdirError, match=r"--workdir=gs://b/run: a work "
                     r"directory is a path on a file system every host shares"):
    loop.train_and_evaluate(small_config(), "gs://b/run")
  assert os.listdir(tmp_path) == []
