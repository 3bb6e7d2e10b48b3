"""Datasets: schema, readers, the synthetic generator and the input pipeline."""

from __future__ import annotations

from pico_jax.data.synthetic import Dataset


def load_dataset(config) -> Dataset:
  """The dataset named by ``config.data``, with splits ``train``, ``val``, ``test``."""
  if config.data.name == "synthetic":
    from pico_jax.data import synthetic
    s = config.data.synthetic
    return synthetic.generate(seed=config.seed, **{k: (tuple(v) if isinstance(v, (list, tuple))
                                                         else v) for k, v in s.items()})
  raise ValueError(f"config.data.name={config.data.name!r}: no loader "
                   "(columnar stores arrive with launch/preprocess.py)")
