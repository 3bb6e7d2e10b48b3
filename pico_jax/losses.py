"""Task losses and the PICO contrastive loss. All losses are computed in float32.

Every per-row quantity is weighted by ``weights`` (float [B], the batch ``mask`` for
padding rows) and averaged as sum(w * l) / sum(w); an all-zero weight vector gives 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pico_jax import contrast


def _weighted_mean(values, weights):
  values = values.astype(jnp.float32)
  if weights is None:
    return jnp.mean(values)
  weights = weights.astype(jnp.float32)
  return jnp.sum(weights * values) / jnp.maximum(jnp.sum(weights), 1e-12)


def bce_with_logits(logits, labels, weights=None, *, pos_weight: float = 1.0):
  """Binary cross-entropy of sigmoid(logits) against labels in {0, 1}: a scalar.

  Per row: -(pos_weight * y * log p + (1 - y) * log(1 - p)). A ``pos_weight`` w != 1
  moves the minimiser from the true rate P to the p with odds(p) = w * odds(P); see
  ``pico_jax.calibration`` for the correction back.

  Args:
    logits: float [B]. labels: float [B]. weights: optional float [B] row weights (the
      mean divides by their sum; ``pos_weight`` does not enter the denominator).
    pos_weight: weight of the positive term, > 0.
  """
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  per_row = -(pos_weight * labels * jax.nn.log_sigmoid(logits)
              + (1 - labels) * jax.nn.log_sigmoid(-logits))
  return _weighted_mean(per_row, weights)


def _log1mexp(x):
  """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Maechler, 2012)."""
  x = jnp.minimum(x, -1e-7)
  return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def ctcvr_loss(ctr_logits, cvr_logits, clicks, conversions, weights=None, *,
               pos_weight: float = 1.0):
  """ESMM entire-space loss: BCE of p_ctr * p_cvr against click * conversion, all rows.

  log p_ctcvr = log_sigmoid(a) + log_sigmoid(b) is formed in log space, so the loss is
  finite even where p_ctcvr underflows. ``pos_weight`` as in ``bce_with_logits``.
  """
  log_p = (jax.nn.log_sigmoid(ctr_logits.astype(jnp.float32))
           + jax.nn.log_sigmoid(cvr_logits.astype(jnp.float32)))
  target = clicks.astype(jnp.float32) * conversions.astype(jnp.float32)
  per_row = -(pos_weight * target * log_p + (1 - target) * _log1mexp(log_p))
  return _weighted_mean(per_row, weights)


def cvr_loss(cvr_logits, clicks, conversions, weights=None, *, clicked_only: bool = True,
             pos_weight: float = 1.0):
  """BCE of p_cvr against conversion over clicked rows (0 if no row is clicked).

  ``clicked_only=False`` uses every row: for two independent tasks (Census income /
  never-married) where "conversion" is not conditioned on "click". ``pos_weight`` as in
  ``bce_with_logits``.
  """
  if not clicked_only:
    return bce_with_logits(cvr_logits, conversions, weights, pos_weight=pos_weight)
  w = clicks.astype(jnp.float32)
  if weights is not None:
    w = w * weights.astype(jnp.float32)
  return bce_with_logits(cvr_logits, conversions, w, pos_weight=pos_weight)


def calibrator_penalty(p_ctr, p_later, weights=None):
  """AITM's behavioural expectation calibrator: mean of max(p_later - p_ctr, 0), a scalar.

  A conversion needs a click, so an entire-space probability of the later step may not
  exceed p_ctr; the penalty pushes it below. Under the ESMM factorisation the model's
  entire-space conversion probability is p_ctcvr = p_ctr * p_cvr <= p_ctr for every
  row, so with ``p_later = p_ctcvr`` the penalty and its gradient are exactly zero: it
  only acts where a tower predicts the later step on the entire space by itself
  (``loss.cvr_rows = "all"`` with conversion labels that imply a click).

  Args:
    p_ctr, p_later: float [B] probabilities. weights: optional float [B].
  """
  gap = p_later.astype(jnp.float32) - p_ctr.astype(jnp.float32)
  return _weighted_mean(jnp.maximum(gap, 0.0), weights)


def _normalize(z, eps=1e-12):
  z = z.astype(jnp.float32)
  return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), eps))


def contrastive_per_instance(z_ctr, z_cvr, tau, *, symmetric: bool = True,
                             normalize: bool = True, chunk_size: int = 0,
                             implementation: str = "auto", sharded: bool = True):
  """The per-instance terms l_i of ``pico_contrastive_loss``: float32 [B].

  ``sharded=False`` keeps the Pallas form off the data mesh (shard-local negatives).
  """
  dtype = jnp.result_type(z_ctr, z_cvr)
  implementation = contrast.resolve(implementation, chunk_size, contrast.Shape(
      *z_ctr.shape, dtype.name, symmetric, sharded))
  if normalize:
    z_ctr, z_cvr = _normalize(z_ctr), _normalize(z_cvr)
  if implementation == "pallas" and dtype == jnp.bfloat16:
    # The kernel's products run in bfloat16 (float32 accumulation) on bfloat16 input.
    z_ctr, z_cvr = z_ctr.astype(dtype), z_cvr.astype(dtype)
  return contrast.per_instance_terms(z_ctr, z_cvr, tau, symmetric=symmetric,
                                     implementation=implementation, chunk_size=chunk_size,
                                     sharded=sharded)


def pico_contrastive_loss(z_ctr, z_cvr, tau, *, symmetric: bool = True,
                          normalize: bool = True, weights=None, chunk_size: int = 0,
                          implementation: str = "auto"):
  """In-batch InfoNCE between the CTR and CVR representations with per-instance tau.

  With S_ij = z_ctr_i . z_cvr_j (after L2 normalisation when ``normalize``):

    row_i = -S_ii / tau_i + logsumexp_j(S_ij / tau_i)   (CTR anchor, CVR candidates)
    col_i = -S_ii / tau_i + logsumexp_j(S_ji / tau_i)   (CVR anchor, CTR candidates)
    l_i   = (row_i + col_i) / 2 if symmetric else row_i
    loss  = sum_i w_i l_i / sum_i w_i                   (w_i = 1 when weights is None)

  The diagonal is the positive pair; every other row of the batch is a negative.
  Under ``jax.jit`` with the batch sharded over devices, the candidates are the whole
  global batch.

  Args:
    z_ctr: float [B, dz]. z_cvr: float [B, dz]. tau: float [B], > 0.
    symmetric: average the CTR-anchored and CVR-anchored terms.
    normalize: L2-normalise z first (epsilon 1e-12 on the squared norm).
    weights: optional float [B] (0 for padding rows; such rows stay candidates).
    chunk_size: the candidate chunk of the "chunked" form (it must divide B; 0: the
      largest divisor of B up to 1,024). With implementation "auto", chunk_size > 0
      selects "chunked" on CPU (a chunk size bounds the memory).
    implementation: "xla" (exact, [B, B] memory), "chunked" (streaming logsumexp,
      [B, chunk_size] memory), "pallas" (fused kernel, O(B dz) memory; interpret mode
      on CPU) or "auto" ("xla" on CPU; on GPU/TPU "pallas" once it has passed its
      self-check, else "xla" with a warning). See ``pico_jax.contrast``. Every form
      gives the same numbers; bfloat16 z runs the Pallas products in bfloat16.

  Returns:
    A float32 scalar.
  """
  per_instance = contrastive_per_instance(z_ctr, z_cvr, tau, symmetric=symmetric,
                                          normalize=normalize, chunk_size=chunk_size,
                                          implementation=implementation)
  return _weighted_mean(per_instance, weights)


def local_contrastive_per_instance(z_ctr, z_cvr, tau, *, num_groups: int, **kwargs):
  """``contrastive_per_instance`` with negatives restricted to each of ``num_groups``
  consecutive row blocks (the data-parallel shards): float32 [B]."""
  split = lambda x: x.reshape((num_groups, x.shape[0] // num_groups) + x.shape[1:])
  per_group = jax.vmap(functools.partial(contrastive_per_instance, sharded=False, **kwargs))(
      split(z_ctr), split(z_cvr), split(tau))
  return per_group.reshape(-1)


# What trains a learned temperature besides the optional supervision and prior:
# "contrast" (the InfoNCE itself), "supervision" (only those two terms) or
# "gradient_agreement" (a regression onto the agreement of the two task gradients, see
# ``task_gradient_cosine``). Under the last two, tau enters the InfoNCE through
# stop_gradient.
TAU_GRADIENTS = ("contrast", "supervision", "gradient_agreement")
GRADIENT_AGREEMENT = "gradient_agreement"


def task_gradient_cosine(outputs, batch, *, ctr_weight: float, ctcvr_weight: float,
                         cvr_weight: float, cvr_rows: str = "clicked",
                         pos_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)):
  """Per instance, the cosine of the CTR and CVR task gradients at its instance vector.

  g_ctr_i = d(w_ctr l_ctr_i) / d e_i through the CTR logit; g_cvr_i = d(w_ctcvr
  l_ctcvr_i + w_cvr l_cvr_i) / d e_i through the CVR logit (the CTR logit of l_ctcvr held
  fixed). A loss reaches e_i only through row i's logits, so g = (d l_i / d logit_i)
  (d logit_i / d e_i) and

    cos_i = sign(a_i b_i) cos(d ctr_logit_i / d e_i, d cvr_logit_i / d e_i)

  with a_i, b_i the two losses' derivatives in their logits; 0 where either gradient is
  0 (a padding row; an unclicked row when only the clicked-only CVR loss is on).

  Args:
    outputs: the model's outputs with ``ctr_logit``, ``cvr_logit`` [B] and
      ``ctr_logit_grad``, ``cvr_logit_grad`` float [B, d_e]
      (``pico_jax.models.task_gradients.apply_model``).
    batch: ``click``, ``conversion``, ``mask`` [B].
    ctr_weight, ctcvr_weight, cvr_weight, cvr_rows, pos_weights: as in ``pico_objective``.

  Returns:
    float32 [B] in [-1, 1], under stop_gradient.
  """
  mask = batch["mask"]
  click, conversion = batch["click"], batch["conversion"]
  pw_ctr, pw_ctcvr, pw_cvr = pos_weights
  ctr_logit = jax.lax.stop_gradient(outputs["ctr_logit"])
  cvr_logit = jax.lax.stop_gradient(outputs["cvr_logit"])

  def ctr_side(a):
    return ctr_weight * bce_with_logits(a, click, mask, pos_weight=pw_ctr)

  def cvr_side(b):
    return (ctcvr_weight * ctcvr_loss(ctr_logit, b, click, conversion, mask,
                                      pos_weight=pw_ctcvr)
            + cvr_weight * cvr_loss(b, click, conversion, mask,
                                    clicked_only=cvr_rows == "clicked", pos_weight=pw_cvr))

  # Each loss is a mean of per-row terms: its gradient in row i's logit is that row's
  # derivative times a positive constant, which leaves the sign, all that is used.
  sign = jnp.sign(jax.grad(ctr_side)(ctr_logit)) * jnp.sign(jax.grad(cvr_side)(cvr_logit))
  j_ctr, j_cvr = (_normalize(jax.lax.stop_gradient(outputs[k]), eps=1e-30)
                  for k in ("ctr_logit_grad", "cvr_logit_grad"))
  return sign * jnp.clip(jnp.sum(j_ctr * j_cvr, axis=-1), -1.0, 1.0)


def agreement_target(cosine):
  """The target of sigmoid(r), tau's place in [tau_min, tau_max], for a gradient cosine:
  1 - max(cos, 0). Full agreement (1) asks for tau_min, the strongest contrast; none or
  conflict (<= 0) asks for tau_max, the weakest. float [B] -> float32 [B] in [0, 1]."""
  return 1.0 - jnp.maximum(cosine.astype(jnp.float32), 0.0)
CVR_ROWS = ("clicked", "all")  # the rows of the CVR loss: clicked (entire space) | all.
# Which tau the InfoNCE uses (training only; serving never computes a tau):
# "learned" (the model's), "oracle" (from the batch's true relatedness r_true,
# ``oracle_tau``) or "shuffled" (the model's, permuted across the batch).
TAU_SOURCES = ("learned", "oracle", "shuffled")


def oracle_tau(r_true, tau_min: float, tau_max: float):
  """The oracle temperature of a true relatedness, log-linear and decreasing:
  tau = tau_min^r tau_max^(1 - r), so r = 1 gives tau_min (the strongest contrast) and
  r = 0 tau_max. r_true float [B] in [0, 1] -> float32 [B]."""
  r = jnp.clip(jnp.asarray(r_true, jnp.float32), 0.0, 1.0)
  return jnp.exp(r * jnp.log(tau_min) + (1.0 - r) * jnp.log(tau_max))


def source_tau(tau, batch, source: str, *, rng=None, tau_range=(0.05, 1.0)):
  """The per-instance tau of the InfoNCE under ``source`` (``TAU_SOURCES``).

  Args:
    tau: the model's tau, float [B]. batch: holds ``r_true`` [B] for "oracle".
    rng: a PRNG key for "shuffled" (a permutation of the B rows, one per step).
    tau_range: (tau_min, tau_max) of ``oracle_tau``.
  Returns:
    float [B].
  """
  if source == "learned":
    return tau
  if source == "oracle":
    if "r_true" not in batch:
      raise ValueError("tau_source='oracle' needs the batch key 'r_true' (positive-control "
                       "data)")
    return oracle_tau(batch["r_true"], *tau_range).astype(tau.dtype)
  if source == "shuffled":
    if rng is None:
      raise ValueError("tau_source='shuffled' needs a PRNG key")
    return tau[jax.random.permutation(rng, tau.shape[0])]
  raise ValueError(f"tau_source={source!r}; expected one of {TAU_SOURCES}")


def pico_objective(outputs, batch, *, ctr_weight: float, ctcvr_weight: float,
                   cvr_weight: float, contrast_weight: float, cvr_rows: str = "clicked",
                   symmetric: bool = True,
                   normalize: bool = True, chunk_size: int = 0, implementation: str = "auto",
                   negative_groups: int = 1,
                   relatedness_supervision_weight: float = 0.0,
                   tau_gradient: str = "contrast", tau_prior_weight: float = 0.0,
                   tau_prior: float = 0.2,
                   pos_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                   calibrator_weight: float = 0.0, tau_source: str = "learned",
                   tau_range: tuple[float, float] = (0.05, 1.0), rng=None):
  """The total loss L = w_ctr L_ctr + w_ctcvr L_ctcvr + w_cvr L_cvr + lambda L_cl
  [+ w_sup L_relatedness + w_prior L_tau_prior + w_cal L_calibrator].

  Args:
    outputs: the model's output dict (``contrast`` terms are used when present).
    batch: the batch dict (``click``, ``conversion``, ``mask``).
    cvr_rows: "clicked" (CVR loss on clicked rows) or "all".
    pos_weights: the positive-class weights of the (ctr, ctcvr, cvr) BCEs.
    calibrator_weight: weight of ``calibrator_penalty`` on the CVR tower's entire-space
      probability: p_cvr when ``cvr_rows="all"``, p_ctcvr (where it is zero) otherwise.
    negative_groups: 1 for global negatives; the number of data shards for
      shard-local negatives.
    chunk_size, implementation: how the contrast is computed (``pico_contrastive_loss``).
    relatedness_supervision_weight: w_sup of the label-agreement loss
      L_relatedness = BCE(sigmoid(-r), [click == conversion]) on the relatedness logit.
    tau_gradient: "contrast" (tau is also trained by L_cl, which drives it to tau_min),
      "supervision" (tau enters L_cl through stop_gradient: only L_relatedness and
      L_tau_prior train it) or "gradient_agreement" (tau enters L_cl through
      stop_gradient and L_tau_agreement, a soft-label BCE of sigmoid(r_i) against
      ``agreement_target(task_gradient_cosine)``, trains it with weight 1; the outputs
      must hold the logit gradients of ``task_gradients.apply_model``).
    tau_prior_weight, tau_prior: w_prior of L_tau_prior = ((mean_i tau_i - tau_prior)
      / tau_prior)^2, a pull of the batch-mean tau (not of each tau_i) to tau_prior, so
      the spread of tau over instances stays free.
    tau_source, tau_range, rng: the tau of L_cl (``source_tau``); the reported
      ``tau_mean`` and every tau loss stay the model's.

  Returns:
    (total float32 scalar, dict of every term by name).
  """
  mask = batch["mask"]
  click, conversion = batch["click"], batch["conversion"]
  pw_ctr, pw_ctcvr, pw_cvr = pos_weights
  terms = {
      "loss_ctr": bce_with_logits(outputs["ctr_logit"], click, mask, pos_weight=pw_ctr),
      "loss_ctcvr": ctcvr_loss(outputs["ctr_logit"], outputs["cvr_logit"], click, conversion,
                               mask, pos_weight=pw_ctcvr),
      "loss_cvr": cvr_loss(outputs["cvr_logit"], click, conversion, mask,
                           clicked_only=cvr_rows == "clicked", pos_weight=pw_cvr),
  }
  total = (ctr_weight * terms["loss_ctr"] + ctcvr_weight * terms["loss_ctcvr"]
           + cvr_weight * terms["loss_cvr"])
  if calibrator_weight:
    p_later = outputs["p_cvr"] if cvr_rows == "all" else outputs["p_ctcvr"]
    terms["loss_calibrator"] = calibrator_penalty(outputs["p_ctr"], p_later, mask)
    total = total + calibrator_weight * terms["loss_calibrator"]
  if "z_ctr" in outputs:
    if tau_gradient not in TAU_GRADIENTS:
      raise ValueError(f"tau_gradient={tau_gradient!r}; expected one of {TAU_GRADIENTS}")
    kwargs = dict(symmetric=symmetric, normalize=normalize, chunk_size=chunk_size,
                  implementation=implementation)
    # dL_cl/dtau_i > 0 whenever the positive pair outscores the softmax average of its
    # candidates, so L_cl alone pushes every tau to tau_min; "supervision" removes that
    # push and leaves tau to the terms that carry a relatedness signal.
    tau = (outputs["tau"] if tau_gradient == "contrast"
           else jax.lax.stop_gradient(outputs["tau"]))
    tau = source_tau(tau, batch, tau_source, rng=rng, tau_range=tau_range)
    if negative_groups > 1:
      per_instance = local_contrastive_per_instance(
          outputs["z_ctr"], outputs["z_cvr"], tau, num_groups=negative_groups, **kwargs)
    else:
      per_instance = contrastive_per_instance(outputs["z_ctr"], outputs["z_cvr"], tau,
                                              **kwargs)
    terms["loss_contrast"] = _weighted_mean(per_instance, mask)
    terms["tau_mean"] = _weighted_mean(outputs["tau"], mask)
    total = total + contrast_weight * terms["loss_contrast"]
    if tau_prior_weight:
      terms["loss_tau_prior"] = jnp.square((terms["tau_mean"] - tau_prior) / tau_prior)
      total = total + tau_prior_weight * terms["loss_tau_prior"]
    if tau_gradient == GRADIENT_AGREEMENT:
      if "ctr_logit_grad" not in outputs:
        raise ValueError("tau_gradient='gradient_agreement' needs the outputs of "
                         "pico_jax.models.task_gradients.apply_model(..., "
                         "logit_gradients=True)")
      cosine = task_gradient_cosine(outputs, batch, ctr_weight=ctr_weight,
                                    ctcvr_weight=ctcvr_weight, cvr_weight=cvr_weight,
                                    cvr_rows=cvr_rows, pos_weights=pos_weights)
      terms["task_gradient_cosine"] = _weighted_mean(cosine, mask)
      terms["loss_tau_agreement"] = bce_with_logits(outputs["relatedness_logit"],
                                                    agreement_target(cosine), mask)
      total = total + terms["loss_tau_agreement"]
    if relatedness_supervision_weight:
      # Lower tau = more related: sigmoid(-r) is the predicted probability that the two
      # tasks agree on this instance (y == c).
      agree = (click == conversion).astype(jnp.float32)
      terms["loss_relatedness"] = bce_with_logits(-outputs["relatedness_logit"], agree, mask)
      total = total + relatedness_supervision_weight * terms["loss_relatedness"]
  terms["loss"] = total
  return total, terms
