"""Pure train and eval steps, and their compilation over a mesh."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from pico_jax import batch as B
from pico_jax.losses import pico_objective
from pico_jax.parallel import DATA, batch_sharding, replicated
from pico_jax.train.state import TrainState


def objective_kwargs(config, mesh) -> dict:
  """The ``pico_objective`` settings of ``config`` (on ``mesh`` for local negatives)."""
  c = config.contrast
  return dict(
      ctr_weight=config.loss.ctr_weight, ctcvr_weight=config.loss.ctcvr_weight,
      cvr_weight=config.loss.cvr_weight, cvr_rows=config.loss.cvr_rows,
      contrast_weight=c.weight, symmetric=c.symmetric,
      normalize=c.normalize, chunk_size=c.chunk_size,
      negative_groups=mesh.shape[DATA] if c.negatives == "local" else 1,
      relatedness_supervision_weight=c.relatedness_supervision_weight)


def train_step(state: TrainState, batch, *, model, tx, objective: dict):
  """One optimisation step: (state, batch) -> (state, metrics of float32 scalars)."""
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    outputs = model.apply({"params": params}, B.features(batch), train=True,
                          rngs={"dropout": rng})
    return pico_objective(outputs, batch, **objective)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch, *, model):
  """Predictions for a batch: dict of float32 [B] (``tau`` when the model has one)."""
  out = model.apply({"params": params}, B.features(batch), train=False)
  keys = ("p_ctr", "p_cvr", "p_ctcvr", "tau")
  return {k: out[k] for k in keys if k in out}


def compile_steps(model, tx, config, mesh, state_shardings):
  """jit-compiled ``train_step`` (state donated) and ``eval_step`` with explicit shardings."""
  data = batch_sharding(mesh)
  train = jax.jit(
      functools.partial(train_step, model=model, tx=tx,
                        objective=objective_kwargs(config, mesh)),
      in_shardings=(state_shardings, data), out_shardings=(state_shardings, replicated(mesh)),
      donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, model=model),
                     in_shardings=(state_shardings.params, data), out_shardings=data)
  return train, evaluate
