"""PICO's in-batch contrast: XLA, chunked and fused Pallas implementations.

``pico_jax.losses.pico_contrastive_loss`` is the entry point; this package holds the
implementations (``implementations``), the Pallas kernels in two forms (``forms``: the
Triton form of ``pallas_lse``, one direction, and ``pallas_pair``, both directions with
a fused backward, for GPUs; the Mosaic form of ``pallas_tpu`` for TPUs), the checks
that guard them on an accelerator (``self_check``) and what an evaluation says about
the learned temperature, for the training log (``diagnostics``).
"""

from pico_jax.contrast.implementations import (IMPLEMENTATIONS, Shape, per_instance_terms,
                                               resolve)

__all__ = ["IMPLEMENTATIONS", "Shape", "per_instance_terms", "resolve"]
