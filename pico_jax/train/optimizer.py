"""The optimizer named by ``config.optimizer``, as an optax GradientTransformation."""

from __future__ import annotations

import optax


def make_optimizer(opt) -> optax.GradientTransformation:
  """Adam / AdamW / Adagrad / SGD with optional global-norm gradient clipping."""
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
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx
