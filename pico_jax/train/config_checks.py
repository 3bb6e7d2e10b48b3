"""The config checks that need the data or the devices, run by ``trainer.build`` before
anything is built; ``ConfigError`` names the key.

``pico_jax.config.validate`` checks the config alone (and the synthetic splits' sizes
through ``check_splits``); these run once the dataset is loaded and the devices known.
"""

from __future__ import annotations

from collections.abc import Mapping

from pico_jax.config_keys import ConfigError
from pico_jax.parallel import DATA, MODEL


def check_splits(config, split_rows: Mapping[str, int], source: str,
                 sizes: Mapping[str, str] | None = None):
  """The splits a run evaluates (the eval split, best_metric's, and test, scored at the
  end) exist with rows; train fills a batch. ``sizes``: the config key that sets each
  split's size, named when one would be empty.

  An empty split is refused here, before any step: the run's result is its final test
  (and early stopping and "best" read the eval split), so a run without them would
  fail at its end, and every rerun would resume and fail again.
  """
  split = config.data.eval_split
  if split not in split_rows:
    raise ConfigError(f"config.data.eval_split={split!r}: {source} has splits "
                      f"{sorted(split_rows)}")
  best = config.checkpoint.best_metric
  if best and best.partition("/")[0] not in split_rows:
    raise ConfigError(f"config.checkpoint.best_metric={best!r}: {source} has splits "
                      f"{sorted(split_rows)}")
  uses = {split: f"config.data.eval_split={split!r}", "test": "the final test"}
  if best:
    uses.setdefault(best.partition("/")[0], f"config.checkpoint.best_metric={best!r}")
  for name, use in uses.items():
    if split_rows.get(name, 0) < 1:
      raise ConfigError(f"{(sizes or {}).get(name, source)}: the {name!r} split has no "
                        f"rows, and {use} evaluates it")
  train = split_rows.get("train", 0)
  if train < config.train.batch_size:
    raise ConfigError(f"config.train.batch_size={config.train.batch_size}: more than the "
                      f"{train} rows of the train split of {source}")


def validate_against(config, split_rows: Mapping[str, int] | None = None,
                     device_count: int | None = None, streamed: bool = False):
  """The checks that need the data or the devices; ``ConfigError`` names the key.

  Args:
    config: a config that passed ``pico_jax.config.validate``.
    split_rows: the dataset's splits and their row counts (None: no dataset).
    device_count: the devices ``config.mesh`` spans (None: the mesh is given
      explicitly, not built from the config).
    streamed: whether the train split is a sharded store's, read in order of its
      partitions by ``data.stream`` (otherwise a global permutation per epoch).
  """
  if split_rows is not None:
    where = (f"the store {config.data.path}" if config.data.name == "store"
             else "the dataset")
    check_splits(config, split_rows, where)
    # Time order only exists where partitions are streamed; elsewhere it would be a
    # global shuffle the user did not ask for.
    if config.data.order != "shuffle" and not streamed:
      raise ConfigError(f"config.data.order={config.data.order!r}: only a sharded store "
                        "(preprocess.py --num_shards=N) is read in the order of its "
                        f"partitions; {where} is shuffled over all rows every epoch")
  if device_count is None:
    return
  m, n = config.mesh, device_count
  for axis, size in ((DATA, m.data), (MODEL, m.model)):
    if size != -1 and n % size:
      raise ConfigError(f"config.mesh.{axis}={size}: does not divide the {n} devices")
  data = n // m.model if m.data == -1 else m.data
  model = n // data if m.model == -1 else m.model
  if data * model != n:
    raise ConfigError(f"config.mesh.data={m.data} x config.mesh.model={m.model}: "
                      f"{data * model} devices, but there are {n}")
  for key in ("batch_size", "eval_batch_size"):
    size = config.train[key]
    if size % data:
      raise ConfigError(f"config.train.{key}={size}: not divisible by the mesh's data "
                        f"axis ({data} devices)")
