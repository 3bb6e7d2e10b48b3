"""Multi-task backbones: e [B, d] -> one input vector per task, [[B, H]] * num_tasks.

Shared-Bottom (one MLP shared by the tasks), MMoE (Ma et al., KDD 2018: shared experts,
one softmax gate per task), PLE (Tang et al., RecSys 2020: stacked CGC levels with
task-specific and shared experts) and AITM (Xi et al., KDD 2021: a network per task, the
previous task's representation transferred in by attention).

``BACKBONES`` names them (``config.model.backbone``); ``build_backbone`` makes the named
one with its settings from ``config.model.<name>``, whose keys are the module's fields.
A new backbone is its module here and its row in ``BACKBONES``, with its settings in
``configs/default.py`` and their rules in ``pico_jax.config.RULES``.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from pico_jax.models.layers import MLP, Dtype, Experts, dense, gate, mix


class Backbone(nn.Module, kw_only=True):
  """What every backbone has: e [B, d] -> one input vector per task, [[B, H]] *
  ``num_tasks``, with the shared settings (keyword-only, so that a backbone's own fields
  come first; ``build_backbone`` sets ``layer_norm``, ``dropout`` and ``dtype``)."""
  num_tasks: int = 2
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32


class SharedBottom(Backbone):
  hidden: Sequence[int]

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    h = MLP(self.hidden, self.layer_norm, self.dropout, self.dtype, name="bottom")(x, train=train)
    return [h] * self.num_tasks


class MMoE(Backbone):
  num_experts: int
  expert_hidden: Sequence[int]

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    experts = Experts(self.num_experts, self.expert_hidden, self.layer_norm, self.dropout,
                      self.dtype, name="experts")(x, train=train)  # [B, E, H]
    return [mix(gate(x, self.num_experts, dtype=self.dtype, name=f"gate_{t}"), experts)
            for t in range(self.num_tasks)]


class CGC(nn.Module):
  """One Customized Gate Control level.

  Inputs: ``num_tasks + 1`` vectors (one per task, then the shared one). Each task's
  gate mixes its own experts and the shared experts; unless this is the last level, a
  shared gate mixes all experts into the next level's shared input.
  """
  num_shared_experts: int
  num_task_experts: int
  expert_hidden: Sequence[int]
  num_tasks: int = 2
  last: bool = True
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, *, train: bool = False):
    bank = lambda n, name: Experts(n, self.expert_hidden, self.layer_norm, self.dropout,
                                   self.dtype, name=name)
    shared = bank(self.num_shared_experts, "shared_experts")(inputs[-1], train=train)
    task_experts = [bank(self.num_task_experts, f"task_{t}_experts")(inputs[t], train=train)
                    for t in range(self.num_tasks)]
    n_mix = self.num_task_experts + self.num_shared_experts
    outputs = [
        mix(gate(inputs[t], n_mix, dtype=self.dtype, name=f"gate_{t}"),
            jnp.concatenate([task_experts[t], shared], axis=1))
        for t in range(self.num_tasks)]
    if not self.last:
      everything = jnp.concatenate(task_experts + [shared], axis=1)
      outputs.append(mix(gate(inputs[-1], everything.shape[1], dtype=self.dtype,
                              name="gate_shared"), everything))
    return outputs


class PLE(Backbone):
  num_levels: int
  num_shared_experts: int
  num_task_experts: int
  expert_hidden: Sequence[int]

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    inputs = [x] * (self.num_tasks + 1)
    for level in range(self.num_levels):
      inputs = CGC(self.num_shared_experts, self.num_task_experts, self.expert_hidden,
                   self.num_tasks, level == self.num_levels - 1, self.layer_norm,
                   self.dropout, self.dtype, name=f"cgc_{level}")(inputs, train=train)
    return inputs


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


class AITM(Backbone):
  """Per-task networks with adaptive information transfer: e [B, d] -> [[B, H]] * num_tasks.

  ``bottom_hidden``: the MLP of each task's network; H = bottom_hidden[-1] is also the
  width of the transfer and of the attention. Task order is funnel order (CTR first).

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
  bottom_hidden: Sequence[int]

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


# name -> module: config.model.backbone's choices, the settings in config.model.<name>.
BACKBONES: dict[str, type[Backbone]] = {
    "shared_bottom": SharedBottom,
    "mmoe": MMoE,
    "ple": PLE,
    "aitm": AITM,
}


def build_backbone(model_config, dtype: Dtype) -> Backbone:
  """The backbone named by ``model_config.backbone`` (``model_config`` is
  ``config.model``): its module with the fields in ``model_config.<name>`` (tuples for
  lists) and the shared ``layer_norm``, ``dropout`` and compute ``dtype``."""
  name = model_config.backbone
  if name not in BACKBONES:
    raise ValueError(f"config.model.backbone={name!r}; expected one of {tuple(BACKBONES)}")
  settings = {k: tuple(v) if isinstance(v, (list, tuple)) else v
              for k, v in model_config.get(name, {}).items()}
  return BACKBONES[name](**settings, layer_norm=model_config.layer_norm,
                         dropout=model_config.dropout, dtype=dtype)
