"""pico_jax.metric_names: the one list of the metrics shown in each place."""

import ast
import json
import os
import pathlib

import pytest

from conftest import small_config
from pico_jax import experiments
from pico_jax import metric_names
from pico_jax import plots

# Shown metric names (the calibration tuple holds task names, not metrics).
SHOWN = {n for name in ("TRAIN_LOG", "EVAL_LOG", "TRAIN_PLOT", "AUC_PLOT", "LOGLOSS_PLOT",
                        "TABLE_COLUMNS", "DELTAS") for n in getattr(metric_names, name)}
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pico_jax"


def test_no_other_module_lists_shown_metrics():
  """A tuple, list or set literal naming two or more shown metrics belongs in
  metric_names: anywhere else it is a second list to edit when a metric is added."""
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    if path.name == "metric_names.py":
      continue
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        listed = [e.value for e in node.elts if isinstance(e, ast.Constant)
                  and isinstance(e.value, str) and e.value in SHOWN]
        if len(listed) >= 2:
          found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {listed}")
  assert not found, found


def _write_records(workdir, records, train):
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  with open(os.path.join(workdir, "train_metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in train)


def test_plots_draw_what_the_registry_lists(tmp_path, monkeypatch):
  monkeypatch.setattr(metric_names, "AUC_PLOT", ("ctr_brier",))
  monkeypatch.setattr(metric_names, "LOGLOSS_PLOT", ("cvr_logloss",))
  monkeypatch.setattr(metric_names, "TRAIN_PLOT", ("loss_new", "loss"))
  _write_records(tmp_path, [{"step": 5, "split": "val", "ctr_auc": 0.6, "ctr_brier": 0.2,
                             "oracle_ctr_brier": 0.1, "cvr_logloss": 0.5}],
                 [{"step": 5, "split": "train", "loss": 1.0, "loss_new": 0.3,
                   "loss_ctr": 0.7}])
  figures = plots.figures(str(tmp_path))
  auc, logloss = figures["eval_metrics"].axes
  assert [line.get_label() for line in auc.get_lines()] == ["val ctr_brier",
                                                            "val oracle_ctr_brier"]
  assert [line.get_label() for line in logloss.get_lines()] == ["val cvr_logloss"]
  assert [ax.get_title() for ax in figures["training_curves"].axes] == ["loss_new", "loss"]


def test_tables_and_deltas_take_what_the_registry_lists(tmp_path, monkeypatch):
  monkeypatch.setattr(metric_names, "DELTAS", ("ctr_brier",))
  monkeypatch.setattr(metric_names, "TABLE_COLUMNS", ("ctr_brier", "delta_ctr_brier"))
  runs = [{"point": "none", "seed": 0, "ctr_auc": 0.7, "ctr_brier": 0.25},
          {"point": "pico", "seed": 0, "ctr_auc": 0.8, "ctr_brier": 0.20}]
  deltas = experiments.add_deltas([dict(r) for r in runs], "none")
  assert deltas[1]["delta_ctr_brier"] == pytest.approx(-0.05)
  assert "delta_ctr_auc" not in deltas[1]
  for r in runs:  # finished runs: run_grid tabulates them without training.
    os.makedirs(tmp_path / f"{r['point']}_seed=0")
    with open(tmp_path / f"{r['point']}_seed=0" / "result.json", "w") as f:
      json.dump(r, f)
  experiments.run_grid(small_config(), str(tmp_path), [], [("none", {}), ("pico", {})],
                       [0], train=False, baseline="none")
  header = (tmp_path / "results.md").read_text().splitlines()[0]
  assert header == "| point | seeds | ctr_brier | delta_ctr_brier |"
