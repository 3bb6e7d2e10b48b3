"""Score raw log files with a trained run: one output row per input row.

  python launch/predict.py --workdir=RUN [--checkpoint=best] --input=raw.csv[,more.csv] \
      --format=aliexpress --output=preds.csv
  python launch/predict.py --artifact=EXPORTED_DIR --input=raw.csv --output=preds.csv

Raw rows (of the format the run's store was built from, ``table`` included) are
encoded with the vocabularies and dense transform of the run's training store and
scored by the run's checkpoint (``--checkpoint``, default the best where the run
recorded one), or encoded and scored by an exported serving artifact alone
(``--artifact``); see ``pico_jax.predict`` for the output and the checks.
"""

import json

from absl import flags

from pico_jax import cli
from pico_jax.ingest import blocks

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's work directory (not "
                               "with --artifact).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "default (best when the run "
                                  "recorded one, else latest) | best | latest | a step "
                                  "number (default: default).")
_ARTIFACT = flags.DEFINE_string("artifact", None, "An exported serving artifact directory "
                                "(launch/export.py) instead of a checkpoint.")
_INPUT = flags.DEFINE_list("input", None, "Raw files to score.", required=True)
_FORMAT = flags.DEFINE_string("format", None, "The inputs' format (default: the training "
                              "store's; must match).")
_OUTPUT = flags.DEFINE_string("output", None, "CSV of predictions to write.", required=True)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4096, "Rows per model call with "
                                   "--artifact (checkpoints use the run's eval batch size).")
_CHUNK_ROWS = flags.DEFINE_integer("chunk_rows", blocks.CHUNK_ROWS, "Lines parsed at a "
                                   "time.")
_PROGRESS = flags.DEFINE_bool("progress", True, "A progress bar on stderr.")


def main():
  from pico_jax import predict
  if _ARTIFACT.value:
    for flag, value in (("--checkpoint", _CHECKPOINT.value), ("--workdir", _WORKDIR.value)):
      if value:  # the artifact alone scores: a run named beside it would be ignored.
        raise cli.FlagError(f"--artifact and {flag}: give one of them")
    score, encoding = predict.artifact_scorer(_ARTIFACT.value, _BATCH_SIZE.value)
  elif not _WORKDIR.value:
    raise cli.FlagError("give --workdir (a trained run) or --artifact")
  else:
    score, encoding = predict.checkpoint_scorer(_WORKDIR.value, _CHECKPOINT.value)
  summary = predict.predict_files(score, encoding, _INPUT.value, _OUTPUT.value,
                                  fmt_name=_FORMAT.value, chunk_rows=_CHUNK_ROWS.value,
                                  progress=_PROGRESS.value)
  print(f"{summary['rows']:,} rows scored ({summary['rows_per_s']:,.0f} rows/s) "
        f"-> {_OUTPUT.value}")
  zeros = {k: v for k, v in summary["id0"].items() if v}
  print("ids mapped to id 0 (unseen, rare or missing) per field (rows for single-valued "
        "fields, values for multi-valued ones): "
        + (json.dumps(zeros) if zeros else "none"))
  if summary["metrics"] is not None:
    print(json.dumps(summary["metrics"], indent=2, sort_keys=True))


if __name__ == "__main__":
  cli.run(main)
