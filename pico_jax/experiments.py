"""A grid of configs x seeds, trained and tabulated: mean, std and paired intervals.

``run_grid(base, workdir, grid, variants, seeds, ...)`` trains every (grid point, seed)
run not yet done and writes the tables; ``launch/experiment.py`` is its command line
(its docstring is the user's guide: flags, files written, resume). The pieces:

* ``parse_axis`` / ``parse_variant`` / ``grid_points``: ``KEY=V1,V2`` axes (values as
  Python literals where they parse) and ``NAME:KEY=V;KEY=V`` named settings, whose
  Cartesian product with the seeds is the grid;
* ``add_deltas``: each run minus the baseline variant's run of the same seed and point
  (paired); ``select_best``: a variant chosen per condition on the eval split;
  ``summarize`` / ``add_tests`` / ``markdown``: mean, std and paired 95% t intervals,
  paired t p-values Holm-adjusted over a declared family, minimum detectable effects
  (``pico_jax.stats``); ``primary_text``: the declared primary comparison, printed
  first.

Every run trains in ``DIR/<name>/`` and writes ``result.json``; a run that has one is
never rerun, and a SIGTERM saves the running run and returns None, so the same call
resumes the grid.
"""

from __future__ import annotations

import ast
import csv
import itertools
import json
import logging
import math
import os
import time

from pico_jax import metric_names


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_axis(spec: str) -> tuple[str, list]:
  """``KEY=V1,V2`` -> (KEY, [V1, V2]); values as Python literals where they parse."""
  key, sep, values = spec.partition("=")
  if not sep or not key or not values:
    raise ValueError(f"--grid={spec!r}: expected KEY=V1,V2,...")
  return key, [_literal(v) for v in values.split(",")]


def parse_variant(spec: str) -> tuple[str, dict]:
  """``NAME:KEY=V;KEY=V`` -> (NAME, {KEY: V})."""
  name, sep, body = spec.partition(":")
  if not sep or not name:
    raise ValueError(f"--variant={spec!r}: expected NAME:KEY=V;KEY=V")
  settings = {}
  for item in filter(None, body.split(";")):
    key, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"--variant={spec!r}: {item!r} is not KEY=V")
    settings[key.strip()] = _literal(value.strip())
  return name, settings


def grid_points(grid: list[tuple[str, list]], variants: list[tuple[str, dict]]):
  """Every point of the grid: (name parts, {key: value})."""
  axes = [[(f"{key.rsplit('.', 1)[-1]}={v}", {key: v}) for v in values]
          for key, values in grid]
  if variants:
    axes.append([(name, settings) for name, settings in variants])
  for combo in itertools.product(*axes):
    names = [n for n, _ in combo]
    settings = {}
    for _, s in combo:
      settings.update(s)
    yield names, settings


def add_deltas(runs: list[dict], baseline: str) -> list[dict]:
  """Adds ``delta_<metric>`` = run - run of grid point ``baseline`` with the same seed
  (and the same other grid coordinates) for every metric of ``metric_names.DELTAS``:
  paired differences, free of the seed-to-seed variation that both runs share
  (synthetic data are drawn from the seed)."""
  def key(r, point):
    return (point, r["seed"])
  def peer(point):  # the baseline of a point: its name with the variant replaced.
    parts = point.split(" ")
    return " ".join(parts[:-1] + [baseline]) if len(parts) > 1 else baseline
  index = {key(r, r["point"]): r for r in runs}
  names = {r["point"].split(" ")[-1] for r in runs}
  if baseline not in names:
    raise ValueError(f"--baseline={baseline!r}: not a variant of this grid {sorted(names)}")
  for r in runs:
    base = index.get(key(r, peer(r["point"])))
    if base is None:
      continue
    for m in metric_names.DELTAS:
      if m in r and m in base:
        r[f"delta_{m}"] = r[m] - base[m]
  return runs


def _condition(point: str) -> str:
  """A point's grid coordinates without its variant (the last name part)."""
  return " ".join(point.split(" ")[:-1])


def _with_variant(condition: str, variant: str) -> str:
  return f"{condition} {variant}" if condition else variant


def parse_select(spec: str) -> tuple[str, list[str], str]:
  """``NAME=V1,V2,...:METRIC`` -> (NAME, [V1, V2, ...], METRIC)."""
  head, sep, metric = spec.rpartition(":")
  name, eq, members = head.partition("=")
  if not (sep and eq and name and members and metric):
    raise ValueError(f"--select={spec!r}: expected NAME=VARIANT1,VARIANT2,...:METRIC")
  return name, members.split(","), metric


def select_best(runs: list[dict], name: str, members: list[str], metric: str) -> list[dict]:
  """Adds a variant ``name`` at every grid condition: a copy of the runs of whichever of
  ``members`` has the highest mean ``val_<metric>`` over seeds there (the eval split at
  each run's tested step: a selection that never sees test). Each copy records the
  member as ``selected``. Returns ``runs`` with the copies appended."""
  by_condition = {}
  for r in runs:
    condition, variant = _condition(r["point"]), r["point"].split(" ")[-1]
    if variant in members:
      by_condition.setdefault(condition, {}).setdefault(variant, []).append(r)
  added = []
  for condition, by_member in by_condition.items():
    def score(variant):
      values = [r.get(f"val_{metric}", math.nan) for r in by_member[variant]]
      values = [v for v in values if not math.isnan(v)]
      return sum(values) / len(values) if values else -math.inf
    best = max(sorted(by_member), key=score)
    added += [{**r, "point": _with_variant(condition, name), "selected": best}
              for r in by_member[best]]
  return runs + added


def add_tests(summary: list[dict], runs: list[dict], metrics, family=None) -> list[dict]:
  """Paired t tests of the deltas (``add_deltas``), Holm-adjusted over the family.

  For each summary row whose variant is in ``family`` (default: every row with deltas)
  and each metric m of ``metrics``: ``delta_<m>_p`` (two-sided paired t p-value over
  seeds), ``delta_<m>_mde`` (the smallest effect detected with 80% power at the
  observed paired SD, ``stats.min_detectable_effect``) and ``delta_<m>_p_holm`` (Holm
  over every (row, metric) of the family with a p-value).
  """
  from pico_jax import stats
  cells = []
  for row in summary:
    if family is not None and row["point"].split(" ")[-1] not in family:
      continue
    members = [r for r in runs if r["point"] == row["point"]]
    for m in metrics:
      deltas = [r[f"delta_{m}"] for r in members if f"delta_{m}" in r]
      if len(deltas) < 2:
        continue
      row[f"delta_{m}_p"] = stats.paired_t_pvalue(deltas)
      row[f"delta_{m}_mde"] = stats.min_detectable_effect(deltas)
      cells.append((row, m))
  for (row, m), adjusted in zip(cells, stats.holm([row[f"delta_{m}_p"] for row, m in cells])):
    row[f"delta_{m}_p_holm"] = adjusted
  return summary


def parse_primary(spec: str) -> tuple[str, str]:
  """``POINT :: METRIC`` -> (POINT, METRIC): the declared primary comparison, the point
  against its ``--baseline`` peer on test ``METRIC``."""
  point, sep, metric = spec.partition("::")
  if not sep or not point.strip() or not metric.strip():
    raise ValueError(f"--primary={spec!r}: expected 'POINT :: METRIC', e.g. "
                     "'relatedness=one pico :: cvr_eauc'")
  return point.strip(), metric.strip()


def primary_text(summary: list[dict], spec: str, baseline: str) -> str:
  """The declared primary comparison as one paragraph (printed before every table)."""
  point, metric = parse_primary(spec)
  rows = [r for r in summary if r["point"] == point]
  head = (f"Primary comparison (declared): {point} minus "
          f"{_with_variant(_condition(point), baseline)}, test {metric}")
  if not rows or f"delta_{metric}_mean" not in rows[0]:
    return head + ": no paired runs yet.\n"
  r = rows[0]
  from pico_jax.stats import format_interval
  value = format_interval(r[f"delta_{metric}_mean"], r.get(f"delta_{metric}_ci_low", math.nan),
                          r.get(f"delta_{metric}_ci_high", math.nan))
  return (f"{head}: {value} over {r['seeds']} seeds; paired t p = "
          f"{r.get(f'delta_{metric}_p', math.nan):.3g}, Holm p = "
          f"{r.get(f'delta_{metric}_p_holm', math.nan):.3g}; minimum detectable effect "
          f"(80% power) {r.get(f'delta_{metric}_mde', math.nan):.4f}.\n")


def summarize(runs: list[dict], group_keys: list[str]) -> list[dict]:
  """Mean and sample std (ddof=1) over seeds of every numeric field, per grid point."""
  groups = {}
  for r in runs:
    groups.setdefault(tuple(r[k] for k in group_keys), []).append(r)
  rows = []
  for key, members in groups.items():
    row = dict(zip(group_keys, key), seeds=len(members))
    metrics = sorted({m for r in members for m, v in r.items()
                      if isinstance(v, float) and m not in group_keys})
    for m in metrics:
      values = [r[m] for r in members if m in r and not math.isnan(r[m])]
      mean = sum(values) / len(values) if values else float("nan")
      std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
             if len(values) > 1 else float("nan"))
      row[f"{m}_mean"], row[f"{m}_std"] = mean, std
    rows.append(row)
  return rows


def markdown(rows: list[dict], group_keys: list[str], columns) -> str:
  """The table: mean ± std over seeds; a paired delta with a 95% interval reads
  ``mean [low, high]`` (``*``: the interval excludes 0; see ``pico_jax.stats``)."""
  from pico_jax.stats import format_interval
  columns = [c for c in columns if any(f"{c}_mean" in r or c in r for r in rows)]
  header = group_keys + ["seeds"] + columns
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [str(r[k]) for k in group_keys] + [str(r["seeds"])]
    for c in columns:
      if f"{c}_mean" not in r and c in r:  # a per-point figure: a p-value, an MDE.
        cells.append(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]))
        continue
      mean, std = r.get(f"{c}_mean", float("nan")), r.get(f"{c}_std", float("nan"))
      digits = 0 if c == "best_step" else 4
      if math.isnan(mean):
        cells.append("–")
        continue
      if f"{c}_ci_low" in r:
        cells.append(format_interval(mean, r[f"{c}_ci_low"], r[f"{c}_ci_high"], digits))
        continue
      cells.append(f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _write_csv(path: str, rows: list[dict]):
  fields = []
  for r in rows:
    fields += [k for k in r if k not in fields]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def _train_run(base, names, settings, seed, run_dir) -> dict | None:
  """Trains (or resumes) one run of the grid; its result row, or None when preempted.

  An interrupted run resumes from its checkpoint with its ``metrics.jsonl`` kept (the
  loop drops the records after the checkpoint), so early stopping replays exactly the
  evaluations that led to that checkpoint.
  """
  from pico_jax.config import validate
  from pico_jax.config_keys import set_value
  from pico_jax.train.loop import train_and_evaluate
  from pico_jax.train.reporting import read_metrics
  config = base.copy_and_resolve_references()
  for key, value in settings.items():
    set_value(config, key, value)
  config.seed = int(seed)
  validate(config)  # the grid's settings and seed on top of the validated base.
  logging.getLogger("pico_jax").warning("run %s", os.path.basename(run_dir))
  start = time.time()
  test = train_and_evaluate(config, run_dir)
  if test is None:
    return None
  records = read_metrics(run_dir)
  test_step = [r["step"] for r in records if r["split"] == "test"][-1]
  # The eval split's metrics at the step tested (the best one under early stopping):
  # what a selection among grid points may look at (``select_best``), never test.
  chosen = [r for r in records if r["split"] == config.data.eval_split
            and r["step"] == test_step]
  chosen = {f"val_{k}": float(v) for k, v in (chosen[-1] if chosen else {}).items()
            if k in metric_names.DELTAS}
  return {"point": " ".join(names) or "base", "seed": int(seed),
          **{k: float(v) for k, v in test.items()}, **chosen,
          "best_step": float(test_step), "steps_trained": float(max(r["step"] for r in records)),
          "wall_seconds": time.time() - start, "settings": settings}


def run_grid(base, workdir: str, grid, variants, seeds, epochs: int = 0,
             columns=(), train: bool = True,
             baseline: str = "", selects=(), test_metrics=("cvr_eauc",), family=None,
             primary: str = "", scored=()) -> list[dict] | None:
  """Trains every (grid point, seed) not yet done; returns every run's result row, or
  None when a run was preempted (SIGTERM): its state is saved, no table is written, and
  the same call resumes the grid.

  ``columns``: those of ``results.md`` (default ``metric_names.TABLE_COLUMNS``). With
  ``train=False`` nothing is trained: the tables cover the finished runs only.
  ``selects``: ``parse_select`` specs, variants chosen per condition on the eval split
  (``select_best``); ``scored``: ``scorings.parse_scored`` specs, a variant's runs
  re-scored by a pCTR baseline (``scorings.scored_runs``). With a ``baseline``, the deltas of ``test_metrics`` get paired t
  p-values, minimum detectable effects and Holm-adjusted p-values over ``family`` (the
  variants tested; default all but the baseline) (``add_tests``); ``primary``
  (``parse_primary``) is written first in ``results.md``.
  """
  from pico_jax.data import load_dataset
  from pico_jax.train.periodic import PreemptionWatch
  from pico_jax.workdir import RESULT_FILE
  log = logging.getLogger("pico_jax")
  os.makedirs(workdir, exist_ok=True)
  if epochs:
    # The train split size fixes the epoch length (the data do not depend on the seed
    # of a store; for synthetic data every seed has the same split sizes).
    train_rows = len(next(iter(load_dataset(base).splits["train"].values())))
    steps_per_epoch = train_rows // base.train.batch_size
    base.train.steps = epochs * steps_per_epoch
    base.train.eval_every = steps_per_epoch
    base.train.log_every = min(base.train.log_every, steps_per_epoch)
  points = list(grid_points(grid, variants))
  group_keys = ["point"]
  rows = []
  with PreemptionWatch() as watch:  # a SIGTERM between two runs also stops the grid.
    for names, settings in points:
      for seed in seeds:
        name = "_".join(names + [f"seed={seed}"]) if names else f"seed={seed}"
        result_path = os.path.join(workdir, name, RESULT_FILE)
        if os.path.exists(result_path):
          with open(result_path) as f:
            result = json.load(f)
        elif not train:
          continue
        else:
          result = None if watch.requested(0) else _train_run(
              base, names, settings, seed, os.path.join(workdir, name))
          if result is None:
            log.warning("preempted (SIGTERM) at run %s; rerun the same command to resume "
                        "the grid", name)
            return None
          with open(result_path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
          os.replace(result_path + ".tmp", result_path)  # never a half-written result.
        rows.append(result)
  if not rows:
    raise ValueError(f"{workdir}: no finished run to tabulate")
  from pico_jax import scorings, stats
  rows = stats.add_oracle_gaps([dict(r) for r in rows])
  for name, members, metric in selects:
    rows = select_best(rows, name, members, metric)
  for name, variant, scoring in scored:
    rows = scorings.scored_runs(rows, name, variant, scoring)
  if baseline:
    rows = add_deltas(rows, baseline)
  summary = stats.add_intervals(summarize(rows, group_keys), rows)
  for row in summary:  # which member a selected variant took at this condition.
    chosen = {r["selected"] for r in rows if r["point"] == row["point"] and "selected" in r}
    if chosen:
      row["selected"] = ",".join(sorted(chosen))
  if baseline:  # the family defaults to every variant but the baseline itself.
    family = family or sorted({r["point"].split(" ")[-1] for r in rows} - {baseline})
    summary = add_tests(summary, rows, test_metrics, family)
  _write_csv(os.path.join(workdir, "runs.csv"),
             [{k: v for k, v in r.items() if k != "settings"} for r in rows])
  _write_csv(os.path.join(workdir, "results.csv"), summary)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    if primary:
      f.write(primary_text(summary, primary, baseline) + "\n")
    f.write(markdown(summary, group_keys, columns or metric_names.TABLE_COLUMNS))
  return rows
