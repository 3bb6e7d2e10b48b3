"""Explicit CTR -> CVR transfer, and the positive control's oracle input.

Explicit transfer (``config.model.transfer``) hands the CVR tower what the CTR tower
learned, behind a learned gate that starts closed, under stop-gradient: the CVR loss
can use the CTR signal but never moves the CTR path through it.

- ``ctr_logit``: cvr_logit += g(h_cvr) * stop_gradient(ctr_logit), with the gate
  g = Dense(1)(h_cvr) per instance, kernel and bias initialised to 0 (a stacking of the
  model's own CTR logit, learned end to end; the bias alone is a global weight).
- ``ctr_representation``: cvr_in += W stop_gradient(h_ctr) at the CVR tower's input,
  W [H_ctr, d] initialised to 0.

Both start exactly as ``none`` and are part of the serving model (``params["transfer"]``).

The oracle (``config.model.oracle_feature``, positive-control data only) appends the
batch key ``oracle_shared`` (the true shared factor <a_u, b_i>, [B]) to the CVR tower's
input: the upper bound of what any transfer can give. It reaches the CVR tower only.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pico_jax import batch as B
from pico_jax.models.layers import MLP_IN, MLP_OUT, Dtype

TRANSFERS = ("none", "ctr_logit", "ctr_representation")


def _closed(features: int, *, dtype: Dtype, name: str, use_bias: bool) -> nn.Dense:
  """A Dense layer whose kernel (and bias) start at 0: the transfer starts closed."""
  zeros = nn.initializers.zeros
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                  use_bias=use_bias,
                  kernel_init=nn.with_logical_partitioning(zeros, (MLP_IN, MLP_OUT)),
                  bias_init=nn.with_logical_partitioning(zeros, (MLP_OUT,)))


class InputTransfer(nn.Module):
  """``ctr_representation``: (cvr_in [B, d], h_ctr [B, H]) -> cvr_in + W sg(h_ctr)."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, cvr_in, h_ctr):
    mixed = _closed(cvr_in.shape[-1], dtype=self.dtype, name="mix", use_bias=False)(
        jax.lax.stop_gradient(h_ctr))
    return cvr_in + mixed.astype(cvr_in.dtype)


class LogitTransfer(nn.Module):
  """``ctr_logit``: (cvr_logit [B], h_cvr [B, H], ctr_logit [B]) -> cvr_logit
  + g(h_cvr) sg(ctr_logit), float32 [B]."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, cvr_logit, h_cvr, ctr_logit):
    gate = _closed(1, dtype=self.dtype, name="gate", use_bias=True)(h_cvr)
    gate = gate[:, 0].astype(jnp.float32)
    return cvr_logit + gate * jax.lax.stop_gradient(ctr_logit)


def with_oracle(cvr_in, features, *, initializing: bool):
  """cvr_in [B, d] -> [B, d + 1] with ``features["oracle_shared"]`` appended.

  At initialisation (``example_features`` has no oracle column) zeros stand in: only
  the shapes matter there. Otherwise a missing column is an error.
  """
  if B.ORACLE_SHARED in features:
    oracle = jnp.asarray(features[B.ORACLE_SHARED], cvr_in.dtype)
  elif initializing:
    oracle = jnp.zeros(cvr_in.shape[:1], cvr_in.dtype)
  else:
    raise ValueError(f"config.model.oracle_feature=True needs the batch key "
                     f"{B.ORACLE_SHARED!r}, which only config.data.synthetic.kind="
                     "'positive_control' provides")
  return jnp.concatenate([cvr_in, oracle[:, None]], axis=-1)
