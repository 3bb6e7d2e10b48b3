"""Config checks that ml_collections cannot do by itself, and dotted-key access.

Unknown keys and wrong types are rejected by the locked ``ConfigDict`` and absl's
``config_flags`` when overrides are parsed; ``validate`` checks values (choices, ranges
and consistency) and names the offending key. It runs once, at the entry points
(``launch/*.py`` and ``pico_jax.train.trainer.build``); the modules below them trust a
validated config.

To add a check, add the dotted key to the table that fits (``CHOICES``, ``POSITIVE``,
``NON_NEGATIVE``); only checks that relate several keys are written out in
``validate``.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_flags import config_path

from pico_jax.contrast import IMPLEMENTATIONS as CONTRAST_IMPLEMENTATIONS
from pico_jax.losses import TAU_GRADIENTS
from pico_jax.models.heads import DETACH_SIDES, RELATEDNESS_INPUTS
from pico_jax.models.pico import BACKBONES, CONTRAST_MODES, CONTRAST_REPRESENTATIONS
from pico_jax.train.optimizer import SCHEDULES, learning_rate_schedule

CHOICES = {
    "data.name": ("synthetic", "store"),
    "model.backbone": BACKBONES,
    "model.pooling": ("sum", "mean"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "contrast.mode": CONTRAST_MODES,
    "contrast.relatedness_input": RELATEDNESS_INPUTS,
    "contrast.negatives": ("global", "local"),
    "contrast.implementation": CONTRAST_IMPLEMENTATIONS,
    "contrast.tau_gradient": TAU_GRADIENTS,
    "contrast.representation": CONTRAST_REPRESENTATIONS,
    "contrast.detach": DETACH_SIDES,
    "loss.cvr_rows": ("clicked", "all"),
    "optimizer.name": ("adam", "adamw", "adagrad", "sgd"),
    "optimizer.embedding_optimizer": ("dense", "lazy_adam", "lazy_adagrad"),
    "optimizer.schedule": SCHEDULES,
}
POSITIVE = ("train.batch_size", "train.steps", "train.log_every", "train.eval_every",
            "train.eval_batch_size", "model.embed_dim", "model.vocab_pad_multiple",
            "contrast.proj_dim", "contrast.tau_min", "contrast.tau_prior",
            "optimizer.learning_rate", "checkpoint.every_steps", "checkpoint.keep",
            "train.patience", "loss.pos_weight.ctr", "loss.pos_weight.ctcvr",
            "loss.pos_weight.cvr")
NON_NEGATIVE = ("contrast.weight", "contrast.chunk_size", "loss.ctr_weight",
                "loss.ctcvr_weight", "loss.cvr_weight", "model.dropout",
                "contrast.relatedness_supervision_weight", "contrast.tau_prior_weight",
                "optimizer.weight_decay", "optimizer.grad_clip_norm", "checkpoint.keep_best",
                "data.device_prefetch", "loss.calibrator_weight", "optimizer.warmup_steps",
                "optimizer.decay_steps")


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


def get(config, key: str):
  """The value at dotted ``key`` (``"model.mmoe.num_experts"``); KeyError names it."""
  try:
    return config_path.get_value(key, config)
  except (KeyError, AttributeError, IndexError):
    raise KeyError(f"config key {key!r} is not in the config") from None


def set_value(config, key: str, value):
  """Sets dotted ``key`` of a (possibly locked) config; an unknown key fails naming it.

  A list or tuple given for a tuple-valued key is stored as a tuple (as
  ``--config.KEY=(1,2)`` would be).
  """
  current = get(config, key)
  if isinstance(current, tuple) and isinstance(value, (list, tuple)):
    value = tuple(value)
  config_path.set_value(key, config, value)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ``ConfigError`` naming the first invalid key; returns ``config`` otherwise."""
  for key, choices in CHOICES.items():
    if get(config, key) not in choices:
      raise ConfigError(f"config.{key}={get(config, key)!r}: expected one of {list(choices)}")
  for key in POSITIVE:
    if not get(config, key) > 0:
      raise ConfigError(f"config.{key}={get(config, key)!r}: must be > 0")
  for key in NON_NEGATIVE:
    if not get(config, key) >= 0:
      raise ConfigError(f"config.{key}={get(config, key)!r}: must be >= 0")
  c = config.contrast
  if not 0 < c.tau_min < c.tau_max:
    raise ConfigError(f"config.contrast.tau_min={c.tau_min} and tau_max={c.tau_max}: "
                      "need 0 < tau_min < tau_max")
  # A learned tau starts at tau_init through an inverse sigmoid: strictly inside.
  inside = (c.tau_min <= c.tau_init <= c.tau_max if c.mode == "fixed"
            else c.tau_min < c.tau_init < c.tau_max)
  if not inside:
    raise ConfigError(f"config.contrast.tau_init={c.tau_init}: must lie between "
                      f"tau_min={c.tau_min} and tau_max={c.tau_max}")
  if (c.mode in ("global", "personalized") and c.tau_gradient == "supervision"
      and not (c.relatedness_supervision_weight or c.tau_prior_weight)):
    raise ConfigError("config.contrast.tau_gradient='supervision': tau would never be "
                      "trained; set relatedness_supervision_weight or tau_prior_weight")
  if config.data.name == "store" and not config.data.path:
    raise ConfigError("config.data.path: required when config.data.name='store'")
  o = config.optimizer
  if o.embedding_optimizer != "dense" and o.name == "adamw" and o.weight_decay:
    raise ConfigError(f"config.optimizer.embedding_optimizer={o.embedding_optimizer!r} has "
                      f"no weight decay; config.optimizer.name='adamw' with weight_decay="
                      f"{o.weight_decay} would decay the other params only")
  try:  # the schedule checks its own settings (warmup below decay) and names the key.
    learning_rate_schedule(config.optimizer, config.train.steps)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.model.dropout >= 1:
    raise ConfigError(f"config.model.dropout={config.model.dropout}: must be < 1")
  hidden = config.model.aitm.bottom_hidden
  if config.model.backbone == "aitm" and (not hidden or min(hidden) < 1):
    raise ConfigError(f"config.model.aitm.bottom_hidden={tuple(hidden)}: needs at least one "
                      "layer, every width >= 1")
  best = config.checkpoint.best_metric
  if best and (best.count("/") != 1 or not all(best.split("/"))):
    raise ConfigError(f"config.checkpoint.best_metric={best!r}: expected "
                      "'<split>/<metric>', e.g. 'val/ctr_auc', or '' for the default")
  return config
