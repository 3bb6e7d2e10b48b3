"""Plots of a run, from its work directory (``launch/plot.py`` writes them all as PNGs).

``figures(workdir)`` reads the run's ``metrics.jsonl``, ``train_metrics.jsonl`` and
``tau_<split>.npz`` (see ``pico_jax/train/reporting.py``) and returns matplotlib
``Figure`` objects by name (no pyplot, so a notebook's backend is left alone and shows
them inline); ``plot_run`` writes them as ``<name>.png``:

  training_curves.png   train loss terms, tau_mean (when it varies) and examples/s
                        against the step.
  eval_metrics.png      task AUCs (and oracle AUCs, thin) and loglosses of every
                        evaluated split against the step: one colour per metric, one
                        line style per split (val solid, test dashed), the legend
                        beside the panels.
  tau_segments.png      mean tau per segment against the step (runs with segments whose
                        tau varies).
  tau_distribution.png  histogram of the last evaluated per-row tau, per segment where
                        the data has segments (runs whose tau varies).
  reliability.png       reliability diagram per task of the last evaluation (test when
                        there is one): observed rate against mean prediction in
                        equal-mass bins, with PCOC and ECE (``pico_jax.metrics``).

Every figure lays itself out (constrained layout), so the legends outside the axes fit.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib import rcParams
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pico_jax import metric_names
from pico_jax.metrics import reliability_from_metrics, varies


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


def _figure(width: float, height: float) -> Figure:
  return Figure(figsize=(width, height), layout="constrained")


def training_curves(records) -> Figure | None:
  """Train loss terms, tau_mean (when it varies) and examples/s against the step."""
  keys = [k for k in metric_names.TRAIN_PLOT if _series(records, "train", k)[0]]
  keys = [k for k in keys if not k.startswith("tau") or varies(
      _series(records, "train", k)[1])]
  if not keys:
    return None
  fig = _figure(3.2 * len(keys), 3)
  for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
    ax.plot(*_series(records, "train", key))
    ax.set_title(key)
    ax.set_xlabel("step")
  return fig


# The eval plot's line style and marker per split; any other split takes the last.
_SPLIT_STYLES = {"val": ("-", "o"), "test": ("--", "s"), None: (":", "^")}


def _split_style(split: str) -> tuple[str, str]:
  return _SPLIT_STYLES.get(split, _SPLIT_STYLES[None])


def eval_metrics(records) -> Figure | None:
  """Task AUCs (oracle AUCs thin) and loglosses of every evaluated split: one colour per
  metric in both panels, one line style per split, each panel's legend beside it."""
  order = list(_SPLIT_STYLES)
  splits = sorted(_eval_splits(records), key=lambda s: (order.index(s) if s in order
                                                         else len(order), s))
  if not splits:
    return None
  cycle = rcParams["axes.prop_cycle"].by_key()["color"]
  fig = _figure(12, 4)
  for ax, (title, keys) in zip(fig.subplots(1, 2), (("AUC", metric_names.AUC_PLOT),
                                                    ("logloss", metric_names.LOGLOSS_PLOT))):
    # A metric's colour is its place in the registry, the same in every figure.
    colours = {key: cycle[(metric_names.AUC_PLOT + metric_names.LOGLOSS_PLOT).index(key)
                          % len(cycle)] for key in keys}
    for split in splits:
      style, marker = _split_style(split)
      for key in keys:
        for name, thin in ((key, False), (f"oracle_{key}", True)):
          steps, values = _series(records, split, name)
          if steps:
            ax.plot(steps, values, linestyle=style, marker="x" if thin else marker,
                    linewidth=0.8 if thin else 1.5, alpha=0.6 if thin else 1.0,
                    color=colours[key], label=f"{split} {name}")
    ax.set_title(title)
    ax.set_xlabel("step")
    labels = [line.get_label().split(" ", 1) for line in ax.get_lines()]
    if labels:
      ax.legend(handles=_legend_handles(labels, colours), fontsize=7, loc="upper left",
                bbox_to_anchor=(1.02, 1), borderaxespad=0)
  return fig


def _legend_handles(labels, colours) -> list[Line2D]:
  """One entry per metric drawn (its colour), the oracles' style, one per split (its
  line style): ``labels`` are the drawn lines' (split, metric) pairs."""
  metrics = {m for _, m in labels}
  splits = list(dict.fromkeys(split for split, _ in labels))
  handles = [Line2D([], [], color=c, label=k) for k, c in colours.items() if k in metrics]
  if any(m.startswith("oracle_") for m in metrics):
    handles.append(Line2D([], [], color="grey", marker="x", linewidth=0.8, label="oracle"))
  for split in splits:
    style, marker = _split_style(split)
    handles.append(Line2D([], [], color="black", linestyle=style, marker=marker,
                          label=split))
  return handles


def tau_segments(records) -> Figure | None:
  """Mean tau per segment against the step (runs with segments whose tau varies)."""
  splits = _eval_splits(records)
  seg_keys = sorted({k for r in records for k in r if k.startswith("tau_segment_")},
                    key=lambda k: int(k.rsplit("_", 1)[1]))
  if not (seg_keys and splits):
    return None
  split = splits[-1] if "val" not in splits else "val"
  series = {key: _series(records, split, key) for key in seg_keys}
  if not varies([v for _, values in series.values() for v in values]):
    return None
  fig = _figure(6, 4)
  ax = fig.subplots()
  for key, (steps, values) in series.items():
    ax.plot(steps, values, marker="o", label=key.replace("tau_", ""))
  ax.set_title(f"mean tau per segment ({split})")
  ax.set_xlabel("step")
  ax.legend(fontsize=7)
  return fig


def tau_distribution(workdir: str, records) -> Figure | None:
  """Histogram of the last evaluated per-row tau, per segment where there are any
  (None when tau does not vary)."""
  from pico_jax.workdir import tau_file
  tau_splits = [s for s in _eval_splits(records)
                if os.path.exists(os.path.join(workdir, tau_file(s)))]
  if not tau_splits:
    return None
  split = "test" if "test" in tau_splits else tau_splits[0]
  with np.load(os.path.join(workdir, tau_file(split))) as z:
    tau, segment = z["tau"], (z["segment"] if "segment" in z.files else None)
    step = int(z["step"])
  if not varies(tau):
    return None
  fig = _figure(6, 4)
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


def reliability_figure(metrics: dict, label: str) -> Figure | None:
  """Reliability diagram per task of one evaluation's ``metrics`` (a record of
  ``metrics.jsonl``); ``label`` names it in each title (e.g. ``test, step 500``)."""
  curves = [(t, *reliability_from_metrics(metrics, t)) for t in
            metric_names.CALIBRATION_TASKS]
  curves = [c for c in curves if len(c[1]) and np.isfinite(c[1]).all()
            and np.isfinite(c[2]).all()]
  if not curves:
    return None
  fig = _figure(3.6 * len(curves), 3.6)
  for ax, (task, predicted, observed) in zip(
      fig.subplots(1, len(curves), squeeze=False)[0], curves):
    draw_reliability(ax, predicted, observed,
                     f"{task} ({label})\nPCOC {metrics[task + '_pcoc']:.3f}  ECE "
                     f"{metrics[task + '_ece']:.4f}")
  return fig


def reliability(records) -> Figure | None:
  """Reliability diagram per task of the last evaluation (test when there is one)."""
  splits = _eval_splits(records)
  if not splits:
    return None
  split = "test" if "test" in splits else splits[-1]
  last = max((r for r in records if r["split"] == split), key=lambda r: r["step"])
  return reliability_figure(last, f"{split}, step {last['step']}")


def rgb(fig: Figure) -> np.ndarray:
  """``fig`` rendered: uint8 [height, width, 3] (for TensorBoard's images)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


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
    fig.savefig(path, dpi=100)
    written.append(path)
  return written
