"""Export a trained run for serving: python launch/export.py --workdir DIR.

  python launch/export.py --workdir DIR [--output PATH] [--checkpoint best|latest|STEP]
      [--platforms cpu,cuda,tpu] [--correct_pos_weight]

Writes the ``jax.export`` artifact described in ``pico_jax/export.py``: the serving
function (features -> p_ctr, p_cvr, p_ctcvr) without the contrast head, its params, a
manifest and ``serve.py``, which loads and runs it with jax and numpy only.
``--correct_pos_weight`` serves probabilities corrected for the run's
``loss.pos_weight`` (``pico_jax/calibration.py``).
"""

from absl import flags

from pico_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Artifact directory (default: "
                              "WORKDIR/export/step_<STEP>).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "best | latest | a step number.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "Lowering platforms.")
_CORRECT = flags.DEFINE_bool("correct_pos_weight", False, "Serve probabilities corrected "
                             "for the run's loss.pos_weight.")


def main():
  from pico_jax import export
  from pico_jax.models import serving_params
  from pico_jax.train.restore import restore
  from pico_jax.workdir import export_dir
  r = restore(_WORKDIR.value, _CHECKPOINT.value)
  step, params = r.resumed_step, r.state.params
  output = _OUTPUT.value or export_dir(_WORKDIR.value, step)
  manifest = export.export_model(r.model, params, r.schema, output,
                                 platforms=_PLATFORMS.value, step=step, config=r.config,
                                 correct_pos_weight=_CORRECT.value)
  print(f"exported step {step} to {output}: {manifest['num_params']} serving params "
        f"(of {export.num_params(params)} trained; "
        f"{export.num_params(params) - export.num_params(serving_params(params))} "
        f"contrast-head params dropped), inputs "
        + ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in manifest["inputs"])
        + f", platforms {manifest['platforms']}")


if __name__ == "__main__":
  cli.run(main)
