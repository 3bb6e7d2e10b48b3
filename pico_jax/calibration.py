"""Undoing the probability shift of positive-class weights (``loss.pos_weight``).

Why predictions move: with positive weight w, the expected loss of predicting p where
the true rate is P is  -w P log p - (1 - P) log(1 - p).  Setting its derivative
-w P / p + (1 - P) / (1 - p) to zero gives

  p* = w P / (w P + 1 - P),   i.e.   p* / (1 - p*) = w * P / (1 - P):

weighting multiplies the odds by w. Inverting,

  P = p / (p + w (1 - p))                                         (``correct``)

maps a prediction back to a calibrated probability (w = 1: unchanged).

The two ESMM probabilities. The CTR tower's p_ctr is fitted by the CTR loss (weight
w_ctr). The CVR tower's p_cvr is fitted either

- through the CTCVR loss on p_ctcvr = p_ctr * p_cvr (``loss.ctcvr_weight > 0``, ESMM):
  for any p_ctr the CVR tower can bring the product to its optimum, so p_ctcvr has the
  odds of P_ctcvr times w_ctcvr. The correction applies to the PRODUCT, not to each
  factor: P_ctcvr = correct(p_ctcvr, w_ctcvr), and the calibrated conditional rate is
  P_cvr = P_ctcvr / P_ctr. (correct(p_ctr) * correct(p_cvr) would be wrong: odds do not
  multiply through a product of probabilities.)
- or by its own BCE (``loss.cvr_weight > 0`` with ``ctcvr_weight = 0``): P_cvr =
  correct(p_cvr, w_cvr), and P_ctcvr = P_ctr * P_cvr.

With both losses on p_cvr and a weight != 1 the two pull towards different optima and
no exact correction exists; ``correct_predictions`` refuses that case. The correction
is exact for the task losses' minimiser; the contrastive term (a representation loss)
and the AITM calibrator are assumed not to shift it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def correct(p, pos_weight: float):
  """p / (p + w (1 - p)): the calibrated probability of a prediction ``p`` (float array,
  numpy or jax, any shape) trained with positive weight ``w`` > 0. Same shape and type."""
  return p / (p + pos_weight * (1 - p))


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def needs_correction(loss) -> bool:
  """Whether ``loss`` (``config.loss``) weights any positive class."""
  w = loss.pos_weight
  return (w.ctr, w.ctcvr, w.cvr) != (1.0, 1.0, 1.0)


def correct_predictions(predictions: dict, loss) -> dict:
  """``predictions`` with ``p_ctr``, ``p_cvr``, ``p_ctcvr`` mapped back to calibrated
  probabilities for the positive weights of ``loss`` (``config.loss``).

  Args:
    predictions: dict of float arrays [N] (numpy, or jax inside a traced function);
      other keys pass through unchanged.
    loss: ``config.loss``: ``pos_weight.{ctr,ctcvr,cvr}``, ``ctcvr_weight``,
      ``cvr_weight``.
  Returns:
    A new dict; p_cvr stays in [0, 1] and is 0 where the calibrated p_ctr is 0.
  Raises:
    ValueError: both the CTCVR and the CVR loss train p_cvr and a positive weight is not
      1 (no exact correction; see the module docstring).
  """
  w = loss.pos_weight
  if loss.ctcvr_weight > 0 and loss.cvr_weight > 0 and needs_correction(loss):
    raise ValueError(
        "pos_weight correction: loss.ctcvr_weight and loss.cvr_weight both train p_cvr, "
        f"and loss.pos_weight is (ctr={w.ctr}, ctcvr={w.ctcvr}, cvr={w.cvr}); the two "
        "losses then have different optima and no exact correction exists. Train one of "
        "them only, or keep every pos_weight at 1.")
  out = dict(predictions)
  xp = _xp(predictions["p_ctr"])
  p_ctr = correct(predictions["p_ctr"], w.ctr)
  if loss.ctcvr_weight > 0:
    p_ctcvr = correct(predictions["p_ctcvr"], w.ctcvr)
    safe = xp.where(p_ctr > 0, p_ctr, 1)
    p_cvr = xp.where(p_ctr > 0, xp.clip(p_ctcvr / safe, 0, 1), 0)
  else:
    p_cvr = correct(predictions["p_cvr"], w.cvr)
    p_ctcvr = p_ctr * p_cvr
  out.update(p_ctr=p_ctr, p_cvr=p_cvr, p_ctcvr=p_ctcvr)
  return out
