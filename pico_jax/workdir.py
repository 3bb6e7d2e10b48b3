"""The work directory of a run: its layout, its checkpoint manager, its best checkpoint.

Every file a run writes has its name here::

  WORKDIR/
    checkpoints/<step>/          one orbax checkpoint per saved step, with the items
                                 state/  (params, optimizer state, step, rng)
                                 data/   (the Grain iterator position of every process)
                                 config/ (the run's config as JSON)
                                 best/   (the early-stopping best params, when on)
    checkpoints/<step>.orbax-checkpoint-tmp-*/   a save cut short (ignored)
    metrics.jsonl                one JSON record per evaluation
    train_metrics.jsonl          one JSON record per logging window
    tensorboard/                 TensorBoard event files
    tau_<split>.npz              per-row tau of the latest evaluation of a split
    eval_<split>_step<N>.json    launch/evaluate.py's result
    export/step_<N>/             launch/export.py's artifact (default --output)
    plots/                       launch/plot.py's figures (default --output)
    result.json                  launch/experiment.py: the finished run's test metrics

The best checkpoint is defined once, by ``best_criterion``: checkpoint retention and
``--checkpoint best`` (``launch/evaluate.py``, ``launch/export.py``) rank by it, and
unless ``config.checkpoint.best_metric`` says otherwise it is the early-stopping metric,
so the best checkpoint holds the params the run's final test scored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys

from pico_jax.train.early_stopping import metric_mode

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TRAIN_METRICS_FILE = "train_metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "export"
PLOTS_DIR = "plots"
RESULT_FILE = "result.json"
# orbax writes a step into <step> + this marker + a suffix, renamed when complete.
TMP_MARKER = ".orbax-checkpoint-tmp"


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def tau_file(split: str) -> str:
  return f"tau_{split}.npz"


def eval_file(workdir: str, split: str, step: int) -> str:
  return os.path.join(workdir, f"eval_{split}_step{step}.json")


def export_dir(workdir: str, step: int) -> str:
  return os.path.join(workdir, EXPORT_DIR, f"step_{step}")


@dataclasses.dataclass(frozen=True)
class BestCriterion:
  """The evaluation that ranks checkpoints: ``metric`` of ``split``, ``mode`` max|min."""
  split: str
  metric: str
  mode: str

  @property
  def key(self) -> str:
    """The name of the ranked value among a checkpoint's metrics: ``split/metric``."""
    return f"{self.split}/{self.metric}"

  def score(self, metrics: dict | None) -> float:
    """Higher is better; a checkpoint without the metric, or with NaN, ranks last."""
    value = (metrics or {}).get(self.key, math.nan)
    if value is None or math.isnan(value):
      return -math.inf
    return value if self.mode == "max" else -value


def best_criterion(config) -> BestCriterion:
  """What "best" means for ``config``.

  ``config.checkpoint.best_metric`` ("<split>/<metric>") when set; else the early-stopping
  metric (``config.train.early_stopping_metric``) of ``config.data.eval_split``, so the
  best checkpoint is the one early stopping scores on test; else that split's
  ``mean_auc``. Losses (names ending in ``loss``) are minimised, the rest maximised.
  """
  if config.checkpoint.best_metric:
    split, _, metric = config.checkpoint.best_metric.partition("/")
  else:
    split, metric = config.data.eval_split, config.train.early_stopping_metric or "mean_auc"
  return BestCriterion(split, metric, metric_mode(metric))


def checkpoint_manager(workdir: str, *, read_only: bool = False, keep: int = 1,
                       keep_best: int = 0,
                       best: BestCriterion | None = None):
  """The ``orbax.checkpoint.CheckpointManager`` of ``workdir/checkpoints`` (the only
  place one is constructed).

  Args:
    read_only: for evaluation and export: nothing is created, saved or deleted.
    keep: how many of the latest checkpoints to keep.
    keep_best: how many of the best checkpoints (by ``best``) to keep besides them.
    best: ranks checkpoints by the ``metrics`` given to ``save``; orbax also writes
      them beside each step, so a restarted run still knows which one is best.
  """
  import grain  # pylint: disable=g-import-not-at-top (the layout alone stays light)
  import orbax.checkpoint as ocp
  from orbax.checkpoint import checkpoint_managers as policies
  handlers = dict(state=ocp.StandardCheckpointHandler(),
                  data=grain.checkpoint.CheckpointHandler(),
                  config=ocp.JsonCheckpointHandler(),
                  best=ocp.StandardCheckpointHandler())
  directory = checkpoint_dir(workdir)
  if read_only:
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"{directory}: no checkpoints (was the run trained with "
                              "config.checkpoint.enabled=True?)")
    return ocp.CheckpointManager(directory, item_handlers=handlers,
                                 options=ocp.CheckpointManagerOptions(
                                     read_only=True, create=False, save_interval_steps=0))
  keep_policies = [policies.preservation_policy.LatestN(n=keep)]
  score = None
  if best is not None and keep_best:
    score = best.score
    keep_policies.append(policies.preservation_policy.BestN(
        get_metric_fn=score, reverse=False, n=keep_best,
        keep_checkpoints_without_metrics=False))
  return ocp.CheckpointManager(
      directory, item_handlers=handlers,
      options=ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True,
          best_fn=score, best_mode="max",
          preservation_policy=policies.AnyPreservationPolicy(keep_policies)))


def best_step(steps, metrics_of, best: BestCriterion) -> int | None:
  """The step of ``steps`` (kept checkpoints) whose evaluation ``metrics_of(step)``
  (``{"<split>/<metric>": value}``, as saved with the checkpoint) ranks best by
  ``best``; None when none of them was evaluated on it."""
  scored = [(best.score(metrics_of(s)), s) for s in steps]
  scored = [(v, s) for v, s in scored if v > -math.inf]
  return max(scored)[1] if scored else None


@contextlib.contextmanager
def quiet_orbax():
  """Keeps the noise of a failed checkpoint read out of the output; the caller raises
  one error that says what failed.

  A read that fails on one damaged array closes orbax's asyncio loop while TensorStore
  still completes the reads of the others; each completion then reports
  ``RuntimeError: Event loop is closed`` through ``sys.unraisablehook`` (thousands of
  tracebacks for a real model), and orbax logs each failure. Both are silenced here;
  the hook filter stays installed, since those completions arrive after the read.
  """
  _drop_closed_loop_reports()
  loggers = [logging.getLogger(n) for n in ("absl", "orbax", "asyncio")]
  levels = [l.level for l in loggers]
  for l in loggers:
    l.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for l, level in zip(loggers, levels):
      l.setLevel(level)


def _drop_closed_loop_reports():
  if getattr(sys.unraisablehook, "_drops_closed_loop", False):
    return
  previous = sys.unraisablehook

  def hook(report):
    if not (isinstance(report.exc_value, RuntimeError)
            and str(report.exc_value) == "Event loop is closed"):
      previous(report)

  hook._drops_closed_loop = True
  sys.unraisablehook = hook
