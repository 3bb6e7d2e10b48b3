"""Pure train and eval steps, and their compilation over a mesh."""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from pico_jax import batch as B
from pico_jax import contrast
from pico_jax.losses import GRADIENT_AGREEMENT, pico_objective
from pico_jax.models import task_gradients
from pico_jax.parallel import DATA, batch_sharding, replicated
from pico_jax.train import sparse_optimizer
from pico_jax.train.optimizer import learning_rate_schedule
from pico_jax.train.state import TrainState, all_finite

# In-batch negatives: global (the whole global batch) | local (each data shard its own).
NEGATIVES = ("global", "local")


def objective_kwargs(config, mesh) -> dict:
  """The ``pico_objective`` settings of ``config`` (on ``mesh`` for local negatives).

  The contrast's implementation is resolved here, before any tracing: on an
  accelerator this runs the Pallas kernel's one-time self-check and its check at the
  configured batch and projection (and warns if it falls back) when the steps are
  built, not inside the first step's trace.
  """
  c = config.contrast
  groups = mesh.shape[DATA] if c.negatives == "local" else 1
  # The projections are float32 (heads.Projection); local negatives: one group a call.
  shape = contrast.Shape(config.train.batch_size // groups, c.proj_dim,
                         symmetric=c.symmetric, sharded=groups == 1)
  return dict(
      ctr_weight=config.loss.ctr_weight, ctcvr_weight=config.loss.ctcvr_weight,
      cvr_weight=config.loss.cvr_weight, cvr_rows=config.loss.cvr_rows,
      contrast_weight=c.weight, symmetric=c.symmetric,
      normalize=c.normalize, chunk_size=c.chunk_size,
      implementation=contrast.resolve(c.implementation, c.chunk_size, shape, mesh),
      negative_groups=groups,
      relatedness_supervision_weight=c.relatedness_supervision_weight,
      tau_gradient=c.tau_gradient, tau_prior_weight=c.tau_prior_weight,
      tau_prior=c.tau_prior, tau_source=c.tau_source, tau_range=(c.tau_min, c.tau_max),
      pos_weights=(config.loss.pos_weight.ctr, config.loss.pos_weight.ctcvr,
                   config.loss.pos_weight.cvr),
      calibrator_weight=config.loss.calibrator_weight)


def train_step(state: TrainState, batch, *, model, tx, objective: dict,
               learning_rate: optax.Schedule | None = None):
  """One optimisation step: (state, batch) -> (state, metrics of float32 scalars).

  With ``learning_rate`` (the optimizer's schedule) the metrics hold
  ``learning_rate``, the rate this step's update used (the schedule at ``state.step``).
  ``metrics["finite"]`` (a bool) says whether the metrics (loss, grad_norm), the new
  params and the new optimizer state are all finite: the loop never saves a state
  after a step where it is false.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  features = B.features(batch)

  # The gradient-agreement temperature reads each task logit's gradient at e.
  logit_gradients = (objective.get("tau_gradient") == GRADIENT_AGREEMENT
                     and model.contrast is not None)

  def loss_fn(params, embedding_rows=None):
    outputs = task_gradients.apply_model(
        model, {"params": params}, features, logit_gradients=logit_gradients, train=True,
        rngs={"dropout": rng}, embedding_rows=embedding_rows)
    # The shuffled temperature's permutation: from the state's rng (the config seed).
    return pico_objective(outputs, batch, rng=jax.random.fold_in(rng, 1), **objective)

  if isinstance(tx, sparse_optimizer.LazyEmbeddingOptimizer):
    params, opt_state, metrics = tx.step(loss_fn, state.params, state.opt_state,
                                         model.embedding.schema, features, count=state.step)
  else:
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["finite"] = all_finite((metrics, params, opt_state))
  if learning_rate is not None:
    metrics["learning_rate"] = jnp.asarray(learning_rate(state.step), jnp.float32)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch, *, model):
  """Predictions for a batch: dict of float32 [B] (``tau`` when the model has one)."""
  out = model.apply({"params": params}, B.features(batch), train=False)
  keys = ("p_ctr", "p_cvr", "p_ctcvr", "tau")
  return {k: out[k] for k in keys if k in out}


def partitioning_context(mesh, axis_rules):
  """The mesh and logical axis rules as trace-time context.

  Modules that choose a distributed algorithm by the placement of their params (the
  sharded embedding lookup) read both from here.
  """
  stack = contextlib.ExitStack()
  stack.enter_context(jax.sharding.use_abstract_mesh(mesh.abstract_mesh))
  stack.enter_context(nn.logical_axis_rules(tuple(tuple(r) for r in axis_rules)))
  return stack


def _traced_under(fn, mesh, axis_rules):
  @functools.wraps(fn)
  def wrapped(*args):
    with partitioning_context(mesh, axis_rules):
      return fn(*args)
  return wrapped


def compile_steps(model, tx, config, mesh, shardings):
  """jit-compiled ``train_step`` (state donated) and ``eval_step`` with explicit shardings
  (``shardings``: the TrainState of NamedShardings). Called once, by ``trainer.build``."""
  data = batch_sharding(mesh)
  rules = config.axis_rules
  train = jax.jit(
      _traced_under(functools.partial(
          train_step, model=model, tx=tx, objective=objective_kwargs(config, mesh),
          learning_rate=learning_rate_schedule(config.optimizer, config.train.steps)),
                    mesh, rules),
      in_shardings=(shardings, data), out_shardings=(shardings, replicated(mesh)),
      donate_argnums=0)
  evaluate = jax.jit(_traced_under(functools.partial(eval_step, model=model), mesh, rules),
                     in_shardings=(shardings.params, data), out_shardings=data)
  return train, evaluate
