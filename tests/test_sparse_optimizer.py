"""The row-sparse (lazy) embedding optimizers against optax's dense ones."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import small_config
from pico_jax import batch as B
from pico_jax import config as config_lib
from pico_jax.config_keys import ConfigError
from pico_jax import parallel
from pico_jax.data.schema import Schema, SparseField
from pico_jax.train import sparse_optimizer
from pico_jax.train.optimizer import make_optimizer
from pico_jax.train.trainer import build

SCHEMA = Schema(sparse=(SparseField("a", 4), SparseField("b", 3)),
                multi=(SparseField("m", 5, 3),), dense=("x", "y"))
BATCH = 16


def _batch(rng, cover_all: bool):
  """A batch of SCHEMA; with ``cover_all`` every id of every field occurs."""
  i = np.arange(BATCH)
  if cover_all:
    sparse = np.stack([i % 4, i % 3], axis=1)
    multi = (i[:, None] + np.arange(3)[None, :]) % 5
    mask = np.ones((BATCH, 1, 3), bool)
  else:  # only ids 1..2 of each field: rows 0 and 3+ are never touched.
    sparse = rng.integers(1, 3, size=(BATCH, 2))
    multi = rng.integers(1, 3, size=(BATCH, 3))
    mask = rng.random((BATCH, 1, 3)) < 0.7
  click = (rng.random(BATCH) < 0.5).astype(np.float32)
  return {B.SPARSE: sparse.astype(np.int32), B.MULTI: multi[:, None, :].astype(np.int32),
          B.MULTI_MASK: mask, B.DENSE: rng.normal(size=(BATCH, 2)).astype(np.float32),
          B.CLICK: click, B.CONVERSION: click * (rng.random(BATCH) < 0.5),
          B.MASK: np.ones(BATCH, np.float32)}


def _train(embedding_optimizers, batches, **overrides):
  """Runs the compiled train step over ``batches`` from one initial state, once per
  embedding optimizer, on the 8-device mesh (the table row-sharded over all 8):
  [(final state, metrics per step, the compiled step's HLO text)]."""
  config = small_config(**{"train.batch_size": BATCH, **overrides})
  initial = None
  results = []
  for kind in embedding_optimizers:
    config.optimizer.embedding_optimizer = kind
    t = build(config, schema=SCHEMA)
    initial = jax.device_get(t.state) if initial is None else initial
    state = jax.device_put(initial.replace(opt_state=t.tx.init(initial.params)), t.shardings)
    compiled = t.train_step.lower(state, next(t.place(batches[:1]))).compile()
    metrics = []
    for batch in t.place(batches):
      state, m = compiled(state, batch)
      metrics.append(jax.device_get(m))
    results.append((jax.device_get(state), metrics, compiled.as_text()))
  return results


def _dense_state(opt_state, field):
  """The table's entry of ``field`` (mu, nu, sum_of_squares) in an optax state."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, field))
           if hasattr(s, field)]
  return getattr(found[0], field)["embedding"]["table"]


def _assert_trees_close(a, b, rtol=2e-5, atol=1e-7):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_lazy_adam_equals_dense_adam_when_every_row_is_touched():
  """Also with global-norm clipping, which must see the touched rows' gradients."""
  rng = np.random.default_rng(0)
  batches = [_batch(rng, cover_all=True) for _ in range(3)]
  clip = {"optimizer.grad_clip_norm": 0.05}
  (dense, dense_metrics, _), (lazy, lazy_metrics, hlo) = _train(("dense", "lazy_adam"),
                                                                batches, **clip)
  _assert_trees_close(lazy.params, dense.params)
  _assert_trees_close((lazy.opt_state.table.mu, lazy.opt_state.table.nu),
                      (_dense_state(dense.opt_state, "mu"), _dense_state(dense.opt_state, "nu")))
  for d, l in zip(dense_metrics, lazy_metrics):
    assert d["grad_norm"] > 0.05  # the clipping is active.
    np.testing.assert_allclose(l["loss"], d["loss"], rtol=1e-5)
    np.testing.assert_allclose(l["grad_norm"], d["grad_norm"], rtol=1e-5)
  # Every real row (4 + 3 + 5) is touched; the table's padding rows never are.
  assert lazy_metrics[0]["touched_rows"] == 12
  np.testing.assert_array_equal(lazy.opt_state.table.count[:12], 3)
  np.testing.assert_array_equal(lazy.opt_state.table.count[12:], 0)
  # The table (256 padded rows, 32 per device) stays sharded: no collective carries an
  # array with a table-sized row count (the batch-sized arrays have 16 or 12 rows).
  collective = re.compile(r"=\s*(.*?)\s(all-gather|all-reduce|reduce-scatter|all-to-all|"
                          r"collective-permute)(-start)?\(")
  shapes = [m.group(1) for m in map(collective.search, hlo.splitlines()) if m]
  assert shapes
  assert not [s for s in shapes if re.search(r"\[(256|32),", s)], shapes


V, D = 10, 3  # the toy problem's table: two fields of 5 ids.
TOY_SCHEMA = Schema(sparse=(SparseField("f", 5), SparseField("g", 5)))


def _toy_loss(params, embedding_rows=None, *, ids, target):
  """A loss of a table and a weight vector: ids int32 [N, 2] (fields f, g of
  TOY_SCHEMA) -> mean squared error."""
  if embedding_rows is None:
    e = params["embedding"]["table"][ids + jnp.array([0, 5])]
  else:
    values, index = embedding_rows
    e = values[index[B.SPARSE]]
  loss = jnp.mean((jnp.sum(e @ params["w"], axis=1) - target) ** 2)
  return loss, {"loss": loss}


def _toy_run(config_overrides, steps=4, seed=3):
  """(initial params, lazy params, dense params, lazy state, dense state) after
  ``steps`` toy steps on ids 1..3 of each field (table rows 1..3 and 6..8)."""
  config = small_config(**config_overrides)
  rng = np.random.default_rng(seed)
  params = {"embedding": {"table": jnp.asarray(rng.normal(size=(V, D)), jnp.float32)},
            "w": jnp.asarray(rng.normal(size=(D,)), jnp.float32)}
  data = [(jnp.asarray(rng.integers(1, 4, size=(8, 2)), jnp.int32),
           jnp.asarray(rng.normal(size=8), jnp.float32)) for _ in range(steps)]
  lazy_tx = make_optimizer(config.optimizer)
  config.optimizer.embedding_optimizer = "dense"
  dense_tx = make_optimizer(config.optimizer)

  @jax.jit
  def lazy_step(params, state, ids, target, count):
    loss = functools.partial(_toy_loss, ids=ids, target=target)
    return lazy_tx.step(loss, params, state, TOY_SCHEMA, {B.SPARSE: ids}, count=count)[:2]

  @jax.jit
  def dense_step(params, state, ids, target):
    grads = jax.grad(lambda p: _toy_loss(p, ids=ids, target=target)[0])(params)
    updates, state = dense_tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  lazy, lazy_state = params, lazy_tx.init(params)
  dense, dense_state = params, dense_tx.init(params)
  for count, (ids, target) in enumerate(data):
    lazy, lazy_state = lazy_step(lazy, lazy_state, ids, target, count)
    dense, dense_state = dense_step(dense, dense_state, ids, target)
  return params, lazy, dense, lazy_state, dense_state


@pytest.mark.parametrize("schedule", [
    {}, {"optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 2,
         "optimizer.decay_steps": 5}])
def test_lazy_adagrad_equals_dense_adagrad_on_partial_batches(schedule):
  """Rows 0, 4, 5 and 9 are never touched, others at some steps: still equal; with a
  schedule the table follows optax's scheduled rate step by step."""
  _, lazy, dense, lazy_state, dense_state = _toy_run({
      "optimizer.name": "adagrad", "optimizer.embedding_optimizer": "lazy_adagrad",
      **schedule})
  _assert_trees_close(lazy, dense)
  _assert_trees_close(lazy_state.table.sum_of_squares,
                      _dense_state(dense_state, "sum_of_squares"))


def test_lazy_adam_leaves_untouched_rows_and_moments_alone():
  initial, lazy, dense, lazy_state, _ = _toy_run(
      {"optimizer.embedding_optimizer": "lazy_adam"}, steps=1)
  touched = np.zeros(V, bool)
  touched[[1, 2, 3, 6, 7, 8]] = True
  table0, table = initial["embedding"]["table"], lazy["embedding"]["table"]
  np.testing.assert_array_equal(table[~touched], table0[~touched])
  assert np.all(np.any(table[touched] != table0[touched], axis=1))
  np.testing.assert_array_equal(lazy_state.table.mu[~touched], 0)
  np.testing.assert_array_equal(lazy_state.table.count, np.where(touched, 1, 0))
  # After one step nothing differs from dense Adam yet (global and per-row counts agree).
  _assert_trees_close(lazy, dense)
  _, lazy, _, lazy_state, _ = _toy_run({"optimizer.embedding_optimizer": "lazy_adam"})
  np.testing.assert_array_equal(lazy_state.table.count[~touched], 0)
  np.testing.assert_array_equal(lazy["embedding"]["table"][~touched], table0[~touched])


def test_lazy_adam_bias_correction_counts_each_rows_own_updates():
  """A row's first update is one learning rate per coordinate, whenever it comes."""
  opt = sparse_optimizer.LazyEmbeddingOptimizer(dense=None, kind="lazy_adam",
                                                learning_rate=0.1, eps=0.0)
  table = jnp.zeros((4, 2))
  state = sparse_optimizer.LazyAdamState(
      mu=jnp.ones((4, 2)), nu=jnp.ones((4, 2)), count=jnp.array([50, 0, 0, 0], jnp.int32))
  rows = jnp.array([1, 0, 4, 4], jnp.int32)  # row 4 = unused slot: gathers 0, write dropped.
  grads = jnp.array([[2.0, -0.5], [1.0, 1.0], [9.0, 9.0], [9.0, 9.0]])
  state = state._replace(mu=state.mu.at[1].set(0.0), nu=state.nu.at[1].set(0.0))
  new_table, new_state = opt.update_rows(state, table, rows, jnp.zeros((4, 2)), grads)
  np.testing.assert_allclose(new_table[1], [-0.1, 0.1], rtol=2e-5)  # first update: lr.
  np.testing.assert_array_equal(new_state.count, [51, 1, 0, 0])
  np.testing.assert_array_equal(new_table[2:], 0)
  # Row 0 (51st update) uses its own count: mu_hat = mu / (1 - 0.9**51).
  mu, nu = 0.9 + 0.1, 0.999 + 0.001
  expected = -0.1 * (mu / (1 - 0.9**51)) / np.sqrt(nu / (1 - 0.999**51))
  np.testing.assert_allclose(new_table[0], expected, rtol=1e-5)


def test_touched_rows_dedupes_and_indexes():
  ids = {B.SPARSE: jnp.array([[3, 1], [3, 7]]), B.MULTI: jnp.array([[[1, 9]], [[9, 9]]])}
  rows, index = jax.jit(lambda i: sparse_optimizer.touched_rows(i, 10))(ids)
  np.testing.assert_array_equal(rows, [1, 3, 7, 9, 10, 10, 10, 10])
  for key in ids:
    np.testing.assert_array_equal(rows[index[key]], ids[key])


def test_max_touched_rows_bounds_each_field_by_its_vocabulary():
  schema = Schema(sparse=(SparseField("a", 3), SparseField("b", 100)),
                  multi=(SparseField("m", 5, 4),))
  ids = {B.SPARSE: np.zeros((16, 2), np.int32), B.MULTI: np.zeros((16, 1, 4), np.int32)}
  assert sparse_optimizer.max_touched_rows(schema, ids) == 3 + 16 + 5


def test_lazy_step_never_holds_a_table_sized_gradient():
  """The dense step's temporaries hold the table gradient; the lazy step's do not."""
  schema = Schema(sparse=(SparseField("big", 200_000), SparseField("small", 7)))
  temp = {}
  for kind in ("dense", "lazy_adam"):
    config = small_config(**{"optimizer.embedding_optimizer": kind, "contrast.mode": "none",
                             "model.backbone": "shared_bottom"})
    t = build(config, schema=schema, mesh=parallel.make_mesh(1, 1, jax.devices()[:1]),
              init_state=False)
    batch = {B.SPARSE: np.ones((64, 2), np.int32), B.CLICK: np.ones(64, np.float32),
             B.CONVERSION: np.zeros(64, np.float32), B.MASK: np.ones(64, np.float32)}
    compiled = t.train_step.lower(t.abstract_state, next(t.place([batch]))).compile()
    temp[kind] = compiled.memory_analysis().temp_size_in_bytes
  table_bytes = 200_192 * 8 * 4  # rows padded to 256, embed_dim 8, float32
  assert temp["dense"] >= table_bytes > 10 * temp["lazy_adam"], temp


def test_bad_embedding_optimizer_settings_fail_with_the_key():
  with pytest.raises(ConfigError, match="optimizer.embedding_optimizer"):
    config_lib.validate(small_config(**{"optimizer.embedding_optimizer": "lazy_sgd"}))
  config = small_config(**{"optimizer.embedding_optimizer": "lazy_adam",
                           "optimizer.name": "adamw", "optimizer.weight_decay": 0.01})
  with pytest.raises(ConfigError, match="embedding_optimizer='lazy_adam'.*weight_decay"):
    config_lib.validate(config)
