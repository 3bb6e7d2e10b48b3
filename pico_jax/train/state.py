"""The train state: a plain pytree of params, optimizer state, step and base rng."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pico_jax import batch as B
from pico_jax.data.schema import Schema
from pico_jax.parallel import logical_shardings


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2] base PRNG key; step t uses fold_in(rng, t).


def all_finite(tree) -> jax.Array:
  """Whether every float in ``tree`` is finite: one bool scalar, reduced on the devices
  (inside a jitted step it fuses with the computation of the leaves)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def nonfinite_leaves(tree) -> list[str]:
  """The path names (``opt_state/0/nu/...``) of the leaves of ``tree`` holding a NaN or
  an inf: for the error that names them, so computed only when a check has failed."""
  flags = jax.jit(lambda t: jax.tree.map(
      lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
      else jnp.asarray(True), t))(tree)
  return [jax.tree_util.keystr(path, simple=True, separator="/")
          for path, ok in jax.tree_util.tree_flatten_with_path(jax.device_get(flags))[0]
          if not ok]


def example_features(schema: Schema, batch_size: int = 2) -> dict[str, np.ndarray]:
  """Zero-valued model inputs of the right shapes and dtypes, for ``init``."""
  out = {}
  if schema.sparse:
    out[B.SPARSE] = np.zeros((batch_size, len(schema.sparse)), np.int32)
  if schema.multi:
    shape = (batch_size, len(schema.multi), schema.multi_len)
    out[B.MULTI] = np.zeros(shape, np.int32)
    out[B.MULTI_MASK] = np.zeros(shape, bool)
  if schema.num_dense:
    out[B.DENSE] = np.zeros((batch_size, schema.num_dense), np.float32)
  return out


def _init_boxed(model, tx, schema, rng):
  init_rng, state_rng = jax.random.split(rng)
  params = model.init(init_rng, example_features(schema), train=False)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    # Boxed params: the optimizer moments inherit the params' logical axes.
                    opt_state=tx.init(params), rng=state_rng)


def abstract_train_state(model, tx, schema: Schema, mesh, axis_rules, *,
                         fsdp: bool = False) -> TrainState:
  """The state's shapes, dtypes and NamedShardings (``jax.ShapeDtypeStruct`` leaves),
  traced without computing anything: the restore target and the steps' shardings.

  Shardings derive from the params' logical axes. The optimizer moments share their
  param's sharding: a row-sharded embedding table has row-sharded Adam moments, so its
  update never leaves the devices holding it.
  """
  boxed = jax.eval_shape(lambda k: _init_boxed(model, tx, schema, k), jax.random.PRNGKey(0))
  shardings = logical_shardings(boxed, mesh, axis_rules, fsdp=fsdp)
  return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                               sharding=sharding),
                      nn.meta.unbox(boxed), shardings)


def init_train_state(model, tx, schema: Schema, seed: int, shardings: TrainState) -> TrainState:
  """Initialises the state from ``seed``, born sharded by ``shardings`` (never whole on
  one device). Params and optimizer state are float32 whatever ``model.compute_dtype`` is.
  """
  init = jax.jit(lambda k: nn.meta.unbox(_init_boxed(model, tx, schema, k)),
                 out_shardings=shardings)
  return init(jax.random.PRNGKey(seed))
