"""AITM: Adaptive Information Transfer Multi-task (Xi et al., KDD 2021).

For tasks ordered along the conversion funnel (click, then conversion), each task t has
its own network ("tower" in the paper, ``bottom_t`` here) q_t = MLP_t(e). From the second
task on, the previous task's representation is transferred and mixed in by attention:

  p_{t-1} = g_{t-1}(z_{t-1})                      transfer: Dense(H) + ReLU
  u in {p_{t-1}, q_t},  w_u = softmax_u(<h1(u), h2(u)> / sqrt(H))
  z_t = sum_u w_u h3(u)                           h1, h2, h3: Dense(H) without bias
  z_1 = q_1

The z_t are the backbone's outputs: each goes into that task's ``Tower`` (MLP + logit,
``pico_jax.models.heads``), as the other backbones' outputs do. The CVR tower therefore
reads the CTR network's information through z_2, and the CVR loss sends gradient back
into the CTR network (``bottom_0``) through the transfer g and the attention.

PICO plugs in unchanged: the contrast compares the two ``Tower`` representations, so
its CVR side is computed from z_2, AFTER the transfer (the CTR side is computed from
z_1 = q_1, which the transfer does not touch). The contrast's gradient on the CVR side
thus also flows through the transfer path into the CTR network.

Every AITM parameter (bottoms, transfer, attention) is used at inference: the model adds
nothing training-only; the serving params are the usual ones without ``contrast``.
The behavioural expectation calibrator of the paper is a loss term, not a parameter:
``pico_jax.losses.calibrator_penalty``.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from pico_jax.models.layers import MLP, Dtype, dense


class AdaptiveInformationTransfer(nn.Module):
  """Attention over {transferred, own}: float [B, H], [B, H] -> z float [B, H].

  The softmax weights are computed in float32 whatever ``dtype`` is.
  """
  dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, transferred, own):
    u = jnp.stack([transferred, own], axis=1)  # [B, 2, H]
    project = lambda name: dense(self.dim, dtype=self.dtype, name=name, use_bias=False)(u)
    query, key, value = project("query"), project("key"), project("value")
    scores = jnp.sum(query.astype(jnp.float32) * key.astype(jnp.float32), axis=-1)
    weights = nn.softmax(scores / math.sqrt(self.dim), axis=1)  # [B, 2]
    return jnp.einsum("bu,buh->bh", weights.astype(value.dtype), value)


class AITM(nn.Module):
  """Per-task networks with adaptive information transfer: e [B, d] -> [[B, H]] * num_tasks.

  ``bottom_hidden``: the MLP of each task's network; H = bottom_hidden[-1] is also the
  width of the transfer and of the attention. Task order is funnel order (CTR first).
  """
  bottom_hidden: Sequence[int]
  num_tasks: int = 2
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if not self.bottom_hidden:
      raise ValueError("AITM: bottom_hidden must have at least one layer")
    width = self.bottom_hidden[-1]
    own = [MLP(self.bottom_hidden, self.layer_norm, self.dropout, self.dtype,
               name=f"bottom_{t}")(x, train=train) for t in range(self.num_tasks)]
    outputs = [own[0]]
    for t in range(1, self.num_tasks):
      transferred = MLP((width,), dropout=self.dropout, dtype=self.dtype,
                        name=f"transfer_{t}")(outputs[t - 1], train=train)
      outputs.append(AdaptiveInformationTransfer(width, self.dtype, name=f"ait_{t}")(
          transferred, own[t]))
    return outputs
