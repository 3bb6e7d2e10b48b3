"""The sharded store's streaming reader against the memmap pipeline, at growing sizes.

  nice python benchmarks/sharded_reader.py --rows 1000000,10000000,30000000 \
      --workdir /tmp/sharded_bench

For every size: a W2-shaped columnar store (``benchmarks/pipeline.py``'s
``write_w2_store``) is written once and converted to a sharded store
(``shard_writer.convert``, shards of ``--shard_rows`` rows); then each reader runs in a
fresh process of its own: rows/s of ``pipeline.train_iterator`` (memmap) and of
``stream.train_iterator`` (sharded, with ``verify_shards`` on and off) at global batch
``--batch``, process 0 of 1, after ``--warmup`` batches. Peak RSS is the reader
process's VmHWM counted from the moment the store is opened (the memmap reader's
includes the store pages it touched), and its rise above the RSS of that moment.
``--repeats N`` runs the readers N times, interleaved (memmap, sharded, unverified,
memmap, ...), and reports each reader's median and the median of the per-round ratios
to memmap: on a shared machine one sample per reader says little. ``--baseline_src DIR``
also times the sharded readers of another source tree (``git worktree add DIR main``),
named ``sharded@base`` and ``sharded_unverified@base``, in the same rounds: before and
after a change, side by side. ``--measure`` runs
one reader on an existing store (what the parent calls). Prints one JSON object per
size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from pico_jax import batch as B

# The memmap pipeline; the sharded reader checking each shard on its first read, and not.
READERS = ("memmap", "sharded", "sharded_unverified")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def measure(reader: str, path: str, *, batch: int, batches: int, warmup: int,
            window: int) -> dict:
  """rows/s and peak RSS of one reader over the store at ``path`` (this process)."""
  from pico_jax.data import pipeline, store, stream
  train = store.load_store(path, verify_shards=reader == "sharded").splits["train"]
  # The peak counts from here: the imports' own memory is the same for both readers.
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  base = _status("VmRSS")
  if reader.startswith("sharded"):
    it = stream.train_iterator(train, global_batch_size=batch, num_batches=batches + warmup,
                               seed=0, window=window)
  else:
    it = pipeline.train_iterator(train, global_batch_size=batch,
                                 num_batches=batches + warmup, seed=0)
  for _ in range(warmup):
    next(it)
  start, rows = time.perf_counter(), 0
  for _ in range(batches):
    rows += len(next(it)[B.CLICK])
  rate = rows / (time.perf_counter() - start)
  return {"rows_per_s": round(rate), "peak_rss_mib": round(_status("VmHWM") / 1024),
          "peak_rss_above_start_mib": round((_status("VmHWM") - base) / 1024)}


def _status(key: str) -> int:
  """A /proc/self/status figure in KiB (VmHWM, not ru_maxrss, which Linux carries over
  exec from the parent; VmHWM restarts at the clear_refs write)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", default="1000000,10000000")
  p.add_argument("--shard_rows", type=int, default=250_000)
  p.add_argument("--batch", type=int, default=4096)
  p.add_argument("--batches", type=int, default=300)
  p.add_argument("--warmup", type=int, default=20)
  p.add_argument("--window", type=int, default=65_536)
  p.add_argument("--workdir", default="/tmp/pico_sharded_bench")
  p.add_argument("--keep", action="store_true", help="keep the generated stores")
  p.add_argument("--repeats", type=int, default=1,
                 help="rounds of the readers, interleaved; medians are reported")
  p.add_argument("--measure", choices=READERS,
                  help="time this reader on --store only (one process, one JSON line)")
  p.add_argument("--store", help="with --measure: the store (columnar for memmap)")
  p.add_argument("--baseline_src", help="also time the sharded readers of this source "
                 "tree (its pico_jax and benchmarks/), interleaved")
  args = p.parse_args()
  settings = dict(batch=args.batch, batches=args.batches, warmup=args.warmup,
                  window=args.window)
  if args.measure:
    print(json.dumps(measure(args.measure, args.store, **settings)))
    return
  import pipeline as w2  # benchmarks/pipeline.py
  from pico_jax.ingest import shard_writer
  for rows in (int(r) for r in args.rows.split(",")):
    result = {"machine": f"{platform.node()}, {os.cpu_count()} cpus",
              "date": time.strftime("%Y-%m-%d"), "rows": rows, **settings}
    v1, v2 = (os.path.join(args.workdir, f"w2_{rows}_{kind}") for kind in ("v1", "v2"))
    if not os.path.exists(os.path.join(v1, "meta.json")):
      t = time.perf_counter()
      w2.write_w2_store(v1, rows)
      result["v1_write_s"] = round(time.perf_counter() - t, 1)
    if not os.path.exists(os.path.join(v2, "meta.json")):
      t = time.perf_counter()
      shard_writer.convert(v1, v2, num_shards=-(-rows // args.shard_rows), overwrite=True)
      result["convert_s"] = round(time.perf_counter() - t, 1)
    readers = list(READERS) + ([f"{r}@base" for r in READERS[1:]] if args.baseline_src
                               else [])
    rounds = [{reader: _measure_in_child(reader, v1 if reader == "memmap" else v2, settings,
                                         args.baseline_src)
               for reader in readers} for _ in range(args.repeats)]
    for reader in readers:
      samples = [r[reader] for r in rounds]
      result[reader] = {**samples[-1], "rows_per_s": round(statistics.median(
          s["rows_per_s"] for s in samples)), "samples": [s["rows_per_s"] for s in samples]}
      if reader == "memmap":
        continue
      result[f"{reader}_over_memmap"] = round(statistics.median(
          r[reader]["rows_per_s"] / r["memmap"]["rows_per_s"] for r in rounds), 2)
    print(json.dumps(result), flush=True)
    if not args.keep:
      shutil.rmtree(v1)
      shutil.rmtree(v2)


def _measure_in_child(reader: str, store: str, settings: dict,
                      baseline_src: str | None = None) -> dict:
  """``measure`` in a fresh process: no reader inherits another's page-cache or heap.
  A ``READER@base`` reader runs ``baseline_src``'s script on its own pico_jax."""
  reader, _, base = reader.partition("@")
  script, env = __file__, None
  if base:
    script = os.path.join(baseline_src, "benchmarks", os.path.basename(__file__))
    env = {**os.environ, "PYTHONPATH": os.path.abspath(baseline_src)}
  out = subprocess.run(
      [sys.executable, script, "--measure", reader, "--store", store,
       *(f"--{k}={v}" for k, v in settings.items())],
      check=True, capture_output=True, text=True, env=env).stdout
  return json.loads(out.strip().splitlines()[-1])


if __name__ == "__main__":
  main()
