"""The model applied with each task logit's per-instance gradient at the instance vector.

The gradient-agreement temperature (``contrast.tau_gradient="gradient_agreement"``,
``pico_jax.losses.task_gradient_cosine``) compares, per instance, where the CTR and the
CVR task losses would move the instance vector e_i (the embeddings' concatenation, the
input every backbone shares). PicoModel adds a zero perturbation named ``EMBEDDING`` to
e; differentiating the model's logits with respect to it gives those gradients without
a second forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The perturbation PicoModel adds to the instance vector e (flax ``Module.perturb``).
EMBEDDING = "instance_vector"
GRADIENT_KEYS = {"ctr_logit": "ctr_logit_grad", "cvr_logit": "cvr_logit_grad"}


def apply_model(model, variables, features, *, logit_gradients: bool = False, **kwargs):
  """``model.apply(variables, features, **kwargs)``, optionally with logit gradients.

  With ``logit_gradients`` the output dict also holds ``ctr_logit_grad`` and
  ``cvr_logit_grad``: float32 [B, d_e], row i = d logit_i / d e_i, under stop_gradient
  (they are a measurement; no loss trains the model through them). Row i of the
  gradient of sum_j logit_j is d logit_i / d e_i because no layer after the embedding
  mixes rows (no batch statistics; dropout, the MMoE/PLE gates and AITM's attention
  act row by row). One shared forward pass and one backward pass to e per task; the
  main loss still differentiates the outputs with respect to the params as usual.
  """
  if not logit_gradients:
    return model.apply(variables, features, **kwargs)

  def forward(shift):
    return model.apply({**variables, "perturbations": shift}, features, **kwargs)

  # Only the perturbation's shape is needed; eval_shape traces without computing.
  shapes = jax.eval_shape(
      lambda: model.apply(variables, features, mutable=["perturbations"], **kwargs)[1])
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["perturbations"])
  outputs, pull = jax.vjp(forward, zeros)
  grads = {}
  for logit, key in GRADIENT_KEYS.items():
    cotangent = {k: jnp.zeros_like(v) for k, v in outputs.items()}
    cotangent[logit] = jnp.ones_like(outputs[logit])
    grad = pull(cotangent)[0][EMBEDDING]
    grads[key] = jax.lax.stop_gradient(grad.astype(jnp.float32))
  return {**outputs, **grads}
