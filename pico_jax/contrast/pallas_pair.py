"""Both directions of the symmetric loss with one fused backward: 6 products, not 10.

``pair_logsumexp(a, b, inv_tau)`` returns (row, col), float32 [B] each:

    row_i = logsumexp_j(a_i . b_j * inv_tau_i)       (``anchor_logsumexp(a, b, inv_tau)``)
    col_j = logsumexp_i(a_i . b_j * inv_tau_j)       (``anchor_logsumexp(b, a, inv_tau)``)

The forward pass is the two calls of ``pallas_lse``'s forward kernel. The backward
pass, with P_ij = exp(S_ij inv_tau_i - row_i), Q_ij = exp(S_ij inv_tau_j - col_j) and
the cotangents g (of row) and h (of col), uses

    G_ij = g_i inv_tau_i P_ij + h_j inv_tau_j Q_ij
    d a = G b,   d b = G^T a,
    d inv_tau_i = g_i sum_j P_ij S_ij + h_i sum_j Q_ji S_ji

and forms P and Q from one recomputed S tile: one kernel over tiles of a (d a and the
first d inv_tau term), and the same kernel with a and b exchanged over tiles of b (G^T
is the same expression with the roles swapped). Matrix products: 2 forward + 4 backward,
against 2 + 8 for two independent ``anchor_logsumexp`` calls. It applies when a and b
are the same rows (one device, or ``jax.vmap`` over groups); the sharded form, whose
candidates are all-gathered, uses ``anchor_logsumexp`` per direction.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pico_jax.contrast import pallas_lse


def _pair_grad_kernel(own_ref, other_ref, t_ref, lse_ref, g_ref, t_all_ref, lse_all_ref,
                      g_all_ref, d_ref, dt_ref, *, block, n, precision):
  """One tile of ``own`` rows: their gradient [block, d] and their d inv_tau term [block].

  ``own`` is a (lse = row, g) or b (lse = col, g = h); ``other`` is the other one, streamed
  tile by tile with its own lse, cotangent and (the shared) inverse temperatures.
  """
  own = own_ref[...]
  t, lse, g = t_ref[...], lse_ref[...], g_ref[...]
  ragged = n % block != 0

  def body(k, carry):
    acc_d, acc_t = carry
    rows = pl.ds(k * block, block)
    other = other_ref[rows, :]
    t_other, lse_other, g_other = t_all_ref[rows], lse_all_ref[rows], g_all_ref[rows]
    s = pallas_lse._dot(own, other, (1, 1), precision)
    p_own = jnp.exp(s * t[:, None] - lse[:, None])
    p_other = jnp.exp(s * t_other[None, :] - lse_other[None, :])
    valid = pallas_lse._valid(k * block, block, n, ragged)
    if valid is not None:
      p_own = jnp.where(valid[None, :], p_own, 0.0)
      p_other = jnp.where(valid[None, :], p_other, 0.0)
    weight = (g * t)[:, None] * p_own + (g_other * t_other)[None, :] * p_other
    acc_d = acc_d + pallas_lse._dot(weight.astype(other.dtype), other, (1, 0), precision)
    return acc_d, acc_t + jnp.sum(p_own * s, axis=1)

  init = (jnp.zeros(own.shape, jnp.float32), jnp.zeros(t.shape, jnp.float32))
  acc_d, acc_t = jax.lax.fori_loop(0, other_ref.shape[0] // block, body, init)
  d_ref[...] = acc_d
  dt_ref[...] = g * acc_t


def _pair_grad(own, other, t, lse_own, g_own, lse_other, g_other, setup, interpret):
  block, pad, dim = setup.block_a, setup.pad_a, setup.dim
  tile = lambda: pl.BlockSpec((block,), lambda i: (i,))
  whole = lambda: pl.BlockSpec((pad,), lambda i: (0,))
  return pl.pallas_call(
      functools.partial(_pair_grad_kernel, block=block, n=setup.n_anchor,
                        precision=setup.precision),
      grid=(pad // block,),
      in_specs=[pl.BlockSpec((block, dim), lambda i: (i, 0)),
                pl.BlockSpec((pad, dim), lambda i: (0, 0)),
                tile(), tile(), tile(), whole(), whole(), whole()],
      out_specs=[pl.BlockSpec((block, dim), lambda i: (i, 0)), tile()],
      out_shape=[jax.ShapeDtypeStruct((pad, dim), jnp.float32),
                 jax.ShapeDtypeStruct((pad,), jnp.float32)],
      interpret=interpret, compiler_params=pallas_lse._compiler_params(),
      name="pico_pair_grad",
  )(own, other, t, lse_own, g_own, t, lse_other, g_other)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def pair_logsumexp(a, b, inv_tau, block=None, interpret=False):
  """(row, col) logsumexps of the symmetric loss: float32 [B] each (module docstring).

  Args:
    a, b: float32 or bfloat16 [B, d], d <= 256 (the same rows: a_i pairs with b_i).
    inv_tau: float32 [B].
    block: rows per tile (as ``anchor_logsumexp``'s; None: its default).
    interpret: Pallas interpret mode (required on CPU).
  """
  return _forward(a, b, inv_tau, block, interpret)[0]


def _forward(a, b, inv_tau, block, interpret):
  if a.shape != b.shape:
    raise ValueError(f"a {a.shape} and b {b.shape} must have the same shape")
  row, (_, _, _, row_pad) = pallas_lse._forward(a, b, inv_tau, block, block, interpret)
  col, (_, _, _, col_pad) = pallas_lse._forward(b, a, inv_tau, block, block, interpret)
  return (row, col), (a, b, inv_tau, row_pad, col_pad)


def _backward(block, interpret, residuals, cotangents):
  a, b, inv_tau, row_pad, col_pad = residuals
  setup = pallas_lse._Setup(a, b, block, block)
  a_pad, b_pad, t, g, h = setup.pad(a, b, inv_tau, *cotangents)
  da, dt_a = _pair_grad(a_pad, b_pad, t, row_pad, g, col_pad, h, setup, interpret)
  db, dt_b = _pair_grad(b_pad, a_pad, t, col_pad, h, row_pad, g, setup, interpret)
  n, d = a.shape
  return (da[:n, :d].astype(a.dtype), db[:n, :d].astype(b.dtype),
          (dt_a + dt_b)[:n].astype(inv_tau.dtype))


pair_logsumexp.defvjp(_forward, _backward)
