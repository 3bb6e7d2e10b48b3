"""Where a store lives: a local directory or an object-store URI, through ``pyarrow.fs``.

Store code never assumes a POSIX path: it resolves a location once with ``resolve`` and
then talks to the returned ``pyarrow.fs.FileSystem`` with ``/``-joined paths. Local
directories, ``file://``, ``s3://`` (AWS, or any S3 server: add
``?endpoint_override=HOST:PORT&scheme=http`` or set ``AWS_ENDPOINT_URL``) and ``gs://``
(pyarrow's GCS filesystem; an emulator: ``gs://anonymous@bucket/dir?endpoint_override=
HOST:PORT&scheme=http``) all go through the same calls.
"""

from __future__ import annotations

import mmap
import os
import posixpath

import pyarrow.fs as pafs

from pico_jax.data.errors import DataError


def is_uri(location: str) -> bool:
  """Whether ``location`` names a scheme (``s3://...``) rather than a local path."""
  return "://" in location


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
  """(filesystem, path inside it) for a local path or a URI; a local path is made
  absolute. An unknown scheme or a filesystem pyarrow cannot open is a ``DataError``
  naming ``location``."""
  if not is_uri(location):
    return pafs.LocalFileSystem(), os.path.abspath(location)
  try:
    return pafs.FileSystem.from_uri(location)
  except (ValueError, OSError) as e:
    raise DataError(f"cannot open this location: {e}", path=location) from None


def split_query(location: str) -> tuple[str, str]:
  """(``location`` without its query string, the query with its ``?``, or ""): a URI's
  endpoint settings (``s3://bucket/dir?endpoint_override=...``) stay at its end
  whatever is done to its path."""
  base, sep, query = location.partition("?")
  return base, sep + query


def join(location: str, *parts: str) -> str:
  """``location`` with ``parts`` appended (a URI keeps its query string at the end)."""
  if not is_uri(location):
    return os.path.join(location, *parts)
  base, query = split_query(location)
  return posixpath.join(base, *parts) + query


def parent(location: str) -> str:
  """The directory holding ``location`` (a URI keeps its query string), "." for none."""
  base, query = split_query(location)
  return base.rsplit("/", 1)[0] + query if "/" in base else "."


def bucket(location: str) -> str:
  """The bucket of the URI ``location`` (``s3://b/x/y?q`` -> ``s3://b?q``)."""
  base, query = split_query(location)
  scheme, _, rest = base.partition("://")
  return f"{scheme}://{rest.split('/', 1)[0]}{query}"


def exists(location: str) -> bool:
  """Whether a file or directory exists at ``location``."""
  fs, path = resolve(location)
  try:
    return fs.get_file_info(path).type != pafs.FileType.NotFound
  except OSError as e:
    raise DataError(f"cannot reach this location: {e}", path=location) from None


def map_window(path: str, offset: int, length: int) -> memoryview:
  """A read-only view of bytes [offset, offset + length) of the local file ``path``,
  mapped (``mmap``) rather than copied. Only that window is mapped, and only while a
  view of it lives, so the pages a process has read do not pile up in its memory."""
  if not length:
    return memoryview(b"")
  start = offset - offset % mmap.ALLOCATIONGRANULARITY
  with open(path, "rb") as f:
    mapped = mmap.mmap(f.fileno(), offset + length - start, offset=start,
                       access=mmap.ACCESS_READ)
  return memoryview(mapped)[offset - start:]
