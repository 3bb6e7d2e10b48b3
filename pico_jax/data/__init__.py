"""What training reads: the ``Dataset`` (``dataset``), its ``schema``, the columnar store
(``store``), the synthetic generators (``synthetic``, ``positive_control``) and the
Grain input ``pipeline``."""

from __future__ import annotations

from pico_jax.data.dataset import Dataset

SOURCES = ("synthetic", "store")  # config.data.name
SYNTHETIC_KINDS = ("default", "positive_control")  # config.data.synthetic.kind
ORDERS = ("shuffle", "time")  # config.data.order: how a sharded store is streamed.


def data_seed(config) -> int:
  """The synthetic generator's seed: ``config.data.synthetic.seed``, or ``config.seed``
  when it is -1 (the default: one seed makes the whole run, data included)."""
  seed = int(config.data.synthetic.seed)
  return int(config.seed) if seed == -1 else seed


def load_dataset(config) -> Dataset:
  """The dataset named by ``config.data``, with splits ``train``, ``val``, ``test``.

  ``config.data.name``: "synthetic" generates data from ``data_seed(config)``, of kind
  ``config.data.synthetic.kind``: "default" (``synthetic.generate`` with the other keys
  of ``config.data.synthetic``) or "positive_control" (``positive_control.generate``
  with ``config.data.synthetic.positive_control``); "store" opens the store at
  ``config.data.path`` (built by ``launch/preprocess.py``): a columnar store's columns
  are read-only memory maps, a sharded store's splits ``sharded.ShardedSplit``s (a
  local path or a URI such as ``s3://bucket/store``).
  """
  if config.data.name == "synthetic":
    s = config.data.synthetic
    as_args = lambda d: {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                         for k, v in d.items()}
    if s.kind == "positive_control":
      from pico_jax.data import positive_control
      return positive_control.generate(seed=data_seed(config),
                                       **as_args(s.positive_control))
    if s.kind != "default":
      raise ValueError(f"config.data.synthetic.kind={s.kind!r}: expected one of "
                       f"{list(SYNTHETIC_KINDS)}")
    from pico_jax.data import synthetic
    return synthetic.generate(seed=data_seed(config), **as_args(
        {k: v for k, v in s.items() if k not in ("kind", "seed", "positive_control")}))
  if config.data.name == "store":
    from pico_jax.data import store
    return store.load_store(config.data.path, verify_shards=config.data.verify_shards)
  raise ValueError(f"config.data.name={config.data.name!r}: expected 'synthetic' or 'store'")
