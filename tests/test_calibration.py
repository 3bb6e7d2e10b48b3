"""Calibration metrics against direct numpy computations, and the pos_weight correction."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from pico_jax import calibration, metrics
from pico_jax.losses import pico_objective


def _reference_curve(labels, probs, num_bins):
  """Sorted rows split into num_bins runs of ceil-boundaries, one bin at a time."""
  order = np.argsort(probs, kind="stable")
  y, p = labels[order], probs[order]
  n = len(p)
  predicted, observed = [], []
  for k in range(num_bins):
    lo, hi = math.ceil(k * n / num_bins), math.ceil((k + 1) * n / num_bins)
    predicted.append(p[lo:hi].mean())
    observed.append(y[lo:hi].mean())
  return np.array(predicted), np.array(observed)


@pytest.mark.parametrize("n,num_bins", [(1000, 10), (997, 7), (5, 5)])
def test_pcoc_ece_and_curve_match_numpy(n, num_bins):
  rng = np.random.default_rng(n)
  probs = rng.random(n) ** 2
  labels = (rng.random(n) < probs).astype(np.float64)
  labels[0] = 1.0  # at least one positive
  predicted, observed = _reference_curve(labels, probs, num_bins)
  got_p, got_o, mass = metrics.reliability_curve(labels, probs, num_bins)
  np.testing.assert_allclose(got_p, predicted, rtol=1e-12)
  np.testing.assert_allclose(got_o, observed, rtol=1e-12)
  assert mass.sum() == n and mass.max() - mass.min() <= 1
  sizes = np.array([math.ceil((k + 1) * n / num_bins) - math.ceil(k * n / num_bins)
                    for k in range(num_bins)])
  expected_ece = np.sum(sizes * np.abs(predicted - observed)) / n
  assert metrics.ece(labels, probs, num_bins) == pytest.approx(expected_ece, rel=1e-12)
  assert metrics.pcoc(labels, probs) == pytest.approx(probs.sum() / labels.sum(), rel=1e-12)
  # Uniform weights change nothing.
  assert metrics.ece(labels, probs, num_bins, weights=np.full(n, 2.0)) == pytest.approx(
      expected_ece, rel=1e-12)


def test_miscalibrated_predictors_are_detected():
  rng = np.random.default_rng(0)
  logit = rng.normal(-1.0, 1.5, 50_000)
  truth = 1 / (1 + np.exp(-logit))
  labels = (rng.random(truth.size) < truth).astype(np.float64)
  calibrated = dict(pcoc=metrics.pcoc(labels, truth), ece=metrics.ece(labels, truth))
  assert abs(calibrated["pcoc"] - 1) < 0.02 and calibrated["ece"] < 0.01
  # Odds times 3 (what pos_weight 3 does): over-predicts, seen by both metrics.
  inflated = 1 / (1 + np.exp(-(logit + np.log(3))))
  assert metrics.pcoc(labels, inflated) > 1.5 and metrics.ece(labels, inflated) > 0.08
  # Over-confident (logits x 3, about the base rate): PCOC misses much of it, ECE does not.
  sharp = 1 / (1 + np.exp(-(3 * logit + 2)))
  assert metrics.ece(labels, sharp) > 0.05
  p, o, _ = metrics.reliability_curve(labels, sharp)
  assert p[0] < o[0] and p[-1] > o[-1]  # too low at the bottom, too high at the top


def test_task_metrics_score_calibration_on_each_tasks_rows():
  rng = np.random.default_rng(1)
  n = 2_000
  click = (rng.random(n) < 0.3).astype(np.float32)
  conv = click * (rng.random(n) < 0.4)
  preds = {"p_ctr": rng.uniform(0.1, 0.5, n), "p_cvr": rng.uniform(0.2, 0.6, n)}
  preds["p_ctcvr"] = preds["p_ctr"] * preds["p_cvr"]
  out = metrics.task_metrics(preds, {"click": click, "conversion": conv})
  clicked = click > 0
  assert out["ctr_pcoc"] == pytest.approx(preds["p_ctr"].sum() / click.sum())
  assert out["cvr_pcoc"] == pytest.approx(preds["p_cvr"][clicked].sum() / conv.sum())
  assert out["ctcvr_pcoc"] == pytest.approx(preds["p_ctcvr"].sum() / conv.sum())
  assert out["cvr_ece"] == pytest.approx(metrics.ece(conv[clicked], preds["p_cvr"][clicked]))
  p, o = metrics.reliability_from_metrics(out, "ctr")
  np.testing.assert_allclose((p, o), metrics.reliability_curve(click, preds["p_ctr"])[:2])
  assert "cvr_all_rows_pcoc" not in out
  out = metrics.task_metrics(preds, {"click": click, "conversion": conv},
                             {"task_relation": "independent"})
  assert out["cvr_all_rows_pcoc"] == pytest.approx(preds["p_cvr"].sum() / conv.sum())


def _loss_config(pos_weight, ctcvr_weight, cvr_weight):
  return ml_collections.ConfigDict(dict(
      ctr_weight=1.0, ctcvr_weight=ctcvr_weight, cvr_weight=cvr_weight,
      pos_weight=dict(zip(("ctr", "ctcvr", "cvr"), pos_weight))))


def _fit_cells(batch, cell, num_cells, loss):
  """Per-cell CTR and CVR logits minimising ``pico_objective`` (a saturated model: the
  unweighted optimum is each cell's observed rates, so it is calibrated)."""
  kwargs = dict(ctr_weight=loss.ctr_weight, ctcvr_weight=loss.ctcvr_weight,
                cvr_weight=loss.cvr_weight, contrast_weight=0.0,
                pos_weights=(loss.pos_weight.ctr, loss.pos_weight.ctcvr,
                             loss.pos_weight.cvr))

  def objective(logits):
    a, b = logits[0][cell], logits[1][cell]
    p_ctr, p_cvr = jax.nn.sigmoid(a), jax.nn.sigmoid(b)
    outputs = dict(ctr_logit=a, cvr_logit=b, p_ctr=p_ctr, p_cvr=p_cvr, p_ctcvr=p_ctr * p_cvr)
    return pico_objective(outputs, batch, **kwargs)[0]

  tx = optax.adam(0.05)

  def body(carry, _):
    logits, state = carry
    updates, state = tx.update(jax.grad(objective)(logits), state)
    return (optax.apply_updates(logits, updates), state), None

  logits = jnp.zeros((2, num_cells))
  (logits, _), _ = jax.lax.scan(body, (logits, tx.init(logits)), None, length=4_000)
  a, b = jax.nn.sigmoid(logits[0][cell]), jax.nn.sigmoid(logits[1][cell])
  return {"p_ctr": np.asarray(a, np.float64), "p_cvr": np.asarray(b, np.float64),
          "p_ctcvr": np.asarray(a * b, np.float64)}


@pytest.mark.parametrize("pos_weight,ctcvr_weight,cvr_weight", [
    ((4.0, 20.0, 1.0), 1.0, 0.0),   # ESMM: p_cvr through the product
    ((4.0, 1.0, 10.0), 0.0, 1.0),   # p_cvr by its own BCE on clicked rows
])
def test_pos_weight_correction_restores_pcoc(pos_weight, ctcvr_weight, cvr_weight):
  rng = np.random.default_rng(2)
  num_cells, n = 6, 12_000
  cell = rng.integers(0, num_cells, n)
  ctr, cvr = rng.uniform(0.02, 0.3, num_cells), rng.uniform(0.02, 0.2, num_cells)
  click = (rng.random(n) < ctr[cell]).astype(np.float32)
  conv = (click * (rng.random(n) < cvr[cell])).astype(np.float32)
  batch = {"click": jnp.asarray(click), "conversion": jnp.asarray(conv),
           "mask": jnp.ones(n, jnp.float32)}
  columns = {"click": click, "conversion": conv}

  def pcocs(preds):
    out = metrics.task_metrics(preds, columns)
    return np.array([out["ctr_pcoc"], out["cvr_pcoc"], out["ctcvr_pcoc"]])

  unweighted = _fit_cells(batch, cell, num_cells, _loss_config((1.0,) * 3, ctcvr_weight,
                                                               cvr_weight))
  np.testing.assert_allclose(pcocs(unweighted), 1, atol=2e-3)
  loss = _loss_config(pos_weight, ctcvr_weight, cvr_weight)
  weighted = _fit_cells(batch, cell, num_cells, loss)
  assert np.all(pcocs(weighted) > 1.5)
  corrected = calibration.correct_predictions(weighted, loss)
  np.testing.assert_allclose(pcocs(corrected), 1, atol=5e-3)
  # Correcting each factor instead of the product would miss for ESMM.
  if ctcvr_weight:
    naive = calibration.correct(weighted["p_ctr"], 4.0) * calibration.correct(
        weighted["p_cvr"], 20.0)
    assert abs(naive.sum() / conv.sum() - 1) > 0.05


def test_correction_is_exact_inverse_and_refuses_two_cvr_losses():
  p = np.linspace(0.0, 1.0, 11)
  for w in (0.25, 1.0, 7.0):
    biased = w * p / (w * p + 1 - p)  # the weighted optimum
    np.testing.assert_allclose(calibration.correct(biased, w), p, atol=1e-12)
  with pytest.raises(ValueError, match="ctcvr_weight and loss.cvr_weight"):
    calibration.correct_predictions({"p_ctr": p, "p_cvr": p, "p_ctcvr": p},
                                    _loss_config((2.0, 1.0, 1.0), 1.0, 1.0))
  # jax arrays go through jax (as in the exported serving function).
  out = jax.jit(lambda q: calibration.correct_predictions(
      {"p_ctr": q, "p_cvr": q, "p_ctcvr": q * q}, _loss_config((2.0, 3.0, 1.0), 1.0, 0.0)))(
          jnp.asarray(p[1:-1], jnp.float32))
  assert all(isinstance(v, jax.Array) for v in out.values())
