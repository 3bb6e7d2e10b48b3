"""Plots of a run, from its work directory (``launch/plot.py`` writes them all as PNGs).

``figures(workdir)`` reads the run's ``metrics.jsonl``, ``train_metrics.jsonl`` and
``tau_<split>.npz`` (see ``pico_jax/train/reporting.py``) and returns matplotlib
``Figure`` objects by name (no pyplot, so a notebook's backend is left alone and shows
them inline); ``plot_run`` writes them as ``<name>.png``:

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

import numpy as np
from matplotlib.figure import Figure

from pico_jax import metric_names


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


def _records(workdir: str) -> list[dict]:
  from pico_jax.train.reporting import read_metrics
  from pico_jax.workdir import TRAIN_METRICS_FILE
  records = read_metrics(workdir)
  if os.path.exists(os.path.join(workdir, TRAIN_METRICS_FILE)):
    records += read_metrics(workdir, TRAIN_METRICS_FILE)
  return records


def _eval_splits(records) -> list[str]:
  return sorted({r["split"] for r in records} - {"train"})


def training_curves(records) -> Figure | None:
  """Train loss terms, tau_mean and examples/s against the step."""
  keys = [k for k in metric_names.TRAIN_PLOT if _series(records, "train", k)[0]]
  if not keys:
    return None
  fig = Figure(figsize=(3.2 * len(keys), 3))
  for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
    ax.plot(*_series(records, "train", key))
    ax.set_title(key)
    ax.set_xlabel("step")
  return fig


def eval_metrics(records) -> Figure | None:
  """Task AUCs (oracle AUCs dashed) and loglosses of every evaluated split."""
  splits = _eval_splits(records)
  if not splits:
    return None
  fig = Figure(figsize=(11, 4))
  ax_auc, ax_ll = fig.subplots(1, 2)
  for split in splits:
    for key in metric_names.AUC_PLOT:
      steps, values = _series(records, split, key)
      if steps:
        line, = ax_auc.plot(steps, values, marker="o", label=f"{split} {key}")
        ost, ovals = _series(records, split, f"oracle_{key}")
        if ost:
          ax_auc.plot(ost, ovals, linestyle="--", color=line.get_color(),
                      label=f"{split} oracle_{key}")
    for key in metric_names.LOGLOSS_PLOT:
      steps, values = _series(records, split, key)
      if steps:
        ax_ll.plot(steps, values, marker="o", label=f"{split} {key}")
  for ax, title in ((ax_auc, "AUC"), (ax_ll, "logloss")):
    ax.set_title(title)
    ax.set_xlabel("step")
    if ax.get_lines():
      ax.legend(fontsize=7)
  return fig


def tau_segments(records) -> Figure | None:
  """Mean tau per segment against the step (runs with segments)."""
  splits = _eval_splits(records)
  seg_keys = sorted({k for r in records for k in r if k.startswith("tau_segment_")},
                    key=lambda k: int(k.rsplit("_", 1)[1]))
  if not (seg_keys and splits):
    return None
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  split = splits[-1] if "val" not in splits else "val"
  for key in seg_keys:
    ax.plot(*_series(records, split, key), marker="o", label=key.replace("tau_", ""))
  ax.set_title(f"mean tau per segment ({split})")
  ax.set_xlabel("step")
  ax.legend(fontsize=7)
  return fig


def tau_distribution(workdir: str, records) -> Figure | None:
  """Histogram of the last evaluated per-row tau, per segment where there are any."""
  from pico_jax.workdir import tau_file
  tau_splits = [s for s in _eval_splits(records)
                if os.path.exists(os.path.join(workdir, tau_file(s)))]
  if not tau_splits:
    return None
  split = "test" if "test" in tau_splits else tau_splits[0]
  with np.load(os.path.join(workdir, tau_file(split))) as z:
    tau, segment = z["tau"], (z["segment"] if "segment" in z.files else None)
    step = int(z["step"])
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  bins = np.linspace(tau.min(), tau.max() + 1e-6, 40)
  if segment is None:
    ax.hist(tau, bins=bins)
  else:
    for s in np.unique(segment):
      ax.hist(tau[segment == s], bins=bins, alpha=0.5, label=f"segment {int(s)}")
    ax.legend(fontsize=7)
  ax.set_title(f"tau distribution ({split}, step {step})")
  ax.set_xlabel("tau")
  return fig


def reliability(records) -> Figure | None:
  """Reliability diagram per task of the last evaluation (test when there is one)."""
  from pico_jax.metrics import reliability_from_metrics
  splits = _eval_splits(records)
  if not splits:
    return None
  split = "test" if "test" in splits else splits[-1]
  last = max((r for r in records if r["split"] == split), key=lambda r: r["step"])
  curves = [(t, *reliability_from_metrics(last, t)) for t in
            metric_names.CALIBRATION_TASKS]
  curves = [c for c in curves if len(c[1]) and np.isfinite(c[1]).all()
            and np.isfinite(c[2]).all()]
  if not curves:
    return None
  fig = Figure(figsize=(3.6 * len(curves), 3.6))
  for ax, (task, predicted, observed) in zip(
      fig.subplots(1, len(curves), squeeze=False)[0], curves):
    draw_reliability(ax, predicted, observed,
                     f"{task} ({split}, step {last['step']})\nPCOC "
                     f"{last[task + '_pcoc']:.3f}  ECE {last[task + '_ece']:.4f}")
  return fig


def figures(workdir: str) -> dict[str, Figure]:
  """Every plot the run's files allow, by name (the PNG file names without .png)."""
  records = _records(workdir)
  made = {"training_curves": training_curves(records),
          "eval_metrics": eval_metrics(records),
          "tau_segments": tau_segments(records),
          "tau_distribution": tau_distribution(workdir, records),
          "reliability": reliability(records)}
  return {name: fig for name, fig in made.items() if fig is not None}


def plot_run(workdir: str, output: str = "") -> list[str]:
  """Writes the run's figures as PNGs (default ``workdir/plots``); returns their paths."""
  from pico_jax.workdir import PLOTS_DIR
  output = output or os.path.join(workdir, PLOTS_DIR)
  os.makedirs(output, exist_ok=True)
  written = []
  for name, fig in figures(workdir).items():
    path = os.path.join(output, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    written.append(path)
  return written
