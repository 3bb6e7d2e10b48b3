"""Multi-task backbones: e [B, d] -> one input vector per task, [[B, H]] * num_tasks.

Shared-Bottom (one MLP shared by the tasks), MMoE (Ma et al., KDD 2018: shared experts,
one softmax gate per task) and PLE (Tang et al., RecSys 2020: stacked CGC levels with
task-specific and shared experts).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from pico_jax.models.layers import MLP, Dtype, Experts, gate, mix


class SharedBottom(nn.Module):
  hidden: Sequence[int]
  num_tasks: int = 2
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    h = MLP(self.hidden, self.layer_norm, self.dropout, self.dtype, name="bottom")(x, train=train)
    return [h] * self.num_tasks


class MMoE(nn.Module):
  num_experts: int
  expert_hidden: Sequence[int]
  num_tasks: int = 2
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

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


class PLE(nn.Module):
  num_levels: int
  num_shared_experts: int
  num_task_experts: int
  expert_hidden: Sequence[int]
  num_tasks: int = 2
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    inputs = [x] * (self.num_tasks + 1)
    for level in range(self.num_levels):
      inputs = CGC(self.num_shared_experts, self.num_task_experts, self.expert_hidden,
                   self.num_tasks, level == self.num_levels - 1, self.layer_norm,
                   self.dropout, self.dtype, name=f"cgc_{level}")(inputs, train=train)
    return inputs
