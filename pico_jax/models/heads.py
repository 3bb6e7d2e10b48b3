"""Task towers (serving path) and the PICO contrast head (training only).

The contrast head holds the projection heads and the temperature model. It lives in
its own parameter subtree, ``params["contrast"]``, which serving never creates or reads.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pico_jax.models.layers import MLP, Dtype, dense

TAU_MODES = ("fixed", "global", "personalized")
RELATEDNESS_INPUTS = ("embedding", "towers")
# Which side's representation the contrast may not move (its gradient is stopped before
# the projection head, so that head still learns): "ctr" lets the CTR side teach and
# only the CVR side learn, "cvr" the reverse.
DETACH_SIDES = ("none", "ctr", "cvr")


class Tower(nn.Module):
  """Task tower: [B, d] -> (logit float32 [B], representation h [B, hidden[-1]])."""
  hidden: Sequence[int]
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    h = MLP(self.hidden, self.layer_norm, self.dropout, self.dtype, name="mlp")(x, train=train)
    logit = dense(1, dtype=self.dtype, name="logit")(h)[:, 0]
    return logit.astype(jnp.float32), h


def _sigmoid_inverse(p: float) -> float:
  return math.log(p / (1 - p))


class Projection(nn.Module):
  """Projection head: MLP then a linear map to the contrast space, [B, d] -> [B, dim]."""
  hidden: Sequence[int]
  dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    h = MLP(self.hidden, dtype=self.dtype, name="mlp")(h)
    return dense(self.dim, dtype=self.dtype, name="out")(h).astype(jnp.float32)


class ContrastHead(nn.Module):
  """Projection heads and per-instance temperature.

  Returns ``(z_ctr, z_cvr, tau, relatedness_logit)``: projections float32 [B, proj_dim]
  (not normalised; the loss normalises), tau float32 [B] in [tau_min, tau_max], and the
  relatedness logit r float32 [B] with tau = tau_min + (tau_max - tau_min) * sigmoid(r)
  (zeros for ``fixed``). Lower tau means higher predicted inter-task relatedness.

  tau_mode: ``fixed`` (tau = tau_init everywhere), ``global`` (one learned scalar),
  ``personalized`` (the relatedness network r(.) of PICO, fed with stop_gradient(e) or
  with the tower representations).

  detach: one of ``DETACH_SIDES``; "ctr" (or "cvr") stops the contrast's gradient at
  that side's representation, so only the other side's encoder is pulled by it.
  """
  proj_dim: int
  proj_hidden: Sequence[int]
  tau_mode: str
  tau_min: float
  tau_max: float
  tau_init: float
  relatedness_hidden: Sequence[int]
  relatedness_input: str = "embedding"
  relatedness_stop_gradient: bool = True
  detach: str = "none"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h_ctr, h_cvr, e, *, train: bool = False):
    if self.detach not in DETACH_SIDES:
      raise ValueError(f"unknown detach {self.detach!r}; expected one of {DETACH_SIDES}")
    # The relatedness network below still reads the undetached h when its input is
    # "towers": detaching is about which side the contrast moves, not what r(.) sees.
    h_ctr_in = jax.lax.stop_gradient(h_ctr) if self.detach == "ctr" else h_ctr
    h_cvr_in = jax.lax.stop_gradient(h_cvr) if self.detach == "cvr" else h_cvr
    z_ctr = Projection(self.proj_hidden, self.proj_dim, self.dtype,
                       name="projection_ctr")(h_ctr_in)
    z_cvr = Projection(self.proj_hidden, self.proj_dim, self.dtype,
                       name="projection_cvr")(h_cvr_in)
    batch = z_ctr.shape[0]
    if self.tau_mode == "fixed":  # tau_init may be an end of the range here.
      r = jnp.zeros((batch,), jnp.float32)
      return z_ctr, z_cvr, jnp.full((batch,), self.tau_init, jnp.float32), r
    span = self.tau_max - self.tau_min
    # Start every learned temperature at tau_init.
    r0 = _sigmoid_inverse((self.tau_init - self.tau_min) / span)
    if self.tau_mode == "global":
      r = jnp.broadcast_to(self.param("tau_logit", nn.initializers.constant(r0), ()), (batch,))
    elif self.tau_mode == "personalized":
      x = e if self.relatedness_input == "embedding" else jnp.concatenate([h_ctr, h_cvr], -1)
      if self.relatedness_stop_gradient:
        x = jax.lax.stop_gradient(x)
      h = MLP(self.relatedness_hidden, dtype=self.dtype, name="relatedness")(x)
      r = dense(1, dtype=self.dtype, name="relatedness_logit",
                bias_init=nn.initializers.constant(r0))(h)[:, 0]
    else:
      raise ValueError(f"unknown tau_mode {self.tau_mode!r}; expected one of {TAU_MODES}")
    r = r.astype(jnp.float32)
    return z_ctr, z_cvr, self.tau_min + span * nn.sigmoid(r), r
