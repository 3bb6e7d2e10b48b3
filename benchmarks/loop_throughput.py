"""The W2 training loop end to end (store -> host -> device -> step) beside the step alone.

  python benchmarks/loop_throughput.py                          # batch 2048, PICO on
  python benchmarks/loop_throughput.py --batch_sizes=4096,16384 --rows=1000000  # GPU

For each batch size, three modes run in alternating timed windows (so they share the
machine's load), one JSON line each:

- ``step``: the compiled step on batches placed on the devices before timing (the
  step-only rate of ``train_throughput.py``);
- ``loop``: what ``pico_jax.train.loop`` does per step: take the next host batch from
  the Grain iterator (``pipeline.train_iterator``: shuffled whole-batch gathers from
  the columns), ``parallel.shard_batch`` it, run the step;
- ``loop_prefetch``: the same with device prefetch (``pipeline.train_iterator``'s
  ``put`` and ``device_prefetch``: Grain's thread prefetch keeps the next
  ``--buffer_size`` global batches on the devices while the step runs).

``fraction_of_step`` is the mode's examples/s over the step-only examples/s. The
columns are W2-shaped (``benchmarks/w2.py``: 16 categorical fields up to 500,000 ids,
63 dense features), ``--rows`` rows held in memory, which the Grain gather reads as it
reads a columnar store's memory maps in the page cache.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import common
import jax
import numpy as np
import w2

from pico_jax import parallel
from pico_jax.data import pipeline
from pico_jax.train.trainer import build
from train_throughput import _config as w2_config

MODES = ("step", "loop", "loop_prefetch")


def _columns(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
  """W2-shaped training columns of ``rows`` rows (no mask: the pipeline adds it)."""
  columns = w2.batch(np.random.default_rng(seed), rows)
  columns.pop("mask")
  return columns


class Mode:
  """One way of feeding the same compiled step; ``window(n)`` times n steps."""

  def __init__(self, name, compiled, state, mesh, columns, batch, num_batches, buffer_size,
               num_threads):
    self.name, self.compiled, self.state = name, compiled, state
    put = lambda b: parallel.shard_batch(b, mesh)
    if name == "step":
      host = w2.batches(seed=1, batch_size=batch, count=8)
      self.placed = [put(b) for b in host]
      self.batches = itertools.cycle(self.placed)
      self.next = lambda: next(self.batches)
    else:
      prefetch = {} if name == "loop" else dict(put=put, device_prefetch=buffer_size)
      grain_it = pipeline.train_iterator(columns, global_batch_size=batch,
                                         num_batches=num_batches, seed=0,
                                         num_threads=num_threads, **prefetch)
      if name == "loop":
        self.next = lambda: put(next(grain_it))
      else:
        self.next = lambda: next(grain_it)
    self.windows: list[float] = []

  def window(self, n: int) -> float:
    def run():
      metrics = None
      for _ in range(n):
        self.state, metrics = self.compiled(self.state, self.next())
      return metrics
    return common.seconds(run)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_sizes", default="2048")
  parser.add_argument("--pico", default="on", choices=("on", "off"))
  parser.add_argument("--implementation", default="auto", help="the contrast's (PICO on)")
  parser.add_argument("--embedding_optimizer", default="lazy_adam")
  parser.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--rows", type=int, default=200_000, help="rows of the columns")
  parser.add_argument("--steps", type=int, default=15, help="timed steps per mode")
  parser.add_argument("--repeats", type=int, default=5, help="timed windows (median)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--buffer_size", type=int, default=2)
  parser.add_argument("--num_threads", type=int, default=2, help="Grain threads")
  args = parser.parse_args()
  per_window = max(1, args.steps // args.repeats)
  mesh = parallel.make_mesh()
  info = common.machine()
  columns = _columns(args.rows)
  for batch in map(int, args.batch_sizes.split(",")):
    c = w2_config(batch, args.implementation if args.pico == "on" else None,
                  args.embedding_optimizer, args.compute_dtype)
    num_batches = args.warmup + per_window * args.repeats + 1
    modes = []
    for name in MODES:
      # Each mode trains its own state (the step donates it); one compiled step for all.
      trainer = build(c, schema=w2.SCHEMA, mesh=mesh)
      if not modes:
        compiled = trainer.train_step.lower(trainer.state, parallel.shard_batch(
            w2.batch(np.random.default_rng(2), batch), mesh)).compile()
      modes.append(Mode(name, compiled, trainer.state, mesh, columns, batch, num_batches,
                        args.buffer_size, args.num_threads))
    for mode in modes:
      mode.window(args.warmup)
    for _ in range(args.repeats):
      for mode in modes:
        mode.windows.append(mode.window(per_window))
    step_rate = batch * per_window / statistics.median(modes[0].windows)
    for mode in modes:
      rate = batch * per_window / statistics.median(mode.windows)
      common.emit({"benchmark": "loop_throughput", "workload": "W2", "batch": batch,
                   "mode": mode.name, "pico": args.pico == "on",
                   "implementation": args.implementation if args.pico == "on" else None,
                   "embedding_optimizer": args.embedding_optimizer,
                   "compute_dtype": args.compute_dtype,
                   "examples_per_s": round(rate, 1),
                   "step_ms": round(1000 * statistics.median(mode.windows) / per_window, 2),
                   "fraction_of_step": round(rate / step_rate, 3),
                   "buffer_size": args.buffer_size if mode.name == "loop_prefetch" else None,
                   "timed_steps": per_window * args.repeats, "rows": args.rows, **info})
    del modes


if __name__ == "__main__":
  main()
