"""Early stopping on a validation metric with patience.

Configured by ``config.train.early_stopping_metric`` (a key of
``pico_jax.metrics.task_metrics``, e.g. ``mean_auc`` or ``ctcvr_logloss``; empty
disables it) and ``config.train.patience`` (how many evaluations in a row may fail to
improve on the best before training stops). Metrics whose name ends in ``logloss`` or
``loss`` are minimised, all others maximised.

The state is a pure function of the evaluation history, so a resumed run rebuilds it
from the ``metrics.jsonl`` records up to the restored step (``from_history``) instead of
needing a place in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable


def metric_mode(metric: str) -> str:
  """'min' for losses (names ending in 'loss' or 'logloss'), 'max' otherwise."""
  return "min" if metric.endswith("loss") else "max"


@dataclasses.dataclass
class EarlyStopping:
  """Tracks the best value of ``metric`` and the evaluations since it improved.

  Attributes:
    metric: the metric name. patience: evaluations without improvement that stop
    training (>= 1). mode: 'max' or 'min'. best_value / best_step: the best evaluation
    so far (None before the first). bad_evals: evaluations since the best.
  """
  metric: str
  patience: int
  mode: str = ""
  best_value: float | None = None
  best_step: int | None = None
  bad_evals: int = 0

  def __post_init__(self):
    # patience >= 1 is checked with the rest of the config (pico_jax/config.py).
    self.mode = self.mode or metric_mode(self.metric)

  def update(self, step: int, metrics: dict) -> bool:
    """Records one evaluation; returns True when it is the new best.

    A NaN value (e.g. an AUC of a single-class split) never counts as an improvement.
    Raises KeyError naming the metric and the available ones when it is missing.
    """
    if self.metric not in metrics:
      raise KeyError(f"config.train.early_stopping_metric={self.metric!r} is not among the "
                     f"evaluation metrics: {sorted(metrics)}")
    value = float(metrics[self.metric])
    better = not math.isnan(value) and (
        self.best_value is None
        or (value > self.best_value if self.mode == "max" else value < self.best_value))
    if better:
      self.best_value, self.best_step, self.bad_evals = value, int(step), 0
    else:
      self.bad_evals += 1
    return better

  @property
  def should_stop(self) -> bool:
    return self.bad_evals >= self.patience

  @classmethod
  def from_config(cls, config) -> "EarlyStopping | None":
    """The stopper of ``config.train`` (None when early stopping is off)."""
    t = config.train
    if not t.early_stopping_metric:
      return None
    return cls(t.early_stopping_metric, t.patience)

  @classmethod
  def from_history(cls, metric: str, patience: int, records: Iterable[dict], *,
                   split: str, up_to_step: int) -> "EarlyStopping":
    """Replays the evaluations of ``split`` at steps <= ``up_to_step`` (the last record
    of a step wins: a resumed run may have written a step twice)."""
    by_step = {}
    for r in records:
      if r.get("split") == split and r.get("step", math.inf) <= up_to_step:
        by_step[int(r["step"])] = r
    stopper = cls(metric, patience)
    for step in sorted(by_step):
      stopper.update(step, by_step[step])
    return stopper
