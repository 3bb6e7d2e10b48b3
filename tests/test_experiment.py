"""pico_jax.experiments (grid, aggregation, resume) and pico_jax.plots."""

import csv
import json
import math
import os

import numpy as np
import pytest

from conftest import small_config
from pico_jax.config_keys import ConfigError, set_value
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
    set_value(config, "contrast.mdoe", "none")
  set_value(config, "data.synthetic.rho", [0.5, 1.0])
  assert config.data.synthetic.rho == (0.5, 1.0)


def test_each_grid_run_is_validated_before_it_trains(tmp_path, monkeypatch):
  """The grid's settings land on a validated base and ``build`` trusts its config, so
  the grid validates each run's config: a bad value fails naming its key, untrained."""
  import pico_jax.train.loop as loop
  monkeypatch.setattr(loop, "train_and_evaluate", lambda *a: pytest.fail("trained"))
  with pytest.raises(ConfigError, match=r"config\.model\.mmoe\.num_experts=0: expected"):
    experiments.run_grid(small_config(), str(tmp_path), [("model.mmoe.num_experts", [0])],
                         [], [0])


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


def test_holm_against_a_hand_computed_family():
  from pico_jax import stats
  # Sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04, but
  # never below the one before: 0.06); NaN is not a member and stays NaN.
  adjusted = stats.holm([0.01, 0.04, 0.03, float("nan"), 0.005])
  assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and adjusted[4] == pytest.approx(0.02)
  assert math.isnan(adjusted[3])
  assert stats.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1.


def test_paired_t_pvalue_and_minimum_detectable_effect():
  from pico_jax import stats
  # t = 1.8 / (sd / sqrt 5), sd = 1.9235 -> t = 2.0925, df 4: two-sided p = 0.10454.
  assert stats.paired_t_pvalue([1, 2, 3, 4, -1]) == pytest.approx(0.10454, abs=1e-5)
  assert stats.t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-5)
  assert stats.t_quantile(0.8, 9) == pytest.approx(0.883404, abs=1e-5)
  deltas = [0.01, 0.03, -0.01, 0.02, 0.0, 0.015, 0.005, 0.02, -0.005, 0.01]
  sd = float(np.std(deltas, ddof=1))
  assert stats.min_detectable_effect(deltas) == pytest.approx(
      (2.262157 + 0.883404) * sd / math.sqrt(10), rel=1e-5)
  assert math.isnan(stats.paired_t_pvalue([0.1])) and stats.paired_t_pvalue([0, 0]) == 1.0


def test_selection_on_the_eval_split_tests_and_the_primary_line():
  runs = []
  for seed, (base, a, b) in enumerate([(0.70, 0.72, 0.69), (0.71, 0.74, 0.70),
                                       (0.69, 0.70, 0.70)]):
    runs += [{"point": "r=1 none", "seed": seed, "cvr_eauc": base, "val_cvr_eauc": base},
             # a is better on val but b is better on test: the selection must take a.
             {"point": "r=1 a", "seed": seed, "cvr_eauc": a, "val_cvr_eauc": 0.9},
             {"point": "r=1 b", "seed": seed, "cvr_eauc": b + 0.2, "val_cvr_eauc": 0.1}]
  runs = experiments.select_best(runs, "pico", ["a", "b"], "cvr_eauc")
  picked = [r for r in runs if r["point"] == "r=1 pico"]
  assert len(picked) == 3 and {r["selected"] for r in picked} == {"a"}
  runs = experiments.add_deltas(runs, "none")
  from pico_jax import stats
  summary = stats.add_intervals(experiments.summarize(runs, ["point"]), runs)
  summary = experiments.add_tests(summary, runs, ["cvr_eauc"], family=["pico", "b"])
  by_point = {r["point"]: r for r in summary}
  pico, b = by_point["r=1 pico"], by_point["r=1 b"]
  assert "delta_cvr_eauc_p" not in by_point["r=1 a"]  # not in the family.
  deltas = [0.02, 0.03, 0.01]
  assert pico["delta_cvr_eauc_p"] == pytest.approx(stats.paired_t_pvalue(deltas))
  assert pico["delta_cvr_eauc_mde"] == pytest.approx(stats.min_detectable_effect(deltas))
  assert [pico["delta_cvr_eauc_p_holm"], b["delta_cvr_eauc_p_holm"]] == pytest.approx(
      stats.holm([pico["delta_cvr_eauc_p"], b["delta_cvr_eauc_p"]]))
  text = experiments.primary_text(summary, "r=1 pico :: cvr_eauc", "none")
  assert text.startswith("Primary comparison (declared): r=1 pico minus r=1 none, test "
                         "cvr_eauc: +0.0200 [")
  assert f"Holm p = {pico['delta_cvr_eauc_p_holm']:.3g}" in text
  with pytest.raises(ValueError, match="expected 'POINT :: METRIC'"):
    experiments.parse_primary("r=1 pico")
  assert experiments.parse_select("pico=a,b:cvr_eauc") == ("pico", ["a", "b"], "cvr_eauc")
  with pytest.raises(ValueError, match="--select='pico:cvr_eauc'"):
    experiments.parse_select("pico:cvr_eauc")
