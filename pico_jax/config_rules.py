"""The vocabulary of config rules: each checks one value's type and range.

``pico_jax.config.RULES`` gives every config key one of these; ``Rule.expected``
completes the error message "config.KEY=VALUE: expected ...".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Rule:
  """A check of one value: ``ok(value)``; ``expected`` completes "expected ..."."""
  ok: Callable[[Any], bool]
  expected: str
  values: tuple | None = None  # the choices of a ``choices`` rule.


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def choices(values) -> Rule:
  """One of ``values`` (a tuple constant of the module that owns the key)."""
  values = tuple(values)
  return Rule(lambda v: isinstance(v, str) and v in values, f"one of {list(values)}",
              values)


def integer(low: int | None = None, *, or_: int | None = None) -> Rule:
  """An int >= ``low`` (or exactly ``or_``, a sentinel such as -1)."""
  text = "an integer" + (f" >= {low}" if low is not None else "")
  if or_ is not None:
    text += f", or {or_}"
  return Rule(lambda v: _is_int(v) and (low is None or v >= low or v == or_), text)


def number(low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> Rule:
  """A finite int or float within [low, high] (``*_open``: the bound excluded)."""
  def ok(v):
    return (_is_number(v)
            and (low is None or (v > low if low_open else v >= low))
            and (high is None or (v < high if high_open else v <= high)))
  if low is not None and high is not None:
    text = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
  elif low is not None:
    text = f"a number {'>' if low_open else '>='} {low}"
  elif high is not None:
    text = f"a number {'<' if high_open else '<='} {high}"
  else:
    text = "a finite number"
  return Rule(ok, text)


def ints(*, non_empty: bool = False) -> Rule:
  """A tuple of ints >= 1 (layer widths); ``non_empty``: at least one."""
  return Rule(lambda v: (isinstance(v, (tuple, list)) and (len(v) > 0 or not non_empty)
                         and all(_is_int(x) and x >= 1 for x in v)),
              f"a {'non-empty ' if non_empty else ''}tuple of integers >= 1, e.g. (64, 32)")


def numbers(low: float, high: float) -> Rule:
  """A non-empty tuple of numbers in [low, high]."""
  return Rule(lambda v: (isinstance(v, (tuple, list)) and len(v) > 0
                         and all(_is_number(x) and low <= x <= high for x in v)),
              f"a non-empty tuple of numbers in [{low}, {high}]")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
POSITIVE_INT, NON_NEGATIVE_INT = integer(1), integer(0)
POSITIVE, NON_NEGATIVE, ANY_NUMBER = number(0, low_open=True), number(0), number()
FRACTION = number(0, 1, high_open=True)  # [0, 1)
