"""Speed and memory of ``pico_contrastive_loss`` forward + backward, per implementation.

  python benchmarks/contrastive.py                                  # batch 1k .. 64k
  python benchmarks/contrastive.py --batch_sizes=1024,4096 --chunk_size=512
  python benchmarks/contrastive.py --implementation=xla,chunked,pallas \
      --dtypes=float32,bfloat16                                     # on a GPU

For each batch size B, dtype and implementation (``--implementation``, measured side
by side in one run: xla, the exact B x B form; chunked, a streaming logsumexp over
candidate chunks of ``--chunk_size``; pallas, the fused kernel, which runs in
interpret mode on CPU and is meaningful for speed only on an accelerator), prints one
JSON line with the median wall time of value-and-gradient w.r.t. (z_ctr, z_cvr, tau)
over ``--repeats`` calls, and XLA's compiled temporary memory (bytes of the buffers
the computation needs beyond its inputs and outputs). ``implementation_used`` is
what ran: "pallas" falls back to "xla" when its accelerator self-check fails. Inputs:
z [B, dz] in ``--dtypes`` (dz = ``--dim``, 32 as in the default config), tau float32
[B] in [0.05, 1].

A variant is compiled but not run where its temporaries exceed ``--max_temp_gib`` or
B exceeds ``--run_up_to`` (0: no limit); its line then says why and still gives the
compiled memory. On a 2-core CPU, ``--run_up_to=16384`` keeps the run to minutes.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics

import common
import jax
import jax.numpy as jnp

from pico_jax import contrast
from pico_jax.losses import pico_contrastive_loss


def _inputs(batch: int, dim: int, dtype: str):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  return (jax.random.normal(k1, (batch, dim), dtype),
          jax.random.normal(k2, (batch, dim), dtype),
          jax.random.uniform(k3, (batch,), jnp.float32, 0.05, 1.0))


def default_implementations() -> str:
  """All three on an accelerator; on CPU the kernel is interpreted, so xla and chunked."""
  return "xla,chunked" if jax.default_backend() == "cpu" else "xla,chunked,pallas"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_sizes", default="1024,4096,16384,65536")
  parser.add_argument("--implementation", default=None,
                      help="comma list of xla, chunked, pallas (default: all three on an "
                           "accelerator, xla,chunked on CPU)")
  parser.add_argument("--dtypes", default="float32", help="comma list: float32, bfloat16")
  parser.add_argument("--chunk_size", type=int, default=1024)
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max_temp_gib", type=float, default=8.0)
  parser.add_argument("--run_up_to", type=int, default=0)
  args = parser.parse_args()
  info = common.machine()
  implementations = (args.implementation or default_implementations()).split(",")
  for batch, dtype in itertools.product(map(int, args.batch_sizes.split(",")),
                                        args.dtypes.split(",")):
    inputs = _inputs(batch, args.dim, dtype)
    for implementation in implementations:
      chunk = args.chunk_size if implementation == "chunked" else 0
      if chunk and batch % chunk:
        continue
      loss = functools.partial(pico_contrastive_loss, chunk_size=chunk,
                               implementation=implementation)
      step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
      compiled = step.lower(*inputs).compile()
      memory = common.compiled_memory(compiled)
      record = {"benchmark": "contrastive", "batch": batch, "dim": args.dim, "dtype": dtype,
                "implementation": implementation,
                "implementation_used": contrast.resolve(
                    implementation, chunk, contrast.Shape(batch, args.dim, dtype)),
                "chunk_size": chunk, **memory}
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
