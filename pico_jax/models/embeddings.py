"""Feature embedding: all sparse fields in one fused table, plus a dense-feature layer.

One table with per-field row offsets (rather than one table per field): every field's
lookup is a single fused gather, the table is row-sharded over the mesh as one array,
and a row-sparse optimizer sees one set of touched rows. Field f's id k lives at row
``offsets[f] + k``; each field keeps its own row 0 for unseen ids. The row count is
padded to a multiple of ``vocab_pad_multiple`` so the table shards evenly.
"""

from __future__ import annotations

import numpy as np
import flax.linen as nn
import jax.numpy as jnp

from pico_jax import batch as B
from pico_jax.data.schema import Schema
from pico_jax.models.layers import EMBED, VOCAB, Dtype, dense


def table_layout(schema: Schema, pad_multiple: int) -> tuple[np.ndarray, int]:
  """Row offsets of the fields (sparse then multi), int64 [F + G], and padded row count."""
  sizes = [f.vocab_size for f in schema.sparse + schema.multi]
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
  total = int(np.sum(sizes))
  padded = -(-total // pad_multiple) * pad_multiple
  return offsets, padded


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
    lookup = lambda key, ids: (jnp.take(table, ids, axis=0) if gathered is None
                               else jnp.take(gathered[0], gathered[1][key], axis=0))
    num_sparse = len(self.schema.sparse)
    parts = []
    if num_sparse:
      ids = features[B.SPARSE] + jnp.asarray(offsets[:num_sparse], jnp.int32)
      parts.append(lookup(B.SPARSE, ids))  # [B, F, D]
    if self.schema.multi:
      ids = features[B.MULTI] + jnp.asarray(offsets[num_sparse:], jnp.int32)[:, None]
      mask = features[B.MULTI_MASK].astype(table.dtype)[..., None]  # [B, G, L, 1]
      pooled = jnp.sum(lookup(B.MULTI, ids) * mask, axis=2)  # [B, G, D]
      if self.pooling == "mean":
        pooled = pooled / jnp.maximum(jnp.sum(mask, axis=2), 1.0)
      elif self.pooling != "sum":
        raise ValueError(f"unknown pooling {self.pooling!r}; expected 'sum' or 'mean'")
      parts.append(pooled)
    embedded = jnp.concatenate(parts, axis=1) if parts else None
    out = [] if embedded is None else [embedded.reshape(embedded.shape[0], -1)]
    if self.schema.num_dense:
      out.append(dense(self.dense_dim, dtype=self.dtype, name="dense_features")(
          features[B.DENSE]))
    return jnp.concatenate(out, axis=-1).astype(self.dtype)
