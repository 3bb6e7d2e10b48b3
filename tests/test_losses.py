"""Losses against independent float64 numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pico_jax import losses


def reference_contrastive(z_ctr, z_cvr, tau, symmetric=True, normalize=True, weights=None):
  """docs/method.md, section 3, written out in float64 numpy with explicit loops over rows."""
  a, b, tau = (np.asarray(x, np.float64) for x in (z_ctr, z_cvr, tau))
  if normalize:
    a = a / np.sqrt(np.maximum((a * a).sum(1, keepdims=True), 1e-12))
    b = b / np.sqrt(np.maximum((b * b).sum(1, keepdims=True), 1e-12))
  s = a @ b.T
  n = len(a)
  per = np.empty(n)
  for i in range(n):
    row_logits = s[i, :] / tau[i]
    col_logits = s[:, i] / tau[i]
    row = -s[i, i] / tau[i] + np.log(np.sum(np.exp(row_logits - row_logits.max()))) + row_logits.max()
    col = -s[i, i] / tau[i] + np.log(np.sum(np.exp(col_logits - col_logits.max()))) + col_logits.max()
    per[i] = (row + col) / 2 if symmetric else row
  w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  return float((w * per).sum() / w.sum())


def _inputs(n, d=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32),
          rng.uniform(0.05, 1.0, size=n).astype(np.float32),
          rng.uniform(0.0, 2.0, size=n).astype(np.float32))


@pytest.mark.parametrize("n", [1, 2, 7, 64, 256])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_contrastive_matches_float64_reference(n, symmetric, weighted):
  z_ctr, z_cvr, tau, w = _inputs(n, seed=n)
  w = w if weighted else None
  got = losses.pico_contrastive_loss(z_ctr, z_cvr, tau, symmetric=symmetric, weights=w)
  want = reference_contrastive(z_ctr, z_cvr, tau, symmetric=symmetric, weights=w)
  np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=2e-6)


def test_contrastive_without_normalisation_and_scalar_tau_values():
  z_ctr, z_cvr, _, _ = _inputs(16)
  z_ctr, z_cvr = 0.3 * z_ctr, 0.3 * z_cvr
  for t in (0.05, 0.2, 1.0):
    tau = np.full(16, t, np.float32)
    got = losses.pico_contrastive_loss(z_ctr, z_cvr, tau, normalize=False)
    np.testing.assert_allclose(float(got), reference_contrastive(z_ctr, z_cvr, tau,
                                                                 normalize=False), rtol=2e-5)


def test_contrastive_is_stable_at_small_tau():
  z_ctr, z_cvr, _, _ = _inputs(32)
  tau = np.full(32, 1e-3, np.float32)  # logits up to 1000: naive exp overflows.
  got = float(losses.pico_contrastive_loss(z_ctr, z_cvr, tau))
  assert np.isfinite(got)
  np.testing.assert_allclose(got, reference_contrastive(z_ctr, z_cvr, tau), rtol=1e-4)


def test_contrastive_gradient_matches_finite_differences():
  z_ctr, z_cvr, tau, w = _inputs(6, d=4, seed=3)
  grads = jax.grad(lambda a, b, t: losses.pico_contrastive_loss(a, b, t, weights=w),
                   argnums=(0, 1, 2))(z_ctr, z_cvr, tau)
  eps = 1e-5
  for arg, grad in zip(range(3), grads):
    args = [np.asarray(x, np.float64) for x in (z_ctr, z_cvr, tau)]
    numeric = np.zeros_like(args[arg])
    for idx in np.ndindex(args[arg].shape):
      plus = [x.copy() for x in args]
      minus = [x.copy() for x in args]
      plus[arg][idx] += eps
      minus[arg][idx] -= eps
      numeric[idx] = (reference_contrastive(*plus, weights=w)
                      - reference_contrastive(*minus, weights=w)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_chunked_equals_exact(symmetric):
  z_ctr, z_cvr, tau, w = _inputs(64, seed=5)
  exact = lambda a, b, t: losses.pico_contrastive_loss(a, b, t, symmetric=symmetric, weights=w)
  chunked = lambda a, b, t: losses.pico_contrastive_loss(a, b, t, symmetric=symmetric,
                                                         weights=w, chunk_size=16)
  np.testing.assert_allclose(float(chunked(z_ctr, z_cvr, tau)), float(exact(z_ctr, z_cvr, tau)),
                             rtol=1e-6)
  for g_chunked, g_exact in zip(jax.grad(chunked, (0, 1, 2))(z_ctr, z_cvr, tau),
                                jax.grad(exact, (0, 1, 2))(z_ctr, z_cvr, tau)):
    np.testing.assert_allclose(g_chunked, g_exact, rtol=1e-5, atol=1e-7)


def test_chunk_size_must_divide_batch():
  z_ctr, z_cvr, tau, _ = _inputs(10)
  with pytest.raises(ValueError, match="chunk_size 4"):
    losses.pico_contrastive_loss(z_ctr, z_cvr, tau, chunk_size=4)


def test_local_negatives_are_per_group():
  z_ctr, z_cvr, tau, _ = _inputs(32, seed=9)
  per = losses.local_contrastive_per_instance(jnp.asarray(z_ctr), jnp.asarray(z_cvr),
                                              jnp.asarray(tau), num_groups=4)
  for g in range(4):
    block = slice(8 * g, 8 * (g + 1))
    np.testing.assert_allclose(
        float(np.mean(per[block])), reference_contrastive(z_ctr[block], z_cvr[block],
                                                           tau[block]), rtol=2e-5)


def _np_bce(logits, labels):
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def test_task_losses_match_numpy():
  rng = np.random.default_rng(0)
  n = 200
  a, b = rng.normal(0, 3, n).astype(np.float32), rng.normal(0, 3, n).astype(np.float32)
  click = (rng.random(n) < 0.4).astype(np.float32)
  conv = click * (rng.random(n) < 0.5).astype(np.float32)
  mask = (rng.random(n) < 0.9).astype(np.float32)
  np.testing.assert_allclose(float(losses.bce_with_logits(a, click, mask)),
                             np.average(_np_bce(a, click), weights=mask), rtol=1e-5)
  p = 1 / (1 + np.exp(-a.astype(np.float64))) / (1 + np.exp(-b.astype(np.float64)))
  y = click * conv
  want = np.average(-(y * np.log(p) + (1 - y) * np.log(1 - p)), weights=mask)
  np.testing.assert_allclose(float(losses.ctcvr_loss(a, b, click, conv, mask)), want, rtol=1e-5)
  clicked = mask * click
  np.testing.assert_allclose(float(losses.cvr_loss(b, click, conv, mask)),
                             np.average(_np_bce(b, conv), weights=clicked), rtol=1e-5)


def test_ctcvr_loss_is_finite_for_extreme_logits():
  a = np.array([-80.0, 80.0, 80.0, -80.0], np.float32)
  b = np.array([-80.0, 80.0, -80.0, 80.0], np.float32)
  y = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
  value, grads = jax.value_and_grad(losses.ctcvr_loss, argnums=(0, 1))(a, b, y, y)
  assert np.isfinite(float(value)) and all(np.all(np.isfinite(g)) for g in grads)


def test_cvr_loss_ignores_unclicked_rows_and_is_zero_without_clicks():
  b = np.array([5.0, -5.0, 3.0], np.float32)
  click = np.array([1.0, 0.0, 0.0], np.float32)
  conv = np.array([1.0, 0.0, 0.0], np.float32)
  flipped = np.array([-5.0, 5.0, -3.0], np.float32)  # differs only on unclicked rows.
  flipped[0] = b[0]
  assert float(losses.cvr_loss(b, click, conv)) == pytest.approx(
      float(losses.cvr_loss(flipped, click, conv)))
  assert float(losses.cvr_loss(b, np.zeros(3, np.float32), conv)) == 0.0


def test_cvr_loss_on_all_rows_for_independent_tasks():
  b = np.array([2.0, -1.0, 0.5], np.float32)
  click = np.array([1.0, 0.0, 0.0], np.float32)
  conv = np.array([1.0, 1.0, 0.0], np.float32)
  np.testing.assert_allclose(float(losses.cvr_loss(b, click, conv, clicked_only=False)),
                             _np_bce(b, conv).mean(), rtol=1e-6)
