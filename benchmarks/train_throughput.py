"""W2 train-step throughput against the machine's matmul rate, PICO off and on.

  python benchmarks/train_throughput.py                      # batch 2048 and 4096
  python benchmarks/train_throughput.py --batch_sizes=2048 \
      --embedding_optimizers=lazy_adam,dense --steps=12
  python benchmarks/train_throughput.py --batch_sizes=4096 --implementation=xla,pallas \
      --profile_dir=/tmp/w2_profile             # GPU: traces for TensorBoard / Perfetto

Prints one JSON line per configuration (batch size x PICO off/on x embedding
optimizer; with PICO on, one per contrast ``--implementation``, side by side):
``batch``, ``pico``, ``implementation`` (asked; ``implementation_used`` is what ran), ``examples_per_s``, ``steps_per_s`` (medians over
``--repeats`` timed windows of ``--steps / --repeats`` steps each, after ``--warmup``
steps), ``fraction_of_compute_limit``, ``matmul_gflops`` (a large float32 ``jnp.dot``,
measured between the timed windows of the same run), ``train_mflop_per_example`` and
memory (XLA's compiled-buffer analysis; the allocator's peak where the device reports
it; the host's peak RSS).

The model is configs/w2.py on W2-shaped synthetic batches (benchmarks/w2.py). Eight
distinct batches are placed on the devices before timing and reused in turn, so the
input pipeline is not part of the step time (it has its own benchmark).

Training FLOPs per example (``train_flops_per_example``) count matrix products only,
from the parameter shapes: a kernel with S entries (experts included: [E, in, out])
costs 2 S FLOPs forward, 2 S for the input gradient and 2 S for the weight gradient;
the two layers whose input needs no gradient (the dense-feature layer reads data; the
relatedness network reads stop_gradient(e)) cost 4 S. With PICO the similarity matrices
add 2 directions x 2 B dz FLOPs forward per example (x3 for training). Embedding
gathers, activations, softmax, losses and the optimizer are not counted: they are the
overhead that keeps a step from the matmul limit. W2: 58.9 MFLOP/example without
PICO; XLA's own count is reported beside it (``xla_mflop_per_example``, elementwise
work included).

``fraction_of_compute_limit`` = examples/s x train FLOPs/example / (matmul GFLOP/s x 1e9).

``--profile_dir``: after the timed windows, ``--profile_steps`` more steps of every
configuration run under ``jax.profiler.trace`` into ``DIR/<batch>_<optimizer>_<pico>``
(per-kernel device times on a GPU; open with TensorBoard's profile plugin or Perfetto).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics

import common
import jax
import numpy as np
import w2

from configs import w2 as w2_config
from pico_jax import contrast, parallel
from pico_jax.train.trainer import build

# Layers whose input carries no gradient: forward + weight gradient only.
_NO_INPUT_GRAD = ("dense_features", "relatedness/dense_0")


def train_flops_per_example(params, config, global_batch: int) -> float:
  """Matrix-product FLOPs of one training example (see the module docstring)."""
  flops = 0.0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = "/".join(str(getattr(k, "key", k)) for k in path)
    if not names.endswith("kernel"):
      continue
    passes = 2 if any(n in names for n in _NO_INPUT_GRAD) else 3
    flops += 2.0 * np.prod(leaf.shape) * passes
  if config.contrast.mode != "none" and config.contrast.weight > 0:
    flops += 3 * 2 * (2.0 * global_batch * config.contrast.proj_dim)
  return flops


def _config(batch: int, implementation: str | None, embedding_optimizer: str,
            compute_dtype: str):
  """W2 at ``batch``; PICO off when ``implementation`` is None, else on with it."""
  c = w2_config.get_config()
  c.train.batch_size = batch
  c.optimizer.embedding_optimizer = embedding_optimizer
  c.model.compute_dtype = compute_dtype
  if implementation is None:
    c.contrast.mode = "none"
  else:
    c.contrast.implementation = implementation
  return c


class Run:
  """One configuration: its compiled step, live state and on-device batches."""

  def __init__(self, config, mesh, batches):
    self.config = config
    trainer = build(config, schema=w2.SCHEMA, mesh=mesh)
    self.state = trainer.state
    self.batches = batches
    self.compiled = trainer.train_step.lower(self.state, batches[0]).compile()
    self.flops = train_flops_per_example(self.state.params, config, config.train.batch_size)
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    self.xla_flops = float(cost.get("flops", 0.0)) / config.train.batch_size if cost else 0.0
    self.memory = common.compiled_memory(self.compiled)
    self.windows: list[float] = []
    self._next = 0

  def steps(self, n: int) -> float:
    """Runs ``n`` steps; wall seconds until the last one's metrics are ready."""
    def run():
      metrics = None
      for _ in range(n):
        self.state, metrics = self.compiled(self.state, self.batches[self._next % len(self.batches)])
        self._next += 1
      return metrics
    return common.seconds(run)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_sizes", default="2048,4096")
  parser.add_argument("--pico", default="off,on", help="off, on or off,on")
  parser.add_argument("--embedding_optimizers", default="lazy_adam",
                      help="comma list of dense, lazy_adam, lazy_adagrad")
  parser.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
  parser.add_argument("--repeats", type=int, default=5, help="timed windows (median)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--implementation", default="auto",
                      help="comma list of the contrast's auto, xla, chunked, pallas (PICO on)")
  parser.add_argument("--profile_dir", default="", help="write jax.profiler traces here")
  parser.add_argument("--profile_steps", type=int, default=5)
  args = parser.parse_args()
  per_window = max(1, args.steps // args.repeats)
  mesh = parallel.make_mesh()
  roofline = common.MatmulRoofline()
  info = common.machine()
  # None: PICO off; else PICO on with that contrast implementation.
  variants = [None] * ("off" in args.pico.split(",")) + (
      args.implementation.split(",") if "on" in args.pico.split(",") else [])
  for batch, opt in itertools.product(map(int, args.batch_sizes.split(",")),
                                      args.embedding_optimizers.split(",")):
    host = w2.batches(seed=0, batch_size=batch, count=8)
    batches = [parallel.shard_batch(b, mesh) for b in host]
    # PICO off and on live side by side and alternate, so both see the same load.
    runs = [Run(_config(batch, variant, opt, args.compute_dtype), mesh, batches)
            for variant in variants]
    for run in runs:
      run.steps(args.warmup)
    roofline.samples = []
    roofline.measure()
    for _ in range(args.repeats):
      for run in runs:
        run.windows.append(run.steps(per_window))
        roofline.measure()
    gflops = roofline.gflops()
    for variant, run in zip(variants, runs):
      pico = variant is not None
      step_s = statistics.median(run.windows) / per_window
      examples_per_s = batch / step_s
      common.emit({
          "benchmark": "train_throughput", "workload": "W2", "batch": batch, "pico": pico,
          "implementation": variant,
          "implementation_used": contrast.resolve(variant, run.config.contrast.chunk_size)
                                 if pico else None,
          "embedding_optimizer": opt, "compute_dtype": args.compute_dtype,
          "examples_per_s": round(examples_per_s, 1),
          "steps_per_s": round(1 / step_s, 4),
          "step_ms": round(1000 * step_s, 1),
          "step_ms_min": round(1000 * min(run.windows) / per_window, 1),
          "fraction_of_compute_limit": round(examples_per_s * run.flops / (gflops * 1e9), 3),
          "matmul_gflops": round(gflops, 1),
          "matmul_gflops_max": round(max(roofline.samples), 1),
          "train_mflop_per_example": round(run.flops / 1e6, 2),
          "xla_mflop_per_example": round(run.xla_flops / 1e6, 2),
          "timed_steps": per_window * args.repeats, "repeats": args.repeats,
          **run.memory, "device_peak_bytes": common.device_peak_bytes(),
          "host_peak_rss_bytes": common.host_peak_rss_bytes(), **info})
    if args.profile_dir:
      for variant, run in zip(variants, runs):
        name = f"{batch}_{opt}_{'pico_' + variant if variant else 'pico_off'}"
        with jax.profiler.trace(os.path.join(args.profile_dir, name),
                                create_perfetto_trace=True):
          run.steps(args.profile_steps)
    del runs


if __name__ == "__main__":
  main()
