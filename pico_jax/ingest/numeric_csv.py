"""Numeric CSV formats (AliExpress, Ali-CCP CSV and AITM): every column is a number.

Labels are 0/1, categorical ids integers below 2**53, dense values finite floats; the
header line is optional but must match when present. Scoring inputs may leave out the
two label columns (``inspect(..., labels_optional=True)``).

A block is parsed once, by the first of three parsers that accepts it:

  1. ``numeric_parse`` (compiled): integers and plain decimal numbers, one pass;
  2. pyarrow's C++ CSV reader, strictly: no quoting, no null values, no skipped empty
     lines, integer columns as int64 (a second try reads them as float64, for files
     that write ids as ``3.0``);
  3. ``parse``, the reference: ``np.loadtxt`` and the checks, which either returns the
     rows or raises the exact ``DataError`` (file, line, column).

The first two only accept blocks that ``np.loadtxt`` accepts, with the same values
(all three round decimal strings correctly to float64); pyarrow is guarded against
the few inputs it reads and ``np.loadtxt`` does not: hexadecimal integers, a
byte-order mark starting a block and a carriage return that does not end a line.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pico_jax.ingest import compiled, numeric_parse, raw_files
from pico_jax.data.errors import DataError
from pico_jax.ingest.format_contract import (Chunk, Format, Layout, decode, echo, is_number,
                                            select_features, split_checked, to_float)

MAX_EXACT_INT = numeric_parse.MAX_EXACT_INT  # float64 ids beyond it lost precision.
_ARROW_BLOCK = 1 << 20  # bytes per internal pyarrow block: stays in cache.


@dataclasses.dataclass(frozen=True)
class _Columns:
  """Column indices of one layout (with or without the label columns)."""
  names: tuple[str, ...]
  click: int | None
  conversion: int | None
  sparse: tuple[int, ...]
  dense: tuple[int, ...]
  group: int | None
  id: int | None

  @property
  def labels(self) -> dict[int, str]:
    return {} if self.click is None else {self.click: self.names[self.click],
                                          self.conversion: self.names[self.conversion]}

  @property
  def ints(self) -> tuple[int, ...]:
    """Columns stored as integers (ids and the group key), in check order."""
    return self.sparse + ((self.group,) if self.group is not None else ())


@functools.lru_cache(maxsize=None)
def _arrow_options(num_columns: int, int_columns: tuple[int, ...]):
  names = [f"c{j}" for j in range(num_columns)]
  types = {n: (pa.int64() if j in int_columns else pa.float64())
           for j, n in enumerate(names)}
  return dict(
      read_options=pacsv.ReadOptions(use_threads=False, column_names=names,
                                     block_size=_ARROW_BLOCK),
      parse_options=pacsv.ParseOptions(quote_char=False, double_quote=False,
                                       escape_char=False, newlines_in_values=False,
                                       ignore_empty_lines=False),
      convert_options=pacsv.ConvertOptions(column_types=types, null_values=[],
                                           true_values=[], false_values=[],
                                           strings_can_be_null=False,
                                           quoted_strings_can_be_null=False,
                                           check_utf8=False))


def _arrow_table(data: bytes, num_columns: int, int_columns: tuple[int, ...]):
  try:
    return pacsv.read_csv(pa.py_buffer(data), **_arrow_options(num_columns, int_columns))
  except pa.ArrowException:  # whatever pyarrow rejects, the reference parser judges.
    return None


def _view(array: pa.Array) -> np.ndarray:
  """A numpy view of a null-free int64/float64 pyarrow array (``to_numpy`` would
  import pandas when it is installed, a second per process)."""
  dtype = np.int64 if pa.types.is_int64(array.type) else np.float64
  return np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * 8)


def _row_major(table: pa.Table, columns: tuple[int, ...], n: int) -> np.ndarray:
  """float64 [n, len(columns)]: the float64 ``columns`` of ``table`` side by side."""
  sub = table.select(list(columns))
  if columns and all(pa.types.is_float64(t) for t in sub.schema.types):
    return sub.to_tensor(row_major=True).to_numpy()  # one pass, in C++.
  dense = np.empty((n, len(columns)))  # e.g. the int64 group column chosen as dense.
  for k, j in enumerate(columns):
    dense[:, k] = np.concatenate([_view(a) for a in table.column(j).chunks] or
                                 [np.zeros(0)])
  return dense


def _line_count(data) -> int:
  """Lines of a block (bytes or a view): its newlines, and a last line without one."""
  return compiled.count_newlines(data) + (0 if not len(data) or data[-1:] == b"\n" else 1)


class CsvFormat(Format):
  """A comma-separated format whose every column is numeric."""

  def __init__(self, name, columns, *, click, conversion, default_sparse, default_dense,
               group=None, id_column=None, sparse=None, dense=None):
    self.name = name
    self.columns = tuple(columns)
    self.delimiter = b","
    self._label_names = {click: "click", conversion: "conversion"}
    self.sparse_names, self.dense_names = select_features(
        name, self.columns, self._label_names, default_sparse, default_dense, sparse,
        dense)
    self.group_name = group
    self.id_name = id_column
    self.conversion_column = (self.columns.index(conversion) + 1, conversion)
    self.tasks = {"click": click, "conversion": conversion}
    self._layouts = {labels: self._index(labels) for labels in (True, False)}

  def _index(self, labels: bool) -> _Columns:
    names = self.columns if labels else tuple(c for c in self.columns
                                              if c not in self._label_names)
    index = {c: i for i, c in enumerate(names)}
    click, conversion = (index[c] if labels else None for c in self._label_names)
    return _Columns(names, click, conversion,
                    tuple(index[c] for c in self.sparse_names),
                    tuple(index[c] for c in self.dense_names),
                    index.get(self.group_name), index.get(self.id_name))

  def inspect(self, path, first_line, labels_optional=False):
    tokens = first_line.rstrip(b"\r\n").split(self.delimiter)
    unlabeled = self._layouts[False].names
    if is_number(tokens[0]):
      return Layout(header=False,
                    labels=not (labels_optional and len(tokens) == len(unlabeled)))
    names = tuple(decode(t.strip()) for t in tokens)
    if labels_optional and names == unlabeled:
      return Layout(header=True, labels=False)
    if names != self.columns:
      for j, (got, want) in enumerate(itertools.zip_longest(names, self.columns)):
        if got != want:
          found = "nothing" if got is None else echo(tokens[j].strip())
          raise DataError(f"header does not match format {self.name}: expected "
                          f"{want!r}, found {found} ({len(names)} columns, expected "
                          f"{len(self.columns)})", path=path, line=1, column=j + 1)
    return Layout(header=True)

  # ------------------------------------------------------------- reference parser

  def _locate(self, path, lines, first_line_no, names):
    """Finds and raises the first unparsable token of a block (the slow path)."""
    for i, line in enumerate(lines):
      tokens = split_checked(path, first_line_no + i, line, self.delimiter,
                                     len(names))
      for j, token in enumerate(tokens):
        try:
          to_float(token)
        except ValueError:
          raise DataError(f"non-numeric value {echo(token)}", path=path,
                          line=first_line_no + i, column=j + 1,
                          column_name=names[j]) from None

  def _raise_at(self, path, lines, first_line_no, names, rows, cols, what):
    i, j = int(rows[0]), int(cols[0])
    token = lines[i].rstrip(b"\r\n").split(self.delimiter)[j]
    raise DataError(f"{what}, got {echo(token)}", path=path,
                    line=first_line_no + i, column=j + 1, column_name=names[j])

  def parse(self, path, lines, first_line_no, layout):
    """The reference parser: ``np.loadtxt`` of the lines, then the checks."""
    c = self._layouts[layout.labels]
    n = len(lines)
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loadtxt warns about empty input.
        values = np.loadtxt(lines, delimiter=self.delimiter, dtype=np.float64,
                            comments=None, ndmin=2, quotechar=None)
    except ValueError:
      values = None
    if values is None or values.shape != (n, len(c.names)):
      self._locate(path, lines, first_line_no, c.names)
      raise DataError(f"unparsable block of {n} lines", path=path, line=first_line_no)
    fail = functools.partial(self._raise_at, path, lines, first_line_no, c.names)
    for j in c.labels:
      bad = np.flatnonzero((values[:, j] != 0) & (values[:, j] != 1))
      if len(bad):
        fail(bad, [j], "label must be 0 or 1")
    sub = values[:, list(c.dense)]
    rows, where = np.nonzero(~np.isfinite(sub))
    if len(rows):
      fail(rows, [c.dense[where[0]]], "NaN/inf value")
    sub = values[:, list(c.ints)]
    rows, where = np.nonzero(~(np.isfinite(sub) & (np.floor(sub) == sub)
                               & (np.abs(sub) < MAX_EXACT_INT)))
    if len(rows):
      fail(rows, [c.ints[where[0]]], "categorical ids must be integers below 2**53")
    return self._chunk(c, lambda j: values[:, j], values[:, list(c.dense)], n,
                       first_line_no)

  def _chunk(self, c: _Columns, column, dense, n, first_line_no) -> Chunk:
    """The chunk of checked columns: ``column(j)`` is column j (labels, ids) as int64
    or float64 [n]; ``dense`` float64 [n, D]."""
    as_int = lambda j: None if j is None else column(j).astype(np.int64)
    labels = c.click is not None
    return Chunk(
        lines=np.arange(first_line_no, first_line_no + n, dtype=np.int64),
        click=column(c.click).astype(np.float32) if labels else None,
        conversion=column(c.conversion).astype(np.float32) if labels else None,
        sparse=[as_int(j) for j in c.sparse], dense=dense if c.dense else None, lists={},
        group=as_int(c.group), ids=as_int(c.id))

  # ------------------------------------------------------------------ fast parser

  def parse_block(self, path, data, first_line_no, layout, num_lines=None, threads=1):
    n = _line_count(data) if num_lines is None else num_lines
    chunk = self._parse_compiled(data, n, first_line_no, layout, threads)
    if chunk is None:
      data = bytes(data)
      chunk = self._parse_arrow(data, n, first_line_no, layout)
    if chunk is None:
      chunk = self.parse(path, raw_files.split_lines(data), first_line_no, layout)
    return chunk

  def _parse_compiled(self, data: bytes | memoryview, n: int, first_line_no: int,
                      layout, threads: int = 1) -> Chunk | None:
    """The block's ``n`` lines read by ``numeric_parse``, or None where a token is
    outside its grammar or a value fails a check (then pyarrow, and the reference
    parser, decide)."""
    c = self._layouts[layout.labels]
    ints = tuple(c.labels) + c.ints + ((c.id,) if c.id is not None else ())
    ints = tuple(dict.fromkeys(ints))  # a column may play two roles (group and id).
    if not n:
      return None
    parsed = numeric_parse.parse_columns(data, n, ints, c.dense, len(c.names), threads)
    if parsed is None:
      return None
    values, dense = parsed
    slot = {j: k for k, j in enumerate(ints)}
    for j in c.labels:
      x = values[slot[j]]
      if not np.all((x == 0) | (x == 1)):
        return None
    return self._chunk(c, lambda j: values[slot[j]], dense, n, first_line_no)

  def _parse_arrow(self, data: bytes, n: int, first_line_no: int, layout) -> Chunk | None:
    """The block's ``n`` lines read by pyarrow, or None where ``parse`` must decide."""
    c = self._layouts[layout.labels]
    if (not n or data.startswith(b"\xef\xbb\xbf")  # pyarrow skips a leading BOM.
        or (b"\r" in data  # pyarrow also ends a line at a lone CR.
            and data.count(b"\r") != data.count(b"\r\n"))):
      return None
    table = None
    if b"x" not in data and b"X" not in data:  # pyarrow's int64 takes hex (0x10).
      table = _arrow_table(data, len(c.names), c.ints)
    if table is None:
      table = _arrow_table(data, len(c.names), ())
    if table is None or table.num_rows != n:
      return None
    # Zero-copy views of pyarrow's chunks (its 1 MiB blocks), then one copy per column.
    pieces = lambda j: [_view(a) for a in table.column(j).chunks]
    ids = () if c.id is None else (c.id,)
    columns = {j: np.concatenate(pieces(j)) for j in {*c.labels, *c.ints, *ids}}
    for j in c.labels:
      if not np.all((columns[j] == 0) | (columns[j] == 1)):
        return None
    for j in c.ints:
      x = columns[j]
      exact = np.abs(x) < MAX_EXACT_INT
      if x.dtype.kind == "f":
        exact &= np.floor(x) == x  # NaN fails both.
      if not np.all(exact):
        return None
    dense = _row_major(table, c.dense, n)
    if not np.all(np.isfinite(dense)):
      return None
    # np.loadtxt takes NaN and inf in columns that are not features: only it decides.
    for j in set(range(len(c.names))) - set(columns) - set(c.dense):
      if not all(np.all(np.isfinite(p)) for p in pieces(j)):
        return None
    return self._chunk(c, columns.__getitem__, dense, n, first_line_no)


def aliexpress(sparse=None, dense=None) -> CsvFormat:
  cat = tuple(f"categorical_{i}" for i in range(1, 17))
  num = tuple(f"numerical_{i}" for i in range(1, 64))
  return CsvFormat("aliexpress", ("search_id",) + cat + num + ("click", "conversion"),
                   click="click", conversion="conversion", group="search_id",
                   id_column="search_id", default_sparse=cat, default_dense=num,
                   sparse=sparse, dense=dense)


ALICCP_SPARSE = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "205",
                 "206", "207", "210", "216", "508", "509", "702", "853", "301", "109_14",
                 "110_14", "127_14", "150_14")
ALICCP_DENSE = ("D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853")
ALICCP_AITM = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "205",
               "206", "207", "216", "508", "509", "702", "853", "301")


def aliccp_csv(sparse=None, dense=None) -> CsvFormat:
  return CsvFormat("aliccp_csv", ("click", "purchase") + ALICCP_SPARSE + ALICCP_DENSE,
                   click="click", conversion="purchase", group="101",
                   default_sparse=ALICCP_SPARSE, default_dense=ALICCP_DENSE, sparse=sparse,
                   dense=dense)


def aliccp_aitm(sparse=None, dense=None) -> CsvFormat:
  return CsvFormat("aliccp_aitm", ("click", "purchase") + ALICCP_AITM, click="click",
                   conversion="purchase", group="101", default_sparse=ALICCP_AITM,
                   default_dense=(), sparse=sparse, dense=dense)
