"""Restoring a trained run from its work directory, for evaluation and export.

The checkpoint holds the config the run trained with; ``restore`` rebuilds the run from
it with ``trainer.build`` (the same model, shardings and compiled eval step as
training), so ``launch/evaluate.py`` and ``launch/export.py`` need only the work
directory.

Which checkpoint (``which``):
  ``default`` (``DEFAULT``) ``best`` when the run saved a checkpoint with an evaluation
              of its best metric, else ``latest``: the params the run's own reported
              test scored, not whatever step it stopped at.
  ``latest``  the newest step.
  ``best``    the kept step that ranks best by ``pico_jax.train.checkpoint.best_criterion`` (the
              early-stopping metric when early stopping is on).
  ``STEP``    that step (an integer).

Every restore logs the step it chose and why, and checks that the data it loads are the
data the checkpoint was trained on (the store's fingerprint; ``allow_new_data`` to
evaluate or predict on other data on purpose).
"""

from __future__ import annotations

import logging

import ml_collections

from pico_jax import parallel
from pico_jax.config_keys import set_value
from pico_jax.train.checkpoint import Checkpointer, CheckpointRestoreError, best_criterion
from pico_jax.train.checkpoint_compat import data_identity, flatten_config
from pico_jax.train.trainer import Trainer, build

log = logging.getLogger("pico_jax")

DEFAULT = "default"  # the checkpoint evaluate, export and predict use when not told.


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
  """The checkpoint step named by ``which`` (default | latest | best | an integer
  step), logged with the reason for it."""
  step, why = _choose(ckpt, which)
  log.info("using checkpoint %d of %s (%s)", step, ckpt.directory, why)
  return step


def _choose(ckpt: Checkpointer, which: str) -> tuple[int, str]:
  steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f"{ckpt.directory}: no complete checkpoint")
  if which == DEFAULT:
    step = ckpt.best_step()
    return ((step, f"the best by {ckpt.best.key}") if step is not None else
            (steps[-1], f"the latest: none was saved with an evaluation of {ckpt.best.key}"))
  if which == "latest":
    return steps[-1], "the latest"
  if which == "best":
    step = ckpt.best_step()
    if step is None:
      raise CheckpointRestoreError(f"{ckpt.directory}: no kept checkpoint {steps} was "
                                   f"saved with an evaluation of {ckpt.best.key!r}")
    return step, f"the best by {ckpt.best.key}"
  try:
    step = int(which)
  except ValueError:
    raise CheckpointRestoreError(f"--checkpoint={which!r}: expected '{DEFAULT}', 'best', "
                                 "'latest' or a step number") from None
  if step not in steps:
    raise CheckpointRestoreError(f"--checkpoint={step}: no such checkpoint in "
                                 f"{ckpt.directory} (kept: {steps})")
  return step, "as asked"


def _read_only_checkpointer(workdir: str) -> Checkpointer:
  """The run's checkpoints, read only, without orbax's warning that they are: it is what
  was asked for, and it read as a fault in every evaluate, export and predict."""
  def notice(record):
    return not record.getMessage().startswith("Given directory is read only")
  absl_logger = logging.getLogger("absl")  # orbax logs through absl's logger.
  absl_logger.addFilter(notice)
  try:
    return Checkpointer(workdir, read_only=True)
  finally:
    absl_logger.removeFilter(notice)


def restore(workdir: str, which: str = DEFAULT, *, mesh=None,
            allow_new_data: bool = False) -> Trainer:
  """The run in ``workdir`` rebuilt from its saved config, with the state of the chosen
  checkpoint (``trainer.resumed_step`` is its step). The saved config passed
  ``pico_jax.config.validate`` when its run started; it is not validated again.

  Args:
    workdir: the run's work directory.
    which: ``default``, ``latest``, ``best`` or a step number (module docstring).
    mesh: where the state goes (default: a data-parallel mesh over every device, so a
      model trained on another device count restores here).
    allow_new_data: go on (with a warning) when the data differ from those the
      checkpoint was trained on; else that raises ``CheckpointMismatchError`` naming
      both fingerprints.
  """
  ckpt = _read_only_checkpointer(workdir)
  try:
    latest = ckpt.latest_step()
    if latest is not None:
      # "best" ranks by the run's own config.
      ckpt.best = best_criterion(saved_run_config(ckpt.saved_config(latest)))
    step = resolve_step(ckpt, which)
    config = saved_run_config(ckpt.saved_config(step))
    trainer = build(config, mesh=mesh if mesh is not None else parallel.make_mesh(-1, 1),
                    init_state=False)
    ckpt.check_same_data(step, data_identity(config, trainer.dataset), allow_new_data)
    trainer.state = ckpt.restore_state(step, trainer.abstract_state)
    trainer.resumed_step = step
    return trainer
  finally:
    ckpt.close()



def evaluate(workdir: str, split: str = "test", checkpoint: str = DEFAULT,
             correct_pos_weight: bool = False, allow_new_data: bool = False) -> dict:
  """The metrics of ``split`` for the chosen checkpoint, with ``step``/``split`` keys.

  The run is rebuilt from its saved config by ``restore``, so the evaluation is
  compiled as in training (same shardings, same eval step). ``correct_pos_weight``
  scores the probabilities corrected for the run's ``loss.pos_weight``
  (``pico_jax.calibration``).
  """
  trainer = restore(workdir, checkpoint, allow_new_data=allow_new_data)
  result, predictions = trainer.evaluate(split)
  if correct_pos_weight:
    from pico_jax import calibration, metrics
    predictions = calibration.correct_predictions(predictions, trainer.config.loss)
    result = metrics.task_metrics(predictions, trainer.dataset.splits[split],
                                  trainer.dataset.info)
  return {"step": trainer.resumed_step, "split": split, "checkpoint": checkpoint,
          "pos_weight_corrected": correct_pos_weight, **result}
