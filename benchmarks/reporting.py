"""What one evaluation's TensorBoard record costs: the reliability curves as scalars (20
per task, as they were written) beside one rendered image per split (as
``pico_jax.train.reporting.Reporter.eval`` writes them now), in alternating
repetitions of one run.

  python benchmarks/reporting.py            # 3 tasks of 10 bins, 15 repetitions

One JSON line: the machine, then the median seconds of each mode over ``--reps``:

- ``scalars``: ``add_scalar`` of every reliability point of the evaluation's metrics;
- ``image``: ``plots.reliability_figure`` rendered by ``plots.rgb`` and ``add_image``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import common  # noqa: E402
import numpy as np  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402

from pico_jax import metrics, plots  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reps", type=int, default=15)
  parser.add_argument("--rows", type=int, default=100_000)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  probs = rng.uniform(0, 1, args.rows)
  labels = (rng.uniform(0, 1, args.rows) < probs).astype(np.float64)
  evaluation = {}
  for task in ("ctr", "cvr", "ctcvr"):
    evaluation.update(metrics.calibration_metrics(task, labels, probs))
  points = {k: v for k, v in evaluation.items() if metrics.is_reliability_point(k)}

  def scalars(writer, step):
    for key, value in points.items():
      writer.add_scalar(f"val/{key}", value, step)

  def image(writer, step):
    fig = plots.reliability_figure(evaluation, f"val, step {step}")
    writer.add_image("val/reliability", plots.rgb(fig), step, dataformats="HWC")

  times = {"scalars": [], "image": []}
  with tempfile.TemporaryDirectory() as logdir:
    writer = SummaryWriter(logdir=logdir)
    image(writer, 0)  # matplotlib's first figure loads its fonts.
    for rep in range(args.reps):
      modes = [scalars, image] if rep % 2 == 0 else [image, scalars]
      for mode in modes:
        start = time.perf_counter()
        mode(writer, rep + 1)
        writer.flush()
        times[mode.__name__].append(time.perf_counter() - start)
    writer.close()
  common.emit({**common.machine(), "reliability_points": len(points), "reps": args.reps,
               "load_average_1min": os.getloadavg()[0],
               **{f"{mode}_s": statistics.median(ts) for mode, ts in times.items()}})


if __name__ == "__main__":
  main()
