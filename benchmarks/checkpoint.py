"""What checkpoint integrity costs: a save and a restore with the checksums recorded
and verified (``pico_jax.train.checkpoint.Checkpointer``) beside the same orbax save and
restore without them, in alternating repetitions of one run.

  python benchmarks/checkpoint.py                      # 3 x 32 MiB leaves, 8 CPU devices
  python benchmarks/checkpoint.py --rows=2000000 --reps=7

The state is an embedding-sized table and its two Adam moments (``--rows`` x 16
float32 each, split over the devices by rows), as in a real train state. One JSON line
per mode (medians of ``--reps``; the two orders alternate between repetitions), then
the ratios:

- ``save_plain``: ``CheckpointManager.save`` of the state, data position and config,
  waited for; ``save_checked``: ``Checkpointer.save`` (the same items, plus the
  writability check and the ``integrity`` item: one jitted pass over the state);
- ``restore_plain``: ``CheckpointManager.restore`` of the state; ``restore_checked``:
  ``Checkpointer.restore_state`` (the same, then the checksums and finiteness
  recomputed and compared);
- ``summarize``: the checksum pass alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
import grain  # noqa: E402

from pico_jax import parallel  # noqa: E402
from pico_jax.data import pipeline  # noqa: E402
from pico_jax.train import checkpoint as ckpt_lib  # noqa: E402
from pico_jax.train import checkpoint_integrity as integrity  # noqa: E402


def _state(rows: int):
  mesh = parallel.make_mesh(-1, 1)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  key = jax.random.PRNGKey(0)
  leaves = {name: jax.device_put(jax.random.normal(jax.random.fold_in(key, i), (rows, 16)),
                                 sharding)
            for i, name in enumerate(("table", "mu", "nu"))}
  return {"params": {"table": leaves["table"]},
          "opt_state": {"mu": leaves["mu"], "nu": leaves["nu"]},
          "step": jnp.asarray(1, jnp.int32)}


def _timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=524_288)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
  args = parser.parse_args()
  state = _state(args.rows)
  config = ml_collections.ConfigDict({"seed": 0})
  data = pipeline.train_iterator({"click": np.zeros(64, np.float32)}, global_batch_size=8,
                                 num_batches=10, seed=0, num_threads=1, prefetch=0)
  root = args.dir or tempfile.mkdtemp(prefix="pico_ckpt_bench_")
  ckpt = ckpt_lib.Checkpointer(root, keep=2)
  target = ckpt_lib.abstract_like(state)
  integrity.summarize(state)  # compiled before timing.
  times = {m: [] for m in ("save_plain", "save_checked", "restore_plain",
                           "restore_checked", "summarize")}
  step = 0

  def plain_save():
    ckpt.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data),
        config=ocp.args.JsonSave(config.to_dict())), force=True)
    ckpt.manager.wait_until_finished()

  def checked_save():
    ckpt.save(step, state, data, config)
    ckpt.wait()

  for rep in range(args.reps + 1):  # the first repetition warms up, untimed.
    for mode in (("plain", "checked") if rep % 2 else ("checked", "plain")):
      step += 1
      t = _timed(plain_save if mode == "plain" else checked_save)
      restore = (lambda s=step: ckpt.manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target))).state) if mode == "plain" else (
          lambda s=step: ckpt.restore_state(s, target))
      r = _timed(restore)
      if rep:
        times[f"save_{mode}"].append(t)
        times[f"restore_{mode}"].append(r)
    if rep:
      times["summarize"].append(_timed(lambda: integrity.summarize(state)))
  ckpt.close()
  if args.dir is None:
    shutil.rmtree(root, ignore_errors=True)
  nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
  medians = {m: statistics.median(v) for m, v in times.items()}
  for mode, seconds in medians.items():
    common.emit({"mode": mode, "seconds": round(seconds, 4), "state_mib": nbytes / 2**20,
                 "reps": args.reps, **common.machine()})
  common.emit({"save_checked_over_plain": round(medians["save_checked"]
                                                / medians["save_plain"], 3),
               "restore_checked_over_plain": round(medians["restore_checked"]
                                                   / medians["restore_plain"], 3),
               "summarize_over_plain_save": round(medians["summarize"]
                                                  / medians["save_plain"], 3)})


if __name__ == "__main__":
  sys.exit(main())
