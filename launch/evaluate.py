"""Evaluate a trained run on a split: python launch/evaluate.py --workdir DIR.

  python launch/evaluate.py --workdir DIR [--split test]
      [--checkpoint default|best|latest|STEP] [--output FILE] [--correct_pos_weight]
      [--allow_new_data]

Rebuilds the model from the config saved in the checkpoint, predicts every row of the
split (gathered over processes), prints a table of the main metrics per task and writes
all the metrics of ``pico_jax.metrics.task_metrics`` as JSON (default:
DIR/eval_<split>_step<STEP>.json), saying where; see ``pico_jax.train.restore.evaluate``.
"""

import json

from absl import flags

from pico_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory.", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "default", "default (best when the run "
                                  "recorded one, else latest) | best | latest | a step "
                                  "number.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file (default in the work directory).")
_CORRECT = flags.DEFINE_bool("correct_pos_weight", False, "Score probabilities corrected "
                             "for the run's loss.pos_weight.")
_NEW_DATA = flags.DEFINE_bool("allow_new_data", False, "Evaluate even when the data differ "
                              "from those the checkpoint was trained on (other fingerprint).")


def main():
  from pico_jax.train.reporting import summary_table
  from pico_jax.train.restore import evaluate
  from pico_jax.workdir import eval_file
  result = evaluate(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value, _CORRECT.value,
                    _NEW_DATA.value)
  output = _OUTPUT.value or eval_file(_WORKDIR.value, result["split"], result["step"])
  with open(output, "w") as f:
    f.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
  print(summary_table(result))
  print(f"all {len(result)} values: {output}")


if __name__ == "__main__":
  cli.run(main)
