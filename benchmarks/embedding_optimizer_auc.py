"""Test AUC of the lazy embedding optimizer against dense Adam, a few seeds.

  python benchmarks/embedding_optimizer_auc.py                  # seeds 0,1,2
  python benchmarks/embedding_optimizer_auc.py --seeds=0,1 --steps=1000

Trains configs/default.py (the synthetic default, PICO on) once per seed and embedding
optimizer, and prints one JSON line per run (test CTR / CVR / CTCVR AUC and the oracle
AUCs) and a summary line: per metric, the mean over seeds of (lazy - dense) and the
standard deviation over seeds of the dense runs (the seed noise it is compared with).
The seed changes the data, the initialisation and the order alike.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import common

from configs import default
from pico_jax.train.loop import train_and_evaluate

METRICS = ("ctr_auc", "cvr_auc", "ctcvr_auc")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--optimizers", default="dense,lazy_adam")
  parser.add_argument("--steps", type=int, default=0, help="0: the config's train.steps")
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  optimizers = args.optimizers.split(",")
  results = {opt: [] for opt in optimizers}
  for seed in map(int, args.seeds.split(",")):
    for opt in optimizers:
      config = default.get_config()
      config.seed = seed
      config.optimizer.embedding_optimizer = opt
      config.checkpoint.enabled = False
      config.train.eval_every = 10 ** 9  # evaluate at the end only.
      if args.steps:
        config.train.steps = args.steps
      start = time.perf_counter()
      with tempfile.TemporaryDirectory() as workdir:
        metrics = train_and_evaluate(config, workdir)
      results[opt].append(metrics)
      common.emit({"benchmark": "embedding_optimizer_auc", "seed": seed,
                   "embedding_optimizer": opt, "steps": config.train.steps,
                   "seconds": round(time.perf_counter() - start, 1),
                   **{k: round(float(v), 5) for k, v in metrics.items()
                      if k in METRICS or k.startswith("oracle_")}})
  if len(optimizers) == 2 and len(results[optimizers[0]]) > 1:
    base, other = optimizers
    summary = {"benchmark": "embedding_optimizer_auc_summary", "reference": base,
               "compared": other, "seeds": args.seeds}
    for k in METRICS:
      diffs = [b[k] - a[k] for a, b in zip(results[base], results[other])]
      summary[f"{k}_mean_diff"] = round(statistics.mean(diffs), 5)
      summary[f"{k}_diff_std"] = round(statistics.stdev(diffs), 5)
      summary[f"{k}_seed_std_{base}"] = round(statistics.stdev(r[k] for r in results[base]), 5)
    common.emit({**summary, **common.machine()})


if __name__ == "__main__":
  main()
