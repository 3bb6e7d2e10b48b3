"""PICO's in-batch contrast: XLA, chunked and fused Pallas implementations.

``pico_jax.losses.pico_contrastive_loss`` is the entry point; this package holds the
implementations (``implementations``), the Pallas kernels (``pallas_lse``: one
direction; ``pallas_pair``: both directions with a fused backward) and the accelerator
self-check that guards them (``self_check``).
"""

from pico_jax.contrast.implementations import (IMPLEMENTATIONS, per_instance_terms,
                                               resolve)

__all__ = ["IMPLEMENTATIONS", "per_instance_terms", "resolve"]
