"""Dotted-key access to a config and the config errors: what every layer may use.

``pico_jax.config`` (every key's rule and ``validate``) sits at the top, next to
``launch/``; the modules below it read and set keys and raise ``ConfigError`` through
this module, which imports nothing of the project.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ml_collections
from ml_collections.config_flags import config_path


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


class UnknownKeyError(ConfigError, KeyError):
  """A dotted key that is not in the config (a ``KeyError`` too, for lookups)."""
  __str__ = BaseException.__str__  # not KeyError's repr of the message.


def leaves(config, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted key, value) of every leaf of ``config``, in its order."""
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def get(config, key: str):
  """The value at dotted ``key`` (``"model.mmoe.num_experts"``); ``UnknownKeyError``
  (a ``ConfigError`` and a ``KeyError``) names a key the config does not have."""
  try:
    return config_path.get_value(key, config)
  except (KeyError, AttributeError, IndexError):
    raise UnknownKeyError(f"config key {key!r} is not in the config") from None


def set_value(config, key: str, value):
  """Sets dotted ``key`` of a (possibly locked) config; an unknown key fails naming it.

  A list or tuple given for a tuple-valued key is stored as a tuple (as
  ``--config.KEY=(1,2)`` would be).
  """
  current = get(config, key)
  if isinstance(current, tuple) and isinstance(value, (list, tuple)):
    value = tuple(value)
  config_path.set_value(key, config, value)
