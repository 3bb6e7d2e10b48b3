"""The quickstart notebook runs end to end (on a small config, so the suite stays fast).

The committed notebook holds the outputs of a run with its own (larger) parameters;
this test executes a copy and leaves the file alone."""

import os
import re

import nbformat
from nbclient import NotebookClient

from conftest import ROOT

SMALL = {"NUM_ROWS": "4_000", "STEPS": "20", "BATCH_SIZE": "64", "SMALL_MODEL": "True"}


def test_quickstart_notebook_executes(tmp_path):
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  for name, value in SMALL.items():
    params.source, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", params.source,
                               flags=re.M)
    assert n == 1, name
  params.source += f"\nWORKDIR = {str(tmp_path / 'run')!r}"
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.outputs)
  assert "Spearman(tau, rho)" in outputs and "single-class users skipped" in outputs
  assert "PCOC" in outputs
  # Inline figures: training curves, evaluation metrics, reliability diagrams, tau
  # against rho.
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) == 4
