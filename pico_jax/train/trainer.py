"""One owner of a run: ``build`` constructs everything a run needs, once.

The sequence dataset -> mesh -> model -> optimizer -> shardings -> state -> compiled
steps -> data iterator is written here and nowhere else. The training loop, evaluation,
export, the tests and the benchmarks all start from ``build``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np

from pico_jax import metrics as metrics_lib
from pico_jax.config_keys import ConfigError
from pico_jax import parallel
from pico_jax.data import load_dataset, pipeline, stream
from pico_jax.data.sharded import ShardedSplit
from pico_jax.data.schema import Schema
from pico_jax.data.dataset import Dataset
from pico_jax.models import build_model
from pico_jax.train import checkpoint as ckpt_lib
from pico_jax.train.checkpoint_compat import data_identity
from pico_jax.train.config_checks import validate_against
from pico_jax.train.optimizer import make_optimizer
from pico_jax.train.state import TrainState, abstract_train_state, init_train_state
from pico_jax.train.step import compile_steps


@dataclasses.dataclass
class Trainer:
  """A built run. Attributes:

    config: the validated config.
    dataset: the splits (None when built from a bare ``schema``).
    schema: the model's input fields.
    mesh: the device mesh (axes ``data``, ``model``).
    model, tx: the Flax module and the optimizer.
    abstract_state: the state's ``jax.ShapeDtypeStruct``s with their shardings (traced
      once): the restore target.
    shardings: the ``TrainState`` of NamedShardings.
    train_step: compiled ``(state, device batch) -> (state, metrics)``, state donated.
    eval_step: compiled ``(params, device batch) -> predictions`` (float32 [B] each).
    data: this process's training batches, the iterator whose position checkpoints
      save (get/set_state): the Grain iterator of host batches, or with
      ``config.data.device_prefetch`` of device batches placed ahead by Grain's thread
      prefetch (``pipeline.train_iterator``; its position is that of the batches
      consumed, not of those read ahead); None without a dataset.
    checkpointer: the run's checkpoints (None without a work directory or when
      ``config.checkpoint.enabled`` is off).
    state: the train state: resumed from the latest checkpoint, else initialised from
      ``config.seed``; None when built with ``init_state=False`` (``restore`` fills it).
    resumed_step: the checkpoint step the state came from, or None.
  """
  config: ml_collections.ConfigDict
  dataset: Dataset | None
  schema: Schema
  mesh: jax.sharding.Mesh
  model: Any
  tx: Any
  abstract_state: TrainState
  shardings: TrainState
  train_step: Callable
  eval_step: Callable
  data: Any
  checkpointer: ckpt_lib.Checkpointer | None
  state: TrainState | None = None
  resumed_step: int | None = None

  def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """One host batch (this process's rows) -> the global batch on the devices, split
    over ``data``. The one place batches go to the devices."""
    return parallel.shard_batch(batch, self.mesh)

  def place(self, host_batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict]:
    for batch in host_batches:
      yield self.put(batch)

  def batches(self) -> Iterator[dict]:
    """The training batches on the devices, in the data iterator's order: ``data``
    itself when it prefetches to the devices (``config.data.device_prefetch``)."""
    if self.data is None:
      raise ValueError("this Trainer was built without a dataset: no training batches")
    return self.data if self.config.data.device_prefetch else self.place(self.data)

  def predict(self, split: str, params=None) -> dict[str, np.ndarray]:
    """``predict_columns`` of every row of ``split``: dict of float32 [N] in row order."""
    return self.predict_columns(self.dataset.splits[split], params)

  def predict_columns(self, columns: dict[str, np.ndarray], params=None
                      ) -> dict[str, np.ndarray]:
    """``eval_step`` over every row of ``columns`` (batch keys, [N, ...]: a split, or
    the encoded rows of raw files) in fixed-size padded batches
    (``pipeline.eval_batches``), default params the state's, gathered over processes:
    dict of float32 [N] in row order."""
    params = self.state.params if params is None else params
    host = pipeline.eval_batches(columns, global_batch_size=self.config.train.eval_batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
    chunks = [self.eval_step(params, batch) for batch in self.place(host)]
    gathered = jax.tree.map(lambda *xs: np.concatenate([_to_host(x) for x in xs]), *chunks)
    return {k: v[:pipeline.num_rows(columns)] for k, v in gathered.items()}

  def evaluate(self, split: str, params=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(the metrics of ``pico_jax.metrics.task_metrics``, the predictions) of ``split``;
    ``ConfigError`` for a split the dataset lacks or that has no rows."""
    if split not in self.dataset.splits:
      raise ConfigError(f"split {split!r}: the dataset has splits "
                        f"{sorted(self.dataset.splits)}")
    if not self.dataset.num_rows(split):
      raise ConfigError(f"split {split!r}: it has no rows, nothing to evaluate")
    predictions = self.predict(split, params)
    return (metrics_lib.task_metrics(predictions, self.dataset.splits[split],
                                     self.dataset.info), predictions)

  def close(self):
    """Waits for the checkpoint saves in flight, then releases the checkpointer and
    stops the data iterator's threads (Grain's read-ahead of a sharded store, the
    device prefetch), which would otherwise still be reading at interpreter exit."""
    try:
      if self.checkpointer is not None:
        try:
          self.checkpointer.wait()
        finally:
          self.checkpointer.close()
    finally:
      if self.data is not None:
        self.data.close()


def _to_host(x) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def build(config: ml_collections.ConfigDict, workdir: str | None = None, *,
          dataset: Dataset | None = None, schema: Schema | None = None,
          mesh: jax.sharding.Mesh | None = None, init_state: bool = True) -> Trainer:
  """Builds the run of ``config``: everything constructed once.

  Args:
    config: the run's config, validated by the entry point (``pico_jax.config.validate``);
      what needs the data or the devices is checked here (``validate_against``: raises
      ``ConfigError`` naming a key) before anything is built.
    workdir: the run's work directory. With ``config.checkpoint.enabled`` the state and
      the data position resume from its latest checkpoint; any checkpoint that cannot
      be resumed raises (see ``Checkpointer.restore_latest``). None: nothing is read
      or written.
    dataset: the data (default: ``load_dataset(config)``).
    schema: build for these input fields without a dataset (benchmarks, tests of the
      step alone); no data iterator then.
    mesh: the devices (default: ``config.mesh`` over every device).
    init_state: False leaves ``state`` None (for ``restore``, which reads it).
  """
  if schema is None:
    dataset = dataset if dataset is not None else load_dataset(config)
    schema = dataset.schema
  # A sharded store's train split is streamed; any other is permuted in memory maps.
  streamed = dataset is not None and isinstance(dataset.splits["train"], ShardedSplit)
  # What needs the data and the devices, before anything is built or trained.
  validate_against(
      config, dataset and {split: dataset.num_rows(split) for split in dataset.splits},
      None if mesh is not None else jax.device_count(), streamed=streamed)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(config)
  model = build_model(config, schema)
  tx = make_optimizer(config.optimizer, config.train.steps)
  abstract = abstract_train_state(model, tx, schema, mesh, config.axis_rules,
                                  fsdp=config.mesh.fsdp)
  shardings = jax.tree.map(lambda s: s.sharding, abstract)
  train_step, eval_step = compile_steps(model, tx, config, mesh, shardings)
  checkpointer = None
  if workdir is not None and config.checkpoint.enabled:
    checkpointer = ckpt_lib.Checkpointer.from_config(
        workdir, config, None if dataset is None else data_identity(config, dataset))
  trainer = Trainer(config=config, dataset=dataset, schema=schema, mesh=mesh, model=model,
                    tx=tx, abstract_state=abstract, shardings=shardings, train_step=train_step,
                    eval_step=eval_step, data=None, checkpointer=checkpointer)
  t, data = config.train, None
  if dataset is not None:
    # With device_prefetch, Grain's thread places the batches ahead (trainer.put).
    common = dict(global_batch_size=t.batch_size, num_batches=t.steps, seed=config.seed,
                  process_index=jax.process_index(), process_count=jax.process_count(),
                  prefetch=config.data.prefetch,
                  put=trainer.put if config.data.device_prefetch else None,
                  device_prefetch=config.data.device_prefetch)
    train = dataset.splits["train"]
    if streamed:
      trainer.data = data = stream.train_iterator(
          train, order=config.data.order, window=config.data.shuffle_window, **common)
    else:
      trainer.data = data = pipeline.train_iterator(
          train, num_threads=config.data.num_threads, **common)
  if not init_state:
    return trainer
  if checkpointer is not None:
    resumed = checkpointer.restore_latest(abstract, data, config)
    if resumed is not None:
      trainer.state, trainer.resumed_step = resumed
  if trainer.state is None:
    trainer.state = init_train_state(model, tx, schema, config.seed, shardings)
  return trainer
