"""Restoring a trained run from its work directory, for evaluation and export.

The checkpoint holds the config the run trained with; ``restore`` rebuilds the run from
it with ``trainer.build`` (the same model, shardings and compiled eval step as
training), so ``launch/evaluate.py`` and ``launch/export.py`` need only the work
directory.

Which checkpoint (``which``):
  ``latest``  the newest step.
  ``best``    the kept step that ranks best by ``pico_jax.train.checkpoint.best_criterion`` (the
              early-stopping metric when early stopping is on).
  ``STEP``    that step (an integer).
"""

from __future__ import annotations

import logging

import ml_collections

from pico_jax import parallel
from pico_jax.config_keys import set_value
from pico_jax.train.checkpoint import Checkpointer, CheckpointRestoreError, best_criterion
from pico_jax.train.checkpoint_compat import flatten_config
from pico_jax.train.trainer import Trainer, build

log = logging.getLogger("pico_jax")


def saved_run_config(saved: dict) -> ml_collections.ConfigDict:
  """A checkpoint's config laid over today's defaults (``configs/default.py`` has every
  key): keys added since the run keep their defaults, keys removed since are dropped
  with a warning, so an older run still evaluates and exports."""
  from configs import default
  config = default.get_config()
  dropped = []
  for key, value in flatten_config(saved).items():
    try:
      set_value(config, key, value)
    except KeyError:
      dropped.append(key)
  if dropped:
    log.warning("ignoring saved config keys that no longer exist: %s", ", ".join(dropped))
  return config


def resolve_step(ckpt: Checkpointer, which: str) -> int:
  """The checkpoint step named by ``which`` (latest | best | an integer step)."""
  steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f"{ckpt.directory}: no complete checkpoint")
  if which == "latest":
    return steps[-1]
  if which == "best":
    step = ckpt.best_step()
    if step is None:
      raise CheckpointRestoreError(f"{ckpt.directory}: no kept checkpoint {steps} was "
                                   f"saved with an evaluation of {ckpt.best.key!r}")
    return step
  try:
    step = int(which)
  except ValueError:
    raise CheckpointRestoreError(f"--checkpoint={which!r}: expected 'best', 'latest' or "
                                 "a step number") from None
  if step not in steps:
    raise CheckpointRestoreError(f"--checkpoint={step}: no such checkpoint in "
                                 f"{ckpt.directory} (kept: {steps})")
  return step


def restore(workdir: str, which: str = "latest", *, mesh=None) -> Trainer:
  """The run in ``workdir`` rebuilt from its saved config, with the state of the chosen
  checkpoint (``trainer.resumed_step`` is its step). The saved config passed
  ``pico_jax.config.validate`` when its run started; it is not validated again.

  Args:
    workdir: the run's work directory.
    which: ``latest``, ``best`` or a step number.
    mesh: where the state goes (default: a data-parallel mesh over every device, so a
      model trained on another device count restores here).
  """
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    latest = ckpt.latest_step()
    if latest is not None:
      # "best" ranks by the run's own config.
      ckpt.best = best_criterion(saved_run_config(ckpt.saved_config(latest)))
    step = resolve_step(ckpt, which)
    config = saved_run_config(ckpt.saved_config(step))
    trainer = build(config, mesh=mesh if mesh is not None else parallel.make_mesh(-1, 1),
                    init_state=False)
    trainer.state = ckpt.restore_state(step, trainer.abstract_state)
    trainer.resumed_step = step
    return trainer
  finally:
    ckpt.close()



def evaluate(workdir: str, split: str = "test", checkpoint: str = "latest",
             correct_pos_weight: bool = False) -> dict:
  """The metrics of ``split`` for the chosen checkpoint, with ``step``/``split`` keys.

  The run is rebuilt from its saved config by ``restore``, so the evaluation is
  compiled as in training (same shardings, same eval step). ``correct_pos_weight``
  scores the probabilities corrected for the run's ``loss.pos_weight``
  (``pico_jax.calibration``).
  """
  trainer = restore(workdir, checkpoint)
  result, predictions = trainer.evaluate(split)
  if correct_pos_weight:
    from pico_jax import calibration, metrics
    predictions = calibration.correct_predictions(predictions, trainer.config.loss)
    result = metrics.task_metrics(predictions, trainer.dataset.splits[split],
                                  trainer.dataset.info)
  return {"step": trainer.resumed_step, "split": split, "checkpoint": checkpoint,
          "pos_weight_corrected": correct_pos_weight, **result}
