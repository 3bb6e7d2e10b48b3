"""What training reads: the ``Dataset`` (``dataset``), its ``schema``, the columnar store
(``store``), the synthetic generators (``synthetic``) and the Grain input ``pipeline``."""

from __future__ import annotations

from pico_jax.data.dataset import Dataset

SOURCES = ("synthetic", "store")  # config.data.name


def load_dataset(config) -> Dataset:
  """The dataset named by ``config.data``, with splits ``train``, ``val``, ``test``.

  ``config.data.name``: "synthetic" generates the embedded dataset from the config seed;
  "store" maps the columnar store at ``config.data.path`` (built by
  ``launch/preprocess.py``), whose columns are read-only memory maps.
  """
  if config.data.name == "synthetic":
    from pico_jax.data import synthetic
    s = config.data.synthetic
    return synthetic.generate(seed=config.seed, **{k: (tuple(v) if isinstance(v, (list, tuple))
                                                         else v) for k, v in s.items()})
  if config.data.name == "store":
    from pico_jax.data import store
    return store.load_store(config.data.path)
  raise ValueError(f"config.data.name={config.data.name!r}: expected 'synthetic' or 'store'")
