"""Export a trained run for serving: python launch/export.py --workdir DIR.

  python launch/export.py --workdir DIR [--output PATH] [--checkpoint default|best|latest|STEP]
      [--platforms cpu,cuda,tpu] [--correct_pos_weight] [--tf_saved_model]

Writes the ``jax.export`` artifact described in ``pico_jax/export.py``: the serving
function (features -> p_ctr, p_cvr, p_ctcvr) without the contrast head, its params,
the training store's feature encoding (so ``pico_jax.export.load(DIR).score`` and
``launch/predict.py --artifact`` score raw rows with nothing else at hand), a manifest
with every file's checksum, and ``serve.py``, which loads and runs it with jax and
numpy only. ``--correct_pos_weight`` serves probabilities corrected for the run's
``loss.pos_weight`` (``pico_jax/calibration.py``). ``--tf_saved_model`` adds a TF
SavedModel whose signature takes raw feature columns (``pico_jax/serving/saved_model.py``).
"""

from absl import flags

from pico_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Artifact directory (default: "
                              "WORKDIR/export/step_<STEP>).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "default", "default (best when the run "
                                  "recorded one, else latest) | best | latest | a step "
                                  "number.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "Lowering platforms.")
_CORRECT = flags.DEFINE_bool("correct_pos_weight", False, "Serve probabilities corrected "
                             "for the run's loss.pos_weight.")
_TF = flags.DEFINE_bool("tf_saved_model", False, "Also write a TF SavedModel for TF "
                        "Serving, raw features in (needs: pip install -e .[tf]).")


def main():
  from pico_jax import export
  from pico_jax.serving import saved_model
  if _TF.value:
    try:
      saved_model.require_tensorflow()
    except ImportError as e:
      raise cli.FlagError(f"--tf_saved_model: {e}") from None
  output, manifest, trained = export.export_run(
      _WORKDIR.value, _OUTPUT.value, checkpoint=_CHECKPOINT.value,
      platforms=_PLATFORMS.value, correct_pos_weight=_CORRECT.value,
      tf_saved_model=_TF.value)
  encoded = "raw rows of format " + manifest["encoding"]["format"] if manifest[
      "encoding"] else "encoded features only (the run trained on no raw-file store)"
  print(f"exported step {manifest['step']} to {output}: {manifest['num_params']} serving "
        f"params (of {trained} trained; {trained - manifest['num_params']} contrast-head "
        "params dropped), inputs "
        + ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in manifest["inputs"])
        + f", platforms {manifest['platforms']}; scores {encoded}"
        + ("; TF SavedModel in saved_model/" if manifest["saved_model"] else ""))


if __name__ == "__main__":
  cli.run(main)
