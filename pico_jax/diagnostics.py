"""Where each loss term pushes the model: per-term gradient norms by module.

``probe`` (``launch/probe_interference.py``) uses them to measure whether the contrastive term or
the task losses dominate the gradient that reaches the CVR tower (RESULTS.md
section 3). Adam scales each parameter's step by the running RMS of the *total*
gradient, so the share of a term in that total at a module is what decides how much
of the module's update follows that term.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import optax

from pico_jax import batch as B
from pico_jax.losses import pico_objective

# The loss terms and the weight that scales each in the total (see ``pico_objective``).
TERM_WEIGHTS = {"loss_ctr": "ctr_weight", "loss_ctcvr": "ctcvr_weight",
                "loss_cvr": "cvr_weight", "loss_contrast": "contrast_weight"}
MODULES = ("embedding", "backbone", "ctr_tower", "cvr_tower")


def _flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def term_gradients(model, params, batch, objective: dict) -> dict[str, jax.Array]:
  """Per-term gradient norms of one batch, each term scaled by its weight.

  Returns float32 scalars: ``grad_<term>_<module>`` = || w_term dL_term / d
  params[module] || for every term with a non-zero weight present in the output and
  every module of ``MODULES`` the model has, and ``cos_contrast_ctcvr_cvr_tower``,
  the cosine between the contrastive and the CTCVR gradients at the CVR tower (the
  CVR tower's only task signal when ``cvr_weight`` is 0).
  """
  features = B.features(batch)

  def term(p, name):
    outputs = model.apply({"params": p}, features, train=False)
    return pico_objective(outputs, batch, **objective)[1][name]

  names = [t for t, w in TERM_WEIGHTS.items() if objective.get(w, 0.0)]
  if objective.get("contrast_weight", 0.0) and model.contrast is None:
    names.remove("loss_contrast")
  out, grads = {}, {}
  for name in names:
    g = jax.grad(term)(params, name)
    grads[name] = jax.tree.map(lambda x, w=objective[TERM_WEIGHTS[name]]: w * x, g)
    for module in MODULES:
      if module in g:
        out[f"grad_{name}_{module}"] = optax.tree.norm(grads[name][module])
  if "loss_contrast" in grads and "loss_ctcvr" in grads:
    a = _flat(grads["loss_contrast"]["cvr_tower"])
    b = _flat(grads["loss_ctcvr"]["cvr_tower"])
    out["cos_contrast_ctcvr_cvr_tower"] = (
        jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-30))
  return out


def probe(config, workdir: str, every: int, num_batches: int) -> list[dict]:
  """Trains (if needed) and returns one dict of mean gradient measures per checkpoint."""
  import numpy as np
  from pico_jax.data import pipeline
  from pico_jax.train.loop import train_and_evaluate
  from pico_jax.train.restore import restore
  from pico_jax.train.step import objective_kwargs
  from pico_jax.workdir import checkpoint_dir

  config.checkpoint.enabled = True
  config.checkpoint.every_steps = every
  config.checkpoint.keep = config.train.steps // every + 1
  steps = list(range(every, config.train.steps + 1, every))
  if not os.path.exists(os.path.join(checkpoint_dir(workdir), str(steps[-1]))):
    train_and_evaluate(config, workdir)
  rows = []
  for step in steps:
    trainer = restore(workdir, str(step))
    measure = jax.jit(functools.partial(term_gradients, trainer.model,
                                        objective=objective_kwargs(trainer.config,
                                                                   trainer.mesh)))
    batches = pipeline.eval_batches(trainer.dataset.splits["train"],
                                    global_batch_size=trainer.config.train.batch_size)
    values = [measure(trainer.state.params, b) for b, _ in zip(batches, range(num_batches))]
    trainer.close()
    row = {"step": step, **{k: float(np.mean([v[k] for v in values])) for k in values[0]}}
    if "grad_loss_contrast_cvr_tower" in row:
      row["ratio_contrast_ctcvr_cvr_tower"] = (row["grad_loss_contrast_cvr_tower"]
                                               / row["grad_loss_ctcvr_cvr_tower"])
    rows.append(row)
  with open(os.path.join(workdir, "probe.json"), "w") as f:
    json.dump(rows, f, indent=2)
  return rows
