"""Evaluate a trained run on a split: python launch/evaluate.py --workdir DIR.

  python launch/evaluate.py --workdir DIR [--split test] [--checkpoint best|latest|STEP]
      [--output FILE]

Rebuilds the model from the config saved in the checkpoint, predicts every row of the
split (gathered over processes) and prints and writes the metrics of
``pico_jax.metrics.task_metrics`` as JSON (default: DIR/eval_<split>_step<STEP>.json).
"""

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402


def evaluate(workdir: str, split: str = "test", checkpoint: str = "latest") -> dict:
  """The metrics of ``split`` for the chosen checkpoint, with ``step``/``split`` keys."""
  import jax
  from pico_jax import metrics
  from pico_jax.train import loop
  from pico_jax.train.restore import restore
  from pico_jax.train.step import eval_step
  import functools

  r = restore(workdir, checkpoint)
  if split not in r.dataset.splits:
    raise ValueError(f"--split={split!r}: the dataset has splits {sorted(r.dataset.splits)}")
  predict = jax.jit(functools.partial(eval_step, model=r.model))
  preds = loop.predict_split(predict, r.params, r.dataset.splits[split], r.mesh,
                             r.config.train.eval_batch_size)
  result = metrics.task_metrics(preds, r.dataset.splits[split], r.dataset.info)
  return {"step": r.step, "split": split, "checkpoint": checkpoint, **result}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", force=True)
  result = evaluate(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
  output = _OUTPUT.value or os.path.join(
      _WORKDIR.value, f"eval_{result['split']}_step{result['step']}.json")
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
  app.run(main)
