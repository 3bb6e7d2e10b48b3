"""Plot a run: python launch/plot.py --workdir=DIR [--output=DIR/plots].

Writes training_curves.png, eval_metrics.png, tau_segments.png, tau_distribution.png
and reliability.png, each where the run's files allow it (the tau plots only where tau
varies; ``pico_jax.plots`` says what each shows; a notebook displays the same figures
with ``plots.figures(DIR)``). Prints the path of each file written.
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
