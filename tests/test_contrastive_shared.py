"""The exact contrastive loss forms S once for both directions: same values as the
formula of DESIGN 1.7 (a numpy reference) and as the chunked variant, gradients too."""

import jax
import numpy as np
import pytest

from pico_jax.losses import pico_contrastive_loss


def _reference(z_ctr, z_cvr, tau, symmetric):
  z_ctr = z_ctr / np.linalg.norm(z_ctr, axis=1, keepdims=True)
  z_cvr = z_cvr / np.linalg.norm(z_cvr, axis=1, keepdims=True)
  s = z_ctr.astype(np.float64) @ z_cvr.T.astype(np.float64)
  lse = lambda x: np.log(np.sum(np.exp(x - x.max(1, keepdims=True)), 1)) + x.max(1)
  row = -np.diag(s) / tau + lse(s / tau[:, None])
  col = -np.diag(s) / tau + lse(s.T / tau[:, None])
  return np.mean((row + col) / 2 if symmetric else row)


@pytest.mark.parametrize("symmetric", [True, False])
def test_exact_loss_matches_the_formula_and_the_chunked_variant(symmetric):
  rng = np.random.default_rng(0)
  z_ctr, z_cvr = rng.normal(size=(2, 64, 8)).astype(np.float32)
  tau = rng.uniform(0.05, 1.0, size=64).astype(np.float32)
  exact = jax.jit(jax.value_and_grad(pico_contrastive_loss, argnums=(0, 1, 2)),
                  static_argnames=("symmetric", "chunk_size"))
  value, grads = exact(z_ctr, z_cvr, tau, symmetric=symmetric)
  np.testing.assert_allclose(value, _reference(z_ctr, z_cvr, tau, symmetric), rtol=1e-5)
  chunked_value, chunked_grads = exact(z_ctr, z_cvr, tau, symmetric=symmetric, chunk_size=16)
  np.testing.assert_allclose(value, chunked_value, rtol=1e-5)
  for g, c in zip(grads, chunked_grads):
    np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-6)
