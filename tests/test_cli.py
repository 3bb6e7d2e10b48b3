"""Every CLI reports a bad command line or a user error as one line ``error: ...``, exit
status 1, no usage dump and no traceback (``--verbose`` adds it); a damaged export
artifact names its file."""

import os
import shutil

import numpy as np
import pytest

from conftest import run_script, small_config
from pico_jax import export
from pico_jax.data.errors import DataError


def one_error_line(proc) -> str:
  """The error line of a failed CLI, after asserting it is the only one, it is last and
  there is no traceback (libraries' log lines may precede it)."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert [line for line in lines if line.startswith("error: ")] == lines[-1:], proc.stderr
  return lines[-1]


# The command line fails before jax is imported: each child takes well under a second.
@pytest.mark.parametrize("args,message", [
    (["--config.train.foo=1"], "error: --config.train.foo=1: 'train.foo' is not a key of "
     "--config"),
    (["--config=configs/default.py", "--config.trian.steps=5"],
     "error: --config.trian.steps=5: 'trian.steps' is not a key of --config (did you mean "
     "\"train\" instead of \"trian\"?)"),
    (["--config.train.steps=1.5"], "error: flag --config.train.steps=1.5: invalid literal "
     "for int() with base 10: '1.5'"),
    (["--bogus=1"], "error: Unknown command line flag 'bogus'"),
    (["stray"], "error: unexpected arguments: ['stray']"),
    (["--config=configs/nope.py"], "error: --config=configs/nope.py: [Errno 2] No such file "
     "or directory: 'configs/nope.py'"),
    (["--config=configs/census.py:pico=maybe"], "error: --config=configs/census.py:pico=maybe:"
     " pico='maybe', expected true or false"),
    (["--config.data.path=data/mine"], "error: config.data.path='data/mine': read only "
     "when config.data.name='store', and it is 'synthetic'; add --config.data.name=store "
     "(or use a store recipe, e.g. --config=configs/census.py)"),
])
def test_train_command_line_errors_are_one_line(tmp_path, args, message):
  workdir = tmp_path / "run"
  proc = run_script("train", f"--workdir={workdir}", *args)
  assert one_error_line(proc) == message
  assert not workdir.exists()


def test_help_still_prints_the_flags():
  proc = run_script("train", "--help")
  assert "--workdir: Output directory." in proc.stdout and not proc.stderr


@pytest.mark.parametrize("script", ["train", "evaluate"])
def test_help_shows_the_config_and_verbose_flags(script):
  """--config and --verbose are defined in pico_jax.cli, yet --help (not only
  --helpfull) lists them with the script's own flags."""
  proc = run_script(script, "--help")
  assert "--workdir" in proc.stdout and not proc.stderr
  assert "--[no]verbose: On an error, print the traceback" in proc.stdout
  assert ("--config: " in proc.stdout) == (script == "train")


def test_train_config_error_is_one_line_before_training(tmp_path):
  workdir = tmp_path / "run"
  proc = run_script("train", f"--workdir={workdir}", "--config.model.mmoe.num_experts=0")
  assert one_error_line(proc) == ("error: config.model.mmoe.num_experts=0: expected an "
                                  "integer >= 1")
  assert not workdir.exists()


def test_a_diverged_run_is_one_line(tmp_path):
  """The issue's repro (learning rate 1e6): the run stops at the first non-finite step
  with one line naming it, and saves nothing."""
  workdir = tmp_path / "run"
  proc = run_script("train", f"--workdir={workdir}", "--config.optimizer.learning_rate=1e6",
                    "--config.data.synthetic.num_rows=20000", "--config.train.steps=40",
                    "--config.train.log_every=10", "--config.train.eval_every=40",
                    "--config.checkpoint.every_steps=20")
  line = one_error_line(proc)
  assert line.startswith("error: training diverged at step "), line
  assert "learning_rate" in line
  assert not (workdir / "checkpoints").exists() or not any(
      p.name.isdigit() for p in (workdir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A short checkpointed run (steps 10 and 20 kept)."""
  from pico_jax.train.loop import train_and_evaluate
  workdir = str(tmp_path_factory.mktemp("run"))
  train_and_evaluate(small_config(**{"checkpoint.enabled": True,
                                     "checkpoint.every_steps": 10}), workdir)
  return workdir


def test_evaluate_and_export_report_a_checkpoint_that_cannot_be_restored(run):
  proc = run_script("evaluate", f"--workdir={run}", "--checkpoint=15")
  assert one_error_line(proc) == (f"error: --checkpoint=15: no such checkpoint in "
                                  f"{run}/checkpoints (kept: [10, 20])")
  proc = run_script("export", f"--workdir={run}", "--checkpoint=last", "--verbose")
  assert proc.returncode == 1 and "Traceback" in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --checkpoint='last': expected 'default', 'best', 'latest' or a step number")


def test_evaluate_prints_a_table_and_says_where_its_json_is(run, tmp_path):
  """A short table on stdout (it was 90 lines of JSON), the JSON in a file it names, and
  no absl warning that the read-only restore is read only."""
  import json
  output = tmp_path / "eval.json"
  proc = run_script("evaluate", f"--workdir={run}", "--checkpoint=20", f"--output={output}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  result = json.loads(output.read_text())
  assert lines[0] == (f"test split, step 20 (checkpoint 20): {int(result['num_rows']):,} "
                      f"rows, {int(result['num_clicks']):,} clicks, "
                      f"{int(result['num_conversions']):,} conversions")
  assert lines[1].split() == ["task", "auc", "gauc", "eauc", "logloss", "pcoc", "ece"]
  assert [line.split()[0] for line in lines[2:-1]] == ["ctr", "cvr", "ctcvr"]
  assert lines[2].split()[1:3] == [f"{result['ctr_auc']:.4f}", f"{result['ctr_gauc']:.4f}"]
  assert lines[-1] == f"all {len(result)} values: {output}"
  assert "read only" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("script,args,message", [
    ("predict", ["--workdir=W", "--artifact=A", "--checkpoint=best", "--input=x.csv",
                 "--output=o.csv"], "error: --artifact and --checkpoint: give one of them"),
    ("experiment", ["--workdir=W", "--grid=model.backbone"],
     "error: --grid='model.backbone': expected KEY=V1,V2,..."),
    ("experiment", ["--workdir=W", "--scored=blend=none:mean"],
     "error: --scored='blend=none:mean': expected NAME=VARIANT:SCORING with SCORING one of "
     "['ctr_as_cvr', 'blend']"),
    ("probe_interference", ["--workdir=W", "--config.model.ple.num_levels=0"],
     "error: config.model.ple.num_levels=0: expected an integer >= 1"),
    ("plot", ["--workdir=/nonexistent"],
     "error: [Errno 2] No such file or directory: '/nonexistent/metrics.jsonl'"),
    ("preprocess", ["--format=census", "--input=/nonexistent.csv", "--output=OUT"],
     "/nonexistent.csv"),
])
def test_every_cli_reports_a_user_error_as_one_line(script, args, message):
  line = one_error_line(run_script(script, *args))
  assert line == message if message.startswith("error: ") else message in line


@pytest.fixture(scope="module")
def artifact(run, tmp_path_factory):
  from pico_jax.train.restore import restore
  r = restore(run, "latest")
  out = str(tmp_path_factory.mktemp("artifact"))
  export.export_model(r.model, r.state.params, r.schema, out, platforms=("cpu",),
                      step=r.resumed_step, config=r.config)
  return out


def _damaged(artifact, tmp_path, name, damage):
  copy = tmp_path / "copy"
  shutil.copytree(artifact, copy)
  path = copy / name
  if damage == "delete":
    path.unlink()
  elif damage == "truncate":
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  else:  # flip: every byte of the second half XOR 0xFF.
    data = bytearray(path.read_bytes())
    half = len(data) // 2
    data[half:] = bytes(b ^ 0xFF for b in data[half:])
    path.write_bytes(bytes(data))
  return str(copy), str(path)


@pytest.mark.parametrize("name,damage", [
    ("manifest.json", "truncate"), ("serve.py", "delete"), ("serve.py", "truncate"),
    (None, "truncate"), (None, "flip"), ("params", "truncate"),
])
def test_a_damaged_artifact_names_its_file(artifact, tmp_path, name, damage):
  import json
  with open(os.path.join(artifact, "manifest.json")) as f:
    manifest = json.load(f)
  name = {None: manifest["artifact"], "params": manifest["params_file"]}.get(name, name)
  copy, path = _damaged(artifact, tmp_path, name, damage)
  with pytest.raises(DataError) as error:
    predict = export.load(copy)
    # A flipped byte the deserializer accepts still fails at the first call, or changes
    # nothing it reads; never a silent wrong answer from a file it could not parse.
    features = {i["name"]: np.zeros([2] + i["shape"][1:], i["dtype"])
                for i in manifest["inputs"]}
    predict(features)
  assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
