"""Export: the artifact reproduces the model without pico_jax and holds no contrast params."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_script, small_config
from pico_jax import batch as B
from pico_jax import export
from pico_jax.models import serving_params

# Run in a clean interpreter: importing pico_jax (or flax) there fails loudly.
_CLEAN_RUN = """
import sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("pico_jax", "flax", "optax", "orbax"):
      raise ImportError("the serving process imported " + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
import numpy as np
import serve
predict = serve.load(sys.argv[1])
with np.load(sys.argv[2]) as z:
  features = {k: z[k] for k in z.files}
out = predict(features)
small = predict({k: v[:3] for k, v in features.items()})
np.savez(sys.argv[3], **out, small_p_ctr=small["p_ctr"])
assert not any(m.split(".")[0] == "pico_jax" for m in sys.modules)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A short checkpointed run, exported with launch/export.py."""
  from pico_jax.train.loop import train_and_evaluate
  workdir = str(tmp_path_factory.mktemp("run"))
  config = small_config(**{"checkpoint.enabled": True, "checkpoint.every_steps": 10})
  train_and_evaluate(config, workdir)
  artifact = os.path.join(workdir, "artifact")
  proc = run_script("export", f"--workdir={workdir}", f"--output={artifact}",
                    "--platforms=cpu,cuda")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "contrast-head params dropped" in proc.stdout
  from pico_jax.train.restore import restore
  return workdir, artifact, restore(workdir, "latest")


def test_artifact_reproduces_model_in_a_process_without_pico_jax(trained, tmp_path):
  _, artifact, r = trained
  cols = r.dataset.splits["test"]
  expected = r.predict("test")  # the 8-device mesh
  features = {k: v for k, v in cols.items() if k in B.FEATURE_KEYS}
  np.savez(tmp_path / "features.npz", **features)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  proc = subprocess.run([sys.executable, "-c", _CLEAN_RUN, artifact,
                         str(tmp_path / "features.npz"), str(tmp_path / "out.npz")],
                        capture_output=True, text=True, env=env, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(tmp_path / "out.npz") as got:
    for key in ("p_ctr", "p_cvr", "p_ctcvr"):
      assert got[key].shape == (len(cols[B.CLICK]),)
      np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(got["small_p_ctr"], expected["p_ctr"][:3], rtol=0, atol=1e-6)


def test_artifact_holds_exactly_the_serving_params(trained):
  _, artifact, r = trained
  manifest = json.load(open(os.path.join(artifact, export.MANIFEST_FILE)))
  params = r.state.params
  serving = export.num_params(serving_params(params))
  assert manifest["num_params"] == serving < export.num_params(params)
  assert not any(p["name"].startswith("contrast") for p in manifest["params"])
  with np.load(os.path.join(artifact, export.PARAMS_FILE)) as z:
    assert sum(z[k].size for k in z.files) == serving
  assert manifest["platforms"] == ["cpu", "cuda"]
  assert manifest["step"] == 20
  inputs = {i["name"]: i for i in manifest["inputs"]}
  assert inputs["sparse"] == {"name": "sparse", "shape": ["batch", 5], "dtype": "int32"}
  assert inputs["multi_mask"]["dtype"] == "bool"


def test_loaded_artifact_checks_its_inputs(trained):
  _, artifact, _ = trained
  predict = export.load(artifact)
  features = {i["name"]: np.zeros([2] + i["shape"][1:], i["dtype"])
              for i in predict.manifest["inputs"]}
  assert predict(features)["p_ctcvr"].shape == (2,)
  with pytest.raises(ValueError, match=r"missing inputs \['dense'\]"):
    predict({k: v for k, v in features.items() if k != "dense"})
  with pytest.raises(ValueError, match="input 'dense': dtype float64, expected float32"):
    predict({**features, "dense": features["dense"].astype(np.float64)})
  with pytest.raises(ValueError, match=r"input 'sparse': shape \[2, 4\], expected"):
    predict({**features, "sparse": features["sparse"][:, :4]})
  with pytest.raises(ValueError, match="input 'dense': batch 3, others have 2"):
    predict({**features, "dense": np.zeros((3, 8), np.float32)})


def test_evaluate_cli_agrees_with_the_training_loop(trained, tmp_path):
  """restore.evaluate (launch/evaluate.py) on the last checkpoint gives the loop's final
  test metrics."""
  from pico_jax.train.restore import evaluate
  workdir, _, _ = trained
  result = evaluate(workdir, "test", "best")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  (loop_test,) = [r for r in records if r["split"] == "test"]
  assert result["step"] == 20 and result["split"] == "test"
  for key, value in loop_test.items():
    if key not in ("step", "split"):
      assert result[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
  assert evaluate(workdir, "val", "10")["step"] == 10
  from pico_jax.train.checkpoint import CheckpointRestoreError
  with pytest.raises(CheckpointRestoreError,
                     match=r"--checkpoint=15: no such checkpoint.*\[10, 20\]"):
    evaluate(workdir, "test", "15")
  with pytest.raises(CheckpointRestoreError, match="--checkpoint='last'"):
    evaluate(workdir, "test", "last")
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    evaluate(str(tmp_path), "test", "latest")


def test_export_can_serve_pos_weight_corrected_probabilities(trained, tmp_path):
  """The correction runs inside the artifact: it serves what pico_jax.calibration gives."""
  from pico_jax import calibration
  _, artifact, r = trained
  config = r.config.copy_and_resolve_references()
  config.loss.pos_weight.ctr, config.loss.pos_weight.ctcvr = 4.0, 30.0
  manifest = export.export_model(r.model, r.state.params, r.schema, str(tmp_path),
                                 platforms=("cpu",), config=config, correct_pos_weight=True)
  assert manifest["pos_weight_corrected"]
  features = {k: v[:16] for k, v in r.dataset.splits["test"].items() if k in B.FEATURE_KEYS}
  raw, corrected = export.load(artifact)(features), export.load(str(tmp_path))(features)
  want = calibration.correct_predictions({k: v.astype(np.float64) for k, v in raw.items()},
                                         config.loss)
  for key in export.OUTPUTS:
    np.testing.assert_allclose(corrected[key], want[key], rtol=1e-5, atol=1e-7, err_msg=key)
  assert np.all(corrected["p_ctr"] < raw["p_ctr"])


def _flip_byte(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("name", [export.ARTIFACT_FILE, export.PARAMS_FILE,
                                  export.LOADER_FILE, export.MANIFEST_FILE])
def test_a_damaged_artifact_file_is_one_line_naming_it(trained, tmp_path, name):
  """A flipped byte in any file of the artifact (the manifest included) is caught
  before anything is read from it: a DataError naming the file, and one error line
  from launch/predict.py --artifact."""
  import shutil
  from pico_jax.data.errors import DataError
  _, artifact, _ = trained
  damaged = str(tmp_path / "artifact")
  shutil.copytree(artifact, damaged)
  path = os.path.join(damaged, name)
  if name == export.MANIFEST_FILE:  # a changed digit: JSON that still parses.
    text = open(path).read()
    open(path, "w").write(text.replace('"step": 20', '"step": 21'))
  else:
    _flip_byte(path)
  with pytest.raises(DataError, match="changed since it was exported") as e:
    export.load(damaged)
  assert e.value.path == os.path.join(damaged, name)
  done = run_script("predict", f"--artifact={damaged}", "--input=rows.csv",
                    f"--output={tmp_path / 'p.csv'}", "--noprogress")
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [f"error: {e.value}"]
  assert not (tmp_path / "p.csv").exists()


def test_loading_runs_no_code_from_the_artifact(trained, tmp_path):
  """pico_jax loads an artifact with its own code: code added to the artifact's
  serve.py never runs, whether the manifest's checksums catch the change or were
  recomputed to match it."""
  import shutil
  from pico_jax.data.errors import DataError
  from pico_jax.serving import serve
  _, artifact, r = trained
  tampered = str(tmp_path / "artifact")
  shutil.copytree(artifact, tampered)
  marker = tmp_path / "ran"
  with open(os.path.join(tampered, export.LOADER_FILE), "a") as f:
    f.write(f"\nopen({str(marker)!r}, 'w').close()\n")
  with pytest.raises(DataError, match="serve.py: changed since it was exported"):
    export.load(tampered)
  manifest_path = os.path.join(tampered, export.MANIFEST_FILE)
  manifest = json.load(open(manifest_path))
  manifest["files"][export.LOADER_FILE] = serve.file_entry(
      os.path.join(tampered, export.LOADER_FILE))
  manifest[serve.CHECKSUM] = serve.manifest_checksum(manifest)
  json.dump(manifest, open(manifest_path, "w"))
  features = {k: v[:4] for k, v in r.dataset.splits["test"].items() if k in B.FEATURE_KEYS}
  assert export.load(tampered)(features)["p_ctr"].shape == (4,)
  assert not marker.exists()


def test_export_is_staged_and_replaces_only_an_artifact(trained, tmp_path, monkeypatch):
  """A re-export that fails half-way leaves the old artifact whole (and no staging
  directory once the next export ran); an output that is not an artifact is refused
  before anything is written."""
  from pico_jax.data.errors import DataError
  _, artifact, r = trained
  out = tmp_path / "artifact"
  export.export_model(r.model, r.state.params, r.schema, str(out), platforms=("cpu",),
                      step=1)
  before = {n: (out / n).read_bytes() for n in os.listdir(out)}

  def fail(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(np, "savez", fail)  # after serving.jax_export, before the rest.
  with pytest.raises(OSError, match="No space left"):
    export.export_model(r.model, r.state.params, r.schema, str(out), platforms=("cpu",),
                        step=2)
  monkeypatch.undo()
  assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
  assert sorted(os.listdir(tmp_path)) == ["artifact"]  # the staging directory is gone.
  os.makedirs(tmp_path / ".artifact.tmp-killed")  # as a SIGKILL would leave it.
  export.export_model(r.model, r.state.params, r.schema, str(out), platforms=("cpu",),
                      step=3)
  assert export.load(str(out)).manifest["step"] == 3
  assert sorted(os.listdir(tmp_path)) == ["artifact"]
  # Killed between its two renames: the old artifact aside, nothing at NAME. The next
  # export puts it back first, so a failure of that export still leaves it in place.
  aside = tmp_path / ".artifact.old-killed"
  os.makedirs(aside)
  os.rename(out, aside / "artifact")
  monkeypatch.setattr(np, "savez", fail)
  with pytest.raises(OSError, match="No space left"):
    export.export_model(r.model, r.state.params, r.schema, str(out), platforms=("cpu",),
                        step=4)
  monkeypatch.undo()
  assert export.load(str(out)).manifest["step"] == 3
  assert sorted(os.listdir(tmp_path)) == ["artifact"]

  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "important.txt").write_text("keep")
  with pytest.raises(DataError, match="not an artifact"):
    export.export_model(r.model, r.state.params, r.schema, str(mine), platforms=("cpu",))
  assert os.listdir(mine) == ["important.txt"]
  assert sorted(os.listdir(tmp_path)) == ["artifact", "mine"]
