"""Reading raw files: open (plain or gzip), scan, cut into blocks of lines, digest.

A reader never holds a whole file. ``scan_file`` reads a file once (line count and the
byte offset where every block of ``block_rows`` data lines starts); a block is then
read by offset (``read_block``: a view of the mapped file, not a copy), so parallel
workers read their own blocks and only offsets travel between processes. A gzip
stream cannot seek: it is unpacked once, in order (``iter_gzip_blocks``). Scoring
reads blocks in one sequential pass without a scan (``stream_blocks``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import io
import os
import zlib

import numpy as np

from pico_jax.data import filesystem
from pico_jax.data.errors import DataError
from pico_jax.ingest import compiled

_READ_BYTES = 1 << 22  # scan granularity: 4 MiB.
_GZIP_MAGIC = b"\x1f\x8b"


def _check_path(path: str):
  if not os.path.exists(path):
    raise DataError("file not found", path=path)
  if not os.path.isfile(path):
    raise DataError("not a regular file", path=path)


def is_gzip(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == _GZIP_MAGIC


def open_binary(path: str):
  """``path`` opened for binary reading; gzip files (by magic bytes) unpacked."""
  _check_path(path)
  if is_gzip(path):
    return io.BufferedReader(gzip.GzipFile(path), 1 << 20)
  return open(path, "rb")


def first_line(path: str) -> bytes:
  """The first line of ``path`` (with its newline), read alone: for ``inspect``."""
  with open_binary(path) as f:
    try:
      line = f.readline()
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(f"unreadable gzip stream ({e})", path=path, line=1) from None
  if not line:
    raise DataError("empty file: no data rows", path=path, line=1)
  if not line.strip():
    raise DataError("empty line", path=path, line=1)
  return line


@dataclasses.dataclass(frozen=True)
class Block:
  """``num_lines`` lines of a file starting at line ``first_line``: bytes
  [offset, offset + length) of the file, or of its gzip-unpacked stream."""
  path: str
  first_line: int
  num_lines: int
  offset: int
  length: int


@dataclasses.dataclass(frozen=True)
class FileInfo:
  path: str
  num_lines: int  # every line, the header included.
  size: int  # bytes on disk.
  gzip: bool
  blocks: tuple[Block, ...]  # the data lines (after the header), in order.
  mtime_ns: int = 0  # the modification time when the scan began.
  files: int = 1  # the files the input names (a table's glob or directory: several).


def check_unchanged(info: FileInfo) -> None:
  """Raises DataError if the file changed (size or modification time) since it was
  scanned: its blocks, line numbers and digest would describe another file. (A file
  cut shorter while a block of it is mapped ends the process with SIGBUS first, as
  for any memory-mapped file: inputs must not be written while they are read.)"""
  stat = os.stat(info.path)
  if (stat.st_size, stat.st_mtime_ns) != (info.size, info.mtime_ns):
    raise DataError("the file changed while it was being read (its size or "
                    "modification time differs from the scan's); rerun on a file "
                    "nothing is writing", path=info.path)


def blake3_module():
  """The ``blake3`` package, imported here rather than with this module (training and
  serving hosts need not have it); preprocessing asks for it before it reads a byte."""
  try:
    import blake3
  except ImportError as e:
    raise ImportError("preprocessing records each input's BLAKE3 digest and needs the "
                      "blake3 package (pip install -r requirements.txt)") from e
  return blake3


# One BLAKE3 thread hashes as fast as this many parsing workers read: no hash bound.
WORKERS_PER_HASH_THREAD = 6


class _BlockCutter:
  """Cuts a stream of byte pieces into blocks of ``block_rows`` lines after an
  optional header line; with ``keep_data``, each block comes with its bytes."""

  def __init__(self, path: str, block_rows: int, header: bool, keep_data: bool):
    self.path, self.block_rows, self.keep_data = path, block_rows, keep_data
    self.skip = int(header)  # header lines still to pass.
    self.start = 0  # byte offset where the open block starts.
    self.filled = 0  # lines of the open block.
    self.first = 1 + int(header)  # line number of the open block's first line.
    self.num_lines, self.pos, self.last = 0, 0, b"\n"
    self.parts = []  # the open block's bytes (keep_data).

  def _close(self, end: int, n: int):
    data = None
    if self.keep_data:
      data = b"".join(self.parts)
      self.parts = []
    block = Block(self.path, self.first, n, self.start, end - self.start)
    self.start, self.first, self.filled = end, self.first + n, 0
    return block, data

  def feed(self, piece, count: int | None = None) -> list[tuple[Block, bytes | None]]:
    """The blocks that end inside ``piece`` (bytes, or a view with ``keep_data``
    False) of ``count`` newlines (counted here when None)."""
    if count is None:
      count = compiled.count_newlines(piece)
    if count < (self.skip or self.block_rows - self.filled):  # no block ends here.
      if not self.skip:
        self.filled += count
        if self.keep_data:
          self.parts.append(piece)
      self.num_lines += count
      self.pos += len(piece)
      self.last = bytes(piece[-1:]) or self.last
      return []
    # Where the newlines are: only in the pieces where a block ends.
    ends = np.flatnonzero(np.frombuffer(piece, np.uint8) == 10)
    out, used, cut = [], 0, 0
    while len(ends) - used >= (need := self.skip or self.block_rows - self.filled):
      used += need
      end = int(ends[used - 1]) + 1
      if self.skip:
        self.skip, self.start = 0, self.pos + end
      else:
        if self.keep_data:
          self.parts.append(piece[cut:end])
        out.append(self._close(self.pos + end, self.block_rows))
      cut = end
    if not self.skip:
      self.filled += len(ends) - used
      if self.keep_data and cut < len(piece):
        self.parts.append(piece[cut:])
    self.num_lines += len(ends)
    self.pos += len(piece)
    self.last = bytes(piece[-1:]) or self.last
    return out

  def finish(self) -> list[tuple[Block, bytes | None]]:
    """The last, shorter block."""
    if self.last != b"\n":  # a last line without a newline.
      self.num_lines += 1
      self.filled += 0 if self.skip else 1
    return [self._close(self.pos, self.filled)] if self.filled else []


def _pieces(f, cutter: _BlockCutter):
  """The pieces of an open file; a damaged gzip stream is reported at the first line
  it could not unpack."""
  try:
    yield from iter(lambda: f.read(_READ_BYTES), b"")
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"unreadable gzip stream ({e})", path=cutter.path,
                    line=cutter.num_lines + 1) from None


def scan_file(path: str, block_rows: int, header: bool) -> FileInfo:
  """One read of ``path``: its line count and data blocks of ``block_rows`` lines (the
  last one shorter), skipping a header line.

  Every byte is looked at once, by a newline count (the newlines are located,
  vectorised, only in the pieces where a block ends); the file is not parsed here. A
  plain file's pieces are counted on one thread per CPU (``compiled.count_newlines``
  releases the GIL), a gzip stream's in order as it unpacks. Its BLAKE3 digest is
  ``hash_file``'s, which preprocessing runs beside the passes.
  """
  _check_path(path)
  stat = os.stat(path)
  packed = is_gzip(path)
  cutter = _BlockCutter(path, block_rows, header, keep_data=False)
  blocks = []
  if packed:
    with open_binary(path) as f:
      for piece in _pieces(f, cutter):
        blocks += [b for b, _ in cutter.feed(piece)]
  elif stat.st_size:
    windows = [(o, min(_READ_BYTES, stat.st_size - o))
               for o in range(0, stat.st_size, _READ_BYTES)]
    count = lambda window: compiled.count_newlines(filesystem.map_window(path, *window))
    with concurrent.futures.ThreadPoolExecutor(min(len(windows),
                                                   os.cpu_count() or 1)) as pool:
      for window, newlines in zip(windows, pool.map(count, windows)):
        piece = filesystem.map_window(path, *window)
        blocks += [b for b, _ in cutter.feed(piece, newlines)]
  blocks += [b for b, _ in cutter.finish()]
  return FileInfo(path, cutter.num_lines, stat.st_size, packed, tuple(blocks),
                  stat.st_mtime_ns)


def stream_blocks(path: str, block_rows: int, header: bool):
  """(block, bytes) of ``path`` in one sequential read, without a scan first (for
  scoring, where nothing needs the line count up front); ``(None, bytes read)`` is
  yielded after every piece, for progress."""
  _check_path(path)
  cutter = _BlockCutter(path, block_rows, header, keep_data=True)
  packed = is_gzip(path)
  with open(path, "rb") as raw:
    # A gzip stream reads through ``raw``, whose position is then the bytes consumed.
    f = io.BufferedReader(gzip.GzipFile(fileobj=raw), 1 << 20) if packed else raw
    for piece in _pieces(f, cutter):
      yield from cutter.feed(piece)
      yield None, raw.tell()
    yield from cutter.finish()


def read_block(block: Block) -> memoryview:
  """The bytes of ``block`` of a plain (not gzip) file: a view of the file's pages,
  not a copy (see ``filesystem.map_window``)."""
  return filesystem.map_window(block.path, block.offset, block.length)


def iter_gzip_blocks(info: FileInfo):
  """(block, bytes) of a scanned gzip file, unpacked once in order (a gzip stream
  cannot seek to a block: the parent process reads them for the workers)."""
  with open_binary(info.path) as f:
    f.seek(info.blocks[0].offset if info.blocks else 0)
    for block in info.blocks:
      yield block, f.read(block.length)


def split_lines(data: bytes) -> list[bytes]:
  """The lines of a block as a file iteration yields them (split at b"\\n" only, each
  keeping its newline)."""
  return io.BytesIO(data).readlines()
