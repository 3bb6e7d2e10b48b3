"""absl flags from a dataclass's fields, so that a new option costs no script line.

A script builds ``Fields(Options)`` at module level: every field becomes a flag with
the field's name, default and type, and the one-line help of its metadata.
``Fields.values()`` reads the flags back as field values, and ``Fields.error`` turns a
rejected field into the ``cli.FlagError`` that names its flag.

Field metadata: ``help`` (required), and optionally ``flag`` (a flag name other than
the field's), ``choices`` (the allowed strings), ``unit`` (the flag counts in units
of this many: MiB for a field in bytes) and ``metavar`` (how one item of a list of
pairs is spelled, e.g. ``FIELD=BUCKETS``: its punctuation mark is the separator).
Types: bool, int, float, str, or a tuple of int, float, str or (str, int | str)
pairs, given as a comma-separated list; any of them or None.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from absl import flags

from pico_jax.cli import FlagError

# The flags defined here belong to the script that builds ``Fields`` (its --help).
flags.disclaim_key_flags()

_SCALARS = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
            float: flags.DEFINE_float, str: flags.DEFINE_string}


def _without_none(annotation):
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    annotation, = (a for a in typing.get_args(annotation) if a is not type(None))
  return annotation


def _separator(meta) -> str:
  return (re.findall(r"\W", meta.get("metavar", "")) or ["="])[0]


class Fields:
  """The flags of the fields of dataclass ``cls`` but ``exclude``, in ``flag_values``;
  ``help_prefix`` starts every help line. See the module docstring."""

  def __init__(self, cls, exclude=(), help_prefix: str = "", flag_values=flags.FLAGS):
    self._holders, self._meta, self._kinds = {}, {}, {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
      if field.name in exclude:
        continue
      meta, kind = field.metadata, _without_none(hints[field.name])
      default = None if field.default is dataclasses.MISSING else field.default
      name = meta.get("flag", field.name)
      text = help_prefix + meta["help"]
      if typing.get_origin(kind) is tuple:
        if "metavar" in meta:
          text = f"{help_prefix}{meta['metavar']},...: {meta['help']}"
        if default is not None:
          default = [_separator(meta).join(map(str, v)) if isinstance(v, tuple)
                     else str(v) for v in default]
        holder = flags.DEFINE_list(name, default, text, flag_values)
      elif "choices" in meta:
        holder = flags.DEFINE_enum(name, default, list(meta["choices"]), text,
                                   flag_values)
      elif kind in _SCALARS:
        if default is not None and "unit" in meta:
          default //= meta["unit"]
        holder = _SCALARS[kind](name, default, text, flag_values=flag_values)
      else:
        raise TypeError(f"{cls.__name__}.{field.name}: no flag for type {kind}")
      self._holders[field.name], self._meta[field.name] = holder, meta
      self._kinds[field.name] = kind

  def values(self) -> dict[str, Any]:
    """{field name: value} of the parsed flags. Raises FlagError for a list item
    that does not parse."""
    out = {}
    for field, holder in self._holders.items():
      value, kind, meta = holder.value, self._kinds[field], self._meta[field]
      if value is not None and typing.get_origin(kind) is tuple:
        value = tuple(self._item(holder.name, typing.get_args(kind)[0], meta, item)
                      for item in value)
      elif value is not None and "unit" in meta:
        value *= meta["unit"]
      out[field] = value
    return out

  @staticmethod
  def _item(name: str, kind, meta, text: str):
    """One item of a list flag as the field's item type."""
    try:
      if typing.get_origin(kind) is not tuple:
        return kind(text)
      second = typing.get_args(kind)[1]
      # An int never holds the separator, a string may: split where it cannot be.
      split = str.rpartition if second is int else str.partition
      key, sep, value = split(text, _separator(meta))
      if not (key and sep and value):
        raise ValueError(text)
      return key, second(value)
    except ValueError:
      want = meta.get("metavar") or {int: "an integer", float: "a number"}[kind]
      raise FlagError(f"--{name} {text!r}: expected {want}") from None

  def error(self, field: str, what: str) -> FlagError:
    """The error for the value of ``field`` rejected because ``what``, naming the flag
    as it was given."""
    holder = self._holders[field]
    value = holder.value
    shown = ",".join(value) if isinstance(value, list) else value
    return FlagError(f"--{holder.name}={shown}: {what}")
