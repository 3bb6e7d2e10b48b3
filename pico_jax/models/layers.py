"""Shared building blocks: an MLP and a bank of experts evaluated as one batched matmul."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

# Logical axis names used by every parameter; the config's axis rules map them to mesh
# axes (see pico_jax.parallel).
VOCAB, EMBED, MLP_IN, MLP_OUT, EXPERT = "vocab", "embed", "mlp_in", "mlp_out", "expert"

Dtype = Any


def dense(features: int, *, dtype: Dtype = jnp.float32, name: str | None = None,
          bias_init=nn.initializers.zeros, use_bias: bool = True) -> nn.Dense:
  """A Dense layer with logically partitioned params (float32 params, ``dtype`` compute)."""
  return nn.Dense(
      features, dtype=dtype, param_dtype=jnp.float32, name=name, use_bias=use_bias,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                               (MLP_IN, MLP_OUT)),
      bias_init=nn.with_logical_partitioning(bias_init, (MLP_OUT,)))


class MLP(nn.Module):
  """Dense -> [LayerNorm] -> ReLU -> [Dropout], once per entry of ``features``.

  Maps [..., d_in] to [..., features[-1]] (the input unchanged when ``features`` is
  empty). The output is the last hidden layer, after its activation.
  """
  features: Sequence[int]
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, width in enumerate(self.features):
      x = dense(width, dtype=self.dtype, name=f"dense_{i}")(x)
      if self.layer_norm:
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name=f"norm_{i}")(x)
      x = nn.relu(x)
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class Experts(nn.Module):
  """``num_experts`` independent MLPs applied to one input: [B, d] -> [B, E, H].

  Implemented with ``nn.vmap`` so each layer is one batched matmul over all experts
  (params carry a leading expert axis), not E small ones.
  """
  num_experts: int
  features: Sequence[int]
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    # ``train`` is passed positionally: nn.vmap drops keyword arguments.
    bank = nn.vmap(
        MLP, in_axes=(None, None), out_axes=1, axis_size=self.num_experts,
        variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        metadata_params={nn.PARTITION_NAME: EXPERT})
    return bank(self.features, self.layer_norm, self.dropout, self.dtype,
                name="bank")(x, train)


def gate(x, num_experts: int, *, dtype: Dtype, name: str):
  """Softmax gate over experts: [B, d] -> [B, E] (float32 weights)."""
  return nn.softmax(dense(num_experts, dtype=dtype, name=name)(x).astype(jnp.float32), axis=-1)


def mix(weights, experts):
  """Gate-weighted sum of expert outputs: [B, E], [B, E, H] -> [B, H]."""
  return jnp.einsum("be,beh->bh", weights.astype(experts.dtype), experts)
