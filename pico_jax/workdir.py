"""The work directory of a run: where each file it writes lives.

Every file a run writes has its name here::

  WORKDIR/
    checkpoints/<step>/          one orbax checkpoint per saved step, with the items
                                 state/  (params, optimizer state, step, rng)
                                 data/   (the Grain iterator position of every process)
                                 config/ (the run's config as JSON)
                                 best/   (the early-stopping best params, when on)
    checkpoints/<step>.orbax-checkpoint-tmp-*/   a save cut short (ignored)
    metrics.jsonl                one JSON record per evaluation
    train_metrics.jsonl          one JSON record per logging window
    tensorboard/                 TensorBoard event files
    tau_<split>.npz              per-row tau of the latest evaluation of a split
    eval_<split>_step<N>.json    launch/evaluate.py's result
    export/step_<N>/             launch/export.py's artifact (default --output)
    plots/                       launch/plot.py's figures (default --output)
    result.json                  launch/experiment.py: the finished run's test metrics

What the checkpoints hold, how they are kept and which one is best is
``pico_jax/train/checkpoint.py``'s business; this module only names the paths.
"""

from __future__ import annotations

import os

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TRAIN_METRICS_FILE = "train_metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "export"
PLOTS_DIR = "plots"
RESULT_FILE = "result.json"
# orbax writes a step into <step> + this marker + a suffix, renamed when complete.
TMP_MARKER = ".orbax-checkpoint-tmp"


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def tau_file(split: str) -> str:
  return f"tau_{split}.npz"


def eval_file(workdir: str, split: str, step: int) -> str:
  return os.path.join(workdir, f"eval_{split}_step{step}.json")


def export_dir(workdir: str, step: int) -> str:
  return os.path.join(workdir, EXPORT_DIR, f"step_{step}")
