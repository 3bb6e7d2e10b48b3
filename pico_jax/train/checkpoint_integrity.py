"""Checkpoint integrity: a checksum per array, recorded at save and checked at restore.

Why a checksum of our own, not TensorStore's. orbax 0.12.8 writes arrays as zarr v2
chunks in OCDBT files (``tensorstore_utils._build_zarr2_metadata``: a zstd compressor,
no checksum codec). Its zarr v3 layout adds a ``crc32c`` codec to the shard *index*
only (``_build_zarr3_metadata``), never to the chunk data, and the codec list is built
inside orbax with no option to extend it. OCDBT checks its own tree nodes, not the
values they point at. So a flipped byte in a chunk decodes to other numbers and the
resume goes on silently. Hence:

* At save, one jitted pass over the state computes two 32-bit checksums per leaf of
  its *global* value: ``sum_i fmix32(word_i + fmix32(i))`` and ``sum_i fmix32(word_i ^
  i * 0x9E3779B9)`` over the leaf's 32-bit words (bit patterns, so NaN payloads and
  -0.0 count), ``fmix32`` being MurmurHash3's finaliser. A sum modulo 2^32 does not
  depend on the order of the reduction, so the value is the same whatever mesh or
  process count holds the array: a checkpoint restored onto another mesh verifies.
  Any change of one word changes both sums (``fmix32`` is a bijection); the chance
  that several changes cancel in both is about 2^-64.
* The checksums go into the checkpoint's small ``integrity`` item (JSON), with a
  CRC-32 of every process's data-iterator file and of the config, and the identity of
  the data the run trained on (``checkpoint_compat.data_identity``).
* Every save also writes a version marker (``MARKER``) into orbax's
  ``_CHECKPOINT_METADATA``. A checkpoint with the marker (or without that file, which
  orbax writes with every step) must have its ``integrity`` item: deleting the item
  makes the checkpoint damaged, never "old", so verification cannot be switched off
  by deleting files. Only a checkpoint whose metadata lacks the marker is old.
* Every restore (resume, ``restore``, the best params) recomputes them on the restored
  arrays, and checks that every float is finite, before anything uses the state.

The cost is one read of the state on the devices per save and per restore (measured in
``benchmarks/checkpoint.py``, BENCHMARKS.md), against the write or read of the same
bytes to storage.
"""

from __future__ import annotations

import functools
import json
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from pico_jax.train.checkpoint_compat import path_name

ITEM = "integrity"
VERSION = 2  # 2: records the data's identity ("dataset").
MARKER = {"pico_jax_checkpoint_version": VERSION}
_ORBAX_METADATA = "_CHECKPOINT_METADATA"


def _fmix32(h: jax.Array) -> jax.Array:
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
  """The bit patterns of ``x`` as uint32 [n] (one word per element of up to 4 bytes)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).ravel()
  bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32).ravel()


def _leaf_summary(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(uint32 [2] checksums, bool finite) of one array."""
  w = _words(x)
  i = jnp.arange(w.shape[0], dtype=jnp.uint32)
  sums = jnp.stack([jnp.sum(_fmix32(w + _fmix32(i)), dtype=jnp.uint32),
                    jnp.sum(_fmix32(w ^ (i * jnp.uint32(0x9E3779B9))), dtype=jnp.uint32)])
  finite = (jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
            else jnp.asarray(True))
  return sums, finite


@functools.lru_cache(maxsize=None)
def _summarize(out_sharding):
  return jax.jit(lambda leaves: [_leaf_summary(x) for x in leaves], out_shardings=out_sharding)


def summarize(tree) -> dict[str, tuple[str, bool]]:
  """``{leaf path: ("xxxxxxxx:yyyyyyyy" checksums, finite)}`` of a pytree of arrays.

  One jitted call per set of devices the leaves live on (a state is usually on one
  mesh; a loose scalar may sit on one device). Collective in a multi-process job
  (every process calls it with the same tree)."""
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(tree)[0]) or ((), ())
  groups = {}
  for i, x in enumerate(leaves):
    devices = frozenset(getattr(getattr(x, "sharding", None), "device_set", ()))
    groups.setdefault(devices, []).append(i)
  summary = [None] * len(leaves)
  for indices in groups.values():
    sharding = leaves[indices[0]].sharding if hasattr(leaves[indices[0]], "sharding") else None
    out = (NamedSharding(sharding.mesh, P()) if isinstance(sharding, NamedSharding) else None)
    host = jax.device_get(_summarize(out)([leaves[i] for i in indices]))
    for i, (sums, finite) in zip(indices, host):
      summary[i] = (f"{int(sums[0]):08x}:{int(sums[1]):08x}", bool(finite))
  return {path_name(path): value for path, value in zip(paths, summary)}


def _crc(data: bytes) -> str:
  """The CRC-32 of ``data`` as 8 hex digits, the form the ``integrity`` item holds."""
  return f"{zlib.crc32(data):08x}"


def config_crc(config: dict) -> str:
  """The CRC-32 of a config as canonical JSON (the same before and after saving it)."""
  return _crc(json.dumps(config, sort_keys=True).encode())


def data_crcs(data_iterator) -> list[str]:
  """The CRC-32 of every process's data-iterator file as Grain writes it (JSON,
  indent 4), in process order. Collective in a multi-process job."""
  crc = zlib.crc32(json.dumps(data_iterator.get_state(), indent=4).encode())
  if jax.process_count() == 1:
    return [f"{crc:08x}"]
  from jax.experimental import multihost_utils
  all_crcs = multihost_utils.process_allgather(np.asarray(crc, np.uint32))
  return [f"{int(c):08x}" for c in np.asarray(all_crcs).ravel()]


def has_marker(path: str) -> bool:
  """Whether the checkpoint directory ``path`` was written by a version that records
  the ``integrity`` item: its orbax metadata holds ``MARKER``, or is missing or
  unreadable (damage, not age)."""
  try:
    with open(os.path.join(path, _ORBAX_METADATA)) as f:
      custom = json.load(f).get("custom_metadata") or {}
  except (OSError, ValueError, AttributeError):
    return True
  return any(k in custom for k in MARKER)


def record(trees: dict, data_iterator, config: dict, loop: dict | None = None,
           dataset: dict | None = None) -> dict:
  """The ``integrity`` item of a save: checksums of each array item in ``trees``
  (``{"state": ..., "best": ...}``), of the data files, the config and the loop's
  host state, and ``dataset``, the identity of the data trained on."""
  items = {}
  for name, tree in trees.items():
    summary = summarize(tree)
    items[name] = {k: crc for k, (crc, _) in summary.items()}
  return {"version": VERSION, "items": items, "data": data_crcs(data_iterator),
          "config": config_crc(config), "loop": config_crc(loop or {}), "dataset": dataset}


def array_problems(recorded: dict, item: str, tree) -> list[str]:
  """What is wrong with a restored array item: one line per leaf whose checksum differs
  from ``recorded`` (the checkpoint's ``integrity`` item) or that holds a NaN/inf."""
  summary = summarize(tree)
  want = recorded["items"].get(item, {})
  problems = [f"leaf {k!r} does not match the checksum recorded when it was saved"
              for k, (crc, _) in summary.items() if want.get(k, crc) != crc]
  problems += [f"leaf {k!r} holds NaN or inf" for k, (_, finite) in summary.items()
               if not finite]
  return problems


def data_problem(recorded: dict, directory: str) -> str | None:
  """Whether this process's data-iterator file in ``directory`` (the ``data`` item) is
  the one saved; None when it is."""
  name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
  path = os.path.join(directory, name)
  with open(path, "rb") as f:
    crc = _crc(f.read())
  want = recorded["data"]
  if jax.process_index() < len(want) and want[jax.process_index()] != crc:
    return f"file {name!r} does not match the checksum recorded when it was saved"
  return None
