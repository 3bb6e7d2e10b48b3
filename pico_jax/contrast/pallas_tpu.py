"""The Mosaic (TPU) form of the fused contrast kernels, beside the Triton form.

Same functions, same math and same ``custom_vjp`` contract as the Triton form
(``pallas_lse.anchor_logsumexp``, ``pallas_pair.pair_logsumexp``; their docstrings give
the formulas), with the flash-attention structure of jax's Pallas TPU ops:

- A 2-D grid (own tiles, other tiles): "own" are the rows whose outputs a call writes
  (anchors forward), "other" the rows they meet (candidates). The own axis is
  "parallel" (megacore splits it), the other axis "arbitrary": each step reads one
  [block_own, d] and one [block_other, d] tile, streamed by BlockSpec, so VMEM holds a
  bounded number of tiles whatever the batch (``vmem_bytes``).
- The running max and sum of the online logsumexp, and the gradient accumulators, live
  in VMEM scratch across the other axis; the output block (constant over that axis)
  is written at its last step.
- One gradient kernel (``_grad_kernel``) serves every backward pass: d own = W other,
  W_ij = g_i t_i P_ij (the "own" term, P of own's lse) + g_j t_j Q_ij (the "other"
  term, Q of other's lse). The anchor gradient is the own term, the candidate
  gradient the other term with the roles exchanged, and each half of the pair
  backward both terms: 2 products per tile, as in the Triton form.

Why it differs from the Triton form (which stays for GPUs):

- Memory. A Triton program loads from HBM with its own loads, so the Triton form
  passes the whole candidate matrix as one block and loops over it in the kernel.
  Mosaic copies every block into VMEM, double-buffered: a whole-matrix block is
  B x 128 lanes x 4 bytes twice (64 MiB at B = 65,536) against 16-128 MiB of VMEM.
- Layout. Mosaic tiles the last two dimensions by (8, 128) for float32 and (16, 128)
  for bfloat16, and allows rank-1 blocks only in multiples of 1,024 rows. Tiles are
  therefore multiples of 128 rows, features are zero-padded to a multiple of 128
  lanes, and per-row vectors are 2-D: per-own-row values lane-broadcast, [N, 128]
  (as flash attention's m and l), per-other-row values sublane-broadcast, [8, N], read
  as a [1, block] row (as its key segment ids). Each vector costs 512 bytes a row in
  HBM; the residuals keep the compact [N] form.
- Ownership. Each output tile belongs to one point of the parallel axis, so the
  backward passes are separate calls, as on GPU, but the Triton form's three kernels
  (forward, anchor gradient, candidate gradient) are two here.

Shared with the Triton form: the masked-logit value, the products' dtype and precision
(``pallas_lse._dot``, float32 at ``Precision.HIGHEST``), the feature limit and the
residuals' meaning. ``interpret`` may be ``pltpu.InterpretParams()`` (TPU interpret
mode on CPU, which simulates VMEM scratch and the pipeline's copies).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pico_jax.contrast import pallas_lse

LANES, SUBLANES = 128, 8
# Rows per tile: 512 x 512 float32 products keep every kernel's blocks, scratch and
# tile-sized temporaries under VMEM_LIMIT at d = 256 (``vmem_bytes``) while the grid
# stays short (262,144 steps at B = 262,144; jax's Pallas TPU guide puts a step's
# overhead near 0.35 us).
DEFAULT_BLOCK = 512
# Set explicitly: the default scoped limit differs between TPU generations.
VMEM_LIMIT = 16 * 1024 * 1024
# [block_own, block_other] float32 values a kernel body forms (the product, the
# broadcast per-row vectors, exponentials, weights), counted as if none were fused:
# the compiler's temporaries beyond the blocks and scratch.
_TEMPORARIES = {"forward": 5, "grad": 8}


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static shapes of one call: own rows against other rows, d features (padded)."""
  n_own: int
  n_other: int
  dim: int
  block_own: int
  block_other: int
  dtype: jnp.dtype

  @property
  def pad_own(self) -> int:
    return _round_up(self.n_own, self.block_own)

  @property
  def pad_other(self) -> int:
    return _round_up(self.n_other, self.block_other)

  @property
  def grid(self) -> tuple[int, int]:
    return self.pad_own // self.block_own, self.pad_other // self.block_other

  def swapped(self) -> Plan:
    return Plan(self.n_other, self.n_own, self.dim, self.block_other, self.block_own,
                self.dtype)


def tile(n: int, block: int | None = None) -> int:
  """Rows per tile for n rows: ``block`` (a multiple of 128; None: DEFAULT_BLOCK),
  capped at n rounded up to 128 (a batch of 7 is one tile of 128)."""
  block = block or DEFAULT_BLOCK
  if block % LANES:
    raise ValueError(f"block {block} is not a multiple of {LANES}")
  return min(block, _round_up(max(n, 1), LANES))


def plan(n_own: int, n_other: int, dim: int, dtype, block_own=None, block_other=None):
  """The ``Plan`` of own [n_own, dim] against other [n_other, dim] of ``dtype``."""
  if dim > pallas_lse.MAX_DIM:
    raise ValueError(f"feature dimension {dim} exceeds the kernel's {pallas_lse.MAX_DIM}")
  return Plan(n_own, n_other, _round_up(dim, LANES), tile(n_own, block_own),
              tile(n_other, block_other), jnp.dtype(dtype))


# ------------------------------------------------------------------- block specs


def _specs(p: Plan, kind: str, own_term: bool = True, other_term: bool = False):
  """(inputs, outputs, scratch) of one call: lists of (BlockSpec, dtype), and VMEM
  scratch shapes. ``kind`` is "forward" or "grad"; the flags pick the gradient terms."""
  f32 = jnp.float32
  own = pl.BlockSpec((p.block_own, p.dim), lambda i, j: (i, 0))
  other = pl.BlockSpec((p.block_other, p.dim), lambda i, j: (j, 0))
  lanes = pl.BlockSpec((p.block_own, LANES), lambda i, j: (i, 0))
  row = pl.BlockSpec((SUBLANES, p.block_other), lambda i, j: (0, j))
  lanes_scratch = pltpu.VMEM((p.block_own, LANES), f32)
  if kind == "forward":  # own, other, inv_tau -> lse; running max and sum.
    return [(own, p.dtype), (other, p.dtype), (lanes, f32)], [(lanes, f32)], [
        lanes_scratch, lanes_scratch]
  inputs = ([(own, p.dtype), (other, p.dtype)] + [(lanes, f32)] * (3 * own_term)
            + [(row, f32)] * (3 * other_term))
  outputs = [(pl.BlockSpec((p.block_own, p.dim), lambda i, j: (i, 0)), f32)] + (
      [(lanes, f32)] if own_term else [])
  scratch = [pltpu.VMEM((p.block_own, p.dim), f32)] + ([lanes_scratch] if own_term else [])
  return inputs, outputs, scratch


def _tile_bytes(shape, dtype) -> int:
  """VMEM bytes of one buffer of ``shape``: the last two dimensions padded to Mosaic's
  (8 x packing, 128) tiles (16 rows for bfloat16)."""
  itemsize = jnp.dtype(dtype).itemsize
  *lead, rows, cols = shape
  sublanes = SUBLANES * (4 // itemsize)
  size = _round_up(rows, sublanes) * _round_up(cols, LANES) * itemsize
  for n in lead:
    size *= n
  return size


def vmem_bytes(p: Plan, kind: str, own_term: bool = True, other_term: bool = False) -> dict:
  """VMEM of one grid step of a call: {"blocks": every input and output block twice
  (Pallas double-buffers them), "scratch": the scratch buffers, "temporaries": the
  estimated [block_own, block_other] float32 values of the body, "total": the sum}."""
  inputs, outputs, scratch = _specs(p, kind, own_term, other_term)
  blocks = 2 * sum(_tile_bytes(spec.block_shape, dt) for spec, dt in inputs + outputs)
  scratch = sum(_tile_bytes(s.inner_aval.shape, s.inner_aval.dtype) for s in scratch)
  temporaries = _TEMPORARIES[kind] * p.block_own * p.block_other * 4
  return dict(blocks=blocks, scratch=scratch, temporaries=temporaries,
              total=blocks + scratch + temporaries)


def call_budgets(n_anchor: int, n_candidate: int, dim: int, dtype, block=None) -> dict:
  """``vmem_bytes`` of every call ``anchor_logsumexp`` (anchors [n_anchor] against
  candidates [n_candidate]) and ``pair_logsumexp`` (n_anchor rows) make, by name."""
  single = plan(n_anchor, n_candidate, dim, dtype, block, block)
  pair = plan(n_anchor, n_anchor, dim, dtype, block, block)
  return {"forward": vmem_bytes(single, "forward"),
          "anchor_grad": vmem_bytes(single, "grad"),
          "candidate_grad": vmem_bytes(single.swapped(), "grad", False, True),
          "pair_forward": vmem_bytes(pair, "forward"),
          "pair_grad": vmem_bytes(pair, "grad", True, True)}


# ----------------------------------------------------------------------- kernels


def _lanes(x, width):
  """A lane-broadcast [rows, 128] value as [rows, width] (width a multiple of 128)."""
  return jnp.tile(x, (1, width // LANES))


def _real_columns(shape, j, n_other):
  """bool [rows, block_other]: which columns of other tile j are real rows (< n_other)."""
  return j * shape[1] + jax.lax.broadcasted_iota(jnp.int32, shape, 1) < n_other


def _forward_kernel(own_ref, other_ref, t_ref, lse_ref, max_ref, sum_ref, *, n_other,
                    precision):
  """Own tile i, other tile j: fold the tile's logits into the running (max, sum)."""
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _start():
    max_ref[...] = jnp.full(max_ref.shape, pallas_lse._MASK, jnp.float32)
    sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)

  s = pallas_lse._dot(own_ref[...], other_ref[...], (1, 1), precision)
  logits = s * _lanes(t_ref[...], s.shape[1])
  if n_other % s.shape[1]:
    logits = jnp.where(_real_columns(s.shape, j, n_other), logits, pallas_lse._MASK)
  previous = max_ref[...]
  new = jnp.maximum(previous, jnp.max(logits, axis=1, keepdims=True))
  sum_ref[...] = (sum_ref[...] * jnp.exp(previous - new)
                  + jnp.sum(jnp.exp(logits - _lanes(new, s.shape[1])), axis=1,
                            keepdims=True))
  max_ref[...] = new

  @pl.when(j == pl.num_programs(1) - 1)
  def _finish():
    lse_ref[...] = max_ref[...] + jnp.log(sum_ref[...])


def _grad_kernel(*refs, own_term, other_term, n_other, precision):
  """Own tile i, other tile j: add W_ij other_j to d own_i (and sum_j P_ij S_ij to the
  own rows' d inv_tau), W as in the module docstring."""
  own_ref, other_ref, *refs = refs
  own_vectors = refs[:3 * own_term]
  other_vectors = refs[3 * own_term:3 * (own_term + other_term)]
  d_ref, *refs = refs[3 * (own_term + other_term):]
  dt_ref, acc_ref, acc_t_ref = refs if own_term else (None, *refs, None)
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _start():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
    if own_term:
      acc_t_ref[...] = jnp.zeros(acc_t_ref.shape, jnp.float32)

  other = other_ref[...]
  s = pallas_lse._dot(own_ref[...], other, (1, 1), precision)
  weight = jnp.zeros(s.shape, jnp.float32)
  if own_term:
    t, lse, g = (_lanes(r[...], s.shape[1]) for r in own_vectors)
    p = jnp.exp(s * t - lse)
    if n_other % s.shape[1]:
      # A padded other row is zeros: S = 0 and P = exp(-lse) there, which overflows
      # when every real logit is very negative (and inf x 0 rows is NaN).
      p = jnp.where(_real_columns(s.shape, j, n_other), p, 0.0)
    weight = g * t * p
    acc_t_ref[...] += jnp.sum(p * s, axis=1, keepdims=True)
  if other_term:
    # Padded other rows have g = 0 (and t = lse = 0): their weight is 0 unmasked.
    t, lse, g = (r[:1, :] for r in other_vectors)
    weight = weight + g * t * jnp.exp(s * t - lse)
  acc_ref[...] += pallas_lse._dot(weight.astype(other.dtype), other, (1, 0), precision)

  @pl.when(j == pl.num_programs(1) - 1)
  def _finish():
    d_ref[...] = acc_ref[...]
    if own_term:
      dt_ref[...] = own_vectors[2][...] * acc_t_ref[...]


# ------------------------------------------------------------------- the calls


def _compiler_params():
  return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"),
                              vmem_limit_bytes=VMEM_LIMIT)


def _call(p: Plan, kernel, name, arrays, kind, interpret, own_term=True, other_term=False):
  inputs, outputs, scratch = _specs(p, kind, own_term, other_term)
  # Every output is per own row; its block spans all of its columns (d or 128 lanes).
  out_shape = [jax.ShapeDtypeStruct((p.pad_own, spec.block_shape[1]), dt)
               for spec, dt in outputs]
  return pl.pallas_call(
      kernel, grid=p.grid, in_specs=[spec for spec, _ in inputs],
      out_specs=[spec for spec, _ in outputs], out_shape=out_shape,
      scratch_shapes=scratch, compiler_params=_compiler_params(), interpret=interpret,
      name=name)(*arrays)


def _rows(x, n, cols=None):
  """x [m] or [m, c] zero-padded to n rows (and cols columns)."""
  pad = [(0, n - x.shape[0])] + ([(0, cols - x.shape[1])] if x.ndim == 2 else [])
  return jnp.pad(x, pad)


def _lane_vector(v, n):
  """float32 [n, 128]: v [m] zero-padded to n, broadcast over the lanes."""
  return jnp.broadcast_to(_rows(v.astype(jnp.float32), n)[:, None], (n, LANES))


def _row_vector(v, n):
  """float32 [8, n]: v [m] zero-padded to n, broadcast over the sublanes."""
  return jnp.broadcast_to(_rows(v.astype(jnp.float32), n)[None, :], (SUBLANES, n))


def _lse(own, other, inv_tau, p: Plan, interpret):
  """logsumexp_j(own_i . other_j inv_tau_i): float32 [n_own]."""
  kernel = functools.partial(_forward_kernel, n_other=p.n_other,
                             precision=pallas_lse._precision(p.dtype))
  (lse,) = _call(p, kernel, "pico_tpu_lse_forward",
                 (_rows(own, p.pad_own, p.dim), _rows(other, p.pad_other, p.dim),
                  _lane_vector(inv_tau, p.pad_own)), "forward", interpret)
  return lse[:p.n_own, 0]


def _grad(own, other, p: Plan, interpret, own_vectors=None, other_vectors=None):
  """(d own [n_own, d] float32, d inv_tau of own [n_own] or None): the own term with
  own_vectors = (inv_tau, lse, g) of own, the other term with other's."""
  own_term, other_term = own_vectors is not None, other_vectors is not None
  kernel = functools.partial(_grad_kernel, own_term=own_term, other_term=other_term,
                             n_other=p.n_other, precision=pallas_lse._precision(p.dtype))
  arrays = ((_rows(own, p.pad_own, p.dim), _rows(other, p.pad_other, p.dim))
            + tuple(_lane_vector(v, p.pad_own) for v in own_vectors or ())
            + tuple(_row_vector(v, p.pad_other) for v in other_vectors or ()))
  out = _call(p, kernel, "pico_tpu_lse_grad", arrays, "grad", interpret, own_term,
              other_term)
  d = out[0][:p.n_own, :own.shape[1]]
  return d, (out[1][:p.n_own, 0] if own_term else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def anchor_logsumexp(anchors, candidates, inv_tau, block_anchor=None, block_candidate=None,
                     interpret=False):
  """lse_i = logsumexp_j(anchors_i . candidates_j * inv_tau_i): float32 [Na].

  As ``pallas_lse.anchor_logsumexp`` (anchors, candidates float32 or bfloat16 [N, d],
  d <= 256; inv_tau float32 [Na]); blocks are multiples of 128 (None: 512).
  """
  return _forward(anchors, candidates, inv_tau, block_anchor, block_candidate,
                  interpret)[0]


def _forward(anchors, candidates, inv_tau, block_anchor, block_candidate, interpret):
  if anchors.shape[1] != candidates.shape[1]:
    raise ValueError(f"anchors {anchors.shape} and candidates {candidates.shape} differ "
                     "in feature dimension")
  p = plan(anchors.shape[0], candidates.shape[0], anchors.shape[1], anchors.dtype,
           block_anchor, block_candidate)
  lse = _lse(anchors, candidates, inv_tau, p, interpret)
  return lse, (anchors, candidates, inv_tau, lse)


def _backward(block_anchor, block_candidate, interpret, residuals, g):
  anchors, candidates, inv_tau, lse = residuals
  p = plan(anchors.shape[0], candidates.shape[0], anchors.shape[1], anchors.dtype,
           block_anchor, block_candidate)
  da, dt = _grad(anchors, candidates, p, interpret, own_vectors=(inv_tau, lse, g))
  dc, _ = _grad(candidates, anchors, p.swapped(), interpret,
                other_vectors=(inv_tau, lse, g))
  return (da.astype(anchors.dtype), dc.astype(candidates.dtype), dt.astype(inv_tau.dtype))


anchor_logsumexp.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def pair_logsumexp(a, b, inv_tau, block=None, interpret=False):
  """(row, col) logsumexps of the symmetric loss: float32 [B] each.

  As ``pallas_pair.pair_logsumexp`` (a, b [B, d] the same rows; inv_tau float32 [B]):
  two forward calls, and a backward of two calls with both gradient terms.
  """
  return _pair_forward(a, b, inv_tau, block, interpret)[0]


def _pair_forward(a, b, inv_tau, block, interpret):
  if a.shape != b.shape:
    raise ValueError(f"a {a.shape} and b {b.shape} must have the same shape")
  p = plan(a.shape[0], b.shape[0], a.shape[1], a.dtype, block, block)
  row, col = _lse(a, b, inv_tau, p, interpret), _lse(b, a, inv_tau, p, interpret)
  return (row, col), (a, b, inv_tau, row, col)


def _pair_backward(block, interpret, residuals, cotangents):
  a, b, inv_tau, row, col = residuals
  g, h = cotangents
  p = plan(a.shape[0], b.shape[0], a.shape[1], a.dtype, block, block)
  da, dt_a = _grad(a, b, p, interpret, (inv_tau, row, g), (inv_tau, col, h))
  db, dt_b = _grad(b, a, p, interpret, (inv_tau, col, h), (inv_tau, row, g))
  return da.astype(a.dtype), db.astype(b.dtype), (dt_a + dt_b).astype(inv_tau.dtype)


pair_logsumexp.defvjp(_pair_forward, _pair_backward)
