"""A store's checksums and fingerprint: what makes a store's bytes verifiable.

At write time a store records in ``meta.json``:

* ``files``: ``{relative path: {"bytes": int, "blake3": hex}}`` for every data file
  (columns, shards, vocabularies), relative paths joined with ``/``;
* ``fingerprint``: the BLAKE3 digest of the canonical JSON of the rest of ``meta.json``
  (schema, statistics, row counts, ``files``). Equal fingerprints mean equal stores,
  byte for byte, and an edit to ``meta.json`` itself changes it.

Checkpoints and exports record the fingerprint, so a run, an evaluation or a prediction
against another store is caught by comparing one string. ``verify_file`` checks one file
against its entry (a streamed store checks each shard on its first read).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any

import blake3
import pyarrow.fs as pafs

from pico_jax.data import filesystem
from pico_jax.data.errors import DataError

FILES = "files"
FINGERPRINT = "fingerprint"
# Bytes per read of a remote file: few requests, BLAKE3 rather than the calls dominates.
_CHUNK = 16 << 20
# Bytes per mapped window of a local file: measured faster than 16 MiB windows and than
# reads into a buffer (a copy), on one thread and on all.
_WINDOW = 4 << 20


class IntegrityError(DataError):
  """A store file or ``meta.json`` does not match what was recorded when it was written."""


def digest_bytes(data) -> str:
  """BLAKE3 of ``data`` (bytes-like), 64 hex digits."""
  return blake3.blake3(data).hexdigest()


def file_entry(location: str, threads: int = blake3.blake3.AUTO) -> dict[str, Any]:
  """``{"bytes": size, "blake3": hex}`` of the file at ``location`` (a path or a URI):
  what a store records of each of its files and of each input (what ``b3sum`` prints).

  ``threads``: BLAKE3's threads (default every core). The digest is a tree, so every
  count gives the same hex; a build hashes its inputs beside its parsing workers on few.
  """
  digest = new_digest(threads)
  size = hash_into(digest, location)
  return {"bytes": size, "blake3": digest.hexdigest()}


def new_digest(threads: int = blake3.blake3.AUTO):
  """An empty ``blake3.blake3`` hashing on ``threads`` threads (the hex is the same for
  every count: BLAKE3 is a tree)."""
  return blake3.blake3(max_threads=threads)


def hash_into(digest, location: str) -> int:
  """Feeds the bytes of the file at ``location`` (a path or a URI) to ``digest`` (a
  ``blake3.blake3``); returns how many."""
  fs, path = filesystem.resolve(location)
  if isinstance(fs, pafs.LocalFileSystem):
    # Mapped, not copied, a window at a time: a map of the whole file would count its
    # pages in the RSS of every process that checks a shard while training.
    size = os.path.getsize(path)
    for start in range(0, size, _WINDOW):
      # Releases the GIL: a build's parsing goes on beside it.
      digest.update(filesystem.map_window(path, start, min(_WINDOW, size - start)))
    return size
  size = 0
  with fs.open_input_stream(path) as stream:
    while chunk := stream.read(_CHUNK):
      size += len(chunk)
      digest.update(chunk)
  return size


def fingerprint(meta: Mapping[str, Any]) -> str:
  """The store's fingerprint: BLAKE3 of ``meta`` without its ``fingerprint`` key, as
  canonical JSON (sorted keys, no whitespace)."""
  body = {k: v for k, v in meta.items() if k != FINGERPRINT}
  text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
  return digest_bytes(text.encode())


def seal(meta: dict[str, Any], root: str, relpaths) -> dict[str, Any]:
  """``meta`` with ``files`` (each of ``relpaths`` under ``root`` hashed) and
  ``fingerprint`` set: what a writer records just before it commits a store."""
  files = {rel: file_entry(filesystem.join(root, *rel.split("/"))) for rel in sorted(relpaths)}
  sealed = dict(meta, **{FILES: files})
  sealed.pop(FINGERPRINT, None)
  sealed[FINGERPRINT] = fingerprint(sealed)
  return sealed


def check_meta(meta: Mapping[str, Any], meta_location: str) -> None:
  """Raises ``IntegrityError`` unless ``meta`` carries ``files`` and a ``fingerprint``
  that matches its content."""
  if FILES not in meta or FINGERPRINT not in meta:
    raise IntegrityError(
        "meta.json has no checksums: the store was written before stores had them (or "
        "they were removed). To trust it as it is now (trust on first use: its current "
        "bytes become the reference), add them with: python launch/preprocess.py "
        f"--seal={filesystem.parent(meta_location)}", path=meta_location)
  if fingerprint(meta) != meta[FINGERPRINT]:
    raise IntegrityError("meta.json was changed after the store was written (its "
                         "fingerprint does not match its content)", path=meta_location)


def verify_file(root: str, relpath: str, entry: Mapping[str, Any]) -> None:
  """Raises ``IntegrityError`` naming the file unless the file at ``relpath`` under
  ``root`` has the size and digest of ``entry``."""
  location = filesystem.join(root, *relpath.split("/"))
  with _reading(location):
    found = file_entry(location)
  _check_entry(found, entry, location)


def read_verified(root: str, relpath: str, entry: Mapping[str, Any]) -> bytes:
  """The bytes of the file at ``relpath`` under ``root``, read once and checked as
  ``verify_file`` checks them (for a file in object storage, which cannot be mapped)."""
  location = filesystem.join(root, *relpath.split("/"))
  fs, path = filesystem.resolve(location)
  with _reading(location), fs.open_input_stream(path) as stream:
    data = stream.read()
  _check_entry({"bytes": len(data), "blake3": digest_bytes(data)}, entry, location)
  return data


@contextlib.contextmanager
def _reading(location: str):
  """Turns the OSError of reading a store file into an IntegrityError naming it."""
  try:
    yield
  except FileNotFoundError:
    raise IntegrityError("missing store file", path=location) from None
  except OSError as e:
    raise IntegrityError(f"cannot read store file: {e}", path=location) from None


def _check_entry(found: Mapping[str, Any], entry: Mapping[str, Any], location: str):
  if found["bytes"] != entry["bytes"]:
    raise IntegrityError(f"store file has {found['bytes']} bytes; meta.json recorded "
                         f"{entry['bytes']}", path=location)
  if found["blake3"] != entry["blake3"]:
    raise IntegrityError("store file changed since it was written (BLAKE3 differs from "
                         "meta.json)", path=location)
