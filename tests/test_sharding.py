"""Sharded embeddings, global-batch contrast, FSDP and mixed precision on 8 CPU devices."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import small_config
from pico_jax import losses, parallel
from pico_jax.models.embeddings import lookup, sharded_lookup
from pico_jax.train.trainer import build

_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT\s+)?\S+\s*=\s*(.*?)\s+"
    r"(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-start)?\(")


def _setup(config, devices=None):
  """The built run of ``config`` on ``devices`` (default: all)."""
  return build(config, mesh=parallel.mesh_from_config(config, devices))


def _batches(trainer, n):
  """The first ``n`` training batches of ``trainer``, on its devices."""
  return list(itertools.islice(trainer.batches(), n))


def _collectives(hlo_text):
  """(opcode, shapes) of every collective in compiled HLO text; shapes as int tuples."""
  found = []
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.match(line)
    if m:
      shapes = [tuple(int(d) for d in dims.split(",") if d)
                for dims in re.findall(r"\[([\d,]*)\]", m.group(1))]
      found.append((m.group(2), shapes))
  return found


@pytest.mark.parametrize("mesh_shape,vocab_axes", [
    ((8, 1), ("data", "model")), ((4, 2), ("data", "model")), ((4, 2), ("model",)),
    ((2, 4), ("data",))])
def test_sharded_lookup_equals_take_with_gradients(mesh_shape, vocab_axes):
  mesh = parallel.make_mesh(*mesh_shape)
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, 64, size=(16, 3)), jnp.int32)
  multi = jnp.asarray(rng.integers(0, 64, size=(16, 2, 5)), jnp.int32)
  weights = jnp.asarray(rng.random((16, 2, 5)) < 0.6, jnp.float32)
  cot = jnp.asarray(rng.normal(size=(16, 3, 6)), jnp.float32)
  cot_pooled = jnp.asarray(rng.normal(size=(16, 2, 6)), jnp.float32)

  def objective(lookup_fn, t):
    return jnp.sum(lookup_fn(t, ids) * cot) + jnp.sum(lookup_fn(t, multi, weights) * cot_pooled)

  sharded = lambda t, i, w=None: sharded_lookup(t, i, w, mesh=mesh, vocab_axes=vocab_axes)
  table_sharded = jax.device_put(table, NamedSharding(mesh, P(vocab_axes)))
  ids_sharded = jax.device_put(ids, NamedSharding(mesh, P("data")))
  got = jax.jit(sharded)(table_sharded, ids_sharded)
  np.testing.assert_allclose(got, lookup(table, ids), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(sharded)(table_sharded, multi, weights),
                             lookup(table, multi, weights), rtol=1e-5, atol=1e-6)
  grad_sharded = jax.jit(jax.grad(lambda t: objective(sharded, t)))(table_sharded)
  np.testing.assert_allclose(grad_sharded, jax.grad(lambda t: objective(lookup, t))(table),
                             rtol=1e-5, atol=1e-6)
  assert grad_sharded.sharding.is_equivalent_to(table_sharded.sharding, 2)


def test_sharded_lookup_rejects_uneven_rows():
  mesh = parallel.make_mesh(8, 1)
  with pytest.raises(ValueError, match="vocab_pad_multiple"):
    sharded_lookup(jnp.zeros((60, 4)), jnp.zeros((8, 1), jnp.int32), mesh=mesh,
                   vocab_axes=("data",))


def test_uneven_parameter_split_names_the_config_key():
  config = small_config(**{"model.vocab_pad_multiple": 7})
  with pytest.raises(ValueError, match="vocab_pad_multiple"):
    _setup(config)


def _tiny(**overrides):
  """A small, quick-to-compile model whose vocabulary (3,456 padded rows) exceeds any
  batch-sized array of the step, so a shape match on the row count can only come
  from the table, its gradient or its moments."""
  return small_config(**{"data.synthetic.num_users": 3_000, "model.backbone": "shared_bottom",
                         **overrides})


@pytest.fixture(scope="module")
def single_device_run():
  """(batches, params after them) of the tiny model on one device."""
  config = _tiny(**{"mesh.data": 1})
  t = _setup(config, jax.devices()[:1])
  batches = [jax.device_get(b) for b in _batches(t, 2)]
  for batch in t.place(batches):
    t.state, _ = t.train_step(t.state, batch)
  return batches, jax.device_get(t.state.params)


def _assert_params_close(params, expected):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(params), expected)


@pytest.mark.parametrize("mesh_shape", [(8, 1), (4, 2)])
def test_sharded_step_moves_no_vocabulary_sized_array_and_equals_single_device(
    mesh_shape, single_device_run):
  config = _tiny(**{"mesh.data": mesh_shape[0], "mesh.model": mesh_shape[1]})
  t = _setup(config)
  state = t.state
  table = state.params["embedding"]["table"]
  rows = table.shape[0]
  assert rows > 2 * config.train.batch_size
  # Table and both Adam moments are row-sharded over all devices, never replicated.
  for leaf in (table, state.opt_state[0].mu["embedding"]["table"],
               state.opt_state[0].nu["embedding"]["table"]):
    assert {s.data.shape for s in leaf.addressable_shards} == {(rows // 8, table.shape[1])}
  batches, expected = single_device_run
  device_batches = list(t.place(batches))
  compiled = t.train_step.lower(state, device_batches[0]).compile()
  collectives = _collectives(compiled.as_text())
  assert any(op == "reduce-scatter" for op, _ in collectives)  # the sharded lookup ran.
  offending = [(op, shapes) for op, shapes in collectives
               if any(d in (rows, rows // 8) for shape in shapes for d in shape)]
  assert not offending, offending
  # The same global batches give the same params as on one device.
  for batch in device_batches:
    state, _ = compiled(state, batch)
  _assert_params_close(state.params, expected)


def test_sharded_step_with_pallas_contrast_equals_single_device_xla(single_device_run):
  # --config.contrast.implementation=pallas on 8 devices: local anchors against the
  # all-gathered candidates (interpret mode), against the single-device XLA form.
  config = _tiny(**{"contrast.implementation": "pallas"})
  t = _setup(config)
  batches, expected = single_device_run
  device_batches = list(t.place(batches))
  compiled = t.train_step.lower(t.state, device_batches[0]).compile()
  gathered = [shapes for op, shapes in _collectives(compiled.as_text()) if op == "all-gather"]
  assert [(config.train.batch_size, config.contrast.proj_dim)] in gathered
  state = t.state
  for batch in device_batches:
    state, _ = compiled(state, batch)
  _assert_params_close(state.params, expected)


def _contrast_inputs(n, dz=8, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(n, dz)), jnp.float32),
          jnp.asarray(rng.normal(size=(n, dz)), jnp.float32),
          jnp.asarray(rng.uniform(0.1, 1.0, size=n), jnp.float32),
          jnp.asarray(rng.random(n) < 0.9, jnp.float32))


@pytest.mark.parametrize("chunk_size", [0, 16])
def test_sharded_contrastive_loss_and_grads_equal_single_device(chunk_size):
  z_ctr, z_cvr, tau, w = _contrast_inputs(64)
  loss = lambda a, b, t: losses.pico_contrastive_loss(a, b, t, weights=w,
                                                      chunk_size=chunk_size)
  value_and_grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
  single = jax.jit(value_and_grad)(z_ctr, z_cvr, tau)
  mesh = parallel.make_mesh(8, 1)
  rows = NamedSharding(mesh, P("data"))
  sharded = jax.jit(value_and_grad, in_shardings=(rows, rows, rows))(z_ctr, z_cvr, tau)
  assert sharded[1][0].sharding.is_equivalent_to(rows, 2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               sharded, single)
  # Negatives span the global batch: the shard-local loss is a different number.
  local = losses._weighted_mean(losses.local_contrastive_per_instance(
      z_ctr, z_cvr, tau, num_groups=8, chunk_size=0), w)
  assert abs(float(local) - float(single[0])) > 1e-3


def _contrast_temp_bytes(global_batch, chunk_size, dz=32):
  """Per-device temporary bytes of the compiled loss + gradient, batch over 8 devices."""
  mesh = parallel.make_mesh(8, 1)
  rows = NamedSharding(mesh, P("data"))
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rows)
  fn = jax.value_and_grad(lambda a, b, t: losses.pico_contrastive_loss(
      a, b, t, chunk_size=chunk_size), argnums=(0, 1, 2))
  compiled = jax.jit(fn).lower(spec(global_batch, dz), spec(global_batch, dz),
                               spec(global_batch)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_contrast_memory_grows_with_local_batch_times_chunk():
  # Local batch x global batch float32 logits for the exact form: 4 bytes each.
  small, large = 1_024, 4_096
  exact = _contrast_temp_bytes(large, 0)
  assert exact >= (large // 8) * large * 4
  chunked_small = _contrast_temp_bytes(small, 128)
  chunked_large = _contrast_temp_bytes(large, 128)
  assert chunked_large < exact / 10
  # 4x the global (and local) batch at a fixed chunk: about 4x the memory (linear in
  # the local batch), where the exact form grows 16x.
  assert chunked_large < 6 * chunked_small


def test_fsdp_splits_dense_params_and_trains_like_one_device(single_device_run):
  config = _tiny(**{"mesh.fsdp": True})
  t = _setup(config)
  kernel = t.state.params["backbone"]["bottom"]["dense_0"]["kernel"]
  assert "data" in kernel.sharding.spec
  assert kernel.addressable_shards[0].data.size == kernel.size // 8
  batches, expected = single_device_run
  for batch in t.place(batches):
    t.state, _ = t.train_step(t.state, batch)
  _assert_params_close(t.state.params, expected)


def test_bfloat16_compute_trains_with_float32_params_and_optimizer():
  config = _tiny(**{"model.compute_dtype": "bfloat16"})
  t = _setup(config)
  losses_seen = []
  for batch in _batches(t, 20):
    t.state, metrics = t.train_step(t.state, batch)
    losses_seen.append(float(metrics["loss"]))
  state = t.state
  assert np.all(np.isfinite(losses_seen))
  assert np.mean(losses_seen[-5:]) < np.mean(losses_seen[:5])
  for leaf in jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state[0].mu):
    assert leaf.dtype == jnp.float32
