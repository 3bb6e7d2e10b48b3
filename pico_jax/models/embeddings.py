"""Feature embedding: all sparse fields in one fused table, plus a dense-feature layer.

One table with per-field row offsets (rather than one table per field): every field's
lookup is a single fused gather, the table is row-sharded over the mesh as one array,
and a row-sparse optimizer sees one set of touched rows. Field f's id k lives at row
``offsets[f] + k``; each field keeps its own row 0 for unseen ids. The row count is
padded to a multiple of ``vocab_pad_multiple`` so the table shards evenly.

Sharded lookup: when the module is applied under a mesh context (``jax.set_mesh`` or
``jax.sharding.use_abstract_mesh``) and logical axis rules (``nn.logical_axis_rules``)
that map ``vocab`` to mesh axes, the rows are looked up with ``sharded_lookup``: no
vocabulary-sized array ever moves between devices, in the forward or the backward
pass. Without that context (single device, notebooks, export) it is a plain gather.
"""

from __future__ import annotations

import math

import numpy as np
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pico_jax import batch as B
from pico_jax.data.schema import Schema
from pico_jax.models.layers import EMBED, VOCAB, Dtype, dense
from pico_jax.parallel import DATA

POOLINGS = ("sum", "mean")  # of a multi-valued field's embeddings.


def table_layout(schema: Schema, pad_multiple: int) -> tuple[np.ndarray, int]:
  """Row offsets of the fields (sparse then multi), int64 [F + G], and padded row count."""
  sizes = [f.vocab_size for f in schema.sparse + schema.multi]
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
  total = int(np.sum(sizes))
  padded = -(-total // pad_multiple) * pad_multiple
  return offsets, padded


def _as_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def lookup(table, ids, weights=None):
  """Rows of ``table`` [V, D] at ``ids`` int [B, ...]: [B, ..., D].

  With ``weights`` (float [B, ..., L], the shape of ``ids``) the rows of the last id
  axis are summed with those weights instead: [B, ..., D].
  """
  rows = jnp.take(table, ids, axis=0)
  if weights is None:
    return rows
  return jnp.sum(rows * weights.astype(rows.dtype)[..., None], axis=-2)


def sharded_lookup(table, ids, weights=None, *, mesh, vocab_axes, embed_axes=(),
                   batch_axes=(DATA,)):
  """``lookup`` of a table whose rows are split over ``vocab_axes`` of ``mesh``.

  Each device all-gathers the ids of the devices that hold other rows of the table
  (over the batch axes that also split the vocabulary), gathers the rows it holds
  (zeros for ids held elsewhere), pools them when ``weights`` is given, and a
  reduce-scatter returns every device the finished rows of its own batch shard. The
  transpose of that (autodiff) all-gathers row gradients of the batch and scatter-adds
  them into the local rows: the only arrays that cross devices are of batch size
  [B_global, ..., D], never of vocabulary size.

  Args:
    table: float [V, D], V divisible by the product of the ``vocab_axes`` sizes.
    ids: int [B, ...] row indices, B split over ``batch_axes``.
    weights: optional float, the shape of ``ids``; pools the last id axis.
    mesh: a ``Mesh`` or ``AbstractMesh`` with the named axes.
    vocab_axes, embed_axes: mesh axes that split the table's rows and columns.
    batch_axes: mesh axes that split the batch.

  Returns:
    float [B, ..., D] (the last id axis summed away when ``weights`` is given), split
    like ``ids`` over the batch and over ``embed_axes`` in the last dimension.
  """
  vocab_axes, embed_axes = _as_tuple(vocab_axes), _as_tuple(embed_axes)
  batch_axes = tuple(a for a in _as_tuple(batch_axes) if a in mesh.axis_names)
  if set(embed_axes) & (set(vocab_axes) | set(batch_axes)):
    raise ValueError(f"embedding table: embed axes {embed_axes} may not also split the "
                     f"vocabulary {vocab_axes} or the batch {batch_axes}")
  shards = math.prod(mesh.shape[a] for a in vocab_axes)
  if table.shape[0] % shards:
    raise ValueError(f"embedding table: {table.shape[0]} rows do not split over "
                     f"{shards} devices (mesh axes {vocab_axes}); make "
                     "config.model.vocab_pad_multiple a multiple of it")
  # Batch axes that also split the table: their devices hold different rows AND
  # different ids, so ids are exchanged over them. Vocab-only axes hold the same ids.
  # (An axis of size 1 needs no exchange; it still takes part in the psum below, a
  # no-op at run time, so that shard_map knows the result is the same along it.)
  exchange = tuple(a for a in batch_axes if a in vocab_axes and mesh.shape[a] > 1)
  reduce_only = tuple(a for a in vocab_axes if a not in exchange)
  id_spec = P(batch_axes or None)
  out_spec = P(batch_axes or None, *([None] * (ids.ndim - (2 if weights is not None else 1))),
               embed_axes or None)

  def local(table, ids, weights):
    local_rows = table.shape[0]
    if exchange:
      ids = jax.lax.all_gather(ids, exchange, tiled=True)
      if weights is not None:
        weights = jax.lax.all_gather(weights, exchange, tiled=True)
    local_ids = ids - jax.lax.axis_index(vocab_axes) * local_rows
    held = (local_ids >= 0) & (local_ids < local_rows)
    w = held.astype(table.dtype)
    if weights is not None:
      w = w * weights.astype(table.dtype)
    rows = jnp.take(table, jnp.where(held, local_ids, 0), axis=0) * w[..., None]
    if weights is not None:
      rows = jnp.sum(rows, axis=-2)
    if exchange:
      rows = jax.lax.psum_scatter(rows, exchange, scatter_dimension=0, tiled=True)
    if reduce_only:
      rows = jax.lax.psum(rows, reduce_only)
    return rows

  if weights is None:
    fn = lambda t, i: local(t, i, None)
    args, in_specs = (table, ids), (P(vocab_axes, embed_axes or None), id_spec)
  else:
    fn = local
    args, in_specs = (table, ids, weights), (P(vocab_axes, embed_axes or None), id_spec,
                                             id_spec)
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_spec)(*args)


def _table_partitioning():
  """(mesh, vocab axes, embed axes) from the context, or None for a plain gather."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None
  spec = nn.logical_to_mesh_axes((VOCAB, EMBED))
  vocab_axes, embed_axes = _as_tuple(spec[0]), _as_tuple(spec[1])
  if math.prod(mesh.shape[a] for a in vocab_axes) == 1:
    return None
  return mesh, vocab_axes, embed_axes


class FeatureEmbedding(nn.Module):
  """Maps the feature dict of a batch to the instance embedding e: [B, (F + G) * D + D_dense].

  Multi-valued fields are pooled over their masked ids ('sum' or 'mean'). Dense
  features go through one linear layer of width ``dense_dim`` (skipped when the schema
  has none).
  """
  schema: Schema
  embed_dim: int
  dense_dim: int
  pooling: str = "sum"
  vocab_pad_multiple: int = 256
  init_scale: float = 0.05
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features, gathered=None):
    """``gathered``: optional ``(values, index)`` from the lazy optimizer
    (``pico_jax.train.sparse_optimizer``): ``values`` float32 [U, D] holds the rows the
    batch touches and ``index`` maps ``sparse`` / ``multi`` to positions in ``values``
    (shapes of the ids). Lookups then read ``values``, so the loss is differentiated
    w.r.t. the U touched rows and never w.r.t. the whole table."""
    offsets, rows = table_layout(self.schema, self.vocab_pad_multiple)
    table = self.param(
        "table",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_scale), (VOCAB, EMBED)),
        (rows, self.embed_dim), jnp.float32)
    if self.pooling not in POOLINGS:
      raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
    partitioning = _table_partitioning()
    source = table
    if gathered is not None:
      # The lazy optimizer's touched rows: positions in ``values`` replace the ids.
      source, index = gathered
      gather = lookup
    elif partitioning is None:
      gather = lookup
    else:
      mesh, vocab_axes, embed_axes = partitioning
      gather = lambda t, i, w=None: sharded_lookup(t, i, w, mesh=mesh, vocab_axes=vocab_axes,
                                                   embed_axes=embed_axes)
    num_sparse = len(self.schema.sparse)
    parts = []
    if num_sparse:
      ids = features[B.SPARSE] + jnp.asarray(offsets[:num_sparse], jnp.int32)
      if gathered is not None:
        ids = index[B.SPARSE]
      parts.append(gather(source, ids))  # [B, F, D]
    if self.schema.multi:
      ids = features[B.MULTI] + jnp.asarray(offsets[num_sparse:], jnp.int32)[:, None]
      if gathered is not None:
        ids = index[B.MULTI]
      mask = features[B.MULTI_MASK].astype(table.dtype)  # [B, G, L]
      pooled = gather(source, ids, mask)  # [B, G, D]
      if self.pooling == "mean":
        pooled = pooled / jnp.maximum(jnp.sum(mask, axis=2), 1.0)[..., None]
      parts.append(pooled)
    embedded = jnp.concatenate(parts, axis=1) if parts else None
    out = [] if embedded is None else [embedded.reshape(embedded.shape[0], -1)]
    if self.schema.num_dense:
      out.append(dense(self.dense_dim, dtype=self.dtype, name="dense_features")(
          features[B.DENSE]))
    return jnp.concatenate(out, axis=-1).astype(self.dtype)
