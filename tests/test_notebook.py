"""The notebooks run end to end (on small parameters, so the suite stays fast).

Each committed notebook holds the outputs of a run with its own (larger) parameters;
these tests execute a copy and leave the files alone."""

import os
import re

import nbformat
from nbclient import NotebookClient

from conftest import ROOT


def _executed(name: str, small: dict[str, str], workdir) -> nbformat.NotebookNode:
  """``notebooks/<name>`` executed with its parameters cell's values replaced by
  ``small`` and its WORKDIR set to ``workdir``."""
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  for key, value in small.items():
    params.source, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", params.source,
                               flags=re.M)
    assert n == 1, key
  params.source += f"\nWORKDIR = {str(workdir)!r}"
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  return nb


def _outputs(nb, stream: str | None = None) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs if stream is None or o.get("name") == stream)


def test_quickstart_notebook_executes(tmp_path):
  nb = _executed("quickstart.ipynb", {"NUM_ROWS": "4_000", "STEPS": "20",
                                      "BATCH_SIZE": "64", "SMALL_MODEL": "True"},
                 tmp_path / "run")
  outputs = _outputs(nb)
  assert "Spearman(tau, rho)" in outputs and "single-class users skipped" in outputs
  assert "PCOC" in outputs
  # Inline figures: training curves, evaluation metrics, reliability diagrams, tau
  # against rho.
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) == 4


def test_own_data_notebook_executes_and_logs_without_set_up(tmp_path):
  """A log in memory -> store -> train -> export -> the artifact scores raw rows; the
  notebook configures no logging, and the library's progress shows all the same."""
  nb = _executed("own_data.ipynb", {"NUM_ROWS": "3_000", "STEPS": "20",
                                    "SMALL_MODEL": "True"}, tmp_path / "own")
  assert not any("logging" in c.source for c in nb.cells if c.cell_type == "code")
  assert re.search(r"CTR AUC 0\.\d+, CVR AUC 0\.\d+, CTCVR AUC 0\.\d+", _outputs(nb))
  progress = _outputs(nb, "stderr")
  assert "step 20/20 loss=" in progress and "eval test step 20:" in progress
  assert os.path.exists(tmp_path / "own" / "serving" / "manifest.json")
