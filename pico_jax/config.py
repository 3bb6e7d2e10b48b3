"""Config checks that ml_collections cannot do by itself.

Unknown keys and wrong types are rejected by the locked ``ConfigDict`` and absl's
``config_flags`` when overrides are parsed; ``validate`` checks values (choices, ranges
and consistency) and names the offending key.
"""

from __future__ import annotations

import ml_collections

from pico_jax.losses import TAU_GRADIENTS
from pico_jax.models.heads import DETACH_SIDES, RELATEDNESS_INPUTS
from pico_jax.models.pico import BACKBONES, CONTRAST_MODES, CONTRAST_REPRESENTATIONS

_CHOICES = {
    "data.name": ("synthetic", "store"),
    "model.backbone": BACKBONES,
    "model.pooling": ("sum", "mean"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "contrast.mode": CONTRAST_MODES,
    "contrast.relatedness_input": RELATEDNESS_INPUTS,
    "contrast.negatives": ("global", "local"),
    "contrast.tau_gradient": TAU_GRADIENTS,
    "contrast.representation": CONTRAST_REPRESENTATIONS,
    "contrast.detach": DETACH_SIDES,
    "loss.cvr_rows": ("clicked", "all"),
    "optimizer.name": ("adam", "adamw", "adagrad", "sgd"),
    "optimizer.embedding_optimizer": ("dense", "lazy_adam", "lazy_adagrad"),
}
_POSITIVE = ("train.batch_size", "train.steps", "train.log_every", "train.eval_every",
             "train.eval_batch_size", "model.embed_dim", "model.vocab_pad_multiple",
             "contrast.proj_dim", "contrast.tau_min", "contrast.tau_prior",
             "optimizer.learning_rate", "checkpoint.every_steps", "checkpoint.keep")
_NON_NEGATIVE = ("contrast.weight", "contrast.chunk_size", "loss.ctr_weight",
                 "loss.ctcvr_weight", "loss.cvr_weight", "model.dropout",
                 "contrast.relatedness_supervision_weight", "contrast.tau_prior_weight",
                 "optimizer.weight_decay", "optimizer.grad_clip_norm")


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ``ConfigError`` naming the first invalid key; returns ``config`` otherwise."""
  for key, choices in _CHOICES.items():
    if _get(config, key) not in choices:
      raise ConfigError(f"config.{key}={_get(config, key)!r}: expected one of {list(choices)}")
  for key in _POSITIVE:
    if not _get(config, key) > 0:
      raise ConfigError(f"config.{key}={_get(config, key)!r}: must be > 0")
  for key in _NON_NEGATIVE:
    if not _get(config, key) >= 0:
      raise ConfigError(f"config.{key}={_get(config, key)!r}: must be >= 0")
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
  if config.model.dropout >= 1:
    raise ConfigError(f"config.model.dropout={config.model.dropout}: must be < 1")
  return config
