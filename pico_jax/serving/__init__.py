"""Serving: raw rows to model inputs and the exported artifact's files.

``serve`` is the loader copied into every artifact as ``serve.py`` (jax and numpy
only); ``pico_jax.export`` writes artifacts and loads them with this package's code.
"""
