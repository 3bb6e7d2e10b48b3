"""Train one run with checkpoints, then measure each loss term's gradient at each module.

  python launch/probe_interference.py --config=configs/default.py --workdir=DIR \\
      --config.contrast.mode=fixed --config.data.synthetic.cvr_bias=-6.0 \\
      --every=100 --num_batches=8

Trains ``config`` (checkpoints every ``--every`` steps, all kept) unless ``DIR`` already
holds them, then for every checkpoint averages ``pico_jax.diagnostics.term_gradients``
over the first ``--num_batches`` training batches (rows in order, the same for every
checkpoint) and prints one line per step: the norms of the weighted CTCVR and
contrastive gradients at the CVR and CTR towers, their ratio at the CVR tower, and the
cosine between them there. Writes ``DIR/probe.json``.
"""

import functools
import json
import os

from absl import app, flags
from ml_collections import config_flags


def probe(config, workdir: str, every: int, num_batches: int) -> list[dict]:
  """Trains (if needed) and returns one dict of mean gradient measures per checkpoint."""
  import jax
  import numpy as np
  from pico_jax import diagnostics
  from pico_jax.data import pipeline
  from pico_jax.train.loop import train_and_evaluate
  from pico_jax.train.restore import restore
  from pico_jax.train.step import objective_kwargs

  config.checkpoint.enabled = True
  config.checkpoint.every_steps = every
  config.checkpoint.keep = config.train.steps // every + 1
  steps = list(range(every, config.train.steps + 1, every))
  if not os.path.exists(os.path.join(workdir, "checkpoints", str(steps[-1]))):
    train_and_evaluate(config, workdir)
  rows = []
  for step in steps:
    trainer = restore(workdir, str(step))
    measure = jax.jit(functools.partial(diagnostics.term_gradients, trainer.model,
                                        objective=objective_kwargs(trainer.config,
                                                                   trainer.mesh)))
    batches = pipeline.eval_batches(trainer.dataset.splits["train"],
                                    global_batch_size=trainer.config.train.batch_size)
    values = [measure(trainer.state.params, b) for b, _ in zip(batches, range(num_batches))]
    trainer.close()
    row = {"step": step, **{k: float(np.mean([v[k] for v in values])) for k in values[0]}}
    if "grad_loss_contrast_cvr_tower" in row:
      row["ratio_contrast_ctcvr_cvr_tower"] = (row["grad_loss_contrast_cvr_tower"]
                                               / row["grad_loss_ctcvr_cvr_tower"])
    rows.append(row)
  with open(os.path.join(workdir, "probe.json"), "w") as f:
    json.dump(rows, f, indent=2)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from pico_jax import config as config_lib
  config = config_lib.validate(_CONFIG.value)
  rows = probe(config, _WORKDIR.value, _EVERY.value, _NUM_BATCHES.value)
  keys = ["grad_loss_ctcvr_cvr_tower", "grad_loss_contrast_cvr_tower",
          "ratio_contrast_ctcvr_cvr_tower", "cos_contrast_ctcvr_cvr_tower",
          "grad_loss_ctr_ctr_tower", "grad_loss_contrast_ctr_tower"]
  keys = [k for k in keys if k in rows[0]]
  print("| step | " + " | ".join(keys) + " |")
  print("|---|" + "---|" * len(keys))
  for row in rows:
    print(f"| {row['step']} | " + " | ".join(f"{row[k]:.4g}" for k in keys) + " |")


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Run config.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  _EVERY = flags.DEFINE_integer("every", 100, "Checkpoint (and probe) every N steps.")
  _NUM_BATCHES = flags.DEFINE_integer("num_batches", 8, "Training batches per probe.")
  app.run(main)
