"""What "best" means for a run's checkpoints: one definition (``best_criterion``) that
retention and ``--checkpoint best`` rank by. Unless ``config.checkpoint.best_metric`` says
otherwise it is the early-stopping metric, so the best checkpoint holds the params the
run's final test scored.
"""

from __future__ import annotations

import dataclasses
import math

from pico_jax.train.early_stopping import metric_mode


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


def best_step(steps, metrics_of, best: BestCriterion) -> int | None:
  """The step of ``steps`` (kept checkpoints) whose evaluation ``metrics_of(step)``
  (``{"<split>/<metric>": value}``, as saved with the checkpoint) ranks best by
  ``best``; None when none of them was evaluated on it."""
  scored = [(best.score(metrics_of(s)), s) for s in steps]
  scored = [(v, s) for v, s in scored if v > -math.inf]
  return max(scored)[1] if scored else None
