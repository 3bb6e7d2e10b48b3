"""Shared benchmark helpers: timing, the matmul roofline, memory, JSON output.

Timings are wall-clock medians over repetitions, each ended by ``block_until_ready``.
On shared machines compare configurations measured in the same run, side by side.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp


def machine() -> dict:
  """Where the numbers come from: backend, device kind and count, host CPUs, date."""
  devices = jax.devices()
  return {"backend": jax.default_backend(), "device": devices[0].device_kind,
          "devices": len(devices), "host_cpus": os.cpu_count(),
          "host": platform.machine(), "jax": jax.__version__,
          "date": datetime.date.today().isoformat()}


def seconds(fn, *args) -> float:
  """Wall seconds of one call of ``fn(*args)``, waiting for its results."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


class MatmulRoofline:
  """The machine's float32 matmul rate, measured with one large ``jnp.dot``.

  ``measure()`` times one product and returns GFLOP/s; call it between the timed
  windows of a benchmark so the roofline sees the same machine load.
  """

  def __init__(self, n: int | None = None):
    if n is None:
      n = 4096 if jax.default_backend() == "cpu" else 16384
    self.n = n
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    self.a = jax.random.normal(key_a, (n, n), jnp.float32)
    self.b = jax.random.normal(key_b, (n, n), jnp.float32)
    self.dot = jax.jit(jnp.dot)
    jax.block_until_ready(self.dot(self.a, self.b))
    self.samples: list[float] = []

  def measure(self, repeats: int = 1) -> float:
    for _ in range(repeats):
      self.samples.append(2 * self.n ** 3 / seconds(self.dot, self.a, self.b) / 1e9)
    return self.samples[-1]

  def gflops(self) -> float:
    """The median of every measurement so far."""
    return statistics.median(self.samples)


def compiled_memory(compiled) -> dict:
  """Bytes of a compiled executable's buffers (XLA's memory analysis, per device)."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return {"compiled_temp_bytes": int(m.temp_size_in_bytes),
          "compiled_argument_bytes": int(m.argument_size_in_bytes),
          "compiled_peak_bytes": int(total)}


def device_peak_bytes() -> int | None:
  """The allocator's peak bytes in use on device 0 (None where not reported, e.g. CPU)."""
  stats = jax.devices()[0].memory_stats()
  return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def host_peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def emit(record: dict):
  """Prints one JSON line (and flushes, so partial runs keep their lines)."""
  print(json.dumps(record, sort_keys=False), flush=True)
