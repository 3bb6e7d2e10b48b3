"""Seeded synthetic CTR/CVR data with known ground truth (the embedded default dataset).

Users, items and segments. Each user belongs to one segment s with a ground-truth
inter-task relatedness ``rho_s`` in [0, 1]. With standardised interaction scores

  shared(u, i) = <a_u, b_i>            (drives clicks)
  indep(u, i)  = <c_u, d_i>            (independent of clicks)

the logits are

  click logit      = ctr_bias + user_bias_u + item_bias_i + signal * shared
  conversion logit = cvr_bias + item_quality_i
                     + signal * (rho_s * shared + (1 - rho_s) * indep)

so in segments with rho near 1 conversion is driven by what drives clicks and in
segments with rho near 0 it is not. The true probabilities are recorded per row, so the
oracle AUCs are known, and ``rho`` per segment is returned for comparison with the
learned temperatures.

Features: user id, item id, segment id, item category, user activity bucket
(single-valued), the user's favourite categories (multi-valued) and noisy views of the
user and item latents (dense).
"""

from __future__ import annotations

import numpy as np

from pico_jax import batch as B
from pico_jax.data.dataset import Dataset, random_splits
from pico_jax.data.schema import Schema, SparseField


def _standardise(x):
  return (x - x.mean()) / (x.std() + 1e-12)


def generate(
    *,
    seed: int,
    num_rows: int = 500_000,
    num_users: int = 1_000,
    num_items: int = 500,
    num_categories: int = 32,
    rho: tuple[float, ...] = (0.0, 0.33, 0.67, 1.0),
    latent_dim: int = 4,
    signal: float = 1.5,
    ctr_bias: float = -1.5,
    cvr_bias: float = -1.0,
    history_len: int = 4,
    dense_noise: float = 0.2,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Dataset:
  """Generates the synthetic dataset. Same arguments, same arrays.

  Returns:
    A ``Dataset`` with splits ``train``, ``val``, ``test`` holding ``sparse`` int32
    [N, 5], ``multi`` int32 [N, 1, history_len], ``multi_mask`` bool, ``dense`` float32
    [N, 2 * latent_dim], ``click``/``conversion`` float32 [N], ``segment``/``group``
    int32 [N] and ``p_ctr_true``/``p_cvr_true`` float32 [N]; ``info["rho"]`` lists the
    relatedness of each segment.
  """
  rho = np.asarray(rho, np.float64)
  if rho.ndim != 1 or len(rho) == 0 or np.any((rho < 0) | (rho > 1)):
    raise ValueError(f"rho must be a non-empty list of values in [0, 1], got {rho.tolist()}")
  if not 0 <= val_fraction + test_fraction < 1:
    raise ValueError("val_fraction + test_fraction must be in [0, 1)")
  rng = np.random.default_rng(seed)
  num_segments = len(rho)
  k = latent_dim

  user_shared = rng.normal(size=(num_users, k))
  item_shared = rng.normal(size=(num_items, k))
  user_indep = rng.normal(size=(num_users, k))
  item_indep = rng.normal(size=(num_items, k))
  user_bias = rng.normal(0, 0.5, num_users)
  item_bias = rng.normal(0, 0.5, num_items)
  item_quality = rng.normal(0, 0.5, num_items)
  user_segment = rng.integers(num_segments, size=num_users)
  user_activity = rng.integers(8, size=num_users)
  item_category = rng.integers(num_categories, size=num_items)
  # Favourite categories: those whose items the user's latent likes most, a noisy view.
  cat_latent = rng.normal(size=(num_categories, k))
  cat_score = user_shared @ cat_latent.T + rng.normal(0, 1.0, (num_users, num_categories))
  user_history = np.argsort(-cat_score, axis=1)[:, :history_len]
  history_len_u = rng.integers(1, history_len + 1, size=num_users)
  history_mask_u = np.arange(history_len)[None, :] < history_len_u[:, None]

  user = rng.integers(num_users, size=num_rows)
  item = rng.integers(num_items, size=num_rows)
  seg = user_segment[user]
  shared = _standardise(np.einsum("nk,nk->n", user_shared[user], item_shared[item]))
  indep = _standardise(np.einsum("nk,nk->n", user_indep[user], item_indep[item]))
  ctr_logit = ctr_bias + user_bias[user] + item_bias[item] + signal * shared
  r = rho[seg]
  cvr_logit = cvr_bias + item_quality[item] + signal * (r * shared + (1 - r) * indep)
  p_ctr = 1 / (1 + np.exp(-ctr_logit))
  p_cvr = 1 / (1 + np.exp(-cvr_logit))
  click = rng.random(num_rows) < p_ctr
  conversion = click & (rng.random(num_rows) < p_cvr)

  noise = lambda shape: rng.normal(0, dense_noise, shape)
  dense = np.concatenate(
      [user_shared[user] + noise((num_rows, k)), item_shared[item] + noise((num_rows, k))],
      axis=1)
  dense = (dense - dense.mean(0)) / dense.std(0)
  # Field-local ids start at 1: 0 is reserved for unseen / padding.
  sparse = np.stack(
      [user + 1, item + 1, seg + 1, item_category[item] + 1, user_activity[user] + 1], axis=1)
  history_mask = history_mask_u[user]
  multi = np.where(history_mask, user_history[user] + 1, 0)

  columns = {
      B.SPARSE: sparse.astype(np.int32),
      B.MULTI: multi[:, None, :].astype(np.int32),
      B.MULTI_MASK: history_mask[:, None, :],
      B.DENSE: dense.astype(np.float32),
      B.CLICK: click.astype(np.float32),
      B.CONVERSION: conversion.astype(np.float32),
      B.SEGMENT: seg.astype(np.int32),
      B.GROUP: user.astype(np.int32),
      B.P_CTR_TRUE: p_ctr.astype(np.float32),
      B.P_CVR_TRUE: p_cvr.astype(np.float32),
  }
  splits = random_splits(columns, rng.permutation(num_rows), val_fraction, test_fraction)

  schema = Schema(
      sparse=(SparseField("user_id", num_users + 1), SparseField("item_id", num_items + 1),
              SparseField("segment", num_segments + 1),
              SparseField("item_category", num_categories + 1),
              SparseField("user_activity", 9)),
      multi=(SparseField("user_favourite_categories", num_categories + 1, history_len),),
      dense=tuple(f"user_latent_{j}" for j in range(k)) + tuple(
          f"item_latent_{j}" for j in range(k)),
      extras=(B.SEGMENT, B.GROUP, B.P_CTR_TRUE, B.P_CVR_TRUE),
  )
  return Dataset(schema=schema, splits=splits, info={"rho": rho.tolist()})
