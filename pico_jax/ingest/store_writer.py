"""Writing a store (the layout is ``pico_jax.data.store``'s): preallocated columns.

``StoreWriter`` creates every column as a file of zeros, mapped for writing, in a
temporary directory beside the store; the passes fill the rows in any order, and
``commit`` writes ``meta.json`` and renames the directory into place. The store's
directories take the permissions of the process's umask, as ``mkdir`` gives them.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import shutil
import tempfile
from typing import Any

import numpy as np

from pico_jax.data.schema import Schema
from pico_jax.data.store import META, STORE_VERSION, column_specs


def _make_dir(parent: str, prefix: str) -> str:
  """A new directory ``parent/prefix<random>`` made by ``os.mkdir`` (mode 0o777 less the
  umask; ``tempfile.mkdtemp`` would make it 0o700 whatever the umask, and renamed into
  place it would keep that mode)."""
  while True:
    path = os.path.join(parent, prefix + secrets.token_hex(6))
    try:
      os.mkdir(path)
      return path
    except FileExistsError:
      continue


def _zeroed_map(path: str, dtype, shape) -> np.memmap:
  """A new ``.npy`` file of zeros, mapped for writing. The zeros are written in one
  sequential pass: rows scattered into a sparse file fault its pages in one at a time,
  which is slower."""
  offset = np.lib.format.open_memmap(path, "w+", dtype, shape).offset
  left = int(np.prod(shape)) * np.dtype(dtype).itemsize
  zeros = bytes(min(left, 1 << 22))
  with open(path, "r+b") as f:
    f.seek(offset)
    while left:
      left -= f.write(zeros[:left])
  return np.lib.format.open_memmap(path, "r+")


# File systems of this machine's own disks or memory: every process that opens a file
# there reads the page cache that the maps wrote, flushed or not.
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs",
                                "tmpfs", "ramfs", "overlay", "bcachefs"})


def file_system(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
  """The type of the file system holding ``path`` (the longest mount point above it
  in Linux's ``mountinfo``), or None where that cannot be told."""
  try:
    with open(mountinfo) as f:
      lines = f.read().splitlines()
  except OSError:
    return None
  path = os.path.realpath(path)
  best, kind = "", None
  for line in lines:
    fields = line.split()
    mount = fields[4].encode().decode("unicode_escape")  # "\040" is a space.
    if ((path == mount or path.startswith(mount.rstrip("/") + "/"))
        and len(mount) >= len(best)):
      best, kind = mount, fields[fields.index("-") + 1]
  return kind


def needs_flush(path: str) -> bool:
  """Whether the columns' pages must be flushed (msync) before the store is named.
  Rows written through a map reach a network file system's server (NFS, a FUSE
  bucket) only when flushed, and another host would read zeros until then; on a local
  file system every reader already shares the page cache, and the flush is only a
  wait for the disk, which ``np.save`` does not make either. Unknown
  file systems are flushed."""
  return file_system(path) not in LOCAL_FILE_SYSTEMS


class StoreWriter:
  """Writes a store: preallocated memory-mapped columns, filled in any order.

  Use as a context manager; ``commit(meta)`` writes ``meta.json`` and renames the
  temporary directory to ``path``. Leaving the block without a commit (an exception)
  deletes the temporary directory. With ``allocate=False`` the columns are allocated
  later, by ``allocate()`` (e.g. on a thread, inside the block).

  Attributes:
    columns: {split: {key: np.memmap of shape [rows] + tail}}.
  """

  def __init__(self, path: str, schema: Schema, rows: dict[str, int], *,
               overwrite: bool = False, allocate: bool = True):
    self.path = os.path.abspath(path)
    parent = os.path.dirname(self.path)
    if os.path.exists(self.path) and not overwrite:
      raise FileExistsError(f"{self.path} exists; pass overwrite=True (--overwrite) to "
                            "replace it")
    os.makedirs(parent, exist_ok=True)
    self.schema, self.rows = schema, dict(rows)
    self.tmp = _make_dir(parent, f".{os.path.basename(self.path)}.tmp-")
    self.overwrite = overwrite
    self.columns: dict[str, dict[str, np.ndarray]] = {split: {} for split in self.rows}
    try:
      for split in self.rows:
        os.makedirs(os.path.join(self.tmp, split))
      if allocate:
        self.allocate()
    except BaseException:  # e.g. a full disk: no temporary directory is left.
      self.abort()
      raise

  def allocate(self) -> None:
    """Creates every column as a file of zeros, mapped for writing."""
    specs = [(split, key, dtype, (n,) + tail) for split, n in self.rows.items()
             for key, (tail, dtype) in column_specs(self.schema).items()]
    # Written side by side: the kernel's page allocation is most of the time.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      maps = pool.map(lambda spec: _zeroed_map(
          os.path.join(self.tmp, spec[0], f"{spec[1]}.npy"), *spec[2:]), specs)
      for (split, key, _, _), column in zip(specs, maps):
        self.columns[split][key] = column

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      self.abort()
    return False

  def save_array(self, relpath: str, array: np.ndarray) -> None:
    """An extra array (e.g. a vocabulary) at ``relpath`` inside the store."""
    full = os.path.join(self.tmp, relpath)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    np.save(full, array, allow_pickle=False)

  def commit(self, meta: dict[str, Any], schema: Schema | None = None) -> dict[str, Any]:
    """Flushes the columns (see ``needs_flush``), writes ``meta.json`` and moves the
    store into place. ``schema``: the store's schema when it differs from the one the
    columns were allocated with in what does not shape them (the vocabulary sizes,
    known only once the columns are being written)."""
    if schema is not None:
      if column_specs(schema) != column_specs(self.schema):
        raise ValueError(f"schema {schema} has other columns than the store's "
                         f"{self.schema}")
      self.schema = schema
    if needs_flush(self.tmp):  # side by side: the wait is the server's or the disk's.
      maps = [column for columns in self.columns.values() for column in columns.values()]
      with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(lambda column: column.flush(), maps))
    self.columns = {}
    meta = dict(meta, store_version=STORE_VERSION, schema=self.schema.to_json(),
                splits={s: {"rows": n, **meta.get("splits", {}).get(s, {})}
                        for s, n in self.rows.items()},
                columns={k: {"shape": list(t), "dtype": d.name}
                         for k, (t, d) in column_specs(self.schema).items()})
    with open(os.path.join(self.tmp, META), "w") as f:
      json.dump(meta, f, indent=1, sort_keys=True)
    old = None
    if os.path.exists(self.path):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.old-",
                             dir=os.path.dirname(self.path))
      os.rename(self.path, os.path.join(old, "store"))
    os.rename(self.tmp, self.path)
    if old:
      shutil.rmtree(old)
    return meta

  def abort(self) -> None:
    self.columns = {}
    shutil.rmtree(self.tmp, ignore_errors=True)
