"""Preprocessing and scoring throughput on an AliExpress-format CSV, beside pandas.

  python benchmarks/preprocess.py --rows 300000 --repeat 3 [--workers N] [--predict]
      [--parquet]

1. Writes an AliExpress-format CSV of ``--rows`` rows in the W2 shape
   (``benchmarks/w2.py``: 16 categorical fields with vocabularies of 8 ... 500,000, 63
   dense values in [0, 1) written with 6 decimals, search_id, click, conversion).
2. Times, interleaved ``--repeat`` times in one run so that they share the machine's
   load: ``pandas.read_csv`` of the file (the reference; only when pandas is
   installed, it is not a dependency of pico_jax) as pandas runs it by default (since
   pandas 3.1 its C parser reads a large file on one thread per CPU) and on one thread
   (``mode.max_threads`` 1, where that option exists), and ``preprocess.build_store``
   (the whole preprocessor: scan, parse, checks, vocabularies, store) with 1 worker
   and with ``--workers`` (threads of the process, the default kind), and with
   ``--workers`` and ``spill_memory=0``: every parsed block through a file between
   the passes, as the blocks beyond the spill's memory budget (1 GiB) of a large
   input are.
3. ``--parsers``: the candidate parsers alone (parse only): ``np.loadtxt``, pyarrow's
   CSV reader with one and with all threads, pico_jax's compiled parser
   (``numeric_parse``) on one thread and on one thread per CPU, pandas.
4. ``--parquet``: writes the same rows as a Parquet file and times
   ``preprocess.build_store`` of format "table" on it, the AliExpress columns' roles
   declared (the same store as the CSV's).
5. ``--predict``: trains the default model for a few steps on the store and times
   ``pico_jax.predict``'s scoring of the same CSV (parse, encode, model, output).

Prints one JSON object: rows/s of each (best of the repeats), every repeat's wall and
CPU seconds (workers included) and the ratios to pandas (pandas time / ours: above 1
is faster than pandas); the figures go in BENCHMARKS.md.

pandas is a benchmark-only dependency (not in requirements.txt); install the version
BENCHMARKS.md names into the venv first: ``.venv/bin/python -m pip install pandas==3.1.1``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import resource
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import w2

from pico_jax.ingest import numeric_parse, preprocess

HEADER = (["search_id"] + [f"categorical_{i}" for i in range(1, 17)]
          + [f"numerical_{i}" for i in range(1, 64)] + ["click", "conversion"])


def write_aliexpress_csv(path: str, rows: int, seed: int = 0, block: int = 100_000):
  """An AliExpress-format CSV of ``rows`` W2-shaped rows (header, 82 columns); dense
  values rounded to 6 decimals, as the AliExpress release writes them."""
  rng = np.random.default_rng(seed)
  with open(path, "wb") as f:
    f.write((",".join(HEADER) + "\n").encode())
    for start in range(0, rows, block):
      n = min(block, rows - start)
      b = w2.batch(rng, n)
      cols = [np.arange(start, start + n) // 20]
      cols += [b["sparse"][:, j].astype(np.int64) for j in range(16)]
      cols += list(np.round(b["dense"].astype(np.float64), 6).T)
      cols += [b[k].astype(np.int64) for k in ("click", "conversion")]
      pacsv.write_csv(pa.table(cols, names=HEADER), f,
                      pacsv.WriteOptions(include_header=False))


def _time_parsers(csv: str, rows: int, repeat: int, pandas) -> dict:
  """Parse-only rows/s (wall) and CPU seconds of the candidate parsers on the file:
  what chose pyarrow for ``numeric_csv``. Every column is parsed to float64 (pandas
  infers int64 for the ids)."""
  with open(csv, "rb") as f:
    data = f.read()
  body = data[data.index(b"\n") + 1:]
  names = [f"c{j}" for j in range(len(HEADER))]

  def arrow(threads):
    return lambda: pacsv.read_csv(
        pa.py_buffer(body),
        read_options=pacsv.ReadOptions(use_threads=threads, column_names=names,
                                       block_size=1 << 20),
        parse_options=pacsv.ParseOptions(quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.float64() for n in names}, null_values=[]))

  def compiled(workers):
    # Blocks of 65,536 lines (the preprocessor's default), ids as int64.
    ends = np.flatnonzero(np.frombuffer(body, np.uint8) == 10)[65_535::65_536] + 1
    cuts = [0, *ends.tolist(), len(body)]
    view = memoryview(body)
    blocks = [(view[a:b], body.count(b"\n", a, b)) for a, b in zip(cuts, cuts[1:]) if b > a]
    ints = tuple(range(17)) + (80, 81)
    parse = lambda block: numeric_parse.parse_columns(block[0], block[1], ints,
                                                    tuple(range(17, 80)), len(HEADER))
    def run():
      with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        assert all(r is not None for r in pool.map(parse, blocks))
    return run

  lines = body.splitlines(keepends=True)
  runs = {"np.loadtxt (the parser before pyarrow)": lambda: np.loadtxt(
      lines, delimiter=",", dtype=np.float64, comments=None, ndmin=2, quotechar=None),
          "pyarrow.csv.read_csv, 1 thread": arrow(False),
          "pyarrow.csv.read_csv, all threads": arrow(True),
          "numeric_parse (compiled), 1 thread": compiled(1),
          f"numeric_parse (compiled), {os.cpu_count()} threads": compiled(os.cpu_count())}
  runs.update(_pandas_runs(csv, pandas))
  for fn in runs.values():  # compiles (numba) and warms the page cache.
    fn()
  out = {}
  for _ in range(repeat):
    for name, fn in runs.items():
      wall, cpu = _time(fn)
      best = out.setdefault(name, {"rows_per_s": 0, "cpu_seconds": float("inf")})
      best["rows_per_s"] = max(best["rows_per_s"], round(rows / wall))
      best["cpu_seconds"] = min(best["cpu_seconds"], round(cpu, 2))
  return out


def _pandas_runs(csv: str, pandas) -> dict:
  """The reference reads: ``pandas.read_csv`` as configured by default and, where
  pandas has the ``mode.max_threads`` option (3.1+), on one thread."""
  if pandas is None:
    return {}
  runs = {"pandas.read_csv": lambda: pandas.read_csv(csv)}
  try:
    pandas.get_option("mode.max_threads")
  except KeyError:  # pandas before 3.1: read_csv runs on one thread anyway.
    return runs

  def one_thread():
    with pandas.option_context("mode.max_threads", 1):
      pandas.read_csv(csv)
  runs["pandas.read_csv, 1 thread"] = one_thread
  return runs


def _time_predict(store_dir: str, csv: str, args) -> dict:
  """Trains the default recipe (AliExpress store, few steps) and times
  ``pico_jax.predict``'s scoring of the CSV: rows/s of parse + encode + model +
  output, after the model is restored and compiled."""
  from configs import default
  from pico_jax import predict
  from pico_jax.train.loop import train_and_evaluate
  config = default.get_config()
  config.data.name, config.data.path = "store", store_dir
  config.train.steps, config.train.eval_every, config.train.log_every = 20, 20, 20
  config.checkpoint.enabled = True
  workdir = os.path.join(args.workdir, "run")
  train_and_evaluate(config, workdir)
  score, path = predict.checkpoint_scorer(workdir, "latest")
  out = os.path.join(args.workdir, "preds.csv")
  warmup = os.path.join(args.workdir, "warmup.csv")
  with open(csv, "rb") as f, open(warmup, "wb") as g:
    g.writelines(f.readline() for _ in range(1001))
  predict.predict_files(score, path, [warmup], out)  # compiles the model.
  summary = predict.predict_files(score, path, [csv], out, log=lambda m: None)
  return {"rows_per_s": round(summary["rows_per_s"]),
          "eval_batch_size": config.train.eval_batch_size,
          "model": f"{config.model.backbone}, embed_dim {config.model.embed_dim}"}


def _parquet_run(csv: str, out: str, args):
  """A Parquet copy of ``csv`` (row groups of 64K rows), and the build of its store
  through format "table" with the AliExpress columns' roles."""
  import pyarrow.csv as pacsv
  import pyarrow.parquet as pq
  from pico_jax.ingest import numeric_csv
  from pico_jax.ingest.table import TableRoles
  parquet = os.path.join(args.workdir, "aliexpress.parquet")
  pq.write_table(pacsv.read_csv(csv), parquet, row_group_size=65_536)
  fmt = numeric_csv.aliexpress()
  roles = TableRoles(click="click", conversion="conversion", group="search_id",
                     id="search_id", sparse=fmt.sparse_names, dense=fmt.dense_names)
  return lambda: preprocess.build_store(
      "table", [parquet], out, overwrite=True,
      options=preprocess.Options(workers=args.workers, table=roles))


def _cpu() -> float:
  """CPU seconds of this process (its threads included) and its finished children."""
  own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                   resource.RUSAGE_CHILDREN))
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _time(fn) -> tuple[float, float]:
  """(wall, CPU) seconds of ``fn()``."""
  start, cpu = time.perf_counter(), _cpu()
  fn()
  return time.perf_counter() - start, _cpu() - cpu


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", type=int, default=300_000)
  p.add_argument("--repeat", type=int, default=3)
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="workers (threads) timed beside 1 worker")
  p.add_argument("--predict", action="store_true", help="also time pico_jax.predict (launch/predict.py)")
  p.add_argument("--parsers", action="store_true",
                 help="also time the candidate CSV parsers alone (parse only)")
  p.add_argument("--parquet", action="store_true",
                 help="also time format table on a Parquet copy of the CSV")
  p.add_argument("--workdir", default="/tmp/pico_preprocess_bench")
  p.add_argument("--keep", action="store_true", help="keep the generated files")
  args = p.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  csv = os.path.join(args.workdir, "aliexpress.csv")
  if not os.path.exists(csv) or not args.keep:
    write_aliexpress_csv(csv, args.rows)
  result = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average": os.getloadavg(), "rows": args.rows,
            "csv_mb": round(os.path.getsize(csv) / 2 ** 20, 1)}
  try:
    import pandas
  except ImportError:
    pandas = None
  out = os.path.join(args.workdir, "store")
  runs = _pandas_runs(csv, pandas)
  for workers in sorted({1, args.workers}):
    runs[f"preprocess workers={workers}"] = (
        lambda w=workers: preprocess.build_store(
            "aliexpress", [csv], out, overwrite=True,
            options=preprocess.Options(workers=w)))
  # An input too large for the spill's memory budget: every parsed block goes through
  # a file between the passes.
  runs[f"preprocess workers={args.workers}, spill_memory=0"] = (
      lambda: preprocess.build_store(
          "aliexpress", [csv], out, overwrite=True,
          options=preprocess.Options(workers=args.workers, spill_memory=0)))
  if args.parquet:
    runs[f"table (Parquet) workers={args.workers}"] = _parquet_run(csv, out, args)
  times = {name: [] for name in runs}
  cpus = {name: [] for name in runs}
  for fn in runs.values():  # compiles (numba), warms the page cache: not timed.
    fn()
  for _ in range(args.repeat):
    for name, fn in runs.items():
      wall, cpu = _time(fn)
      times[name].append(wall)
      cpus[name].append(cpu)
  for name, ts in times.items():
    result[name] = {"rows_per_s": round(args.rows / min(ts)),
                    "seconds": [round(t, 2) for t in ts],
                    # Workers are threads: the process's CPU time covers them all.
                    "cpu_seconds": [round(t, 2) for t in cpus[name]]}
  for ref_name, key in (("pandas.read_csv", "ratio_to_pandas"),
                        ("pandas.read_csv, 1 thread", "ratio_to_pandas_1_thread")):
    if ref_name not in times:
      continue
    ref, ref_cpu = times[ref_name], cpus[ref_name]
    for name, ts in times.items():
      # Per repeat (the runs of one repeat share the load) and best against best; CPU
      # time is the load-independent figure on a shared machine.
      ratio = result[name][key] = {
          "best": round(min(ref) / min(ts), 2),
          "per_repeat": [round(r / t, 2) for r, t in zip(ref, ts)]}
      ratio["cpu"] = round(min(ref_cpu) / min(cpus[name]), 2)
  if args.parsers:
    result["parse_only"] = _time_parsers(csv, args.rows, args.repeat, pandas)
  if args.predict:
    result["predict"] = _time_predict(out, csv, args)
  if not args.keep:
    shutil.rmtree(args.workdir)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
