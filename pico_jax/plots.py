"""Plots of a run (``launch/plot.py --workdir DIR [--output DIR/plots]`` draws them all).

Reads the run's ``metrics.jsonl``, ``train_metrics.jsonl`` and ``tau_<split>.npz`` (see
``pico_jax/train/reporting.py``) and writes PNGs:

  training_curves.png   train loss terms, tau_mean and examples/s against the step.
  eval_metrics.png      task AUCs (and oracle AUCs, dashed) and loglosses of every
                        evaluated split against the step.
  tau_segments.png      mean tau per segment against the step (runs with segments).
  tau_distribution.png  histogram of the last evaluated per-row tau, per segment where
                        the data has segments (runs with a learned tau).
  reliability.png       reliability diagram per task of the last evaluation (test when
                        there is one): observed rate against mean prediction in
                        equal-mass bins, with PCOC and ECE (``pico_jax.metrics``).
"""

from __future__ import annotations

import os


TRAIN_KEYS = ("loss", "loss_ctr", "loss_ctcvr", "loss_cvr", "loss_contrast",
              "loss_relatedness", "tau_mean", "examples_per_sec")
AUC_KEYS = ("ctr_auc", "cvr_auc", "cvr_auc_all_rows", "ctcvr_auc")
LOGLOSS_KEYS = ("ctr_logloss", "cvr_logloss", "ctcvr_logloss")
# Tasks with a reliability curve, each on its own rows (cvr: clicked rows; cvr_all_rows:
# every row, for independent tasks).
CALIBRATION_TASKS = ("ctr", "cvr", "cvr_all_rows", "ctcvr")


def draw_reliability(ax, predicted, observed, title: str = ""):
  """A reliability diagram on matplotlib ``ax``: observed rate against mean prediction
  per bin (float [K] each), and the diagonal of perfect calibration."""
  top = max(float(max(predicted.max(), observed.max())) * 1.05, 1e-6)
  ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1)
  ax.plot(predicted, observed, marker="o")
  ax.set_xlim(0, top)
  ax.set_ylim(0, top)
  ax.set_xlabel("mean predicted probability")
  ax.set_ylabel("observed rate")
  ax.set_title(title, fontsize=9)


def _series(records, split, key):
  points = sorted((r["step"], r[key]) for r in records if r["split"] == split and key in r)
  return [p[0] for p in points], [p[1] for p in points]


def plot_run(workdir: str, output: str = "") -> list[str]:
  """Writes the run's PNGs; returns their paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  from pico_jax.metrics import reliability_from_metrics
  from pico_jax.train.reporting import read_metrics
  from pico_jax.workdir import PLOTS_DIR, TRAIN_METRICS_FILE, tau_file

  output = output or os.path.join(workdir, PLOTS_DIR)
  os.makedirs(output, exist_ok=True)
  records = read_metrics(workdir)
  if os.path.exists(os.path.join(workdir, TRAIN_METRICS_FILE)):
    records += read_metrics(workdir, TRAIN_METRICS_FILE)
  splits = sorted({r["split"] for r in records} - {"train"})
  written = []

  def save(fig, name):
    path = os.path.join(output, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

  keys = [k for k in TRAIN_KEYS if _series(records, "train", k)[0]]
  if keys:
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
      ax.plot(*_series(records, "train", key))
      ax.set_title(key)
      ax.set_xlabel("step")
    save(fig, "training_curves.png")

  if splits:
    fig, (ax_auc, ax_ll) = plt.subplots(1, 2, figsize=(11, 4))
    for split in splits:
      for key in AUC_KEYS:
        steps, values = _series(records, split, key)
        if steps:
          line, = ax_auc.plot(steps, values, marker="o", label=f"{split} {key}")
          ost, ovals = _series(records, split, f"oracle_{key}")
          if ost:
            ax_auc.plot(ost, ovals, linestyle="--", color=line.get_color(),
                        label=f"{split} oracle_{key}")
      for key in LOGLOSS_KEYS:
        steps, values = _series(records, split, key)
        if steps:
          ax_ll.plot(steps, values, marker="o", label=f"{split} {key}")
    for ax, title in ((ax_auc, "AUC"), (ax_ll, "logloss")):
      ax.set_title(title)
      ax.set_xlabel("step")
      if ax.get_lines():
        ax.legend(fontsize=7)
    save(fig, "eval_metrics.png")

  seg_keys = sorted({k for r in records for k in r if k.startswith("tau_segment_")},
                    key=lambda k: int(k.rsplit("_", 1)[1]))
  if seg_keys and splits:
    fig, ax = plt.subplots(figsize=(6, 4))
    split = splits[-1] if "val" not in splits else "val"
    for key in seg_keys:
      ax.plot(*_series(records, split, key), marker="o", label=key.replace("tau_", ""))
    ax.set_title(f"mean tau per segment ({split})")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    save(fig, "tau_segments.png")

  tau_splits = [s for s in splits if os.path.exists(os.path.join(workdir, tau_file(s)))]
  if tau_splits:
    split = "test" if "test" in tau_splits else tau_splits[0]
    with np.load(os.path.join(workdir, tau_file(split))) as z:
      tau, segment = z["tau"], (z["segment"] if "segment" in z.files else None)
      step = int(z["step"])
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(tau.min(), tau.max() + 1e-6, 40)
    if segment is None:
      ax.hist(tau, bins=bins)
    else:
      for s in np.unique(segment):
        ax.hist(tau[segment == s], bins=bins, alpha=0.5, label=f"segment {int(s)}")
      ax.legend(fontsize=7)
    ax.set_title(f"tau distribution ({split}, step {step})")
    ax.set_xlabel("tau")
    save(fig, "tau_distribution.png")

  evaluations = [r for r in records if r["split"] != "train"]
  if evaluations:
    split = "test" if "test" in splits else splits[-1]
    last = max((r for r in evaluations if r["split"] == split), key=lambda r: r["step"])
    curves = [(t, *reliability_from_metrics(last, t)) for t in CALIBRATION_TASKS]
    curves = [c for c in curves if len(c[1]) and np.isfinite(c[1]).all()
              and np.isfinite(c[2]).all()]
    if curves:
      fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.6),
                               squeeze=False)
      for ax, (task, predicted, observed) in zip(axes[0], curves):
        draw_reliability(ax, predicted, observed,
                         f"{task} ({split}, step {last['step']})\nPCOC "
                         f"{last[task + '_pcoc']:.3f}  ECE {last[task + '_ece']:.4f}")
      save(fig, "reliability.png")
  return written
