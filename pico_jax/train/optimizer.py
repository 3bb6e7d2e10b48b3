"""The optimizer named by ``config.optimizer``, as an optax GradientTransformation, and
its learning-rate schedule."""

from __future__ import annotations

import optax

from pico_jax.train import sparse_optimizer

SCHEDULES = ("constant", "warmup_cosine", "warmup_linear")
OPTIMIZERS = ("adam", "adamw", "adagrad", "sgd")


def learning_rate_schedule(opt, total_steps: int | None = None) -> optax.Schedule:
  """The learning rate of ``opt`` (``config.optimizer``) as a function of the step.

  With peak lr = ``opt.learning_rate``, W = ``opt.warmup_steps`` and D =
  ``opt.decay_steps`` (0: ``total_steps``, the run's ``train.steps``), at step t
  (the number of updates already applied, so the first update uses t = 0):

    constant       lr
    warmup_cosine  lr * t / W for t < W, then lr * (1 + cos(pi * (t - W) / (D - W))) / 2,
                   0 from t = D on (``optax.warmup_cosine_decay_schedule``)
    warmup_linear  lr * t / W for t < W, then lr * (D - t) / (D - W), 0 from t = D on

  D counts the warmup (the schedule reaches 0 at step D). Returns a jax-traceable
  function of an int step giving a float32 scalar.

  Raises:
    ValueError: an unknown schedule, D <= W, or D = 0 with no ``total_steps``.
  """
  if opt.schedule == "constant":
    return optax.constant_schedule(opt.learning_rate)
  if opt.schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}: expected one of "
                     f"{list(SCHEDULES)}")
  decay_steps = opt.decay_steps or total_steps
  if not decay_steps:
    raise ValueError("config.optimizer.decay_steps=0 means train.steps; pass total_steps")
  if not 0 <= opt.warmup_steps < decay_steps:
    raise ValueError(f"config.optimizer.warmup_steps={opt.warmup_steps}: must be >= 0 and "
                     f"below decay_steps={decay_steps}")
  if opt.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, opt.warmup_steps,
                                              decay_steps)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, opt.learning_rate, opt.warmup_steps),
       optax.linear_schedule(opt.learning_rate, 0.0, decay_steps - opt.warmup_steps)],
      [opt.warmup_steps])


def make_optimizer(opt, total_steps: int | None = None):
  """Adam / AdamW / Adagrad / SGD on ``learning_rate_schedule(opt, total_steps)``, with
  optional global-norm gradient clipping.

  An optax GradientTransformation, or, when ``opt.embedding_optimizer`` is lazy, a
  ``sparse_optimizer.LazyEmbeddingOptimizer`` (this optimizer for every param but the
  embedding table, a row-sparse one on the same schedule for the table).
  """
  schedule = learning_rate_schedule(opt, total_steps)
  # A float, not a schedule: optax then keeps no count in a constant-rate run's state.
  lr = opt.learning_rate if opt.schedule == "constant" else schedule
  if opt.name == "adam":
    tx = optax.adam(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  elif opt.name == "adamw":
    tx = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
  elif opt.name == "adagrad":
    tx = optax.adagrad(lr, eps=opt.eps)
  elif opt.name == "sgd":
    tx = optax.sgd(lr)
  else:
    raise ValueError(f"config.optimizer.name={opt.name!r}: unknown optimizer")
  if opt.get("embedding_optimizer", "dense") != "dense":
    return sparse_optimizer.lazy_embedding_optimizer(tx, opt, schedule)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx
