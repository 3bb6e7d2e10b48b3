"""Every checkpoint failure is one line naming the step, the path, the cause and the
earlier checkpoints, within seconds (issue 19: a read-only directory hung 5 minutes and
printed 137 lines, a full disk printed 735 lines, a deleted ``state/_METADATA`` was
called "another model").

The read-only and full file systems are real when this machine lets the tests mount a
tmpfs (root, as in the project's containers): a 3 MiB tmpfs, remounted read-only for
the permission case. Elsewhere they are simulated in-process: the probe's ``open``
raises EROFS, or ``shutil.disk_usage`` reports 1 MiB free; the command-line test
needs the real mount and is skipped without it.
"""

import errno
import os
import shutil
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest

from pico_jax.train import checkpoint as ckpt_lib
from pico_jax.train import checkpoint_failures as failures
from test_faults import launch_env, train_command, write_config
from test_resume import _CONFIG, _iterator, _resume, _state, two_checkpoints  # noqa: F401


def _mount(path, size="3m") -> bool:  # 3 MiB: room for a few small checkpoints.
  os.makedirs(path, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0


@pytest.fixture
def small_fs(tmp_path):
  """A 3 MiB tmpfs at ``tmp_path/fs``, or None where mounting is not allowed."""
  path = tmp_path / "fs"
  mounted = _mount(path)
  yield path if mounted else None
  if mounted:
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_missing_metadata_file_is_damage_not_another_model(two_checkpoints):
  workdir, latest = two_checkpoints
  os.remove(os.path.join(latest, "state", "_METADATA"))
  with pytest.raises(ckpt_lib.CheckpointIntegrityError,
                     match=r"checkpoint 2 .* is damaged: its 'state' item: its file "
                           r"state/_METADATA is missing .* remove .*checkpoints/2 to resume "
                           r"from step 1"):
    _resume(workdir)


def _saved(workdir, steps=(1, 2)):
  ckpt = ckpt_lib.Checkpointer(str(workdir), keep=3)
  from pico_jax import parallel
  mesh = parallel.make_mesh(8, 1)
  for step in steps:
    ckpt.save(step, _state(step, mesh), _iterator(), _CONFIG)
  ckpt.close()


def test_a_read_only_checkpoint_directory_fails_at_once(small_fs, tmp_path, monkeypatch):
  workdir = small_fs if small_fs is not None else tmp_path / "run"
  _saved(workdir)
  if small_fs is not None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
  else:
    def read_only(*args, **kwargs):
      raise OSError(errno.EROFS, "Read-only file system", args[0])
    monkeypatch.setattr(failures, "open", read_only, raising=False)
  with pytest.raises(ckpt_lib.CheckpointWriteError) as e:
    ckpt_lib.Checkpointer(str(workdir), keep=3)
  message = str(e.value)
  assert "cannot write a checkpoint in" in message and "read-only file system" in message
  assert "the complete checkpoints (1, 2) are untouched" in message, message
  assert "resumes from step 2" in message


def test_a_full_disk_fails_before_the_save(small_fs, tmp_path, monkeypatch):
  workdir = small_fs if small_fs is not None else tmp_path / "run"
  _saved(workdir, steps=(1,))
  ckpt = ckpt_lib.Checkpointer(str(workdir), keep=3)
  from pico_jax import parallel
  import jax.numpy as jnp
  big = {"table": jnp.zeros((1024, 1024), jnp.float32)}  # 4 MiB: more than is free.
  if small_fs is None:
    monkeypatch.setattr(failures.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(3 << 20, 2 << 20, 1 << 20))
  with pytest.raises(ckpt_lib.CheckpointWriteError,
                     match=r"cannot write checkpoint 5 in .*: no space left on the device "
                           r"\(.* MiB free; this save needs up to 5.0 MiB\)\. Nothing of it "
                           r"was kept; the complete checkpoints \(1\) are untouched"):
    ckpt.save(5, big, _iterator(), _CONFIG)
  assert ckpt.all_steps() == [1]
  ckpt.close()


def test_a_write_that_fails_inside_orbax_names_the_cause(tmp_path, monkeypatch):
  """A disk that fills after the check: orbax's error becomes one line with its cause."""
  _saved(tmp_path, steps=(1,))
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=3)

  def full(self, step, args=None, **kwargs):
    raise ValueError("RESOURCE_EXHAUSTED: Error writing local file \"x/_sharding\": Failed "
                     "to write 30952 bytes to file 7: No space left on device "
                     "[os_error_code='28']")
  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  with pytest.raises(ckpt_lib.CheckpointWriteError,
                     match=r"writing checkpoint 3 in .* failed: no space left on the device\. "
                           r"Nothing of it was kept; the complete checkpoints \(1\)"):
    ckpt.save(3, _state(3, __import__("pico_jax").parallel.make_mesh(8, 1)), _iterator(),
              _CONFIG)
  ckpt.close()


def test_the_train_command_prints_one_line_on_a_full_disk(small_fs, tmp_path):
  """The issue's repro: a training run whose work directory is a small tmpfs (1.2 MiB:
  the first checkpoints fit, then the free space falls under a save's need)."""
  if small_fs is None:
    pytest.skip("needs a tmpfs mount (not permitted here)")
  subprocess.run(["mount", "-o", "remount,size=1200k", str(small_fs)], check=True)
  config = write_config(tmp_path / "config.py", {
      "model.backbone": "shared_bottom", "train.steps": 30, "train.log_every": 10,
      "train.eval_every": 100, "checkpoint.enabled": True, "checkpoint.every_steps": 2,
      "checkpoint.keep": 100})
  proc = subprocess.run(train_command(config, str(small_fs / "run")),
                        env=launch_env(1, tmp_path / "cache"), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if "rror" in line or "Traceback" in line]
  assert len(errors) == 1, proc.stderr[-5000:]
  assert errors[0].startswith("error: cannot write checkpoint ")
  assert "no space left on the device" in errors[0] and "resumes from step" in errors[0]
