"""The three implementations of PICO's in-batch InfoNCE terms, and the choice among them.

Every implementation returns the same per-instance terms (float32 [B]) of already
normalised (or deliberately unnormalised) representations a = z_ctr, b = z_cvr:

    row_i = logsumexp_j(a_i . b_j / tau_i) - a_i . b_i / tau_i
    col_i = logsumexp_j(b_i . a_j / tau_i) - a_i . b_i / tau_i

- ``xla``: the exact form, one [B, B] similarity matrix S whose rows give the first
  logsumexp and whose columns the second. Fastest at small B on CPU; B^2 memory.
- ``chunked``: a streaming logsumexp over candidate chunks of ``chunk_size``, each
  chunk rematerialised in the backward pass: [B, chunk] memory.
- ``pallas``: the fused kernels (tiles of anchors x candidates, online logsumexp,
  recomputing backward; the pair kernel fuses the backward of both directions on one
  device): O(B d) memory. The Triton form (``pallas_lse``, ``pallas_pair``) on GPU
  and in interpret mode on CPU, the Mosaic form (``pallas_tpu``) on TPU (``forms``).
  Under a mesh whose ``data`` axis splits the batch, it runs per device as local
  anchors against the all-gathered candidates (``jax.shard_map``), so each device
  does 1/n of the work and the numbers equal the single-device ones.

``resolve`` turns ``"auto"`` into one of these; on an accelerator "pallas" is used
only after the one-time self-check of ``pico_jax.contrast.self_check`` passed and,
given the training's ``Shape``, after the contrast lowered (and compiled) at it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pico_jax.contrast import forms, pallas_lse, self_check

IMPLEMENTATIONS = ("auto", "xla", "chunked", "pallas")
DATA_AXIS = "data"
# The chunk of "chunked" when chunk_size is 0: the largest divisor of the batch up to this.
DEFAULT_CHUNK = 1024


def exact_terms(a, b, tau, symmetric: bool):
  """(row, col or None), each float32 [B], from one similarity matrix S = a b^T.

  The CVR-anchored logits S_ji / tau_i are S's columns scaled by tau: the second
  direction reuses S (and its gradient) instead of forming S^T with a second matmul.
  """
  s = jnp.einsum("id,jd->ij", a, b, precision=jax.lax.Precision.HIGHEST)
  positive = jnp.diagonal(s) / tau
  row = jax.nn.logsumexp(s / tau[:, None], axis=1) - positive
  if not symmetric:
    return row, None
  return row, jax.nn.logsumexp(s / tau[None, :], axis=0) - positive


def default_chunk(n: int) -> int:
  """The largest divisor of ``n`` that is at most ``DEFAULT_CHUNK``."""
  return max(c for c in range(1, min(n, DEFAULT_CHUNK) + 1) if n % c == 0)


def logsumexp_chunked(anchors, candidates, tau, chunk_size):
  """logsumexp_j(anchors_i . candidates_j / tau_i): [B], streamed over candidate chunks.

  Temporary memory is [B_anchor, chunk_size] rather than [B_anchor, B_candidate]; the
  chunk body is rematerialised in the backward pass so nothing of size
  B_anchor x B_candidate is kept either.
  """
  n = candidates.shape[0]
  if n % chunk_size:
    raise ValueError(f"chunk_size {chunk_size} does not divide the {n} candidates")
  chunks = candidates.reshape(n // chunk_size, chunk_size, -1)
  inv_tau = 1.0 / tau

  @jax.checkpoint
  def body(carry, chunk):
    running_max, running_sum = carry
    logits = jnp.einsum("id,jd->ij", anchors, chunk,
                        precision=jax.lax.Precision.HIGHEST) * inv_tau[:, None]
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
    running_sum = (running_sum * jnp.exp(running_max - new_max)
                   + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=1))
    return (new_max, running_sum), None

  init = (jnp.full(anchors.shape[:1], -jnp.inf, jnp.float32),
          jnp.zeros(anchors.shape[:1], jnp.float32))
  (running_max, running_sum), _ = jax.lax.scan(body, init, chunks)
  return running_max + jnp.log(running_sum)


def _pallas_local(a, b, tau, a_candidates=None, b_candidates=None, *, symmetric,
                  interpret):
  """Terms of the anchors (a, b, tau) [n] against candidates [N] (N >= n): float32 [n].

  Without candidates (one device) the candidates are the anchors' own rows, and the
  symmetric loss takes the fused pair kernel (6 matrix products instead of 10).
  """
  form = forms.for_platform(pallas_lse.platform())
  inv_tau = 1.0 / tau.astype(jnp.float32)
  positive = jnp.sum(a.astype(jnp.float32) * b.astype(jnp.float32), axis=-1) * inv_tau
  if symmetric and a_candidates is None:
    row, col = form.pair_logsumexp(a, b, inv_tau, interpret=interpret)
    return (row + col) / 2 - positive
  lse = functools.partial(form.anchor_logsumexp, interpret=interpret)
  row = lse(a, b if b_candidates is None else b_candidates, inv_tau) - positive
  if not symmetric:
    return row
  return (row + lse(b, a_candidates, inv_tau) - positive) / 2


def _data_mesh():
  """The trace-time mesh if its ``data`` axis splits the batch (size > 1), else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names or mesh.shape[DATA_AXIS] == 1:
    return None
  return mesh


def pallas_terms(a, b, tau, *, symmetric: bool, sharded: bool = True):
  """Per-instance terms (float32 [B]) by the Pallas kernel.

  With ``sharded`` and a trace-time mesh (``jax.sharding.use_abstract_mesh``, as the
  train step sets) whose ``data`` axis has more than one device, every device takes
  its rows as anchors against the candidates all-gathered over ``data``; the
  gradients of the gathered candidates are reduce-scattered back by autodiff.
  """
  interpret = self_check.interpret_mode()
  mesh = _data_mesh() if sharded else None
  if mesh is None:
    return _pallas_local(a, b, tau, symmetric=symmetric, interpret=interpret)

  def per_device(a, b, tau):
    gather = lambda x: jax.lax.all_gather(x, DATA_AXIS, tiled=True)
    return _pallas_local(a, b, tau, gather(a), gather(b), symmetric=symmetric,
                         interpret=interpret)

  rows = P(DATA_AXIS)
  # check_vma=False: pallas_call has no replication-type rule; the specs say it all.
  return jax.shard_map(per_device, mesh=mesh, in_specs=(rows, rows, rows), out_specs=rows,
                       check_vma=False)(a, b, tau)


@dataclasses.dataclass(frozen=True)
class Shape:
  """One call of the contrast as the training makes it, for ``resolve``'s check.

  batch: the rows of one call (the global batch; a group's rows with shard-local
  negatives). dim: the projection's features. dtype: the projections' ("float32" or
  "bfloat16"). symmetric, sharded: as ``per_instance_terms`` takes them.
  """
  batch: int
  dim: int
  dtype: str = "float32"
  symmetric: bool = True
  sharded: bool = True

  def describe(self) -> str:
    return (f"batch {self.batch}, dim {self.dim}, {self.dtype}, "
            f"{'symmetric' if self.symmetric else 'one direction'}")


def lower_at(shape: Shape, mesh=None) -> jax.stages.Lowered:
  """Value and gradient of the Pallas terms at ``shape``, lowered ahead of time for the
  kernel's platform: under ``mesh`` (a ``jax.sharding.Mesh``: each device's share, as
  the train step runs it) or else the trace-time abstract mesh in effect."""
  rows = jax.ShapeDtypeStruct((shape.batch, shape.dim), shape.dtype)
  tau = jax.ShapeDtypeStruct((shape.batch,), jnp.float32)

  def loss(a, b, t):
    with contextlib.ExitStack() as stack:
      if mesh is not None:
        stack.enter_context(jax.sharding.use_abstract_mesh(mesh.abstract_mesh))
      return jnp.sum(per_instance_terms(a, b, t, symmetric=shape.symmetric,
                                        implementation="pallas", sharded=shape.sharded))

  # The mesh's devices, so that a data-split mesh compiles as it does in the step.
  shardings = {} if mesh is None else dict(in_shardings=NamedSharding(mesh, P()))
  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), **shardings)
  return grad.trace(rows, rows, tau).lower(lowering_platforms=(pallas_lse.platform(),))


def resolve(implementation: str, chunk_size: int = 0, shape: Shape | None = None,
            mesh=None) -> str:
  """The implementation that runs: "xla", "chunked" or "pallas".

  "auto" is "xla" on CPU and "pallas" on GPU/TPU; with ``chunk_size`` > 0 (a bound on
  the contrast's memory) it is "chunked" on CPU and "pallas" (also bounded in memory)
  on accelerators. "pallas", asked for or picked, must pass the process's
  one-time self-check on an accelerator and, given ``shape``, lower at that shape
  (under ``mesh``, see ``lower_at``) and compile there (with a mesh, or outside a
  data-split trace); otherwise it falls back, with one warning naming the error, to
  the memory-bounded "chunked" if ``chunk_size`` > 0, else to "xla".
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r}: expected one of "
                     f"{list(IMPLEMENTATIONS)}")
  on_cpu = self_check.interpret_mode()
  if implementation == "auto":
    implementation = ("chunked" if chunk_size else "xla") if on_cpu else "pallas"
  if implementation == "pallas" and not on_cpu:
    fallback = "chunked" if chunk_size else "xla"
    if not self_check.kernel_works(fallback):
      return fallback
    if shape is not None:
      # The mesh in effect is part of the shape (it sets each device's share); the
      # train step's trace runs under the abstract mesh of the mesh it passes here.
      context = mesh.abstract_mesh if mesh is not None else jax.sharding.get_abstract_mesh()
      compile_it = (pallas_lse.platform() == jax.default_backend()
                    and (mesh is not None or _data_mesh() is None))
      if not self_check.shape_works((shape, context), shape.describe(),
                                    lambda: lower_at(shape, mesh), compile_it, fallback):
        return fallback
  return implementation


def per_instance_terms(a, b, tau, *, symmetric: bool, implementation: str,
                       chunk_size: int = 0, sharded: bool = True):
  """l_i = (row_i + col_i) / 2 if symmetric else row_i: float32 [B].

  Args:
    a, b: float32 or bfloat16 [B, d] (the caller normalises). tau: float [B] > 0.
    implementation: a resolved one ("xla", "chunked" or "pallas"; see ``resolve``).
    chunk_size: the chunk of "chunked" (0: ``default_chunk(B)``).
    sharded: "pallas" only: run per device under a data-split mesh (see
      ``pallas_terms``); False for shard-local negatives, which ``vmap`` over groups.
  """
  tau = tau.astype(jnp.float32)
  if implementation == "pallas":
    return pallas_terms(a, b, tau, symmetric=symmetric, sharded=sharded)
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  if implementation == "chunked":
    positive = jnp.sum(a * b, axis=-1) / tau
    lse = functools.partial(logsumexp_chunked, chunk_size=chunk_size or default_chunk(
        b.shape[0]))
    row = lse(a, b, tau) - positive
    return (row + lse(b, a, tau) - positive) / 2 if symmetric else row
  if implementation != "xla":
    raise ValueError(f"implementation={implementation!r}: resolve it first "
                     "(xla | chunked | pallas)")
  row, col = exact_terms(a, b, tau, symmetric)
  return (row + col) / 2 if symmetric else row
