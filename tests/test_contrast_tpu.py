"""The Mosaic (TPU) form of the contrast kernel, checked on a CPU host.

- Cross-lowering: every kernel lowered for TPU (Mosaic's ``tpu_custom_call``) over the
  grid of feature dimensions, dtypes and batches users configure, with ``jax.export``
  and abstract shapes (lowering only: no TPU compiler here).
- VMEM: each call's blocks (double-buffered), scratch and temporaries per grid step,
  from the block specs the calls use, for batches up to 262,144.
- Numerics: TPU interpret mode (``pltpu.InterpretParams``: simulated VMEM, scratch and
  the pipeline's copies) against float64, values and the three gradients, ragged.
- The real shape decides: ``resolve`` lowers the contrast at the training's shape and
  falls back, with one warning, when the kernel cannot take it.
"""

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from conftest import small_config
from pico_jax import losses, parallel
from pico_jax.contrast import implementations, pallas_lse, pallas_tpu, self_check
from pico_jax.train.trainer import build

CUSTOM_CALL = "tpu_custom_call"
MiB = 1024 * 1024


@contextlib.contextmanager
def tpu_target(data: int = 1):
  """Trace and lower as for a TPU v5e (a single-core generation) on this CPU host.

  jax's supported way: an abstract mesh whose abstract device is a TPU. Pallas's Mosaic
  lowering reads the TPU generation from it (``tpu_info.get_device_kind``), and the
  contrast's platform (``pallas_lse.platform``) picks the Mosaic form. ``data`` > 1
  names a data axis that splits the batch, as the train step's mesh does.
  """
  device = jax.sharding.AbstractDevice(device_kind="TPU v5 lite", num_cores=1,
                                       platform="tpu")
  mesh = jax.sharding.AbstractMesh((data,), (implementations.DATA_AXIS,),
                                   abstract_device=device)
  with jax.sharding.use_abstract_mesh(mesh):
    yield


def _export_for_tpu(f, *args) -> str:
  """The StableHLO text of value-and-gradient of ``f`` (a scalar of three arrays)."""
  with tpu_target():
    grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    return jax.export.export(grad, platforms=["tpu"])(*args).mlir_module()


def _single(a, c, t):
  return jnp.sum(pallas_tpu.anchor_logsumexp(a, c, t))


def _pair(a, b, t):
  return sum(map(jnp.sum, pallas_tpu.pair_logsumexp(a, b, t)))


@pytest.fixture
def tpu_passed_self_check(monkeypatch):
  """The process looks like a TPU whose kernel passed the small self-check, with no
  shape checked yet: what ``resolve`` does next depends on the shape alone."""
  monkeypatch.setattr(pallas_lse, "platform", lambda: "tpu")
  monkeypatch.setattr(self_check, "_VERDICTS", {"tpu": None})
  monkeypatch.setattr(self_check, "_SHAPE_VERDICTS", {})


# anchor_logsumexp: forward, anchor gradient, candidate gradient; pair_logsumexp: two
# forwards, two gradients. Candidates B + 7: anchors and candidates ragged differently.
@pytest.mark.parametrize("batch", [1, 1000, 4096, 65536, 262144])
@pytest.mark.parametrize("dim", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_every_kernel_lowers_for_tpu(dtype, dim, batch):
  spec = lambda *shape, dt=dtype: jax.ShapeDtypeStruct(shape, dt)
  single = _export_for_tpu(_single, spec(batch, dim), spec(batch + 7, dim),
                           spec(batch, dt=jnp.float32))
  pair = _export_for_tpu(_pair, spec(batch, dim), spec(batch, dim),
                         spec(batch, dt=jnp.float32))
  for text, calls, grads in ((single, 3, 2), (pair, 4, 2)):
    assert text.count(f"@{CUSTOM_CALL}(") == calls
    assert text.count('kernel_name = "pico_tpu_lse_forward"') == calls - grads
    assert text.count('kernel_name = "pico_tpu_lse_grad"') == grads
    # The explicit VMEM limit travels in every call's backend config.
    assert text.count(str(pallas_tpu.VMEM_LIMIT)) >= calls


def test_public_contrast_lowers_the_mosaic_form_on_tpu(tpu_passed_self_check):
  # pico_contrastive_loss picks the Mosaic form for a TPU: one device (the fused pair)
  # and a data-split mesh (each device's anchors against all-gathered candidates).
  # Its resolve cross-lowers the shape check too (the self-check needs a real TPU).
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  loss = lambda a, b, t: losses.pico_contrastive_loss(a, b, t, implementation="pallas")
  args = spec(1000, 128), spec(1000, 128), spec(1000)
  assert _export_for_tpu(loss, *args).count(f"@{CUSTOM_CALL}(") == 4
  with tpu_target(data=2):
    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).trace(*args).lower(
        lowering_platforms=("tpu",))
  assert lowered.as_text().count(f"@{CUSTOM_CALL}(") == 6
  assert "triton" not in lowered.as_text()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_vmem_per_grid_step_is_bounded_for_every_batch(dtype):
  for dim in (16, 32, 64, 128, 256):
    budgets = [pallas_tpu.call_budgets(n, n + 7, dim, dtype)
               for n in (1, 1000, 4096, 65536, 262144)]
    for budget in budgets:
      for name, use in budget.items():
        assert use["blocks"] + use["scratch"] <= pallas_tpu.VMEM_LIMIT, (dim, name, use)
        assert use["total"] <= pallas_tpu.VMEM_LIMIT, (dim, name, use)
    # Past one full tile the batch only lengthens the grid: the same bytes per step.
    assert budgets[-1] == budgets[-2] == budgets[-3]


def test_vmem_budget_counts_the_blocks_of_the_calls():
  # Forward, d = 256 float32, 512-row tiles: anchors and candidates 512 x 256 x 4 bytes,
  # inv_tau and lse 512 x 128 lanes x 4, each twice; running max and sum 512 x 128 x 4.
  p = pallas_tpu.plan(4096, 4096, 256, jnp.float32)
  use = pallas_tpu.vmem_bytes(p, "forward")
  assert use["blocks"] == 2 * (2 * 512 * 256 * 4 + 2 * 512 * 128 * 4) == 3 * MiB
  assert use["scratch"] == 2 * 512 * 128 * 4
  # A 7-column bfloat16 block still takes a (16, 128) tile of 2-byte values.
  assert pallas_tpu._tile_bytes((7, 7), jnp.bfloat16) == 16 * 128 * 2
  # Tiles of 2,048 rows would not fit: the bound is the tile's, and it is checked.
  big = pallas_tpu.call_budgets(65536, 65536, 256, jnp.float32, block=2048)
  assert big["pair_grad"]["total"] > pallas_tpu.VMEM_LIMIT


# ----------------------------------------------------------- TPU interpret mode


def _xla_lse64(anchors, candidates, inv_tau):
  return jax.nn.logsumexp(anchors @ candidates.T * inv_tau[:, None], axis=1)


def _unit(rng, n, d, dtype):
  x = rng.normal(size=(n, d))
  return np.asarray(jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype))


# Ragged sizes and tiles of 128: several tiles both ways, the last of each ragged, and
# anchors != candidates; d = 24 pads to 128 lanes, d = 200 to 256.
@pytest.mark.parametrize("kernel,n_anchor,n_candidate,dim,dtype,tol", [
    ("single", 300, 200, 24, jnp.float32, 2e-5),
    ("pair", 260, 260, 200, jnp.float32, 2e-5),
    ("pair", 130, 130, 16, jnp.bfloat16, 2e-2)])
def test_interpret_mode_matches_float64(kernel, n_anchor, n_candidate, dim, dtype, tol):
  rng = np.random.default_rng(n_anchor)
  a, c = _unit(rng, n_anchor, dim, dtype), _unit(rng, n_candidate, dim, dtype)
  inv_tau = rng.uniform(1.0, 20.0, size=n_anchor).astype(np.float32)
  g, h = rng.normal(size=(2, n_anchor))
  interpret = pltpu.InterpretParams()  # uninitialised scratch reads as NaN: it shows.
  if kernel == "single":
    run = lambda x, y, t: jnp.sum(g * pallas_tpu.anchor_logsumexp(x, y, t, 128, 128,
                                                                   interpret))
    ref = lambda x, y, t: jnp.sum(g * _xla_lse64(x, y, t))
  else:
    run = lambda x, y, t: sum(jnp.sum(w * v) for w, v in zip(
        (g, h), pallas_tpu.pair_logsumexp(x, y, t, 128, interpret)))
    ref = lambda x, y, t: jnp.sum(g * _xla_lse64(x, y, t) + h * _xla_lse64(y, x, t))
  got = jax.value_and_grad(run, argnums=(0, 1, 2))(jnp.asarray(a), jnp.asarray(c),
                                                   jnp.asarray(inv_tau))
  assert got[1][0].dtype == dtype and got[1][1].dtype == dtype
  with jax.enable_x64(True):
    exact = [np.asarray(x, np.float64) for x in (a, c, inv_tau)]
    want = jax.value_and_grad(ref, argnums=(0, 1, 2))(*exact)
  for name, x, y in zip(("value", "d anchors", "d candidates", "d inv_tau"),
                        jax.tree.leaves(got), jax.tree.leaves(want)):
    y = np.asarray(y)
    np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=tol,
                               atol=tol * np.max(np.abs(y)), err_msg=name)


def test_interpret_mode_masks_padding_when_every_logit_is_very_negative():
  # Logits near -100 (anchors opposite the candidates, inv_tau 20): lse is near -100,
  # so an unmasked padded candidate (S = 0) would weigh exp(100), inf in float32.
  rng = np.random.default_rng(5)
  u = _unit(rng, 1, 16, jnp.float32)
  a = -5 * u + 0.01 * rng.normal(size=(20, 16)).astype(np.float32)
  c = u + 0.01 * rng.normal(size=(130, 16)).astype(np.float32)
  inv_tau = np.full(20, 20.0, np.float32)
  g = rng.normal(size=20)
  run = lambda x, y, t: jnp.sum(g * pallas_tpu.anchor_logsumexp(
      x, y, t, 128, 128, pltpu.InterpretParams()))
  got = jax.value_and_grad(run, argnums=(0, 1, 2))(a, c, inv_tau)
  with jax.enable_x64(True):
    exact = [np.float64(x) for x in (a, c, inv_tau)]
    assert np.max(_xla_lse64(*exact)) < -90
    want = jax.value_and_grad(lambda x, y, t: jnp.sum(g * _xla_lse64(x, y, t)),
                              argnums=(0, 1, 2))(*exact)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y), rtol=1e-4,
                               atol=1e-4 * np.max(np.abs(np.asarray(y))))


# ------------------------------------------------------------ the real shape decides


def _shape_warnings(record):
  return [w for w in record if "cannot take the configured shape" in str(w.message)]


def test_resolve_picks_pallas_only_where_the_shape_lowers(tpu_passed_self_check,
                                                          monkeypatch):
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    # Cross-lowered for TPU here (a TPU process would compile it too): one device, and
    # each of 8 devices' anchors against the all-gathered candidates.
    for on in (mesh, parallel.make_mesh()):
      assert implementations.resolve(
          "auto", shape=implementations.Shape(65536, 128), mesh=on) == "pallas"
    wide = implementations.Shape(64, 300)
    for _ in range(2):  # the verdict is cached: one warning
      assert implementations.resolve("pallas", 16, wide, mesh) == "chunked"
  assert not [w for w in record if w not in _shape_warnings(record)]
  (warning,) = _shape_warnings(record)
  assert ("on tpu (batch 64, dim 300, float32, symmetric: ValueError: feature dimension "
          "300 exceeds the kernel's 256); using implementation='chunked'"
          in str(warning.message))

  # A failure only the real compiler finds (simulated: here nothing compiles for TPU).
  def out_of_memory(shape, mesh=None):
    raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space vmem")

  monkeypatch.setattr(implementations, "lower_at", out_of_memory)
  with pytest.warns(RuntimeWarning, match="batch 262144.*RESOURCE_EXHAUSTED"):
    assert implementations.resolve(
        "auto", shape=implementations.Shape(262144, 128), mesh=mesh) == "xla"


def test_configured_shape_the_kernel_cannot_take_falls_back_and_trains(
    tpu_passed_self_check):
  # proj_dim 300 > the kernel's 256: it passes the self-check (d = 24) but not its shape.
  config = small_config(**{"contrast.implementation": "pallas", "contrast.proj_dim": 300,
                           "train.batch_size": 32, "train.steps": 2})
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    t = build(config, mesh=parallel.make_mesh(devices=jax.devices()[:1]))
    before = jax.device_get(t.state.params)
    state = t.state
    for batch in t.batches():
      state, metrics = t.train_step(state, batch)
  (warning,) = _shape_warnings(record)
  assert "dim 300" in str(warning.message) and "'xla'" in str(warning.message)
  assert np.isfinite(float(metrics["loss_contrast"]))
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                       jax.device_get(state.params), before)
  assert max(jax.tree.leaves(moved)) > 0
