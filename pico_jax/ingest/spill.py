"""Where parsed blocks wait between preprocessing's two passes: memory, or files.

A block parsed in pass 1 (``format_contract.Chunk``, its ids factorized) is needed again
only in pass 2. ``Spill`` holds blocks in memory up to a budget (their arrays exist
already, so holding costs nothing) and writes the others to files: the pickle of the
block with its arrays' bytes out of band, each at an aligned offset, so that pass 2
maps them back instead of copying them into fresh memory.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import pickle
import threading

import numpy as np

from pico_jax.ingest import format_contract
from pico_jax.ingest.encode import Factorized


def _held_bytes(chunk: format_contract.Chunk) -> int:
  """Bytes of memory the arrays of ``chunk`` keep alive (a view counts its base, once)."""
  bases = {}

  def visit(x):
    if isinstance(x, np.ndarray):
      while isinstance(x.base, np.ndarray):
        x = x.base
      bases[id(x)] = x.nbytes
    elif isinstance(x, Factorized):
      visit(x.keys), visit(x.inverse)
    elif isinstance(x, (list, tuple)):
      for y in x:
        visit(y)
    elif isinstance(x, dict):
      for y in x.values():
        visit(y)

  for field in dataclasses.fields(chunk):
    visit(getattr(chunk, field.name))
  return sum(bases.values())


_ALIGN = 64  # bytes: where each array of a spill file starts.


def _layout(sizes) -> list[int]:
  """Offsets of parts of ``sizes`` bytes written one after the other from offset 0,
  each at a multiple of ``_ALIGN``."""
  offsets, end = [], 0
  for size in sizes:
    end += -end % _ALIGN
    offsets.append(end)
    end += size
  return offsets


def _dump(path: str, chunk: format_contract.Chunk) -> None:
  """Writes ``chunk`` to ``path``: its pickle (protocol 5) with the arrays' bytes kept
  out of it, then each array's bytes at an aligned offset, for ``_load`` to map."""
  buffers = []
  head = pickle.dumps(chunk, protocol=5, buffer_callback=buffers.append)
  raws = [buffer.raw() for buffer in buffers]
  sizes = np.array([len(head)] + [r.nbytes for r in raws], np.int64)
  prefix = np.int64(len(sizes)).tobytes() + sizes.tobytes()
  with open(path, "wb") as f:
    for offset, part in zip(_layout([len(prefix)] + sizes.tolist()),
                            [prefix, head] + raws):
      f.write(bytes(offset - f.tell()))
      f.write(part)


def _load(path: str) -> format_contract.Chunk:
  """The chunk ``_dump`` wrote to ``path``, its arrays read-only views of the mapped
  file: no copy, and no fresh memory (the mapping outlives the file's name)."""
  with open(path, "rb") as f:
    mapped = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
  count = int(np.frombuffer(mapped[:8], np.int64)[0])
  sizes = np.frombuffer(mapped[8:8 + 8 * count], np.int64).tolist()
  offsets = _layout([8 + 8 * count] + sizes)[1:]
  parts = [mapped[o:o + n] for o, n in zip(offsets, sizes)]
  return pickle.loads(parts[0], buffers=parts[1:])


class Spill:
  """Parsed blocks between the two passes, each under the name of its spill file:
  held in this process's memory while their arrays fit in ``memory_bytes``, written
  to the file beyond that (and mapped back, not copied).

  Holding a block costs nothing: its arrays already exist. Writing it costs a copy
  into fresh page-cache pages, a visible part of a run's CPU time.
  Worker processes cannot share memory with the parent, so their spill is
  ``Spill(0)``: every block goes to its file. Thread-safe.
  """

  def __init__(self, memory_bytes: int = 0):
    self._holds = memory_bytes > 0  # Spill(0) holds nothing, not even an empty block.
    self._free = memory_bytes
    self._held: dict[str, format_contract.Chunk] = {}
    self._lock = threading.Lock()

  def put(self, path: str, chunk: format_contract.Chunk) -> None:
    size = _held_bytes(chunk)
    with self._lock:
      if self._holds and size <= self._free:
        self._free -= size
        self._held[path] = chunk
        return
    _dump(path, chunk)

  def take(self, path: str) -> format_contract.Chunk:
    """The block put under ``path`` (its file is removed once read). Blocks are taken
    after every block was put, so the memory they free is not handed out again."""
    with self._lock:
      chunk = self._held.pop(path, None)
    if chunk is None:
      chunk = _load(path)
      os.remove(path)
    return chunk


FILES = Spill(0)  # every block to its file: a worker process's spill.
