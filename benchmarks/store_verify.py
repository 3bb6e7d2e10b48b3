"""What verifying a store at load costs: BLAKE3 over every file, and the value checks.

Writes a W2-shaped store (``w2.SCHEMA``: 16 sparse fields, 63 dense, the labels; random
values) of each ``--rows`` with ``StoreWriter`` (sealed as ``commit`` seals), then
times, side by side in one run, medians of ``--repeats``:

  verify (all threads)   ``integrity.verify_file`` of every file (what ``load_store`` runs)
  verify (1 thread)      the same digests on one thread
  value checks           ``value_checks.check_split`` of every split
  load_store             the whole load: fingerprint, checksums, shapes, values

The page cache is warm (the store was just written), as after a build on the same host.
With ``--build_rows=N``, what sealing costs a build: ``preprocess.build_store`` of an
AliExpress-format CSV of N W2 rows, with the store sealed (every build) and with its
files left unhashed, alternating, medians of ``--repeats``.

  .venv/bin/python benchmarks/store_verify.py --rows=1000000,5000000 --dir=/tmp/sv
  .venv/bin/python benchmarks/store_verify.py --rows= --build_rows=300000 --repeats=5
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import time

import blake3
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import w2  # noqa: E402  (a sibling module)

from pico_jax import batch as B  # noqa: E402
from pico_jax.data import integrity, store, value_checks  # noqa: E402
from pico_jax.ingest import preprocess, store_writer  # noqa: E402


def write(path: str, rows: int, seed: int = 0) -> None:
  splits = {"train": rows * 8 // 10, "val": rows // 10}
  splits["test"] = rows - sum(splits.values())
  rng = np.random.default_rng(seed)
  with store_writer.StoreWriter(path, w2.SCHEMA, splits, overwrite=True) as writer:
    for split, n in splits.items():
      cols = writer.columns[split]
      for start in range(0, n, 1 << 18):
        part = w2.batch(rng, min(1 << 18, n - start))
        for key in (B.SPARSE, B.DENSE, B.CLICK, B.CONVERSION):
          cols[key][start:start + len(part[key])] = part[key]
    writer.commit({"format": "w2", "task_relation": "entire_space",
                   "entire_space_policy": "error"})


def build_cost(directory: str, rows: int, repeats: int) -> None:
  """Times builds with and without the seal's file hashing, alternating."""
  import pyarrow as pa
  import pyarrow.csv as pacsv
  part = w2.batch(np.random.default_rng(0), rows)
  columns = {"search_id": np.arange(rows)}
  columns.update({f.name: part[B.SPARSE][:, i] for i, f in enumerate(w2.SCHEMA.sparse)})
  columns.update({n: part[B.DENSE][:, i] for i, n in enumerate(w2.SCHEMA.dense)})
  columns.update(click=part[B.CLICK].astype(np.int64),
                 conversion=part[B.CONVERSION].astype(np.int64))
  os.makedirs(directory, exist_ok=True)
  csv = os.path.join(directory, "aliexpress.csv")
  with open(csv, "wb") as f:  # the header unquoted, as the format's files have it.
    f.write((",".join(columns) + "\n").encode())
    pacsv.write_csv(pa.table(columns), f, pacsv.WriteOptions(include_header=False))
  out = os.path.join(directory, "s")
  preprocess.build_store("aliexpress", [csv], out, overwrite=True)  # compiles, warms.
  real = integrity.seal
  times = {"sealed": [], "files not hashed": []}
  for _ in range(repeats):
    for mode in times:
      integrity.seal = real if mode == "sealed" else (
          lambda meta, root, relpaths: real(meta, root, []))
      start = time.perf_counter()
      preprocess.build_store("aliexpress", [csv], out, overwrite=True)
      times[mode].append(time.perf_counter() - start)
  integrity.seal = real
  print(f"| build of {rows:,} rows | " + " | ".join(
      f"{mode}: {statistics.median(t):.3f} s ({', '.join(f'{x:.2f}' for x in t)})"
      for mode, t in times.items()) + " |")


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def one_thread(path: str, meta: dict) -> None:
  for rel in meta["files"]:
    digest = blake3.blake3()
    with open(os.path.join(path, rel), "rb") as f:
      for piece in iter(lambda: f.read(16 << 20), b""):
        digest.update(piece)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rows", default="1000000")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dir", default="/tmp/store_verify")
  parser.add_argument("--build_rows", type=int, default=0)
  args = parser.parse_args()
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{datetime.date.today().isoformat()}")
  if args.build_rows:
    build_cost(os.path.join(args.dir, "build"), args.build_rows, args.repeats)
  if args.rows:
    print("| rows | store MiB | verify, all threads (s, GiB/s) | verify, 1 thread (s) | "
          "value checks (s) | load_store (s) |")
  for rows in (int(r) for r in args.rows.split(",") if r):
    path = os.path.join(args.dir, f"w2_{rows}")
    write(path, rows)
    meta = store.read_meta(path)
    size = sum(e["bytes"] for e in meta["files"].values())
    verify = lambda: [integrity.verify_file(path, rel, e) for rel, e in meta["files"].items()]
    schema, splits = store.open_columns(path, meta, verify=False)
    files = {k: os.path.join(path, "x", f"{k}.npy") for k in store.column_specs(schema)}
    values = lambda: [value_checks.check_split(s, c, files, schema, meta)
                      for s, c in splits.items()]
    t_all = median_seconds(verify, args.repeats)
    t_one = median_seconds(lambda: one_thread(path, meta), args.repeats)
    t_values = median_seconds(values, args.repeats)
    t_load = median_seconds(lambda: store.load_store(path), args.repeats)
    print(f"| {rows:,} | {size / 2**20:,.0f} | {t_all:.2f} ({size / 2**30 / t_all:.2f}) | "
          f"{t_one:.2f} | {t_values:.2f} | {t_load:.2f} |", flush=True)
    shutil.rmtree(path)


if __name__ == "__main__":
  main()
