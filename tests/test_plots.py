"""pico_jax.plots: what each figure draws, and what it leaves out."""

import json

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from pico_jax import plots


def _write(workdir, records, train, tau=None):
  with open(workdir / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  with open(workdir / "train_metrics.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in train)
  if tau is not None:
    np.savez(workdir / "tau_val.npz", tau=tau, segment=np.arange(len(tau)) % 2, step=10)


def _eval(split, step, auc, tau=(0.2, 0.2)):
  return {"step": step, "split": split, "ctr_auc": auc, "oracle_ctr_auc": 0.8,
          "cvr_auc": auc - 0.1, "ctr_logloss": 0.4, "cvr_logloss": 0.3,
          "tau_segment_0": tau[0], "tau_segment_1": tau[1]}


def test_eval_plot_keeps_a_colour_per_metric_and_its_legend_beside_the_data(tmp_path):
  _write(tmp_path, [_eval("val", 5, 0.6), _eval("val", 10, 0.7), _eval("test", 10, 0.68)],
         [{"step": 5, "split": "train", "loss": 1.0}])
  fig = plots.figures(str(tmp_path))["eval_metrics"]
  FigureCanvasAgg(fig).draw()
  for ax in fig.axes:
    lines = {line.get_label(): line for line in ax.get_lines()}
    for key in {label.split(" ")[1] for label in lines}:
      val, test = lines[f"val {key}"], lines[f"test {key}"]
      assert val.get_color() == test.get_color()
      assert (val.get_linestyle(), test.get_linestyle()) == ("-", "--")
    colours = {line.get_color() for label, line in lines.items()
               if label.startswith("val ") and "oracle" not in label}
    assert len(colours) == len({label for label in lines if label.startswith("val ")
                                and "oracle" not in label})
    legend = ax.get_legend()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
    assert legend.get_window_extent().x1 <= fig.bbox.x1  # and inside the figure.
  auc, logloss = fig.axes
  # The same metric has the same colour in both panels' legends, by the registry.
  assert [t.get_text() for t in auc.get_legend().get_texts()] == [
      "ctr_auc", "cvr_auc", "oracle", "val", "test"]
  assert [t.get_text() for t in logloss.get_legend().get_texts()] == [
      "ctr_logloss", "cvr_logloss", "val", "test"]


def test_tau_plots_only_when_tau_varies(tmp_path):
  fixed = tmp_path / "fixed"
  fixed.mkdir()
  _write(fixed, [_eval("val", 5, 0.6), _eval("val", 10, 0.7)],
         [{"step": s, "split": "train", "loss": 1.0 / s, "tau_mean": 0.2} for s in (5, 10)],
         tau=np.full(8, 0.2, np.float32))
  figures = plots.figures(str(fixed))
  assert "tau_segments" not in figures and "tau_distribution" not in figures
  assert [ax.get_title() for ax in figures["training_curves"].axes] == ["loss"]

  learned = tmp_path / "learned"
  learned.mkdir()
  _write(learned, [_eval("val", 5, 0.6, (0.2, 0.3)), _eval("val", 10, 0.7, (0.1, 0.4))],
         [{"step": s, "split": "train", "loss": 1.0 / s, "tau_mean": 0.2 + s / 100}
          for s in (5, 10)], tau=np.linspace(0.1, 0.4, 8, dtype=np.float32))
  figures = plots.figures(str(learned))
  assert {"tau_segments", "tau_distribution"} <= set(figures)
  assert [ax.get_title() for ax in figures["training_curves"].axes] == ["loss", "tau_mean"]


def test_a_figure_renders_to_rgb_pixels():
  metrics = {"ctr_pcoc": 1.0, "ctr_ece": 0.01, **{
      f"ctr_reliability_{kind}_{k}": (k + 0.5) / 4 for k in range(4)
      for kind in ("predicted", "observed")}}
  image = plots.rgb(plots.reliability_figure(metrics, "val, step 10"))
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  assert image.min() < 255  # something was drawn.
  assert plots.reliability_figure({"ctr_auc": 0.7}, "val") is None
