"""The ``Format`` contract: a block of lines (``raw_files``) becomes a ``Chunk`` of rows.

``Format.parse_block`` turns a block into a ``Chunk`` of whole-array numpy columns.
Every problem raises ``DataError`` naming the file, the 1-based line and the column.

The formats themselves live in ``numeric_csv`` (every column numeric: AliExpress,
Ali-CCP CSV and AITM), ``text_formats`` (Census-Income raw lines, Ali-CCP
``field:feat`` lines) and ``table`` (users' CSV or Parquet tables, declared column
roles); ``formats.get_format`` names them.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from pico_jax.data import integrity
from pico_jax.data.errors import DataError
from pico_jax.ingest import raw_files
from pico_jax.ingest.raw_files import split_lines


@dataclasses.dataclass
class Chunk:
  """Parsed rows of one block of one file.

  Attributes:
    lines: int64 [n], the 1-based line number of every row in its file.
    click, conversion: float32 [n] in {0, 1}; None when the file has no labels
      (``launch/predict.py`` inputs).
    sparse: one raw-value array [n] (int64 or bytes) per single-valued field (or its
      ``encode.Factorized`` form, in preprocessing's spill).
    dense: float64 [n, D] (finite), or None.
    lists: per field of a key:value format, (row int64 [T], value int64 [T],
      column int64 [T]): every occurrence in line order; column is the 1-based token
      position, for error messages.
    group: int64 [n] (the GAUC key), or None.
    ids: the row's id column [n] (int64 or bytes), or None when the format has none.
    missing: per single-valued field (its index in ``sparse``) with missing values,
      bool [n]: the rows whose value is missing (id 0, never counted in a vocabulary;
      their raw value is a placeholder).
  """
  lines: np.ndarray
  click: np.ndarray | None
  conversion: np.ndarray | None
  sparse: list[np.ndarray]
  dense: np.ndarray | None
  lists: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
  group: np.ndarray | None
  ids: np.ndarray | None = None
  missing: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.lines)


@dataclasses.dataclass(frozen=True)
class Layout:
  """What ``Format.inspect`` learned from a file's first line."""
  header: bool = False  # the first line is a header, not data.
  index_column: bool = False  # census: a leading row-index column (DeepCTR's sample).
  labels: bool = True  # the label columns are present (optional for scoring inputs).


# -------------------------------------------------------------------- parse helpers


def to_float(token: bytes) -> float:
  """One token parsed as ``np.loadtxt`` parses it (raises ValueError when it cannot)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # loadtxt warns about an empty token ...
    values = np.loadtxt([token], dtype=np.float64, comments=None, ndmin=1)
  if len(values) != 1:  # ... and returns no value for it.
    raise ValueError(f"not a number: {token!r}")
  return float(values[0])


def is_number(token: bytes) -> bool:
  try:
    to_float(token.strip())
    return True
  except ValueError:
    return False


def decode(token: bytes) -> str:
  return token.decode("utf-8", "replace")


ECHO_CHARS = 80  # the most bytes of a token an error message repeats.


def echo(token: bytes) -> str:
  """A token as an error message shows it: its ``repr``, cut to ``ECHO_CHARS``
  characters with its length added (a 3 MB token, or a binary file given by mistake,
  makes a one-line message, not a 3 MB one)."""
  token = bytes(token)
  if len(token) <= ECHO_CHARS:
    return repr(decode(token))
  return f"{decode(token[:ECHO_CHARS])!r}... ({len(token):,} bytes)"


def check_empty(path, line_no, line: bytes):
  if not line.strip():
    raise DataError("empty line", path=path, line=line_no)


def no_rows(path: str) -> DataError:
  """The error for a file with no data rows after its header (preprocessing and
  scoring reject it alike)."""
  return DataError("no data rows after the header", path=path, line=2)


def check_line_end(path, line_no, line: bytes, delimiter: bytes):
  """Raises DataError at a carriage return that does not end the line (a stray CR:
  lines end with "\\n" or "\\r\\n"), naming its column."""
  body = line[:-1] if line.endswith(b"\n") else line
  body = body[:-1] if body.endswith(b"\r") else body
  at = body.find(b"\r")
  if at >= 0:
    raise DataError("stray carriage return inside the line (lines end with \\n or "
                    "\\r\\n)", path=path, line=line_no,
                    column=body[:at].count(delimiter) + 1)


def split_checked(path, line_no, line: bytes, delimiter: bytes, num_columns: int):
  """The tokens of one line; raises on an empty line, a stray carriage return or a
  wrong column count."""
  check_empty(path, line_no, line)
  check_line_end(path, line_no, line, delimiter)
  tokens = line.rstrip(b"\r\n").split(delimiter)
  if len(tokens) != num_columns:
    raise DataError(f"expected {num_columns} columns, found {len(tokens)}", path=path,
                    line=line_no, column=min(len(tokens), num_columns) + 1)
  return tokens


class Format:
  """A raw input format. Subclasses set the class attributes and implement
  ``inspect`` and ``parse``; ``parse_block`` may be overridden with a faster parser
  that gives the same result."""
  name: str = ""
  # Conversion without click: "error" (default), "drop" (counted) or "keep". The
  # entire-space rule c = 1 => y = 1 holds only where task_relation == "entire_space".
  default_policy: str = "error"
  task_relation: str = "entire_space"
  tasks: dict = {"click": "click", "conversion": "conversion"}
  conversion_column: tuple[int, str] = (0, "")  # (1-based index, name) for messages.
  sparse_names: tuple[str, ...] = ()
  dense_names: tuple[str, ...] = ()
  list_names: tuple[str, ...] = ()  # fields of key:value formats.
  group_name: str | None = None
  id_name: str | None = None  # the column written beside predictions.

  def inspect(self, path: str, first_line: bytes, labels_optional: bool = False) -> Layout:
    """The layout of a file from its first line; ``labels_optional`` accepts files
    without the label columns where the format allows it (scoring inputs)."""
    raise NotImplementedError

  def parse(self, path: str, lines: list[bytes], first_line_no: int,
            layout: Layout) -> Chunk:
    raise NotImplementedError

  def parse_block(self, path: str, data: bytes | memoryview, first_line_no: int,
                  layout: Layout, num_lines: int | None = None, threads: int = 1) -> Chunk:
    """``parse`` of the lines of a block of raw bytes (bytes, or a view such as
    ``read_block``'s; ``num_lines`` of them, when the caller knows). ``threads``: how
    many threads the parse may use (a parser that cannot split a block uses one)."""
    return self.parse(path, split_lines(data), first_line_no, layout)

  # How inputs are found and read. A format of lines reads files by byte blocks
  # (``raw_files``); a format of tables (``table``) replaces these.

  def open_input(self, path: str, labels_optional: bool = False) -> Layout:
    """The layout of input ``path``, checked before any input is read further
    (``labels_optional``: as for ``inspect``)."""
    return self.inspect(path, raw_files.first_line(path), labels_optional)

  def stream(self, path: str, layout: Layout, block_rows: int):
    """(block, its data) of an opened input in one sequential read, without a scan
    (scoring); ``(None, bytes read so far)`` between them, for progress."""
    return raw_files.stream_blocks(path, block_rows, layout.header)

  def scan(self, path: str, layout: Layout, block_rows: int) -> raw_files.FileInfo:
    """The input's blocks of ``block_rows`` data rows (``num_lines``: the header
    included)."""
    return raw_files.scan_file(path, block_rows, layout.header)

  def blocks(self, info: raw_files.FileInfo):
    """(block, its data or None: workers read it) of a scanned input, in order."""
    if info.gzip:  # a gzip stream is unpacked here, once.
      yield from raw_files.iter_gzip_blocks(info)
    else:
      for block in info.blocks:
        yield block, None

  def input_bytes(self, path: str) -> int:
    return os.path.getsize(path)

  def source_path(self, path: str) -> str:
    """How meta.json's ``sources`` name input ``path``."""
    return os.path.abspath(path)

  def digest(self, path: str, threads: int) -> str:
    """The input's BLAKE3 digest (hex), recorded in the store's meta.json."""
    return integrity.file_entry(path, threads)["blake3"]

  def check_unchanged(self, info: raw_files.FileInfo) -> None:
    raw_files.check_unchanged(info)

  def column_number(self, name: str) -> int | None:
    """The 1-based column of feature ``name`` in a labelled file (for messages), or
    None where columns have no fixed place."""
    columns = getattr(self, "columns", ())
    return columns.index(name) + 1 if name in columns else None


def select_features(fmt_name, columns, labels, default_sparse, default_dense, sparse,
                    dense):
  """Feature columns by name, with user overrides checked: labels are never features."""
  sparse = tuple(default_sparse if sparse is None else sparse)
  dense = tuple(default_dense if dense is None else dense)
  for option, names in (("sparse", sparse), ("dense", dense)):
    for name in names:
      if name not in columns:
        raise DataError(f"format {fmt_name} has no column {name!r} (given in --{option}); "
                        f"its columns are {list(columns)}")
      if name in labels:
        raise DataError(f"is the {labels[name]} label of format {fmt_name}; labels are "
                        f"never features (remove it from --{option})",
                        column=columns.index(name) + 1, column_name=name)
  both = set(sparse) & set(dense)
  if both:
    raise DataError(f"columns {sorted(both)} are given as both sparse and dense")
  return sparse, dense
