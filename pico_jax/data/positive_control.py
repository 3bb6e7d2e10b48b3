"""A positive-control generator: data where transfer from clicks to conversions is known
to help (r = 1), known to be useless (r = 0), or varies per instance (mixed r(x)).

With standardised interaction scores (mean 0, variance 1 over the generated rows)

  shared(u, i) = <a_u, b_i>            learned from clicks
  indep(u, i)  = <c_u, d_i>            independent of clicks

the logits are

  click logit      = b_c + s_b (user_bias_u + item_bias_i) + signal * shared
  conversion logit = b_v + q_i + signal * (r(x) shared + sqrt(1 - r(x)^2) indep)

so the conversion signal has variance signal^2 for every r.

What the click and the conversion share (``shares``, the generator axis):

  "scores"           shared_cvr = shared: the conversion reuses the click score itself,
                     so scoring CVR by pCTR already transfers it.
  "representations"  shared_cvr = <a_u, M b_i>, standardised, with M = Q J Q^T (Q a
                     seeded random rotation, J the block-diagonal quarter turn): the
                     same latents through another map. E[<a, b> <a, M b>] = tr(M) = 0,
                     so the click score carries nothing about it in expectation, while
                     embeddings that hold a_u and b_i (learned from clicks) carry all of
                     it.

The conversion logit uses shared_cvr in place of shared above. b_v is calibrated per
condition by bisection so that the expected conversions per click (the mean true CVR
over the generated clicks) equals ``conversions_per_click``: deterministic from the seed.

Relatedness r(x) (``relatedness``): "zero" (negative control: conversion owes nothing to
what drives clicks), "one" (conversion is driven by the click factor) or "mixed":
r(x) = sigmoid(3 (g_ctx + 0.5 h_u)), driven by the observed context field (8 levels, g
evenly spaced in [-1, 1]) and varying within each context by a per-user offset h_u
~ N(0, 1), learnable from the user id; so a relatedness network reading the embeddings
can learn it, but the segment alone does not give it.

Inputs are ids and categorical side information only: user id, item id, context,
item category (independent of the latents) and user activity bucket. There is no dense
copy of any latent: the shared factor must be learned from clicks. The true shared
conversion factor (shared_cvr) is provided as ``oracle_shared`` for the oracle arm only
(``config.model.oracle_feature``); the model never reads it otherwise.

Recorded per row: ``p_ctr_true``, ``p_cvr_true`` (so p_ctcvr_true is their product),
``r_true``, ``segment`` (the context) and ``group`` (the user).
"""

from __future__ import annotations

import numpy as np

from pico_jax import batch as B
from pico_jax.data.dataset import Dataset, random_splits
from pico_jax.data.schema import Schema, SparseField

RELATEDNESS = ("zero", "one", "mixed")
SHARES = ("scores", "representations")
NUM_CONTEXTS = 8
_BISECTION_STEPS = 60


def _standardise(x):
  return (x - x.mean()) / (x.std() + 1e-12)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def calibrate_bias(offset: np.ndarray, target: float, low: float = -20.0,
                   high: float = 20.0) -> float:
  """b with mean(sigmoid(b + offset)) = target, by bisection (the mean is increasing in
  b). offset: float64 [N]; target in (0, 1)."""
  if not 0 < target < 1:
    raise ValueError(f"conversions_per_click={target}: must lie in (0, 1)")
  for _ in range(_BISECTION_STEPS):
    mid = (low + high) / 2
    if _sigmoid(mid + offset).mean() < target:
      low = mid
    else:
      high = mid
  return (low + high) / 2


def _cross_map(rng: np.random.Generator, k: int) -> np.ndarray:
  """M = Q J Q^T, float64 [k, k] (k even): Q a random rotation (QR of a Gaussian, signs
  fixed), J the quarter turn on each pair of axes. M is a rotation with trace 0 and
  <x, M x> = 0 for every x."""
  q, upper = np.linalg.qr(rng.normal(size=(k, k)))
  q = q * np.sign(np.diag(upper))
  j = np.kron(np.eye(k // 2), np.array([[0.0, -1.0], [1.0, 0.0]]))
  return q @ j @ q.T


def generate(
    *,
    seed: int,
    relatedness: str = "one",
    shares: str = "scores",
    conversions_per_click: float = 0.02,
    nuisance_scale: float = 0.5,
    num_rows: int = 100_000,
    num_users: int = 300,
    num_items: int = 200,
    num_categories: int = 16,
    latent_dim: int = 4,
    signal: float = 1.5,
    ctr_bias: float = -1.5,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Dataset:
  """Generates the positive-control dataset. Same arguments, same arrays.

  Returns:
    A ``Dataset`` with splits ``train``, ``val``, ``test`` holding ``sparse`` int32
    [N, 5] (user, item, context, item category, user activity), ``click`` /
    ``conversion`` float32 [N], ``segment`` / ``group`` int32 [N], ``p_ctr_true`` /
    ``p_cvr_true`` / ``r_true`` / ``oracle_shared`` float32 [N]; ``info`` holds the
    condition, the calibrated ``cvr_bias`` and ``rho`` (the mean r per context).
  """
  if relatedness not in RELATEDNESS:
    raise ValueError(f"relatedness={relatedness!r}: expected one of {list(RELATEDNESS)}")
  if shares not in SHARES:
    raise ValueError(f"shares={shares!r}: expected one of {list(SHARES)}")
  if shares == "representations" and latent_dim % 2:
    raise ValueError(f"latent_dim={latent_dim}: shares='representations' needs an even "
                     "latent_dim (the quarter turn acts on pairs of axes)")
  if nuisance_scale < 0:
    raise ValueError(f"nuisance_scale={nuisance_scale}: must be >= 0")
  if not 0 <= val_fraction + test_fraction < 1:
    raise ValueError("val_fraction + test_fraction must be in [0, 1)")
  rng = np.random.default_rng(seed)
  k = latent_dim
  a, b = rng.normal(size=(num_users, k)), rng.normal(size=(num_items, k))
  c, d = rng.normal(size=(num_users, k)), rng.normal(size=(num_items, k))
  user_bias, item_bias = rng.normal(size=num_users), rng.normal(size=num_items)
  item_quality = rng.normal(0, 0.5, num_items)
  user_offset = rng.normal(size=num_users)  # h_u: r's variation within a context.
  item_category = rng.integers(num_categories, size=num_items)
  user_activity = rng.integers(8, size=num_users)

  user = rng.integers(num_users, size=num_rows)
  item = rng.integers(num_items, size=num_rows)
  context = rng.integers(NUM_CONTEXTS, size=num_rows)
  shared = _standardise(np.einsum("nk,nk->n", a[user], b[item]))
  indep = _standardise(np.einsum("nk,nk->n", c[user], d[item]))
  if relatedness == "mixed":
    g = np.linspace(-1, 1, NUM_CONTEXTS)
    r = _sigmoid(3 * (g[context] + 0.5 * user_offset[user]))
  else:
    r = np.full(num_rows, 1.0 if relatedness == "one" else 0.0)
  ctr_logit = ctr_bias + nuisance_scale * (user_bias[user] + item_bias[item]) + signal * shared
  p_ctr = _sigmoid(ctr_logit)
  click = rng.random(num_rows) < p_ctr
  shared_cvr = shared
  if shares == "representations":  # drawn last: the "scores" arrays stay as they were.
    shared_cvr = _standardise(np.einsum("nk,nk->n", a[user], b[item] @ _cross_map(
        np.random.default_rng([seed, 1]), k).T))
  cvr_offset = item_quality[item] + signal * (r * shared_cvr + np.sqrt(1 - r ** 2) * indep)
  cvr_bias = calibrate_bias(cvr_offset[click], conversions_per_click)
  p_cvr = _sigmoid(cvr_bias + cvr_offset)
  conversion = click & (rng.random(num_rows) < p_cvr)

  # Field-local ids start at 1: 0 is reserved for unseen / padding.
  sparse = np.stack([user + 1, item + 1, context + 1, item_category[item] + 1,
                     user_activity[user] + 1], axis=1)
  # Laid out as synthetic.generate's on purpose: both are read by the same batch keys,
  # but each generator names its own columns and extras, so a shared builder would hide them.
  columns = {
      B.SPARSE: sparse.astype(np.int32),
      B.CLICK: click.astype(np.float32),
      B.CONVERSION: conversion.astype(np.float32),
      B.SEGMENT: context.astype(np.int32),
      B.GROUP: user.astype(np.int32),
      B.P_CTR_TRUE: p_ctr.astype(np.float32),
      B.P_CVR_TRUE: p_cvr.astype(np.float32),
      B.R_TRUE: r.astype(np.float32),
      B.ORACLE_SHARED: shared_cvr.astype(np.float32),
  }
  splits = random_splits(columns, rng.permutation(num_rows), val_fraction, test_fraction)
  schema = Schema(
      sparse=(SparseField("user_id", num_users + 1), SparseField("item_id", num_items + 1),
              SparseField("context", NUM_CONTEXTS + 1),
              SparseField("item_category", num_categories + 1),
              SparseField("user_activity", 9)),
      extras=(B.SEGMENT, B.GROUP, B.P_CTR_TRUE, B.P_CVR_TRUE, B.R_TRUE, B.ORACLE_SHARED),
  )
  rho = [float(r[context == s].mean()) if (context == s).any() else float("nan")
         for s in range(NUM_CONTEXTS)]
  return Dataset(schema=schema, splits=splits, info={
      "kind": "positive_control", "relatedness": relatedness, "shares": shares,
      "conversions_per_click": conversions_per_click, "nuisance_scale": nuisance_scale,
      "cvr_bias": cvr_bias, "rho": rho})
