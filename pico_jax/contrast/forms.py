"""Which form of the fused contrast kernels a platform runs.

Two forms with one contract (the same functions, arguments, values and gradients):

- The Triton form (``pallas_lse.anchor_logsumexp``, ``pallas_pair.pair_logsumexp``) on
  GPU, and in Pallas's interpret mode on CPU: one grid axis over anchor tiles, the
  candidates one block that each program loops over from HBM.
- The Mosaic form (``pallas_tpu``) on TPU: a 2-D grid whose candidate tiles stream
  through VMEM with the running sums in VMEM scratch, because Mosaic copies every
  block into VMEM and lays it out in (8, 128) tiles (``pallas_tpu``'s docstring says
  where the two must differ).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from pico_jax.contrast import pallas_lse, pallas_pair, pallas_tpu


@dataclasses.dataclass(frozen=True)
class Form:
  """The kernels of one form: ``anchor_logsumexp(anchors, candidates, inv_tau, ...,
  interpret=)`` and ``pair_logsumexp(a, b, inv_tau, ..., interpret=)``."""
  name: str
  anchor_logsumexp: Callable
  pair_logsumexp: Callable


TRITON = Form("triton", pallas_lse.anchor_logsumexp, pallas_pair.pair_logsumexp)
MOSAIC = Form("mosaic", pallas_tpu.anchor_logsumexp, pallas_tpu.pair_logsumexp)


def for_platform(platform: str) -> Form:
  """The form ``platform`` ("cpu", "gpu" or "tpu") runs: Mosaic on TPU, else Triton."""
  return MOSAIC if platform == "tpu" else TRITON
