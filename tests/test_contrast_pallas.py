"""The Pallas contrast kernel (interpret mode) against float64, and its self-check."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import small_config
from pico_jax import losses, parallel
from pico_jax.contrast import forms, implementations, pallas_lse, pallas_pair, self_check
from pico_jax.train.trainer import build
from test_losses import reference_contrastive


def _reference64(z_ctr, z_cvr, tau, weights, *, symmetric, normalize):
  """The loss in float64, written independently of the implementations (S^T formed)."""
  a, b = z_ctr, z_cvr
  if normalize:
    a = a / jnp.sqrt(jnp.maximum(jnp.sum(a * a, 1, keepdims=True), 1e-12))
    b = b / jnp.sqrt(jnp.maximum(jnp.sum(b * b, 1, keepdims=True), 1e-12))
  s = a @ b.T
  positive = jnp.diagonal(s) / tau
  row = jax.nn.logsumexp(s / tau[:, None], axis=1) - positive
  col = jax.nn.logsumexp(s.T / tau[:, None], axis=1) - positive
  per = (row + col) / 2 if symmetric else row
  return jnp.sum(weights * per) / jnp.sum(weights)


def _inputs(n, d, seed, tau_low=0.05, tau_high=1.0, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.normal(size=(n, d)).astype(np.float32),
          scale * rng.normal(size=(n, d)).astype(np.float32),
          rng.uniform(tau_low, tau_high, size=n).astype(np.float32),
          rng.uniform(0.0, 2.0, size=n).astype(np.float32))


def _check_against_float64(z_ctr, z_cvr, tau, w, *, symmetric, normalize, weighted,
                           rtol, grad_tol, dtype=jnp.float32):
  weights = w if weighted else None
  loss = lambda a, b, t: losses.pico_contrastive_loss(
      a, b, t, symmetric=symmetric, normalize=normalize, weights=weights,
      implementation="pallas")
  args = [jnp.asarray(z_ctr, dtype), jnp.asarray(z_cvr, dtype), jnp.asarray(tau)]
  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(*args)
  # The reference sees exactly the (possibly bfloat16-rounded) inputs of the kernel.
  exact = [np.asarray(x, np.float64) for x in args]
  w64 = np.asarray(w if weighted else np.ones(len(tau)), np.float64)
  with jax.enable_x64(True):
    ref = lambda a, b, t: _reference64(a, b, t, jnp.asarray(w64), symmetric=symmetric,
                                       normalize=normalize)
    want_value, want_grads = jax.value_and_grad(ref, argnums=(0, 1, 2))(*exact)
    want_grads = [np.asarray(g) for g in want_grads]
  np.testing.assert_allclose(float(value), reference_contrastive(
      *exact, symmetric=symmetric, normalize=normalize, weights=w64), rtol=rtol, atol=1e-6)
  np.testing.assert_allclose(float(value), float(want_value), rtol=rtol, atol=1e-6)
  for got, want in zip(grads, want_grads):
    assert got.dtype == dtype or got.ndim == 1
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=grad_tol,
                               atol=grad_tol * np.max(np.abs(want)) + 1e-6)


# Batches not multiples of a tile (1, 7, 1000: the last tile is ragged; 256 fills two
# tiles of 128). Each batch takes a different combination of the three switches, so
# every switch is seen both ways with a ragged batch.
@pytest.mark.parametrize("n,symmetric,weighted,normalize", [
    (1, True, True, True), (7, False, False, False), (256, True, False, False),
    (1000, False, True, True)])
def test_pallas_matches_float64_reference(n, symmetric, weighted, normalize):
  # Unnormalised inputs are scaled so logits stay in float32's comfortable range.
  z_ctr, z_cvr, tau, w = _inputs(n, 8, seed=n, scale=1.0 if normalize else 0.3)
  _check_against_float64(z_ctr, z_cvr, tau, w, symmetric=symmetric, normalize=normalize,
                         weighted=weighted, rtol=2e-5, grad_tol=1e-4)


def test_pallas_near_tau_min():
  # tau within 1e-3 of tau_min = 0.05: logits up to 20, a peaked softmax.
  z_ctr, z_cvr, tau, w = _inputs(100, 8, seed=11, tau_low=0.05, tau_high=0.051)
  _check_against_float64(z_ctr, z_cvr, tau, w, symmetric=True, normalize=True,
                         weighted=True, rtol=2e-5, grad_tol=2e-4)


def test_pallas_bfloat16_inputs():
  z_ctr, z_cvr, tau, w = _inputs(100, 16, seed=12)
  _check_against_float64(z_ctr, z_cvr, tau, w, symmetric=True, normalize=True,
                         weighted=True, rtol=2e-2, grad_tol=3e-2, dtype=jnp.bfloat16)


def test_kernel_tiles_ragged_both_ways_and_wide_features():
  # Small tiles: several anchor and candidate tiles, both ragged, Na != Nc (as on one
  # device of the sharded form), d = 200 (padded to 256 inside).
  rng = np.random.default_rng(3)
  a = jnp.asarray(rng.normal(size=(37, 200)) / 14, jnp.float32)
  c = jnp.asarray(rng.normal(size=(53, 200)) / 14, jnp.float32)
  inv_tau = jnp.asarray(rng.uniform(1.0, 20.0, size=37), jnp.float32)
  g = jnp.asarray(rng.normal(size=37), jnp.float32)
  kernel = lambda a, c, t: jnp.sum(g * pallas_lse.anchor_logsumexp(a, c, t, 16, 32, True))
  xla = lambda a, c, t: jnp.sum(g * jax.nn.logsumexp(
      jnp.dot(a, c.T, precision=jax.lax.Precision.HIGHEST) * t[:, None], axis=1))
  got = jax.value_and_grad(kernel, argnums=(0, 1, 2))(a, c, inv_tau)
  want = jax.value_and_grad(xla, argnums=(0, 1, 2))(a, c, inv_tau)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), got, want)
  with pytest.raises(ValueError, match="exceeds the kernel's 256"):
    pallas_lse.anchor_logsumexp(jnp.zeros((4, 300)), jnp.zeros((4, 300)), jnp.ones(4))


@pytest.mark.parametrize("dtype,n,dim", [(jnp.float32, 300, 24), (jnp.bfloat16, 1, 256)])
def test_kernels_lower_to_triton_for_cuda(monkeypatch, dtype, n, dim):
  # Lowering for CUDA runs Pallas's Triton lowering on this CPU machine: it catches an
  # operation or a block shape the GPU backend rejects (compiling the Triton IR to GPU
  # code needs a GPU). anchor_logsumexp: forward, anchor-gradient and candidate-gradient
  # kernels (3 calls); pair_logsumexp: two forwards and two fused backwards (4).
  monkeypatch.setattr(pallas_lse, "platform", lambda: "gpu")
  spec = lambda *shape, dt=dtype: jax.ShapeDtypeStruct(shape, dt)
  triton = "__gpu$xla.gpu.triton"
  export = lambda f, *args: jax.export.export(
      jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2))), platforms=["cuda"],
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(triton)])(
          *args).mlir_module().count(f"@{triton}(")
  single = lambda a, c, t: jnp.sum(pallas_lse.anchor_logsumexp(a, c, t))
  assert export(single, spec(n, dim), spec(n + 7, dim), spec(n, dt=jnp.float32)) == 3
  pair = lambda a, b, t: sum(map(jnp.sum, pallas_pair.pair_logsumexp(a, b, t)))
  assert export(pair, spec(n, dim), spec(n, dim), spec(n, dt=jnp.float32)) == 4


def test_auto_is_xla_on_cpu_and_chunked_with_a_chunk_size():
  assert implementations.resolve("auto") == "xla"
  assert implementations.resolve("auto", chunk_size=64) == "chunked"
  assert implementations.resolve("pallas") == "pallas"
  with pytest.raises(ValueError, match="expected one of"):
    implementations.resolve("triton")


@pytest.fixture
def fake_accelerator(monkeypatch):
  """The process looks like a GPU to the contrast's choice, with no verdict cached."""
  monkeypatch.setattr(pallas_lse, "platform", lambda: "gpu")
  monkeypatch.setattr(self_check, "_VERDICTS", {})


def test_self_check_mismatch_falls_back(fake_accelerator, monkeypatch):
  real = forms.TRITON.anchor_logsumexp
  monkeypatch.setattr(forms, "TRITON", dataclasses.replace(
      forms.TRITON,
      anchor_logsumexp=lambda a, c, t, interpret=False: real(a, c, t, interpret=True) + 1e-2))
  with pytest.warns(RuntimeWarning, match="self-check on gpu.*anchor_logsumexp: mismatch in value"):
    assert implementations.resolve("auto") == "xla"
  assert implementations.resolve("pallas", chunk_size=16) == "chunked"  # cached: no rerun


def test_forced_compile_failure_falls_back_warns_and_trains(fake_accelerator):
  # On this CPU the non-interpret kernel cannot compile ("Only interpret mode is
  # supported on CPU backend"): a genuine compile failure inside the self-check.
  config = small_config(**{"contrast.implementation": "pallas", "train.batch_size": 32,
                           "train.steps": 2})
  with pytest.warns(RuntimeWarning, match="Only interpret mode.*implementation='xla'"):
    t = build(config, mesh=parallel.make_mesh(devices=jax.devices()[:1]))
    before = jax.device_get(t.state.params)
    state = t.state
    for batch in t.batches():
      state, metrics = t.train_step(state, batch)
  assert np.isfinite(float(metrics["loss_contrast"]))
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), jax.device_get(state.params),
                       before)
  assert max(jax.tree.leaves(moved)) > 0


def test_shard_local_negatives_with_pallas_equal_xla():
  # negatives="local" vmaps the kernel over the groups (no mesh: each group on its own).
  z_ctr, z_cvr, tau, _ = _inputs(32, 8, seed=13)
  def loss(implementation):
    return jax.value_and_grad(lambda a, b, t: jnp.mean(losses.local_contrastive_per_instance(
        a, b, t, num_groups=4, implementation=implementation)), argnums=(0, 1, 2))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
               loss("pallas")(z_ctr, z_cvr, tau), loss("xla")(z_ctr, z_cvr, tau))
