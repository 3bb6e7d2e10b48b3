"""Restoring a trained model from its work directory, for evaluation and export.

The checkpoint holds the config the run trained with; the model is rebuilt from it,
so ``launch/evaluate.py`` and ``launch/export.py`` need only the work directory.

Which checkpoint (``which``):
  ``latest``  the newest step.
  ``best``    the kept step whose evaluation (from the run's ``metrics.jsonl``) is
              best on ``config.checkpoint.best_metric`` ("<split>/<metric>", ranked
              by ``checkpoint.best_mode``) when set, else on
              ``config.train.early_stopping_metric`` of ``config.data.eval_split``,
              else on its ``mean_auc``.
  ``STEP``    that step (an integer).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from pico_jax import parallel
from pico_jax.data import load_dataset
from pico_jax.data.synthetic import Dataset
from pico_jax.models import build_model
from pico_jax.train import reporting
from pico_jax.train.early_stopping import metric_mode
from pico_jax.train.optimizer import make_optimizer
from pico_jax.train.state import create_train_state, state_shardings

log = logging.getLogger("pico_jax")

CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass
class Restored:
  """A trained model: its config, step, dataset, module, params and mesh."""
  config: ml_collections.ConfigDict
  step: int
  dataset: Dataset
  model: Any
  params: Any
  mesh: Any


def _manager(workdir: str) -> ocp.CheckpointManager:
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no checkpoints (was the run trained with "
                            "config.checkpoint.enabled=True?)")
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False))


def best_metric(config) -> tuple[str, str, str]:
  """(split, metric, 'max' | 'min') that define the best checkpoint of ``config``."""
  ckpt = config.get("checkpoint", {})
  if ckpt.get("best_metric", ""):
    split, _, metric = ckpt.best_metric.partition("/")
    return split, metric, ckpt.get("best_mode", "max")
  metric = config.get("train", {}).get("early_stopping_metric", "") or "mean_auc"
  return config.data.eval_split, metric, metric_mode(metric)


def best_step(workdir: str, steps, config) -> int:
  """The step of ``steps`` whose evaluation record in ``metrics.jsonl`` is best."""
  split, metric, mode = best_metric(config)
  records = {r["step"]: r for r in reporting.read_metrics(workdir)
             if r["split"] == split and metric in r}
  scored = [s for s in steps if s in records]
  if not scored:
    raise ValueError(f"{os.path.join(workdir, reporting.METRICS_FILE)}: no {split!r} "
                     f"evaluation with {metric!r} at a kept checkpoint step {sorted(steps)}")
  sign = 1 if mode == "max" else -1
  chosen = max(scored, key=lambda s: sign * records[s][metric])
  overall = max(records, key=lambda s: sign * records[s][metric])
  if overall not in steps:
    log.warning("the best %s evaluation (step %d) has no checkpoint; using step %d, the "
                "best of the kept ones", metric, overall, chosen)
  return chosen


def resolve_step(workdir: str, which: str, manager=None, config=None) -> int:
  """The checkpoint step named by ``which`` (latest | best | an integer step)."""
  manager = manager or _manager(workdir)
  steps = list(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"{manager.directory}: no complete checkpoint")
  if which == "latest":
    return max(steps)
  if which == "best":
    config = config or _config_at(manager, max(steps))
    return best_step(workdir, steps, config)
  try:
    step = int(which)
  except ValueError:
    raise ValueError(f"--checkpoint={which!r}: expected 'best', 'latest' or a step "
                     "number") from None
  if step not in steps:
    raise ValueError(f"--checkpoint={step}: no such checkpoint in {manager.directory} "
                     f"(kept: {sorted(steps)})")
  return step


def _config_at(manager, step: int) -> ml_collections.ConfigDict:
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return ml_collections.ConfigDict(restored.config)


def restore(workdir: str, which: str = "latest", *, mesh=None) -> Restored:
  """Rebuilds the model of the run in ``workdir`` and restores its params.

  Args:
    workdir: the run's work directory.
    which: ``latest``, ``best`` or a step number.
    mesh: where the params go (default: a data-parallel mesh over every device, so a
      model trained on another device count restores here).
  """
  manager = _manager(workdir)
  latest = resolve_step(workdir, "latest", manager)
  config = _config_at(manager, latest)
  step = resolve_step(workdir, which, manager, config)
  if step != latest:
    config = _config_at(manager, step)
  dataset = load_dataset(config)
  mesh = mesh or parallel.make_mesh(-1, 1)
  model = build_model(config, dataset.schema)
  tx = make_optimizer(config.optimizer, config.train.steps)
  # The restore target: the state's shapes (traced, not computed) and shardings.
  shapes = jax.eval_shape(lambda: create_train_state(
      model, tx, dataset.schema, config.seed, mesh, config.axis_rules))
  shardings = state_shardings(model, tx, dataset.schema, mesh, config.axis_rules)
  abstract = jax.tree.map(
      lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes, shardings)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))
  manager.close()
  return Restored(config=config, step=step, dataset=dataset, model=model,
                  params=restored.state.params, mesh=mesh)
