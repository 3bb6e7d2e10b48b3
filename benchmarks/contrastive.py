"""Speed and memory of ``pico_contrastive_loss`` forward + backward, exact and chunked.

  python benchmarks/contrastive.py                                  # batch 1k .. 64k
  python benchmarks/contrastive.py --batch_sizes=1024,4096 --chunk_size=512

For each batch size B and each variant (exact: the B x B similarity matrices;
chunked: a streaming logsumexp over candidate chunks of ``--chunk_size``), prints one
JSON line with the median wall time of value-and-gradient w.r.t. (z_ctr, z_cvr, tau)
over ``--repeats`` calls, and XLA's compiled temporary memory (bytes of the buffers
the computation needs beyond its inputs and outputs). Inputs: z float32 [B, dz]
(dz = ``--dim``, 32 as in the default config), tau float32 [B] in [0.05, 1].

A variant is compiled but not run where its temporaries exceed ``--max_temp_gib`` or
B exceeds ``--run_up_to`` (0: no limit); its line then says why and still gives the
compiled memory. On a 2-core CPU, ``--run_up_to=16384`` keeps the run to minutes.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import common
import jax
import jax.numpy as jnp

from pico_jax.losses import pico_contrastive_loss


def _inputs(batch: int, dim: int):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  return (jax.random.normal(k1, (batch, dim), jnp.float32),
          jax.random.normal(k2, (batch, dim), jnp.float32),
          jax.random.uniform(k3, (batch,), jnp.float32, 0.05, 1.0))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_sizes", default="1024,4096,16384,65536")
  parser.add_argument("--chunk_size", type=int, default=1024)
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max_temp_gib", type=float, default=8.0)
  parser.add_argument("--run_up_to", type=int, default=0)
  args = parser.parse_args()
  info = common.machine()
  for batch in map(int, args.batch_sizes.split(",")):
    inputs = _inputs(batch, args.dim)
    for chunk in (0, args.chunk_size):
      if chunk and batch % chunk:
        continue
      loss = functools.partial(pico_contrastive_loss, chunk_size=chunk)
      step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
      compiled = step.lower(*inputs).compile()
      memory = common.compiled_memory(compiled)
      record = {"benchmark": "contrastive", "batch": batch, "dim": args.dim,
                "variant": "chunked" if chunk else "exact", "chunk_size": chunk, **memory}
      skip = None
      if memory.get("compiled_temp_bytes", 0) > args.max_temp_gib * 2 ** 30:
        skip = f"not run: temporaries over {args.max_temp_gib} GiB"
      elif args.run_up_to and batch > args.run_up_to:
        skip = f"not run: batch over --run_up_to={args.run_up_to}"
      if skip:
        common.emit({**record, "skipped": skip, **info})
        continue
      common.seconds(compiled, *inputs)  # warm-up
      times = [common.seconds(compiled, *inputs) for _ in range(args.repeats)]
      common.emit({**record, "fwd_bwd_ms": round(1000 * statistics.median(times), 2),
                   "fwd_bwd_ms_min": round(1000 * min(times), 2), "repeats": args.repeats,
                   **info})


if __name__ == "__main__":
  main()
