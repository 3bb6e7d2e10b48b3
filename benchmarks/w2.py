"""The W2 benchmark shape (docs/benchmarks.md): AliExpress-like fields, synthetic values.

16 single-valued categorical fields with the vocabulary sizes below and 63 dense
features in [0, 1], as in the AliExpress processed CSV (categorical_1..16,
numerical_1..63). The values are random: W2 measures speed, not accuracy. Ids are
uniform over each vocabulary, the worst case for a row-sparse optimizer (the most
distinct rows per batch); real traffic is skewed and touches fewer rows.
"""

from __future__ import annotations

import numpy as np

from pico_jax import batch as B
from pico_jax.data.schema import Schema, SparseField

VOCAB_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024, 4096, 8192, 16384, 32768, 65536,
               100_000, 200_000, 500_000)
NUM_DENSE = 63
CLICK_RATE = 0.1
CONVERSION_GIVEN_CLICK = 0.2

SCHEMA = Schema(
    sparse=tuple(SparseField(f"categorical_{i + 1}", v) for i, v in enumerate(VOCAB_SIZES)),
    dense=tuple(f"numerical_{i + 1}" for i in range(NUM_DENSE)))


def batch(rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
  """One W2 training batch (see ``pico_jax.batch``): ``sparse`` int32 [B, 16],
  ``dense`` float32 [B, 63] in [0, 1), ``click``/``conversion``/``mask`` float32 [B]."""
  sparse = np.stack([rng.integers(v, size=batch_size) for v in VOCAB_SIZES], axis=1)
  click = rng.random(batch_size) < CLICK_RATE
  conversion = click & (rng.random(batch_size) < CONVERSION_GIVEN_CLICK)
  return {
      B.SPARSE: sparse.astype(np.int32),
      B.DENSE: rng.random((batch_size, NUM_DENSE), dtype=np.float32),
      B.CLICK: click.astype(np.float32),
      B.CONVERSION: conversion.astype(np.float32),
      B.MASK: np.ones(batch_size, np.float32),
  }


def batches(seed: int, batch_size: int, count: int) -> list[dict[str, np.ndarray]]:
  """``count`` distinct W2 batches, a pure function of ``seed``."""
  rng = np.random.default_rng(seed)
  return [batch(rng, batch_size) for _ in range(count)]
