"""Input-pipeline throughput on W2-shaped data (docs/benchmarks.md).

  python benchmarks/pipeline.py --rows 2000000 --workdir /tmp/w2bench

Writes a W2-shaped columnar store (16 categorical fields with vocab sizes 8 ...
   500,000, 63 dense features in [0, 1], click, conversion, group) with ``--rows`` rows
   through ``StoreWriter``, and times ``pipeline.train_iterator`` over its memory maps:
   rows/s at global batch 2048 and 4096, one process and process 0 of 2, after
   ``--warmup`` batches; plus the bare whole-batch gather (no Grain) for reference.
Preprocessing is timed by benchmarks/preprocess.py.

Prints one JSON object; the figures go in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time


import numpy as np  # noqa: E402
import w2  # noqa: E402

from pico_jax import batch as B  # noqa: E402
from pico_jax.data import pipeline, store  # noqa: E402
from pico_jax.ingest import store_writer  # noqa: E402
from pico_jax.data.schema import Schema, SparseField  # noqa: E402


def w2_schema() -> Schema:
  return Schema(sparse=tuple(SparseField(f"categorical_{i + 1}", v + 1)
                             for i, v in enumerate(w2.VOCAB_SIZES)),
                dense=tuple(f"numerical_{i + 1}" for i in range(w2.NUM_DENSE)),
                extras=(B.GROUP,))


def _w2_block(rng, n):
  sparse = np.stack([rng.integers(1, v + 1, n) for v in w2.VOCAB_SIZES], 1).astype(np.int32)
  dense = rng.random((n, w2.NUM_DENSE), dtype=np.float32)
  click = (rng.random(n) < 0.05).astype(np.float32)
  conversion = click * (rng.random(n) < 0.2).astype(np.float32)
  return sparse, dense, click, conversion


def write_w2_store(path: str, rows: int, seed: int = 0, block: int = 262_144):
  """A W2-shaped store with ``rows`` train rows (val/test: 1% each), in blocks."""
  rng = np.random.default_rng(seed)
  sizes = {"train": rows, "val": max(rows // 100, 1), "test": max(rows // 100, 1)}
  with store_writer.StoreWriter(path, w2_schema(), sizes, overwrite=True) as writer:
    for split, n in sizes.items():
      cols = writer.columns[split]
      for start in range(0, n, block):
        stop = min(start + block, n)
        sparse, dense, click, conversion = _w2_block(rng, stop - start)
        cols[B.SPARSE][start:stop] = sparse
        cols[B.DENSE][start:stop] = dense
        cols[B.CLICK][start:stop] = click
        cols[B.CONVERSION][start:stop] = conversion
        cols[B.GROUP][start:stop] = np.arange(start, stop) // 20
    writer.commit({"format": "w2_synthetic", "task_relation": "entire_space"})


def time_iterator(columns, *, batch_size, batches, warmup, process_index=0,
                  process_count=1, num_threads=2, prefetch=4, seed=0):
  it = pipeline.train_iterator(columns, global_batch_size=batch_size,
                               num_batches=batches + warmup, seed=seed,
                               process_index=process_index, process_count=process_count,
                               num_threads=num_threads, prefetch=prefetch)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  rows = 0
  for _ in range(batches):
    rows += len(next(it)[B.CLICK])
  return rows / (time.perf_counter() - start)


def time_gather(columns, *, batch_size, batches, seed=0):
  n = len(columns[B.CLICK])
  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  for _ in range(batches):
    pipeline.gather(columns, rng.integers(0, n, batch_size))
  return batch_size * batches / (time.perf_counter() - start)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", type=int, default=2_000_000)
  p.add_argument("--batches", type=int, default=200)
  p.add_argument("--warmup", type=int, default=20)
  p.add_argument("--workdir", default="/tmp/pico_pipeline_bench")
  p.add_argument("--keep", action="store_true", help="keep the generated files")
  args = p.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  result = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d"),
            "rows": args.rows}

  store_dir = os.path.join(args.workdir, "w2_store")
  t = time.perf_counter()
  write_w2_store(store_dir, args.rows)
  result["store_write_s"] = round(time.perf_counter() - t, 2)
  train = store.load_store(store_dir).splits["train"]
  for batch_size in (2048, 4096):
    result[f"gather_rows_per_s_b{batch_size}"] = round(time_gather(
        train, batch_size=batch_size, batches=args.batches))
    result[f"pipeline_rows_per_s_b{batch_size}"] = round(time_iterator(
        train, batch_size=batch_size, batches=args.batches, warmup=args.warmup))
    result[f"pipeline_rows_per_s_b{batch_size}_process0_of_2"] = round(time_iterator(
        train, batch_size=batch_size, batches=args.batches, warmup=args.warmup,
        process_index=0, process_count=2))

  if not args.keep:
    shutil.rmtree(args.workdir)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
