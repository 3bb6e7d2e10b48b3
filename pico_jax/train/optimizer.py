"""The optimizer named by ``config.optimizer``, as an optax GradientTransformation."""

from __future__ import annotations

import optax

from pico_jax.train import sparse_optimizer


def make_optimizer(opt):
  """Adam / AdamW / Adagrad / SGD with optional global-norm gradient clipping.

  An optax GradientTransformation, or, when ``opt.embedding_optimizer`` is lazy, a
  ``sparse_optimizer.LazyEmbeddingOptimizer`` (this optimizer for every param but the
  embedding table, a row-sparse one for the table).
  """
  if opt.name == "adam":
    tx = optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  elif opt.name == "adamw":
    tx = optax.adamw(opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                     weight_decay=opt.weight_decay)
  elif opt.name == "adagrad":
    tx = optax.adagrad(opt.learning_rate, eps=opt.eps)
  elif opt.name == "sgd":
    tx = optax.sgd(opt.learning_rate)
  else:
    raise ValueError(f"config.optimizer.name={opt.name!r}: unknown optimizer")
  if opt.get("embedding_optimizer", "dense") != "dense":
    return sparse_optimizer.lazy_embedding_optimizer(tx, opt)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx
