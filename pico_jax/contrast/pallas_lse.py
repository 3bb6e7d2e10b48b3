"""A fused Pallas kernel for the InfoNCE logsumexp with per-anchor temperatures: the
Triton form, which GPUs run (and CPUs in interpret mode); TPUs run the Mosaic form of
``pico_jax.contrast.pallas_tpu``, whose docstring says why the two differ.

``anchor_logsumexp(anchors, candidates, inv_tau)`` returns, for every anchor i,

    lse_i = log sum_j exp(anchors_i . candidates_j * inv_tau_i)        float32 [Na]

without ever forming the [Na, Nc] logit matrix: a grid over anchor tiles, each of
which streams the candidates tile by tile and keeps a running (max, sum) in float32
(the max-shifted online logsumexp of flash attention; inputs need not be
normalised). PICO's two directions are two calls: CTR anchors against CVR
candidates, and CVR anchors against CTR candidates, each with the anchor's own
temperature.

The backward pass (``jax.custom_vjp``) recomputes the logit tiles from the inputs
and the saved lse, never storing them. With P_ij = exp(S_ij inv_tau_i - lse_i) and
the incoming cotangent g [Na]:

    d anchors_i    = g_i inv_tau_i sum_j P_ij candidates_j      (grid over anchor tiles)
    d inv_tau_i    = g_i sum_j P_ij S_ij                        (same kernel)
    d candidates_j = sum_i g_i inv_tau_i P_ij anchors_i         (grid over candidate tiles)

The two backward kernels are separate because a GPU grid runs its programs in
parallel: each output tile must be owned by one program. Matrix products per call:
one [Na, Nc, d] product forward, four backward (two recompute S).

Any Na, Nc >= 1: both are padded to a multiple of their tile and the padded rows are
masked out of every sum. The feature dimension is zero-padded to a power of two of
at least 16 (the smallest Triton dot), which changes no dot product. Inputs may be
float32 or bfloat16; products accumulate in float32 and the softmax arithmetic is
float32. float32 products use IEEE precision (no TF32), as the XLA form does with
``Precision.HIGHEST``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

# A finite "minus infinity" for masked logits: exp(MASK - m) is exactly 0 for any
# real running max m, and MASK - MASK is 0 rather than the NaN of -inf - -inf.
_MASK = -0.7 * float(np.finfo(np.float32).max)
MAX_DIM = 256


def _precision(dtype):
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def _dot(x, y, contract, precision):
  """float32 product of two tiles contracting axes ``contract`` = (x axis, y axis)."""
  return jax.lax.dot_general(x, y, (((contract[0],), (contract[1],)), ((), ())),
                             precision=precision, preferred_element_type=jnp.float32)


def _valid(start, size, n, ragged):
  """bool [size]: which of rows start .. start + size - 1 are real (< n)."""
  if not ragged:
    return None
  return start + jax.lax.broadcasted_iota(jnp.int32, (size,), 0) < n


def _forward_kernel(a_ref, c_ref, t_ref, lse_ref, *, block_c, n_cand, precision):
  """One anchor tile: lse [block_a] streamed over every candidate tile."""
  a = a_ref[...]
  inv_tau = t_ref[...]
  ragged = n_cand % block_c != 0

  def body(k, carry):
    running_max, running_sum = carry
    start = k * block_c
    c = c_ref[pl.ds(start, block_c), :]
    logits = _dot(a, c, (1, 1), precision) * inv_tau[:, None]
    valid = _valid(start, block_c, n_cand, ragged)
    if valid is not None:
      logits = jnp.where(valid[None, :], logits, _MASK)
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
    running_sum = (running_sum * jnp.exp(running_max - new_max)
                   + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=1))
    return new_max, running_sum

  init = (jnp.full(inv_tau.shape, _MASK, jnp.float32), jnp.zeros(inv_tau.shape, jnp.float32))
  running_max, running_sum = jax.lax.fori_loop(0, c_ref.shape[0] // block_c, body, init)
  lse_ref[...] = running_max + jnp.log(running_sum)


def _anchor_grad_kernel(a_ref, c_ref, t_ref, lse_ref, g_ref, da_ref, dt_ref, *, block_c,
                        n_cand, precision):
  """One anchor tile: d anchors [block_a, d] and d inv_tau [block_a]."""
  a = a_ref[...]
  inv_tau, lse, g = t_ref[...], lse_ref[...], g_ref[...]
  ragged = n_cand % block_c != 0

  def body(k, carry):
    acc_a, acc_t = carry
    start = k * block_c
    c = c_ref[pl.ds(start, block_c), :]
    s = _dot(a, c, (1, 1), precision)
    p = jnp.exp(s * inv_tau[:, None] - lse[:, None])
    valid = _valid(start, block_c, n_cand, ragged)
    if valid is not None:
      p = jnp.where(valid[None, :], p, 0.0)
    acc_a = acc_a + _dot(p.astype(c.dtype), c, (1, 0), precision)
    acc_t = acc_t + jnp.sum(p * s, axis=1)
    return acc_a, acc_t

  init = (jnp.zeros(a.shape, jnp.float32), jnp.zeros(inv_tau.shape, jnp.float32))
  acc_a, acc_t = jax.lax.fori_loop(0, c_ref.shape[0] // block_c, body, init)
  da_ref[...] = (g * inv_tau)[:, None] * acc_a
  dt_ref[...] = g * acc_t


def _candidate_grad_kernel(c_ref, a_ref, t_ref, lse_ref, g_ref, dc_ref, *, block_a,
                           n_anchor, precision):
  """One candidate tile: d candidates [block_c, d], streamed over every anchor tile."""
  c = c_ref[...]
  ragged = n_anchor % block_a != 0

  def body(k, acc):
    start = k * block_a
    rows = pl.ds(start, block_a)
    a = a_ref[rows, :]
    inv_tau, lse, g = t_ref[rows], lse_ref[rows], g_ref[rows]
    s = _dot(a, c, (1, 1), precision)
    weight = jnp.exp(s * inv_tau[:, None] - lse[:, None]) * (g * inv_tau)[:, None]
    valid = _valid(start, block_a, n_anchor, ragged)
    if valid is not None:
      weight = jnp.where(valid[:, None], weight, 0.0)
    return acc + _dot(weight.astype(a.dtype), a, (0, 0), precision)

  acc = jax.lax.fori_loop(0, a_ref.shape[0] // block_a, body,
                          jnp.zeros(c.shape, jnp.float32))
  dc_ref[...] = acc


def platform() -> str:
  """The platform the kernels are compiled for: the trace-time abstract mesh's device
  (``jax.sharding.use_abstract_mesh``, as the train step sets; also how a CPU host
  lowers for a TPU), else the default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


def _compiler_params():
  """Triton on GPU: jax's default GPU lowering for ``pallas_call`` is Mosaic GPU, which
  lowers no ``dot_general`` in this (thread-per-element) style. Interpret mode takes
  Pallas's defaults."""
  return pl_triton.CompilerParams() if platform() == "gpu" else None


def default_tile(dim: int) -> int:
  """Rows per tile for feature dimension ``dim``: 64 above 64 features (the float32
  accumulators of a tile must stay in registers), else 128."""
  return 64 if dim > 64 else 128


class _Setup:
  """Static shapes of one call: padded sizes, tiles and the products' precision."""

  def __init__(self, anchors, candidates, block_anchor, block_candidate):
    (n_anchor, dim), n_cand = anchors.shape, candidates.shape[0]
    if dim > MAX_DIM:
      raise ValueError(f"feature dimension {dim} exceeds the kernel's {MAX_DIM}")
    if candidates.shape[1] != dim:
      raise ValueError(f"anchors {anchors.shape} and candidates {candidates.shape} differ "
                       "in feature dimension")
    self.n_anchor, self.n_cand = n_anchor, n_cand
    self.dim = max(16, pl.next_power_of_2(dim))
    tile = default_tile(self.dim)
    # Tiles no larger than the (16-rounded) row count: a batch of 7 is one tile of 16.
    fit = lambda block, n: min(block or tile, max(16, pl.next_power_of_2(n)))
    self.block_a, self.block_c = fit(block_anchor, n_anchor), fit(block_candidate, n_cand)
    self.pad_a = pl.cdiv(n_anchor, self.block_a) * self.block_a
    self.pad_c = pl.cdiv(n_cand, self.block_c) * self.block_c
    self.precision = _precision(anchors.dtype)

  def pad(self, anchors, candidates, *per_anchor):
    """Zero-padded copies: anchors [pad_a, dim], candidates [pad_c, dim], and each
    per-anchor float32 vector [pad_a]."""
    pad = lambda x, rows, cols=None: jnp.pad(
        x, [(0, rows - x.shape[0])] + ([(0, cols - x.shape[1])] if cols else []))
    return (pad(anchors, self.pad_a, self.dim), pad(candidates, self.pad_c, self.dim),
            *(pad(v.astype(jnp.float32), self.pad_a) for v in per_anchor))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def anchor_logsumexp(anchors, candidates, inv_tau, block_anchor=None, block_candidate=None,
                     interpret=False):
  """lse_i = logsumexp_j(anchors_i . candidates_j * inv_tau_i): float32 [Na].

  Args:
    anchors: float32 or bfloat16 [Na, d], d <= 256.
    candidates: same dtype [Nc, d].
    inv_tau: float32 [Na], the anchors' inverse temperatures.
    block_anchor, block_candidate: rows per tile (powers of two >= 16; None: 128 for
      d <= 64, else 64), capped at the rounded-up row count.
    interpret: run the kernels in Pallas interpret mode (required on CPU).

  Differentiable in all three arrays (see the module docstring).
  """
  return _forward(anchors, candidates, inv_tau, block_anchor, block_candidate, interpret)[0]


def _forward(anchors, candidates, inv_tau, block_anchor, block_candidate, interpret):
  setup = _Setup(anchors, candidates, block_anchor, block_candidate)
  a, c, t = setup.pad(anchors, candidates, inv_tau)
  ba = setup.block_a
  lse = pl.pallas_call(
      functools.partial(_forward_kernel, block_c=setup.block_c, n_cand=setup.n_cand,
                        precision=setup.precision),
      grid=(setup.pad_a // ba,),
      in_specs=[pl.BlockSpec((ba, setup.dim), lambda i: (i, 0)),
                pl.BlockSpec((setup.pad_c, setup.dim), lambda i: (0, 0)),
                pl.BlockSpec((ba,), lambda i: (i,))],
      out_specs=pl.BlockSpec((ba,), lambda i: (i,)),
      out_shape=jax.ShapeDtypeStruct((setup.pad_a,), jnp.float32),
      interpret=interpret, compiler_params=_compiler_params(), name="pico_lse_forward",
  )(a, c, t)
  return lse[:setup.n_anchor], (anchors, candidates, inv_tau, lse)


def _backward(block_anchor, block_candidate, interpret, residuals, g):
  anchors, candidates, inv_tau, lse = residuals
  setup = _Setup(anchors, candidates, block_anchor, block_candidate)
  a, c, t, g = setup.pad(anchors, candidates, inv_tau, g)
  ba, bc, dim = setup.block_a, setup.block_c, setup.dim
  anchor_tile = lambda: pl.BlockSpec((ba,), lambda i: (i,))
  da, dt = pl.pallas_call(
      functools.partial(_anchor_grad_kernel, block_c=bc, n_cand=setup.n_cand,
                        precision=setup.precision),
      grid=(setup.pad_a // ba,),
      in_specs=[pl.BlockSpec((ba, dim), lambda i: (i, 0)),
                pl.BlockSpec((setup.pad_c, dim), lambda i: (0, 0)),
                anchor_tile(), anchor_tile(), anchor_tile()],
      out_specs=[pl.BlockSpec((ba, dim), lambda i: (i, 0)), anchor_tile()],
      out_shape=[jax.ShapeDtypeStruct((setup.pad_a, dim), jnp.float32),
                 jax.ShapeDtypeStruct((setup.pad_a,), jnp.float32)],
      interpret=interpret, compiler_params=_compiler_params(), name="pico_lse_anchor_grad",
  )(a, c, t, lse, g)
  whole = lambda: pl.BlockSpec((setup.pad_a,), lambda j: (0,))
  dc = pl.pallas_call(
      functools.partial(_candidate_grad_kernel, block_a=ba, n_anchor=setup.n_anchor,
                        precision=setup.precision),
      grid=(setup.pad_c // bc,),
      in_specs=[pl.BlockSpec((bc, dim), lambda j: (j, 0)),
                pl.BlockSpec((setup.pad_a, dim), lambda j: (0, 0)),
                whole(), whole(), whole()],
      out_specs=pl.BlockSpec((bc, dim), lambda j: (j, 0)),
      out_shape=jax.ShapeDtypeStruct((setup.pad_c, dim), jnp.float32),
      interpret=interpret, compiler_params=_compiler_params(),
      name="pico_lse_candidate_grad",
  )(c, a, t, lse, g)
  n_a, n_c, d = setup.n_anchor, setup.n_cand, anchors.shape[1]
  return (da[:n_a, :d].astype(anchors.dtype), dc[:n_c, :d].astype(candidates.dtype),
          dt[:n_a].astype(inv_tau.dtype))


anchor_logsumexp.defvjp(_forward, _backward)
