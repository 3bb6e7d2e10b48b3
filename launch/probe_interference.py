"""Train one run with checkpoints, then measure each loss term's gradient at each module.

  python launch/probe_interference.py --config=configs/default.py --workdir=DIR \\
      --config.contrast.mode=fixed --config.data.synthetic.cvr_bias=-6.0 \\
      --every=100 --num_batches=8

Trains ``config`` (checkpoints every ``--every`` steps, all kept) unless ``DIR`` already
holds them, then for every checkpoint averages ``pico_jax.diagnostics.term_gradients`` (``diagnostics.probe``)
over the first ``--num_batches`` training batches (rows in order, the same for every
checkpoint) and prints one line per step: the norms of the weighted CTCVR and
contrastive gradients at the CVR and CTR towers, their ratio at the CVR tower, and the
cosine between them there. Writes ``DIR/probe.json``.
"""

from absl import flags

from pico_jax import cli

_CONFIG = cli.define_config("configs/default.py", "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_EVERY = flags.DEFINE_integer("every", 100, "Checkpoint (and probe) every N steps.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 8, "Training batches per probe.")


def main():
  from pico_jax import config as config_lib
  from pico_jax import diagnostics
  config = config_lib.validate(_CONFIG.value)
  rows = diagnostics.probe(config, _WORKDIR.value, _EVERY.value, _NUM_BATCHES.value)
  keys = ["grad_loss_ctcvr_cvr_tower", "grad_loss_contrast_cvr_tower",
          "ratio_contrast_ctcvr_cvr_tower", "cos_contrast_ctcvr_cvr_tower",
          "grad_loss_ctr_ctr_tower", "grad_loss_contrast_ctr_tower"]
  keys = [k for k in keys if k in rows[0]]
  print("| step | " + " | ".join(keys) + " |")
  print("|---|" + "---|" * len(keys))
  for row in rows:
    print(f"| {row['step']} | " + " | ".join(f"{row[k]:.4g}" for k in keys) + " |")


if __name__ == "__main__":
  cli.run(main)
