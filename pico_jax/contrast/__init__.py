"""PICO's in-batch contrast: XLA, chunked and fused Pallas implementations.

``pico_jax.losses.pico_contrastive_loss`` is the entry point; this package holds the
implementations (``implementations``), the Pallas kernel (``pallas_lse``) and the
accelerator self-check that guards it (``self_check``).
"""

from pico_jax.contrast.implementations import (IMPLEMENTATIONS, per_instance_terms,
                                               resolve)

__all__ = ["IMPLEMENTATIONS", "per_instance_terms", "resolve"]
