"""Observability of a training run: a progress bar, JSON-lines metrics, TensorBoard.

Everything a run reports lands in its work directory (process 0 only; the layout is
``pico_jax/workdir.py``):

  metrics.jsonl    one JSON object per evaluation: {"step", "split", <metric>: float,
                   ...} with the metrics of ``pico_jax.metrics.task_metrics``.
  train_metrics.jsonl  the same format, split "train": the averaged step metrics of
                   each logging window (loss terms, tau_mean, grad_norm,
                   examples_per_sec, steps_per_sec).
                   A resumed run first drops the records after its checkpoint
                   (``truncate_after``); ``read_metrics`` also keeps only the last
                   record of a (split, step).
  tensorboard/     TensorBoard event files (tensorboardX): the same scalars as
                   ``<split>/<metric>`` but the reliability curves' points, which go as
                   one image per evaluation, ``<split>/reliability``
                   (``pico_jax.plots.reliability_figure``); histograms of the evaluated
                   tau, overall and per segment. A NaN or inf scalar (e.g. an AUC of a
                   split with one class) is left out, with one warning per tag; the
                   JSON-lines files keep it. A constant tau (a fixed temperature) gets
                   no histogram.
  tau_<split>.npz  the per-row tau of the latest evaluation of a split (``tau``,
                   ``segment`` when the data has segments, ``step``), for
                   ``launch/plot.py``.

The progress bar (tqdm: steps, loss, examples/s, ETA) shows on a terminal only; tqdm's
environment variables (e.g. ``TQDM_DISABLE=1``) override that.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

import jax
import numpy as np

from pico_jax import batch as B
from pico_jax import metric_names
from pico_jax import metrics as metrics_lib
from pico_jax.data.errors import DataError

# The file names belong to the work-directory layout (pico_jax/workdir.py).
from pico_jax.workdir import METRICS_FILE, TENSORBOARD_DIR, TRAIN_METRICS_FILE, tau_file

log = logging.getLogger("pico_jax")


class MetricsWriter:
  """Appends one JSON object per record to ``workdir/<filename>`` (process 0)."""

  def __init__(self, workdir: str, filename: str = METRICS_FILE):
    self.path = os.path.join(workdir, filename)

  def truncate_after(self, step: int):
    """Drops records of steps after ``step``: a resumed run redoes those steps, and
    the file then reads as if the run had never stopped.

    A last line cut short (no newline: the run was killed while writing it) is dropped
    with a warning. Any other line that is not a record is damage: ``DataError`` naming
    its line, the file left as it is (nothing saved is thrown away unseen)."""
    if jax.process_index() != 0 or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = list(enumerate(f, 1))
    kept = []
    for line_no, line in lines:
      if not line.strip():
        continue
      if line_no == len(lines) and not line.endswith("\n"):
        try:
          record = _parse_record(line, self.path, line_no)
        except DataError:
          log.warning("%s:%d: dropped the last line, cut short (the run was killed while "
                      "writing it)", self.path, line_no)
          continue
      else:
        # Only the last line can be cut by a kill; a bad line before it is damage.
        record = _parse_record(line, self.path, line_no, hint=(
            "; the file is left as it was: mend or delete the line, then resume"))
      if record["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    with open(self.path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, split: str, metrics: dict):
    if jax.process_index() != 0:
      return
    record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def _parse_record(line: str, path: str, line_no: int, hint: str = "") -> dict:
  """The record of line ``line_no`` of the metrics file ``path``; ``DataError`` naming
  the file and line (and ending with ``hint``) unless it is a JSON object with a
  ``split`` and an integer ``step``."""
  try:
    record = json.loads(line)
    record.update(split=record["split"], step=int(record["step"]))
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise DataError(f"malformed metrics record ({e}){hint}", path=path, line=line_no) from None
  return record


def read_metrics(workdir: str, filename: str = METRICS_FILE) -> list[dict]:
  """The records of ``workdir/<filename>``, the last one of each (split, step) kept, in
  file order. Raises DataError naming the file and line of a malformed record."""
  path = os.path.join(workdir, filename)
  latest = {}
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      record = _parse_record(line, path, line_no)
      key = (record["split"], record["step"])
      latest.pop(key, None)  # re-insert: a rewritten step moves to its new place.
      latest[key] = record
  return list(latest.values())


def _task_metric(result: dict, task: str, column: str) -> float | None:
  """``<task>_<column>`` of ``result``; the all-rows CVR scores are named
  ``cvr_<column>_all_rows`` where the calibration's are ``cvr_all_rows_<column>``."""
  base, all_rows, _ = task.partition("_all_rows")
  keys = [f"{task}_{column}"] + ([f"{base}_{column}{all_rows}"] if all_rows else [])
  return next((result[k] for k in keys if k in result), None)


def summary_table(result: dict) -> str:
  """A few lines for a terminal: what was scored (``step``, ``split``, ``checkpoint``
  and the row counts of ``result``, an evaluation of ``train.restore.evaluate``), then
  a row per task and a column per metric (``metric_names.SUMMARY_*``)."""
  cells = {t: {c: _task_metric(result, t, c) for c in metric_names.SUMMARY_COLUMNS}
           for t in metric_names.SUMMARY_TASKS}
  rows = [t for t in cells if any(v is not None for v in cells[t].values())]
  columns = [c for c in metric_names.SUMMARY_COLUMNS
             if any(cells[t][c] is not None for t in rows)]
  counts = ", ".join(f"{int(result[k]):,} {k.removeprefix('num_')}"
                     for k in ("num_rows", "num_clicks", "num_conversions") if k in result)
  lines = [f"{result.get('split', '?')} split, step {result.get('step', '?')} (checkpoint "
           f"{result.get('checkpoint', '?')}): {counts}",
           "  ".join([f"{'task':<13}"] + [f"{c:>8}" for c in columns])]
  for t in rows:
    lines.append("  ".join([f"{t:<13}"] + [f"{'-' if v is None else f'{v:.4f}':>8}" for v
                                           in (cells[t][c] for c in columns)]))
  return "\n".join(lines)


class MetricsWindow:
  """The running sums of the step metrics of one logging window: float64 sums of the
  float32 step values and their count.

  Checkpoints save it (``to_json``), so a run resumed inside a window logs the same
  averages as a run that never stopped.
  """

  def __init__(self, count: int = 0, sums: dict[str, float] | None = None):
    self.count, self.sums = count, dict(sums or {})

  def add(self, metrics: dict):
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v)
    self.count += 1

  def mean(self) -> dict[str, float]:
    return {k: v / self.count for k, v in self.sums.items()}

  def to_json(self) -> dict:
    return {"count": self.count, "sums": self.sums}

  @classmethod
  def from_json(cls, saved: dict) -> "MetricsWindow":
    return cls(int(saved["count"]), {k: float(v) for k, v in saved["sums"].items()})


class Reporter:
  """The run's reporting sinks. Only process 0 writes; the others do nothing.

  Args:
    workdir: the run's work directory.
    total_steps: the planned number of steps (the bar's total; its ETA).
    start_step: the step training starts (or resumes) from.
    batch_size: global batch size, for examples/s.
    progress_file: where the bar goes (default stderr); None on a non-terminal
      disables the bar unless tqdm's environment says otherwise.
    tensorboard: write TensorBoard event files.
  """

  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0,
               batch_size: int, progress_file=None, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.workdir = workdir
    self.batch_size = batch_size
    self.metrics = MetricsWriter(workdir)
    self.train_metrics = MetricsWriter(workdir, TRAIN_METRICS_FILE)
    self._bar = None
    self._tb = None
    self._last_time = time.perf_counter()
    self._last_step = start_step
    self._skipped = set()  # TensorBoard tags already warned about as non-finite.
    if not self.enabled:
      return
    from tqdm import tqdm
    self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                     file=progress_file or sys.stderr,
                     # None: shown on a terminal only (explicit files always show).
                     disable=False if progress_file is not None else None,
                     desc="train", mininterval=0.5)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD_DIR),
                               flush_secs=30)

  def truncate_after(self, step: int):
    """Drops the records of steps after ``step`` (a resumed run redoes them)."""
    self.metrics.truncate_after(step)
    self.train_metrics.truncate_after(step)

  def step(self, n: int = 1):
    """Advances the bar by ``n`` steps (no device sync)."""
    if self._bar is not None:
      self._bar.update(n)

  def train(self, step: int, metrics: dict) -> dict:
    """Records the averaged step metrics of a logging window ending at ``step``.

    Adds ``examples_per_sec`` (and ``steps_per_sec``) over the window; returns the
    record written.
    """
    now = time.perf_counter()
    elapsed = max(now - self._last_time, 1e-9)
    steps = max(step - self._last_step, 0)
    record = {k: float(v) for k, v in metrics.items()}
    record["steps_per_sec"] = steps / elapsed
    record["examples_per_sec"] = steps * self.batch_size / elapsed
    self._last_time, self._last_step = now, step
    if not self.enabled:
      return record
    self.train_metrics.write(step, "train", record)
    if self._bar is not None:
      self._bar.set_postfix({"loss": f"{record.get('loss', math.nan):.4f}",
                             "ex/s": f"{record['examples_per_sec']:.0f}"}, refresh=False)
    self._scalars("train", record, step)
    return record

  def eval(self, step: int, split: str, metrics: dict, predictions=None, columns=None):
    """Records an evaluation of ``split``; with ``predictions["tau"]``, its distribution."""
    if not self.enabled:
      return
    self.metrics.write(step, split, metrics)
    self._scalars(split, {k: v for k, v in metrics.items()
                          if not metrics_lib.is_reliability_point(k)}, step)
    if self._tb is not None:
      from pico_jax import plots  # matplotlib: only for a run that writes TensorBoard.
      fig = plots.reliability_figure(metrics, f"{split}, step {step}")
      if fig is not None:
        self._tb.add_image(f"{split}/reliability", plots.rgb(fig), step, dataformats="HWC")
    if predictions is None or "tau" not in predictions:
      return
    tau = np.asarray(predictions["tau"], np.float32)
    arrays = {"tau": tau, "step": np.asarray(step)}
    if columns is not None and B.SEGMENT in columns:
      arrays["segment"] = np.asarray(columns[B.SEGMENT], np.int32)
    np.savez(os.path.join(self.workdir, tau_file(split)), **arrays)
    finite = np.isfinite(tau)  # TensorBoard's histograms take finite values only.
    if self._tb is not None and metrics_lib.varies(tau[finite]):
      self._tb.add_histogram(f"{split}/tau", tau[finite], step)
      if "segment" in arrays:
        for s in np.unique(arrays["segment"]):
          self._tb.add_histogram(f"{split}/tau_segment_{int(s)}",
                                 tau[finite & (arrays["segment"] == s)], step)

  def _scalars(self, prefix: str, values: dict, step: int):
    """Writes the finite ``values`` as ``<prefix>/<key>`` scalars; a NaN or inf is left
    out (tensorboardX would write it and warn at every call), with one warning for the
    tags not warned about before."""
    if self._tb is None:
      return
    skipped = []
    for k, v in values.items():
      if math.isfinite(float(v)):
        self._tb.add_scalar(f"{prefix}/{k}", float(v), step)
      else:
        skipped.append(f"{prefix}/{k}")
    new = [tag for tag in skipped if tag not in self._skipped]
    if new:
      self._skipped.update(new)
      log.warning("TensorBoard: left out the non-finite scalars %s (from step %d on; "
                  "the metrics files keep them)", ", ".join(new), step)

  def close(self):
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
