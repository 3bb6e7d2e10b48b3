"""Plot a run: python launch/plot.py --workdir DIR [--output DIR/plots].

Reads the run's ``metrics.jsonl``, ``train_metrics.jsonl`` and ``tau_<split>.npz`` (see
``pico_jax/train/reporting.py``) and writes PNGs (``pico_jax.plots.plot_run``):

  training_curves.png   train loss terms, tau_mean and examples/s against the step.
  eval_metrics.png      task AUCs (and oracle AUCs, dashed) and loglosses of every
                        evaluated split against the step.
  tau_segments.png      mean tau per segment against the step (runs with segments).
  tau_distribution.png  histogram of the last evaluated per-row tau, per segment where
                        the data has segments (runs with a learned tau).
  reliability.png       reliability diagram per task of the last evaluation (test when
                        there is one): observed rate against mean prediction in
                        equal-mass bins, with PCOC and ECE (``pico_jax.metrics``).
"""

from absl import flags

from pico_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory.", required=True)
_OUTPUT = flags.DEFINE_string("output", "", "Output directory (default DIR/plots).")


def main():
  from pico_jax import plots
  for path in plots.plot_run(_WORKDIR.value, _OUTPUT.value):
    print(path)


if __name__ == "__main__":
  cli.run(main)
