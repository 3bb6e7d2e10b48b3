"""pico_jax.experiments (grid, aggregation, resume) and pico_jax.plots."""

import csv
import json
import math
import os

import pytest

from conftest import small_config
from pico_jax import config as config_lib
from pico_jax import experiments
from pico_jax import plots



def test_parse_grid_and_variants():
  assert experiments.parse_axis("model.backbone=mmoe,ple") == ("model.backbone", ["mmoe", "ple"])
  assert experiments.parse_axis("contrast.weight=0.1,1") == ("contrast.weight", [0.1, 1])
  assert experiments.parse_variant("sup:contrast.mode=personalized;contrast.tau_min=0.1") == (
      "sup", {"contrast.mode": "personalized", "contrast.tau_min": 0.1})
  with pytest.raises(ValueError, match="--grid='model.backbone': expected KEY=V1,V2"):
    experiments.parse_axis("model.backbone")
  with pytest.raises(ValueError, match="'contrast.mode' is not KEY=V"):
    experiments.parse_variant("x:contrast.mode")
  points = list(experiments.grid_points([("model.backbone", ["mmoe", "ple"])],
                                       [("a", {"contrast.mode": "none"}),
                                        ("b", {"contrast.mode": "fixed"})]))
  assert [names for names, _ in points] == [["backbone=mmoe", "a"], ["backbone=mmoe", "b"],
                                            ["backbone=ple", "a"], ["backbone=ple", "b"]]
  assert points[3][1] == {"model.backbone": "ple", "contrast.mode": "fixed"}
  config = small_config()
  with pytest.raises(KeyError, match="config key 'contrast.mdoe'"):
    config_lib.set_value(config, "contrast.mdoe", "none")
  config_lib.set_value(config, "data.synthetic.rho", [0.5, 1.0])
  assert config.data.synthetic.rho == (0.5, 1.0)


def test_paired_deltas_against_a_baseline_variant():
  runs = [{"point": "backbone=mmoe none", "seed": 0, "ctr_auc": 0.70},
          {"point": "backbone=mmoe none", "seed": 1, "ctr_auc": 0.80},
          {"point": "backbone=mmoe pico", "seed": 0, "ctr_auc": 0.71},
          {"point": "backbone=mmoe pico", "seed": 1, "ctr_auc": 0.83},
          {"point": "backbone=ple pico", "seed": 0, "ctr_auc": 0.9}]  # no ple baseline
  out = experiments.add_deltas(runs, "none")
  assert [r.get("delta_ctr_auc") for r in out] == pytest.approx([0, 0, 0.01, 0.03, None])
  rows = experiments.summarize(out, ["point"])
  assert rows[1]["delta_ctr_auc_mean"] == pytest.approx(0.02)
  # Paired deltas print as "mean [95% interval]" (t over the 2 seeds: 0.02 +- 12.71 * 0.01).
  from pico_jax import stats
  table = experiments.markdown(stats.add_intervals(rows, out), ["point"], ["delta_ctr_auc"])
  assert "| backbone=mmoe pico | 2 | +0.0200 [-0.1071, +0.1471] |" in table
  with pytest.raises(ValueError, match="--baseline='nope'"):
    experiments.add_deltas(runs, "nope")


def test_summarize_mean_and_sample_std():
  runs = [{"point": "a", "seed": 0, "auc": 0.7}, {"point": "a", "seed": 1, "auc": 0.8},
          {"point": "a", "seed": 2, "auc": 0.9, "x": float("nan")},
          {"point": "b", "seed": 0, "auc": 0.5}]
  rows = experiments.summarize(runs, ["point"])
  a, b = rows
  assert a["seeds"] == 3 and a["auc_mean"] == pytest.approx(0.8)
  assert a["auc_std"] == pytest.approx(0.1)  # ddof=1
  assert math.isnan(a["x_mean"]) and math.isnan(b["auc_std"])
  table = experiments.markdown(rows, ["point"], ["auc", "missing"])
  assert "| a | 3 | 0.8000 ± 0.1000 |" in table and "missing" not in table
  assert "| b | 1 | 0.5000 |" in table
  assert "| a | 3 | – |" in experiments.markdown(rows, ["point"], ["x"])


def test_grid_runs_tabulates_resumes_and_plots(tmp_path, monkeypatch):
  base = small_config(**{"train.early_stopping_metric": "mean_auc", "train.patience": 5,
                         "train.batch_size": 256})
  workdir = str(tmp_path)
  variants = [("pico", {"contrast.mode": "personalized"})]
  (row,) = experiments.run_grid(base, workdir, [], variants, [0], epochs=2)
  assert (row["point"], row["seed"]) == ("pico", 0)
  assert row["steps_trained"] == 50 and row["best_step"] in (25, 50)  # 6400 rows / 256
  with open(os.path.join(workdir, "results.csv")) as f:
    (summary,) = list(csv.DictReader(f))
  assert summary["point"] == "pico" and summary["seeds"] == "1"
  assert float(summary["ctr_auc_mean"]) == pytest.approx(row["ctr_auc"])
  assert summary["ctr_auc_std"] == "nan"
  table = open(os.path.join(workdir, "results.md")).read()
  assert "| pico | 1 |" in table and "tau_rho_spearman" in table
  result = json.load(open(os.path.join(workdir, "pico_seed=0", "result.json")))
  assert result["settings"] == {"contrast.mode": "personalized"}

  # A second invocation reuses finished runs instead of training again.
  import pico_jax.train.loop as loop
  monkeypatch.setattr(loop, "train_and_evaluate", lambda *a: pytest.fail("retrained"))
  (again,) = experiments.run_grid(base, workdir, [], variants, [0], epochs=2)
  assert again["ctr_auc"] == row["ctr_auc"]
  # Report-only tabulates the finished runs and trains none of the others.
  more = variants + [("none", {"contrast.mode": "none"})]
  (only,) = experiments.run_grid(base, workdir, [], more, [0, 1], epochs=2, train=False)
  assert only["ctr_auc"] == row["ctr_auc"]
  with pytest.raises(ValueError, match="no finished run"):
    experiments.run_grid(base, str(tmp_path / "empty"), [], more, [0], train=False)

  written = plots.plot_run(os.path.join(workdir, "pico_seed=0"))
  assert sorted(os.path.basename(p) for p in written) == [
      "eval_metrics.png", "reliability.png", "tau_distribution.png", "tau_segments.png",
      "training_curves.png"]
  for path in written:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_without_tau_or_segments(tmp_path):
  records = [{"step": 5, "split": "val", "ctr_auc": 0.6, "cvr_auc": 0.55},
             {"step": 10, "split": "val", "ctr_auc": 0.7, "cvr_auc": 0.6}]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  with open(tmp_path / "train_metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 5, "split": "train", "loss": 1.0}) + "\n")
  written = plots.plot_run(str(tmp_path), str(tmp_path / "out"))
  assert sorted(os.path.basename(p) for p in written) == ["eval_metrics.png",
                                                          "training_curves.png"]
