"""Compiled per-device temporary memory of the PICO contrastive loss and its gradient.

  python benchmarks/contrast_memory.py --global_batch=65536 --devices=8 --chunks=0,1024,4096

Compiles (never runs) value_and_grad of ``pico_contrastive_loss`` with the batch split
over ``devices`` host CPU devices and prints XLA's memory analysis per device: the
exact form holds [local batch, global batch] logits, the chunked form
[local batch, chunk].
"""

import argparse
import os


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--global_batch", type=int, default=65_536)
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--proj_dim", type=int, default=32)
  parser.add_argument("--chunks", default="0,1024,4096")
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
  print("| chunk_size | temp MiB / device | local x chunk f32 MiB | local x global f32 MiB |")
  print("| --- | --- | --- | --- |")
  for chunk in (int(c) for c in args.chunks.split(",")):
    fn = jax.value_and_grad(lambda a, b, t: losses.pico_contrastive_loss(
        a, b, t, chunk_size=chunk), argnums=(0, 1, 2))
    compiled = jax.jit(fn).lower(spec(g, dz), spec(g, dz), spec(g)).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    width = chunk or g
    print(f"| {chunk or 'exact'} | {temp:.1f} | {local * width * 4 / 2**20:.1f} | "
          f"{local * g * 4 / 2**20:.1f} |")


if __name__ == "__main__":
  main()
