"""pico_jax: joint CTR & CVR estimation with PICO, in JAX/Flax."""

__version__ = "0.1.0"
