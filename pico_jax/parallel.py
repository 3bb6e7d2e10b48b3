"""Device mesh and shardings: the one place that decides where arrays live.

The mesh has a ``data`` axis (batch rows) and a ``model`` axis. Parameters carry
logical axis names (``vocab``, ``embed``, ``mlp_in``, ...; see
``pico_jax.models.layers``) and the config's ``axis_rules`` map them to mesh axes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"


def make_mesh(data: int = -1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, model) mesh over ``devices`` (default: all); -1 takes what is left."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and model == -1:
    raise ValueError("config.mesh: at most one of data/model may be -1")
  if data == -1:
    data = n // model
  if model == -1:
    model = n // data
  if data * model != n:
    raise ValueError(f"config.mesh: data={data} x model={model} does not match the {n} "
                     "devices")
  return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def mesh_from_config(config, devices=None) -> Mesh:
  return make_mesh(config.mesh.data, config.mesh.model, devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``, the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(boxed_tree, mesh: Mesh, rules) -> object:
  """NamedShardings for a tree whose leaves may be ``nn.LogicallyPartitioned``.

  Unannotated leaves (optimizer counts, the step, the rng) are replicated.
  """
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, tuple(tuple(r) for r in rules))


def shard_batch(batch, mesh: Mesh):
  """Places a host-local batch dict onto the mesh as global arrays split over ``data``.

  Single-process: the local batch is the global batch. Multi-process: each process
  passes its own rows and the result is the global batch of all processes.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
