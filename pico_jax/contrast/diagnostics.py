"""What an evaluation says about PICO's temperature, for the training log.

``TemperatureReport`` is one of the training loop's actions: after every evaluation
(and after the test) it logs the mean tau of each segment beside the segment's true
relatedness rho where tau is learned, and once a run the notice that no temperature is personalised
(``inactive_temperature_notice``).
"""

from __future__ import annotations

import logging
from typing import Sequence

import ml_collections

log = logging.getLogger("pico_jax")


def inactive_temperature_notice(result: dict, contrast: ml_collections.ConfigDict,
                                tolerance: float = 0.01) -> str | None:
  """The notice to log when no temperature is personalised, else None.

  ``contrast.mode`` fixed: every instance has tau_init, by choice (PICO's recipe,
  RESULTS.md section 6). Global or personalized: the mean tau of every segment
  (``tau_segment_<s>`` of ``result``; ``tau_mean`` without segments) lies within
  ``tolerance * (tau_max - tau_min)`` of ``tau_min``, so the contrast acts as ``fixed``
  at tau_min.
  """
  if contrast.mode == "fixed":
    return (f"the personalised temperature is inactive: contrast.mode=fixed gives every "
            f"instance tau={contrast.tau_init:g} (on the positive-control test bed a "
            "learned tau beat neither a fixed one nor its shuffled control, RESULTS.md "
            "section 6); contrast.mode=personalized learns one per instance")
  if contrast.mode not in ("global", "personalized"):
    return None
  taus = [v for k, v in sorted(result.items()) if k.startswith("tau_segment_")]
  taus = taus or [result[k] for k in ("tau_mean",) if k in result]
  floor = contrast.tau_min + tolerance * (contrast.tau_max - contrast.tau_min)
  if not taus or max(taus) > floor:
    return None
  return (f"the personalised temperature is inactive: tau is at tau_min="
          f"{contrast.tau_min:g} for every segment (highest segment mean {max(taus):.4f}); "
          "the InfoNCE alone drives it there (docs/method.md, section 4). Train it with "
          "contrast.tau_gradient=gradient_agreement, or say what it amounts to: "
          f"contrast.mode=fixed with contrast.tau_init={contrast.tau_min:g}")


def tau_rho_line(result: dict, rho: Sequence[float] | None) -> str | None:
  """``mean tau per segment (rho = true relatedness): seg <s>: tau=.. rho=.., ...`` of
  the ``tau_segment_<s>`` of ``result``; None without segments or without ``rho`` (the
  dataset's ``info["rho"]``, one float per segment)."""
  keys = sorted(k for k in result if k.startswith("tau_segment_"))
  if not keys or rho is None:
    return None
  segments = [k.rsplit("_", 1)[1] for k in keys]
  return "mean tau per segment (rho = true relatedness): " + ", ".join(
      f"seg {s}: tau={result[k]:.3f} rho={rho[int(s)]:.2f}" for k, s in zip(keys, segments))


class TemperatureReport:
  """Logs what each evaluation's metrics say about the temperature (``tau_rho_line``,
  and ``inactive_temperature_notice`` the first time it applies).

  Args:
    contrast: the run's ``config.contrast``.
    rho: the dataset's true relatedness per segment (``info["rho"]``), or None.
  """

  def __init__(self, contrast: ml_collections.ConfigDict, rho: Sequence[float] | None):
    self.contrast, self.rho = contrast, rho
    self.notice_given = False

  def __call__(self, result: dict) -> None:
    """``result``: the metrics of one evaluation (``pico_jax.metrics.task_metrics``)."""
    # A fixed tau is the same in every segment by construction: nothing to set beside rho.
    line = tau_rho_line(result, self.rho) if self.contrast.mode != "fixed" else None
    if line:
      log.info(line)
    notice = inactive_temperature_notice(result, self.contrast)
    if notice and not self.notice_given:
      # A fixed tau is a choice, said for the record; a learned one at its floor is not.
      (log.info if self.contrast.mode == "fixed" else log.warning)(notice)
      self.notice_given = True
