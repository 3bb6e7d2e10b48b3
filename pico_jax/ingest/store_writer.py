"""Writing a store (the layout is ``pico_jax.data.store``'s): preallocated columns.

``StoreWriter`` creates every column as a file of zeros, mapped for writing, in a
temporary directory beside the store; the passes fill the rows in any order, and
``commit`` records every file's checksum (``integrity.seal``), writes ``meta.json``
and renames the directory into place. The store's directories take the permissions of
the process's umask, as ``mkdir`` gives them.

Nothing but a store is ever replaced: ``check_output`` refuses an existing ``--output``
that is neither a store nor empty. A build killed midway leaves its temporary
directories (``.NAME.tmp-PID-*``, ``.NAME.spill-PID-*``, ``.NAME.old-PID-*`` beside
``NAME``); ``clear_leftovers`` removes those of processes no longer running when the
next build of the same output starts.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import secrets
import shutil
from typing import Any, Callable

import numpy as np

from pico_jax.data import integrity, store
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema
from pico_jax.data.store import META, STORE_VERSION, column_specs, columns_meta

# The temporary directories of a build. A sharded build's columnar copy ("columnar")
# is cleared only by the sharded build, before it makes its own: the checks of the
# writers it calls run while that copy exists, and would take it for a leftover.
LEFTOVER_KINDS = ("tmp", "spill", "old")


def existing_parent(output: str) -> str:
  """The nearest existing directory above ``output``: where its temporary directories
  go (nothing is created for them, so a failed run leaves no directory behind)."""
  parent = os.path.dirname(os.path.abspath(output))
  while not os.path.isdir(parent):
    parent = os.path.dirname(parent)
  return parent


def make_temp_dir(output: str, kind: str) -> str:
  """A new directory ``.NAME.KIND-PID-<random>`` beside ``output`` (``kind``: one of
  ``LEFTOVER_KINDS``, or "columnar"), made by ``os.mkdir`` (mode 0o777 less the umask;
  ``tempfile.mkdtemp`` would make it 0o700 whatever the umask, and renamed into place
  it would keep that mode). The pid tells a killed build's leftovers from a live one's."""
  parent, name = existing_parent(output), os.path.basename(output)
  prefix = f".{name}.{kind}-{os.getpid()}-"
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
  which is slower.

  Called on many threads at once, so it never parses a ``.npy`` header: numpy parses
  one with ``ast.literal_eval``, and CPython 3.11's ast module keeps one recursion
  counter for all threads (python/cpython#106905), so two parses at once can fail with
  "SystemError: AST constructor recursion depth mismatch". The map is made from the
  header's offset, which writing the header gave."""
  offset = np.lib.format.open_memmap(path, "w+", dtype, shape).offset
  left = int(np.prod(shape)) * np.dtype(dtype).itemsize
  zeros = bytes(min(left, 1 << 22))
  with open(path, "r+b") as f:
    f.seek(offset)
    while left:
      left -= f.write(zeros[:left])
  return np.memmap(path, dtype, "r+", offset, shape)


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
    check_output(self.path, overwrite)
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self.schema, self.rows = schema, dict(rows)
    self.tmp = make_temp_dir(self.path, "tmp")
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
                columns=columns_meta(self.schema))
    meta = integrity.seal(meta, self.tmp, _data_files(self.tmp))
    with open(os.path.join(self.tmp, META), "w") as f:
      json.dump(meta, f, indent=1, sort_keys=True)
    move_into_place(self.tmp, self.path)
    return meta

  def abort(self) -> None:
    self.columns = {}
    shutil.rmtree(self.tmp, ignore_errors=True)


def move_into_place(tmp: str, path: str) -> None:
  """Renames the complete store ``tmp`` to ``path``; a store already at ``path`` is
  moved aside first (an ``old`` directory) and removed only once ``tmp`` is in place."""
  old = None
  if os.path.exists(path):
    check_output(path, overwrite=True)  # it may have changed since the start.
    old = make_temp_dir(path, "old")
    os.rename(path, os.path.join(old, "store"))
  os.rename(tmp, path)
  if old:
    shutil.rmtree(old)


def _data_files(root: str) -> list[str]:
  """The store's files under ``root`` but meta.json (and hidden ones), ``/``-joined."""
  return [os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
          for d, _, names in os.walk(root) for f in names
          if f != META and not f.startswith(".")]


def _is_store(path: str) -> bool:
  try:
    with open(os.path.join(path, META)) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(meta, dict) and "store_version" in meta


def check_output(output: str, overwrite: bool) -> None:
  """Raises unless a store may be written at ``output``: it does not exist, or
  ``overwrite`` is set and it is a store (its meta.json has a ``store_version``) or an
  empty directory. Anything else is left untouched."""
  if not os.path.lexists(output):
    return
  if not overwrite:
    raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
  if os.path.isdir(output) and not os.path.islink(output) and (
      _is_store(output) or not os.listdir(output)):
    return
  raise DataError("is not a store (no meta.json with a store_version) nor an empty "
                  "directory: --overwrite replaces only those, and nothing was "
                  "changed", path=output)


def _owner(leftover: str) -> int | None:
  """The pid in a temporary directory's name (``make_temp_dir``), or None."""
  pid = os.path.basename(leftover).rsplit(".", 1)[-1].split("-")[1:2]
  return int(pid[0]) if pid and pid[0].isdigit() else None


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process.
    return True
  return True


def clear_leftovers(output: str, log: Callable[[str], None] = lambda msg: None,
                    kinds: tuple[str, ...] = LEFTOVER_KINDS) -> list[str]:
  """Removes the temporary directories (of ``kinds``) that killed builds of ``output``
  left beside it (those whose process is no longer running), and says so in one
  ``log`` line; the removed paths. A build killed between the two renames of its
  commit left the previous store in its ``old`` directory and nothing at ``output``:
  that store is put back first. Every writer of a local store calls it before it
  checks ``output``."""
  parent, name = existing_parent(output), os.path.basename(os.path.abspath(output))
  removed = []
  for kind in sorted(kinds, key=lambda kind: kind != "old"):  # "old" first.
    pattern = os.path.join(glob.escape(parent), f".{glob.escape(name)}.{kind}-*")
    for leftover in sorted(glob.glob(pattern)):
      pid = _owner(leftover)
      if pid is not None and pid != os.getpid() and _running(pid):
        continue
      kept = os.path.join(leftover, "store")
      if kind == "old" and not os.path.lexists(output) and _is_store(kept):
        os.rename(kept, output)
      shutil.rmtree(leftover, ignore_errors=True)
      removed.append(leftover)
  if removed:
    log(f"removed {len(removed)} leftover(s) of an interrupted build of {output}: "
        + ", ".join(os.path.basename(p) for p in removed))
  return removed


def seal_store(path: str) -> tuple[dict[str, Any], bool]:
  """Adds checksums to a store written before stores had them, trusting its bytes as
  they are now, once its columns pass the load-time checks (shapes and values). A store
  that has them is verified instead. Returns (its meta, whether it was sealed now)."""
  path = os.path.abspath(path)
  meta = store.read_meta(path)
  if integrity.FILES in meta:
    store.load_store(path)
    return meta, False
  store.open_columns(path, meta, verify=False)
  meta = integrity.seal(meta, path, _data_files(path))
  partial = os.path.join(path, f".{META}.{os.getpid()}")
  with open(partial, "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
  os.replace(partial, os.path.join(path, META))
  return meta, True
