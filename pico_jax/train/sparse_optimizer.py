"""Row-sparse (lazy) Adam and Adagrad for the fused embedding table.

Why: on W2 the table has 929,024 rows of 128 floats (476 MB) but a batch of 4096 rows
touches at most 65,536 of them. A dense optimizer step first scatters the gradient into
a zero table of full size and then reads and writes every row of the table and of both
Adam moments (about 3.3 GB of memory traffic per step). The lazy step instead

1. maps the batch's ids to the distinct rows they touch with ``jnp.unique`` (static
   size: the number of ids; unused slots hold the out-of-range row ``num_rows``, which
   gathers zeros and whose writes are dropped), so all shapes are static under jit;
2. gathers those rows once and differentiates the loss w.r.t. the gathered rows (the
   model looks them up through ``FeatureEmbedding``'s ``gathered`` argument), so the
   table gradient exists for the touched rows only and duplicate ids add up there;
3. updates the touched rows of the table and of their optimizer state with scatters;
   the train state is donated, so the scatters write in place. Rows the batch does
   not touch are neither read nor written.

Every other parameter is updated by the config's optimizer (``optax``) as before. Both
follow the config's learning-rate schedule: the table's update at step t uses
``learning_rate(t)``, as optax's does.

Equivalence with the dense optimizers:
- ``lazy_adagrad`` equals ``optax.adagrad`` exactly: an untouched row has zero
  gradient, so dense Adagrad leaves it and its accumulator unchanged as well.
- ``lazy_adam`` equals ``optax.adam`` where every row is touched at every step. For
  rows that skip steps they differ by design: dense Adam keeps decaying an untouched
  row's moments and keeps moving the row with its stale momentum; lazy Adam freezes
  the row and its moments until the row is touched again. Bias correction uses a
  per-row update count k_r (``1 - b**k_r``) rather than the global step: the row's
  moments have seen exactly k_r EMA updates, so this is their unbiased correction.
  With the global step a row first touched late would take a first step of
  (1 - b1) / sqrt(1 - b2) = 3.2 learning rates (b1 = 0.9, b2 = 0.999) instead of one.
  The count costs one int32 per row (0.4% of the two moments at embedding 128).

Under lazy optimizers the table gets neither weight decay (``adamw`` is rejected) nor
a separate clipping: ``grad_clip_norm`` clips the global norm of all gradients, the
touched rows' included, which equals the dense global norm.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from pico_jax import batch as B
from pico_jax.data.schema import Schema
from pico_jax.models.embeddings import table_layout
from pico_jax.train.state import all_finite

EMBEDDING_OPTIMIZERS = ("dense", "lazy_adam", "lazy_adagrad")
# Where the fused table lives in the params (``PicoModel.embedding``'s ``table``).
TABLE_PATH = ("embedding", "table")
ADAGRAD_INITIAL_ACCUMULATOR = 0.1  # optax.adagrad's default, so the two agree.


class LazyAdamState(NamedTuple):
  mu: Any  # float32 [V, D] first moments
  nu: Any  # float32 [V, D] second moments
  count: Any  # int32 [V] updates each row has received


class LazyAdagradState(NamedTuple):
  sum_of_squares: Any  # float32 [V, D], starts at ADAGRAD_INITIAL_ACCUMULATOR


class LazyEmbeddingState(NamedTuple):
  dense: Any  # the optax state of every parameter but the table
  table: LazyAdamState | LazyAdagradState


def split_table(params):
  """(table, params without the table). Works on boxed and plain param trees."""
  outer, leaf = TABLE_PATH
  if outer not in params or leaf not in params[outer]:
    raise ValueError(f"lazy embedding optimizer: params have no {'/'.join(TABLE_PATH)}")
  rest = dict(params)
  rest[outer] = {k: v for k, v in params[outer].items() if k != leaf}
  return params[outer][leaf], rest


def merge_table(table, rest):
  """The inverse of ``split_table``."""
  outer, leaf = TABLE_PATH
  params = dict(rest)
  params[outer] = {**rest[outer], leaf: table}
  return params


def row_ids(schema: Schema, features) -> dict:
  """Table rows of a batch's ids (field-local id + field offset, as ``FeatureEmbedding``
  computes them): ``sparse`` int32 [B, F] and ``multi`` int32 [B, G, L], the keys the
  schema has."""
  offsets = jnp.asarray(table_layout(schema, 1)[0], jnp.int32)
  num_sparse = len(schema.sparse)
  out = {}
  if num_sparse:
    out[B.SPARSE] = features[B.SPARSE] + offsets[:num_sparse]
  if schema.multi:
    out[B.MULTI] = features[B.MULTI] + offsets[num_sparse:, None]
  return out


def max_touched_rows(schema: Schema, ids: dict) -> int:
  """A static bound on the distinct rows of a batch: per field, the smaller of its
  vocabulary and its number of ids (W2 at batch 4096: 34,808 of 65,536 ids)."""
  bound = 0
  if B.SPARSE in ids:
    bound += sum(min(f.vocab_size, ids[B.SPARSE].shape[0]) for f in schema.sparse)
  if B.MULTI in ids:
    per_field = ids[B.MULTI].shape[0] * ids[B.MULTI].shape[2]
    bound += sum(min(f.vocab_size, per_field) for f in schema.multi)
  return bound


def touched_rows(ids: dict, num_rows: int, size: int | None = None):
  """The distinct rows of ``ids`` and where each id sits among them.

  Args:
    ids: dict of int32 arrays of table rows (``row_ids``), N ids in all.
    num_rows: the table's row count; it fills the unused slots.
    size: the number of slots, at least the number of distinct rows (default N;
      ``max_touched_rows`` is a tighter bound).

  Returns:
    (rows int32 [size]: the distinct rows ascending, then ``num_rows`` repeated;
     index: dict like ``ids`` with each id replaced by its position in ``rows``).
  """
  keys = sorted(ids)
  flat = jnp.concatenate([ids[k].reshape(-1) for k in keys])
  rows, inverse = jnp.unique(flat, size=flat.size if size is None else size,
                             fill_value=num_rows, return_inverse=True)
  inverse = inverse.reshape(-1)
  index, start = {}, 0
  for k in keys:
    index[k] = inverse[start:start + ids[k].size].reshape(ids[k].shape)
    start += ids[k].size
  return rows.astype(jnp.int32), index


def _gather(x, rows):
  return x.at[rows].get(mode="fill", fill_value=0)


def _scatter(x, rows, values):
  return x.at[rows].set(values, mode="drop")


def _box_like(table, value, names=None):
  """``value`` with ``table``'s logical partitioning (when ``table`` is boxed)."""
  if isinstance(table, nn.LogicallyPartitioned):
    return table.replace(value=value, names=table.names if names is None else names)
  return value


@dataclasses.dataclass(frozen=True)
class LazyEmbeddingOptimizer:
  """The config's optimizer for every parameter but the table, a lazy one for the table.

  ``init(params)`` gives a ``LazyEmbeddingState`` (state.py calls it like an optax
  transformation's init); ``step`` is the train step's differentiate-and-update.
  ``learning_rate``: a float, or an optax schedule of the step count.
  """
  dense: optax.GradientTransformation
  kind: str  # lazy_adam | lazy_adagrad
  learning_rate: Union[float, optax.Schedule]
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip_norm: float = 0.0

  def init(self, params) -> LazyEmbeddingState:
    table, rest = split_table(params)
    value = nn.meta.unbox(table)
    if self.kind == "lazy_adam":
      # Two arrays, not one twice: the state is donated buffer by buffer.
      state = LazyAdamState(
          mu=_box_like(table, jnp.zeros_like(value)), nu=_box_like(table, jnp.zeros_like(value)),
          count=_box_like(table, jnp.zeros(value.shape[:1], jnp.int32),
                          names=getattr(table, "names", (None,))[:1]))
    else:
      state = LazyAdagradState(sum_of_squares=_box_like(
          table, jnp.full_like(value, ADAGRAD_INITIAL_ACCUMULATOR)))
    return LazyEmbeddingState(dense=self.dense.init(rest), table=state)

  def update_rows(self, state, table, rows, values, grads, count=0):
    """Updates the touched ``rows`` (int32 [N]; ``num_rows`` = unused slot) whose current
    values float32 [N, D] and gradients [N, D] are given, at step ``count`` (int scalar:
    updates applied so far, for the schedule): (new table, new state)."""
    lr = self.learning_rate(count) if callable(self.learning_rate) else self.learning_rate
    if self.kind == "lazy_adam":
      mu = self.b1 * _gather(state.mu, rows) + (1 - self.b1) * grads
      nu = self.b2 * _gather(state.nu, rows) + (1 - self.b2) * jnp.square(grads)
      count = _gather(state.count, rows) + 1
      k = count.astype(jnp.float32)[:, None]
      mu_hat = mu / (1 - self.b1 ** k)
      nu_hat = nu / (1 - self.b2 ** k)
      new_values = values - lr * mu_hat / (jnp.sqrt(nu_hat) + self.eps)
      state = LazyAdamState(mu=_scatter(state.mu, rows, mu), nu=_scatter(state.nu, rows, nu),
                            count=_scatter(state.count, rows, count))
    elif self.kind == "lazy_adagrad":
      acc = _gather(state.sum_of_squares, rows) + jnp.square(grads)
      scale = jnp.where(acc > 0, jax.lax.rsqrt(acc + self.eps), 0.0)
      new_values = values - lr * grads * scale
      state = LazyAdagradState(sum_of_squares=_scatter(state.sum_of_squares, rows, acc))
    else:
      raise ValueError(f"unknown lazy optimizer {self.kind!r}")
    return _scatter(table, rows, new_values), state

  def step(self, loss_fn: Callable, params, opt_state: LazyEmbeddingState, schema: Schema,
           features, *, count):
    """Differentiates and updates: (params, opt_state, metrics); ``metrics["finite"]``
    says whether the metrics and everything the step changed are finite.

    Args:
      loss_fn: ``loss_fn(params, embedding_rows) -> (loss, metrics dict)``, the model's
        loss with ``embedding_rows`` passed to ``PicoModel``.
      params: the current params (plain arrays).
      schema, features: the dataset schema and the batch's model inputs.
      count: int scalar, the updates applied so far (the train state's step).
    """
    table, rest = split_table(params)
    ids = row_ids(schema, features)
    rows, index = touched_rows(ids, table.shape[0], max_touched_rows(schema, ids))
    values = _gather(table, rows)

    def loss_of(rest, values):
      return loss_fn(merge_table(table, rest), (values, index))

    (_, metrics), (grads, row_grads) = jax.value_and_grad(
        loss_of, argnums=(0, 1), has_aux=True)(rest, values)
    # Unused slots have zero gradient: this is the dense gradient's global norm.
    grad_norm = optax.tree.norm((grads, row_grads))
    if self.grad_clip_norm:
      # As optax.clip_by_global_norm, over every gradient.
      clip = lambda g: jnp.where(grad_norm < self.grad_clip_norm, g,
                                 g / grad_norm * self.grad_clip_norm)
      grads, row_grads = jax.tree.map(clip, (grads, row_grads))
    updates, dense_state = self.dense.update(grads, opt_state.dense, rest)
    rest = optax.apply_updates(rest, updates)
    table, table_state = self.update_rows(opt_state.table, table, rows, values, row_grads,
                                          count)
    metrics["grad_norm"] = grad_norm
    metrics["touched_rows"] = jnp.sum(rows < table.shape[0]).astype(jnp.float32)
    # Only the touched rows changed, and the rest of the table was finite before this
    # step (checked at every step, and at restore): checking those rows alone keeps the
    # step's cost and temporaries O(batch), not O(vocabulary).
    touched = jax.tree.map(lambda x: _gather(x, rows), (table, table_state))
    metrics["finite"] = all_finite((metrics, rest, dense_state, touched))
    return (merge_table(table, rest), LazyEmbeddingState(dense=dense_state, table=table_state),
            metrics)


def lazy_embedding_optimizer(dense: optax.GradientTransformation, opt,
                             learning_rate: Union[float, optax.Schedule, None] = None
                             ) -> LazyEmbeddingOptimizer:
  """The lazy optimizer named by ``opt.embedding_optimizer`` (``config.optimizer``).

  ``dense`` is the config's optimizer for the other params, built without clipping
  (``step`` clips all gradients together); ``learning_rate`` its schedule (default
  the constant ``opt.learning_rate``).
  """
  kind = opt.embedding_optimizer
  if kind not in EMBEDDING_OPTIMIZERS[1:]:
    raise ValueError(f"config.optimizer.embedding_optimizer={kind!r}: expected one of "
                     f"{list(EMBEDDING_OPTIMIZERS)}")
  return LazyEmbeddingOptimizer(dense=dense, kind=kind,
                                learning_rate=(opt.learning_rate if learning_rate is None
                                               else learning_rate),
                                b1=opt.b1, b2=opt.b2, eps=opt.eps,
                                grad_clip_norm=opt.grad_clip_norm)
