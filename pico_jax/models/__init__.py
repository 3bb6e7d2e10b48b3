"""Models: embeddings, backbones, towers, the PICO contrast head and the full model."""

from pico_jax.models.pico import PicoModel, build_model, serving_params

__all__ = ["PicoModel", "build_model", "serving_params"]
