"""Evaluate a trained run on a split: python launch/evaluate.py --workdir DIR.

  python launch/evaluate.py --workdir DIR [--split test] [--checkpoint best|latest|STEP]
      [--output FILE] [--correct_pos_weight]

Rebuilds the model from the config saved in the checkpoint, predicts every row of the
split (gathered over processes) and prints and writes the metrics of
``pico_jax.metrics.task_metrics`` as JSON (default: DIR/eval_<split>_step<STEP>.json).
``--correct_pos_weight`` scores the probabilities corrected for the run's
``loss.pos_weight`` (``pico_jax/calibration.py``).
"""

import json
import logging
import sys

from absl import app, flags


def evaluate(workdir: str, split: str = "test", checkpoint: str = "latest",
             correct_pos_weight: bool = False) -> dict:
  """The metrics of ``split`` for the chosen checkpoint, with ``step``/``split`` keys.

  The run is rebuilt from its saved config by ``pico_jax.train.trainer.build``, so the
  evaluation is compiled as in training (same shardings, same eval step).
  """
  from pico_jax.train.restore import restore
  trainer = restore(workdir, checkpoint)
  result, predictions = trainer.evaluate(split)
  if correct_pos_weight:
    from pico_jax import calibration, metrics
    predictions = calibration.correct_predictions(predictions, trainer.config.loss)
    result = metrics.task_metrics(predictions, trainer.dataset.splits[split],
                                  trainer.dataset.info)
  return {"step": trainer.resumed_step, "split": split, "checkpoint": checkpoint,
          "pos_weight_corrected": correct_pos_weight, **result}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", force=True)
  result = evaluate(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value, _CORRECT.value)
  from pico_jax.workdir import eval_file
  output = _OUTPUT.value or eval_file(_WORKDIR.value, result["split"], result["step"])
  text = json.dumps(result, indent=2, sort_keys=True)
  print(text)
  with open(output, "w") as f:
    f.write(text + "\n")
  print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
  # Flags are defined only when run as a script, so tests can import several CLIs.
  _WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory.", required=True)
  _SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "best | latest | a step number.")
  _OUTPUT = flags.DEFINE_string("output", "", "JSON file (default in the work directory).")
  _CORRECT = flags.DEFINE_bool("correct_pos_weight", False, "Score probabilities corrected "
                               "for the run's loss.pos_weight.")
  app.run(main)
