"""Run a grid of configs x seeds and tabulate mean and std of every metric.

  python launch/experiment.py --config=configs/default.py --workdir=DIR \\
      --grid=model.backbone=shared_bottom,mmoe,ple \\
      --grid=contrast.mode=none,fixed,global,personalized \\
      --seeds=0,1,2 --epochs=10 --config.train.early_stopping_metric=mean_auc

Each ``--grid KEY=V1,V2,...`` is one axis (any config key; values parsed as Python
literals where they parse, else kept as strings); the runs are the Cartesian product of
the axes and the seeds. ``--variant NAME:KEY=V;KEY=V`` adds named settings as one more
axis (e.g. ``--variant "sup:contrast.mode=personalized;contrast.relatedness_supervision_weight=0.5"``).
``--epochs`` sets ``train.steps`` to that many epochs of the training split and
evaluates once per epoch. Any ``--config.*`` override applies to every run.

Every run trains in ``DIR/<name>/`` with its own ``metrics.jsonl`` and writes
``result.json`` (its final test metrics: those of the best evaluation when early
stopping is on); a run that already has one is not run again. SIGTERM (preemption)
saves the running run's checkpoint and exits with status 0; the same command resumes
that run where it stopped (early stopping replays its ``metrics.jsonl``) and finishes
the grid. ``--report_only`` tabulates the finished runs without training. Results:
``DIR/results.csv`` (every metric, mean and std over seeds), ``DIR/results.md`` (the
main metrics as mean ± std; ``--baseline`` deltas as mean [paired 95% t interval over
seeds], ``pico_jax/stats.py``) and ``DIR/runs.csv`` (every run). With ``--baseline``,
the deltas of ``--test_metrics`` get paired t p-values, Holm-adjusted over the
``--family`` of variants, and the minimum detectable effect at 80% power;
``--primary='POINT :: METRIC'`` is printed first. ``--select`` adds variants chosen per
condition on the eval split; ``--scored`` adds a variant's runs re-scored by a pCTR
baseline. The grid itself is ``pico_jax.experiments.run_grid``.
"""

import os

from absl import flags

from pico_jax import cli

_CONFIG = cli.define_config("configs/default.py", "Base config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment directory.", required=True)
_GRID = flags.DEFINE_multi_string("grid", [], "KEY=V1,V2,...: one axis of the grid.")
_VARIANT = flags.DEFINE_multi_string("variant", [], "NAME:KEY=V;KEY=V: a named setting.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed) of every grid point.")
_EPOCHS = flags.DEFINE_integer("epochs", 0, "> 0: train.steps = epochs of the train "
                               "split, evaluated once per epoch.")
_COLUMNS = flags.DEFINE_list("columns", [], "Metrics of the markdown table (default: "
                             "the task AUCs, oracle AUCs and tau summaries present).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Tabulate the finished runs "
                                 "without training the others.")
_BASELINE = flags.DEFINE_string("baseline", "", "A variant name: adds delta_<metric> "
                                "columns, each run minus that variant's run of the same "
                                "seed and grid point.")
_SELECT = flags.DEFINE_multi_string("select", [], "NAME=V1,V2,...:METRIC: a variant NAME "
                                    "per grid condition, the member variant with the best "
                                    "mean eval-split METRIC (selection never sees test).")
_SCORED = flags.DEFINE_multi_string("scored", [], "NAME=VARIANT:SCORING: a variant NAME, "
                                    "VARIANT's runs re-scored by ctr_as_cvr or blend "
                                    "(needs config.train.baseline_scorings).")
_TEST_METRICS = flags.DEFINE_list("test_metrics", ["cvr_eauc"], "Metrics whose --baseline "
                                  "deltas get paired t p-values, Holm-adjusted over the "
                                  "family, and minimum detectable effects.")
_FAMILY = flags.DEFINE_list("family", [], "Variants in the Holm family (default: all but "
                            "the --baseline).")
_PRIMARY = flags.DEFINE_string("primary", "", "'POINT :: METRIC': the declared primary "
                               "comparison (POINT against its --baseline peer), printed "
                               "first.")


def main():
  from pico_jax import config as config_lib
  from pico_jax import experiments, scorings
  base = config_lib.validate(_CONFIG.value)
  try:  # the parsers of --grid, --variant and --scored name the flag: a flag error.
    grid = [experiments.parse_axis(spec) for spec in _GRID.value]
    variants = [experiments.parse_variant(spec) for spec in _VARIANT.value]
    scored = [scorings.parse_scored(spec) for spec in _SCORED.value]
  except ValueError as e:
    raise cli.FlagError(str(e)) from None
  selects = [experiments.parse_select(spec) for spec in _SELECT.value]
  if _PRIMARY.value:
    experiments.parse_primary(_PRIMARY.value)  # a bad spec fails before any training.
  rows = experiments.run_grid(base, _WORKDIR.value, grid, variants,
                              [int(s) for s in _SEEDS.value], _EPOCHS.value,
                              _COLUMNS.value,
                              not _REPORT_ONLY.value, _BASELINE.value, selects,
                              _TEST_METRICS.value, _FAMILY.value or None, _PRIMARY.value,
                              scored)
  if rows is None:
    return  # preempted: exit status 0, the rerun resumes.
  with open(os.path.join(_WORKDIR.value, "results.md")) as f:
    print(f.read())


if __name__ == "__main__":
  cli.run(main)
