"""Compiled per-device temporary memory of the PICO contrastive loss and its gradient.

  python benchmarks/contrast_memory.py --global_batch=65536 --devices=8 \\
      --implementation=xla,chunked,pallas --chunks=1024,4096

Compiles (never runs) value_and_grad of ``pico_contrastive_loss`` with the batch split
over ``devices`` host CPU devices and prints XLA's memory analysis per device for each
implementation: xla holds [local batch, global batch] logits, chunked (one row per
``--chunks`` entry) [local batch, chunk], pallas (local anchors against the
all-gathered candidates, under the mesh as the train step traces it) only its tiles.
The pallas row is of the interpret-mode program (the one CPU compiles); on a GPU the
kernel's tiles live in registers and shared memory and XLA sees O(B dz) buffers.
"""

import argparse
import os


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--global_batch", type=int, default=65_536)
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--proj_dim", type=int, default=32)
  parser.add_argument("--implementation", default="xla,chunked,pallas")
  parser.add_argument("--chunks", default="1024,4096", help="chunk sizes of 'chunked'")
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from pico_jax import losses, parallel

  mesh = parallel.make_mesh(args.devices, 1)
  rows = NamedSharding(mesh, P("data"))
  g, dz = args.global_batch, args.proj_dim
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rows)
  local = g // args.devices
  print(f"global batch {g}, {args.devices} devices (local batch {local}), proj_dim {dz}, "
        f"{jax.devices()[0].platform}")
  print("| implementation | temp MiB / device | local x chunk f32 MiB | local x global f32 MiB |")
  print("| --- | --- | --- | --- |")
  variants = []
  for implementation in args.implementation.split(","):
    chunks = [int(c) for c in args.chunks.split(",")] if implementation == "chunked" else [0]
    variants += [(implementation, chunk) for chunk in chunks]
  for implementation, chunk in variants:
    loss = lambda a, b, t: losses.pico_contrastive_loss(
        a, b, t, chunk_size=chunk, implementation=implementation)
    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))

    def traced(*x):
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return grad(*x)

    compiled = jax.jit(traced).lower(spec(g, dz), spec(g, dz), spec(g)).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    name = f"{implementation} ({chunk})" if chunk else implementation
    block = f"{local * chunk * 4 / 2**20:.1f}" if chunk else "-"
    print(f"| {name} | {temp:.1f} | {block} | {local * g * 4 / 2**20:.1f} |")


if __name__ == "__main__":
  main()
