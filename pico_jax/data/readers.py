"""Readers for the raw formats: files -> chunks of parsed, validated rows.

A reader never holds a whole file: ``iter_chunks`` yields blocks of lines and
``Format.parse`` turns a block into a ``Chunk`` with whole-array numpy (the numeric
CSV formats are parsed by ``np.loadtxt`` in C). Every problem raises ``DataError``
naming the file, the 1-based line and the column; the slow per-token search that
finds the exact place runs only after the fast parse has failed.

Formats (see ``FORMATS``):
  census       UCI Census-Income (KDD) raw lines, 42 fields (or 43 with a leading row
               index, as DeepCTR's sample); tasks income > 50K ("click" role) and
               marital stat == "Never married" ("conversion" role), independent tasks.
  aliexpress   search_id, categorical_1..16, numerical_1..63, click, conversion.
  aliccp_csv   torch-rechub / ESMM CSV: click, purchase, 23 sparse ids, 8 dense.
  aliccp_aitm  AITM CSV: click, purchase, 18 sparse ids (a header is optional).
  aliccp_raw   ``id,click,purchase,field:feat,...`` lines; fields may repeat
               (multi-valued).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import itertools
import os
import warnings

import numpy as np

from pico_jax.data.errors import DataError

# Categorical values of the numeric formats are parsed as float64 first; beyond 2**53
# they would silently lose precision, so they are rejected.
_MAX_EXACT_INT = 2.0 ** 53


@dataclasses.dataclass
class Chunk:
  """Parsed rows of one block of one file.

  Attributes:
    lines: int64 [n], the 1-based line number of every row in its file.
    click, conversion: float32 [n] in {0, 1}.
    sparse: one raw-value array [n] (int64 or bytes) per single-valued field.
    dense: float64 [n, D] (finite), or None.
    lists: per field of a key:value format, (row int64 [T], value int64 [T],
      column int64 [T]): every occurrence in line order; column is the 1-based token
      position, for error messages.
    group: int64 [n] (the GAUC key), or None.
  """
  lines: np.ndarray
  click: np.ndarray
  conversion: np.ndarray
  sparse: list[np.ndarray]
  dense: np.ndarray | None
  lists: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
  group: np.ndarray | None

  def __len__(self) -> int:
    return len(self.lines)


@dataclasses.dataclass(frozen=True)
class Layout:
  """What ``Format.inspect`` learned from a file's first line."""
  header: bool = False  # the first line is a header, not data.
  index_column: bool = False  # census: a leading row-index column (DeepCTR's sample).


# ---------------------------------------------------------------------------- files


def open_binary(path: str):
  """``path`` opened for binary line iteration; gzip files (by magic bytes) unpacked."""
  if not os.path.exists(path):
    raise DataError("file not found", path=path)
  if not os.path.isfile(path):
    raise DataError("not a regular file", path=path)
  f = open(path, "rb")
  if f.read(2) == b"\x1f\x8b":
    f.seek(0)
    return io.BufferedReader(gzip.GzipFile(fileobj=f), 1 << 20)
  f.seek(0)
  return f


@dataclasses.dataclass(frozen=True)
class FileInfo:
  path: str
  sha256: str
  num_lines: int
  first_line: bytes


def scan_file(path: str) -> FileInfo:
  """sha256 of the file's bytes, its (uncompressed) line count and first line."""
  digest = hashlib.sha256()
  if not os.path.exists(path):
    raise DataError("file not found", path=path)
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  num_lines, last = 0, b"\n"
  with open_binary(path) as f:
    first_line = f.readline()
    f.seek(0)
    for block in iter(lambda: f.read(1 << 22), b""):
      num_lines += block.count(b"\n")
      last = block[-1:]
  if last != b"\n":
    num_lines += 1  # a last line without a newline.
  if num_lines == 0 or not first_line.strip():
    raise DataError("empty file: no data rows" if num_lines == 0 else "empty line",
                    path=path, line=1)
  return FileInfo(path, digest.hexdigest(), num_lines, first_line)


def iter_chunks(path: str, chunk_rows: int, skip_header: bool):
  """Yields (line number of the first line, list of raw lines) blocks of a file."""
  with open_binary(path) as f:
    line_no = 1
    if skip_header:
      f.readline()
      line_no = 2
    while True:
      lines = list(itertools.islice(f, chunk_rows))
      if not lines:
        return
      yield line_no, lines
      line_no += len(lines)


# -------------------------------------------------------------------- parse helpers


def _to_float(token: bytes) -> float:
  """One token parsed as ``np.loadtxt`` parses it (raises ValueError when it cannot)."""
  return float(np.loadtxt([token], dtype=np.float64, comments=None, ndmin=1)[0])


def _is_number(token: bytes) -> bool:
  try:
    _to_float(token.strip())
    return True
  except ValueError:
    return False


def _decode(token: bytes) -> str:
  return token.decode("utf-8", "replace")


def _check_empty(path, line_no, line: bytes):
  if not line.strip():
    raise DataError("empty line", path=path, line=line_no)


def _split_checked(path, line_no, line: bytes, delimiter: bytes, num_columns: int):
  """The tokens of one line; raises on an empty line or a wrong column count."""
  _check_empty(path, line_no, line)
  tokens = line.rstrip(b"\r\n").split(delimiter)
  if len(tokens) != num_columns:
    raise DataError(f"expected {num_columns} columns, found {len(tokens)}", path=path,
                    line=line_no, column=min(len(tokens), num_columns) + 1)
  return tokens


class Format:
  """A raw input format. Subclasses set the class attributes and implement
  ``inspect`` and ``parse``."""
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

  def inspect(self, path: str, first_line: bytes) -> Layout:
    raise NotImplementedError

  def parse(self, path: str, lines: list[bytes], first_line_no: int,
            layout: Layout) -> Chunk:
    raise NotImplementedError


def _select_features(fmt_name, columns, labels, default_sparse, default_dense, sparse,
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


# ---------------------------------------------------------------------- numeric CSV


class CsvFormat(Format):
  """A comma-separated format whose every column is numeric (labels 0/1, categorical
  ids integers, dense values finite floats); the header line is optional but must
  match when present."""

  def __init__(self, name, columns, *, click, conversion, default_sparse, default_dense,
               group=None, sparse=None, dense=None, delimiter=b","):
    self.name = name
    self.columns = tuple(columns)
    self.delimiter = delimiter
    labels = {click: "click", conversion: "conversion"}
    self.sparse_names, self.dense_names = _select_features(
        name, self.columns, labels, default_sparse, default_dense, sparse, dense)
    self.group_name = group
    index = {c: i for i, c in enumerate(self.columns)}
    self._click, self._conversion = index[click], index[conversion]
    self._labels = {self._click: click, self._conversion: conversion}
    self.conversion_column = (self._conversion + 1, conversion)
    self._sparse = [index[c] for c in self.sparse_names]
    self._dense = [index[c] for c in self.dense_names]
    self._group = index[group] if group else None
    self.tasks = {"click": click, "conversion": conversion}

  def inspect(self, path, first_line):
    tokens = first_line.rstrip(b"\r\n").split(self.delimiter)
    if _is_number(tokens[0]):
      return Layout(header=False)
    names = tuple(_decode(t.strip()) for t in tokens)
    if names != self.columns:
      for j, (got, want) in enumerate(itertools.zip_longest(names, self.columns)):
        if got != want:
          raise DataError(f"header does not match format {self.name}: expected "
                          f"{want!r}, found {got!r} ({len(names)} columns, expected "
                          f"{len(self.columns)})", path=path, line=1, column=j + 1)
    return Layout(header=True)

  def _locate(self, path, lines, first_line_no):
    """Finds and raises the first unparsable token of a block (the slow path)."""
    for i, line in enumerate(lines):
      tokens = _split_checked(path, first_line_no + i, line, self.delimiter,
                              len(self.columns))
      for j, token in enumerate(tokens):
        try:
          _to_float(token)
        except ValueError:
          raise DataError(f"non-numeric value {_decode(token)!r}", path=path,
                          line=first_line_no + i, column=j + 1,
                          column_name=self.columns[j]) from None

  def _raise_at(self, path, lines, first_line_no, rows, cols, what):
    i, j = int(rows[0]), int(cols[0])
    token = lines[i].rstrip(b"\r\n").split(self.delimiter)[j]
    raise DataError(f"{what}, got {_decode(token)!r}", path=path, line=first_line_no + i,
                    column=j + 1, column_name=self.columns[j])

  def parse(self, path, lines, first_line_no, layout):
    n = len(lines)
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loadtxt warns about empty input.
        values = np.loadtxt(lines, delimiter=self.delimiter, dtype=np.float64,
                            comments=None, ndmin=2, quotechar=None)
    except ValueError:
      values = None
    if values is None or values.shape != (n, len(self.columns)):
      self._locate(path, lines, first_line_no)
      raise DataError(f"unparsable block of {n} lines", path=path, line=first_line_no)
    for j in self._labels:
      bad = np.flatnonzero((values[:, j] != 0) & (values[:, j] != 1))
      if len(bad):
        self._raise_at(path, lines, first_line_no, bad, [j], "label must be 0 or 1")
    for cols, what in ((self._dense, "NaN/inf value"),):
      sub = values[:, cols]
      rows, where = np.nonzero(~np.isfinite(sub))
      if len(rows):
        self._raise_at(path, lines, first_line_no, rows, [cols[where[0]]], what)
    int_cols = self._sparse + ([self._group] if self._group is not None else [])
    sub = values[:, int_cols]
    rows, where = np.nonzero(~(np.isfinite(sub) & (np.floor(sub) == sub)
                               & (np.abs(sub) < _MAX_EXACT_INT)))
    if len(rows):
      self._raise_at(path, lines, first_line_no, rows, [int_cols[where[0]]],
                     "categorical ids must be integers below 2**53")
    return Chunk(
        lines=np.arange(first_line_no, first_line_no + n, dtype=np.int64),
        click=values[:, self._click].astype(np.float32),
        conversion=values[:, self._conversion].astype(np.float32),
        sparse=[values[:, j].astype(np.int64) for j in self._sparse],
        dense=values[:, self._dense] if self._dense else None,
        lists={},
        group=values[:, self._group].astype(np.int64) if self._group is not None else None)


def aliexpress(sparse=None, dense=None) -> CsvFormat:
  cat = tuple(f"categorical_{i}" for i in range(1, 17))
  num = tuple(f"numerical_{i}" for i in range(1, 64))
  return CsvFormat("aliexpress", ("search_id",) + cat + num + ("click", "conversion"),
                   click="click", conversion="conversion", group="search_id",
                   default_sparse=cat, default_dense=num, sparse=sparse, dense=dense)


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


# --------------------------------------------------------------------------- census

CENSUS_COLUMNS = (
    "age", "class of worker", "detailed industry recode", "detailed occupation recode",
    "education", "wage per hour", "enroll in edu inst last wk", "marital stat",
    "major industry code", "major occupation code", "race", "hispanic origin", "sex",
    "member of a labor union", "reason for unemployment",
    "full or part time employment stat", "capital gains", "capital losses",
    "dividends from stocks", "tax filer stat", "region of previous residence",
    "state of previous residence", "detailed household and family stat",
    "detailed household summary in household", "instance weight",
    "migration code-change in msa", "migration code-change in reg",
    "migration code-move within reg", "live in this house 1 year ago",
    "migration prev res in sunbelt", "num persons worked for employer",
    "family members under 18", "country of birth father", "country of birth mother",
    "country of birth self", "citizenship", "own business or self employed",
    "fill inc questionnaire for veteran's admin", "veterans benefits",
    "weeks worked in year", "year", "income")
CENSUS_CONTINUOUS = (0, 5, 16, 17, 18, 30, 39)
CENSUS_DROPPED = (7, 24, 41)  # marital stat (task), instance weight, income (task).
_INCOME_HIGH, _INCOME_LOW = b"50000+.", b"- 50000."
_NEVER_MARRIED = b"Never married"


class CensusFormat(Format):
  """UCI Census-Income (KDD) raw lines, fields separated by ', ' (values stripped).

  DESIGN section 4: labels income > 50K ("click" role) and marital stat == "Never
  married" ("conversion" role); fields 7, 24 and 41 are not features; the continuous
  fields 0, 5, 16, 17, 18, 30, 39 are dense, every other field categorical (raw strings,
  '?' being one more value). The two tasks are independent, so a conversion without a
  click is ordinary data here (policy "keep").
  """
  name = "census"
  default_policy = "keep"
  task_relation = "independent"
  tasks = {"click": "income > 50K", "conversion": "marital stat == Never married"}
  conversion_column = (8, "marital stat")

  def __init__(self, sparse=None, dense=None):
    cols = CENSUS_COLUMNS
    default_dense = tuple(cols[i] for i in CENSUS_CONTINUOUS)
    default_sparse = tuple(c for i, c in enumerate(cols)
                           if i not in CENSUS_CONTINUOUS and i not in CENSUS_DROPPED)
    labels = {"marital stat": "conversion (never married)", "income": "click (income)"}
    self.sparse_names, self.dense_names = _select_features(
        self.name, cols, labels, default_sparse, default_dense, sparse, dense)
    self._sparse = [cols.index(c) for c in self.sparse_names]
    self._dense = [cols.index(c) for c in self.dense_names]

  def inspect(self, path, first_line):
    tokens = first_line.rstrip(b"\r\n").split(b",")
    if len(tokens) == len(CENSUS_COLUMNS) + 1 and tokens[0].strip().isdigit():
      return Layout(index_column=True)  # DeepCTR's sample: a leading row index.
    if len(tokens) != len(CENSUS_COLUMNS) or tokens[-1].strip() not in (_INCOME_HIGH,
                                                                         _INCOME_LOW):
      _split_checked(path, 1, first_line, b",", len(CENSUS_COLUMNS))
      raise DataError("header does not match format census: the file has no header and "
                      f"its last column is the income label ({_INCOME_LOW.decode()!r} or "
                      f"{_INCOME_HIGH.decode()!r}), found {_decode(tokens[-1].strip())!r}",
                      path=path, line=1, column=len(CENSUS_COLUMNS), column_name="income")
    return Layout()

  def parse(self, path, lines, first_line_no, layout):
    n = len(lines)
    offset = int(layout.index_column)
    width = len(CENSUS_COLUMNS) + offset
    tokens = b",".join([line.rstrip(b"\r\n") for line in lines]).split(b",")
    if len(tokens) != n * width:
      for i, line in enumerate(lines):
        _split_checked(path, first_line_no + i, line, b",", width)
    line_nos = np.arange(first_line_no, first_line_no + n, dtype=np.int64)
    # One array per column: far narrower fixed-width strings than one table.
    column = lambda j: np.strings.strip(np.array(tokens[j + offset::width], np.bytes_))
    used = sorted({7, 41, *self._sparse, *self._dense})
    table = {j: column(j) for j in used}

    def fail(i, j, what):
      raise DataError(f"{what}, got {_decode(table[j][i])!r}", path=path,
                      line=int(line_nos[i]), column=j + 1 + offset,
                      column_name=CENSUS_COLUMNS[j])

    income = table[41]
    bad = np.flatnonzero((income != _INCOME_HIGH) & (income != _INCOME_LOW))
    if len(bad):
      fail(bad[0], 41, f"income label must be {_INCOME_LOW.decode()!r} or "
           f"{_INCOME_HIGH.decode()!r}")
    for j in used:
      empty = np.flatnonzero(table[j] == b"")
      if len(empty):
        fail(empty[0], j, "empty value ('?' marks a missing one)")
    dense = np.zeros((n, 0))
    for j in self._dense:
      try:
        values = table[j].astype(np.float64)
      except ValueError:
        for i in range(n):
          try:
            table[j][i:i + 1].astype(np.float64)
          except ValueError:
            fail(i, j, "non-numeric value in a continuous column")
        raise
      bad = np.flatnonzero(~np.isfinite(values))
      if len(bad):
        fail(bad[0], j, "NaN/inf value")
      dense = np.concatenate([dense, values[:, None]], axis=1)
    return Chunk(lines=line_nos, click=(income == _INCOME_HIGH).astype(np.float32),
                 conversion=(table[7] == _NEVER_MARRIED).astype(np.float32),
                 sparse=[table[j] for j in self._sparse],
                 dense=dense if self._dense else None, lists={}, group=None)


# ------------------------------------------------------------------ Ali-CCP raw lines

ALICCP_RAW_FIELDS = ("101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124",
                     "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
                     "508", "509", "702", "853", "301")


class AliccpRawFormat(Format):
  """``sample_id,click,purchase,field:feat,field:feat,...`` lines (PaddleRec ESMM).

  Feature ids are non-negative global integers; a field may occur several times in a
  line (multi-valued) or not at all (missing: id 0). The store builder decides which
  fields are multi-valued from the data. The group key is the user id (field 101).
  """
  name = "aliccp_raw"
  tasks = {"click": "click", "conversion": "purchase"}
  conversion_column = (3, "purchase")
  list_names = ALICCP_RAW_FIELDS
  group_name = "101"

  def __init__(self, sparse=None, dense=None):
    if dense:
      raise DataError("format aliccp_raw has no dense columns (--dense)")
    if sparse is not None:
      for name in sparse:
        if name in ("click", "purchase"):
          raise DataError("is a label of format aliccp_raw; labels are never features "
                          "(remove it from --sparse)", column=2 + (name == "purchase"),
                          column_name=name)
        if name not in ALICCP_RAW_FIELDS:
          raise DataError(f"format aliccp_raw has no field {name!r} (given in --sparse); "
                          f"its fields are {list(ALICCP_RAW_FIELDS)}")
      self.list_names = tuple(f for f in ALICCP_RAW_FIELDS if f in sparse)
    self._field_index = {f.encode(): i for i, f in enumerate(ALICCP_RAW_FIELDS)}

  def inspect(self, path, first_line):
    tokens = first_line.rstrip(b"\r\n").split(b",")
    if len(tokens) < 4 or not _is_number(tokens[1]) or b":" not in tokens[3]:
      raise DataError("header does not match format aliccp_raw: expected "
                      "'id,click,purchase,field:feat,...' data lines without a header, "
                      f"found {_decode(first_line[:60])!r}", path=path, line=1)
    return Layout()

  def parse(self, path, lines, first_line_no, layout):
    n = len(lines)
    heads, rests = [], []
    for i, line in enumerate(lines):
      parts = line.rstrip(b"\r\n").split(b",", 3)
      if len(parts) < 4:
        _check_empty(path, first_line_no + i, line)
        raise DataError(f"expected 'id,click,purchase,field:feat,...', found "
                        f"{len(parts)} columns", path=path, line=first_line_no + i,
                        column=len(parts) + 1)
      heads.append(parts[1:3])
      rests.append(parts[3])
    line_nos = np.arange(first_line_no, first_line_no + n, dtype=np.int64)
    labels = np.array(heads, dtype=np.bytes_)
    try:
      label_values = labels.astype(np.float64)
    except ValueError:
      label_values = None
    if label_values is None or np.any((label_values != 0) & (label_values != 1)):
      for i in range(n):
        for j in range(2):
          try:
            ok = float(labels[i:i + 1, j].astype(np.float64)[0]) in (0.0, 1.0)
          except ValueError:
            ok = False
          if not ok:
            raise DataError(f"label must be 0 or 1, got {_decode(labels[i, j])!r}",
                            path=path, line=int(line_nos[i]), column=j + 2,
                            column_name=("click", "purchase")[j])

    counts = np.array([r.count(b",") + 1 for r in rests], np.int64)
    tokens = np.array(b",".join(rests).split(b","), dtype=np.bytes_)
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    columns = np.arange(len(tokens), dtype=np.int64) - np.repeat(
        np.cumsum(counts) - counts, counts) + 4
    fields, sep, feats = np.strings.partition(tokens, b":")

    def fail(t, what, token=None):
      token = tokens[t] if token is None else token
      raise DataError(f"{what}, got {_decode(token)!r}", path=path,
                      line=int(line_nos[rows[t]]), column=int(columns[t]))

    bad = np.flatnonzero(sep != b":")
    if len(bad):
      fail(bad[0], "expected field:feat")
    uniq, inverse = np.unique(fields, return_inverse=True)
    index = np.array([self._field_index.get(bytes(u), -1) for u in uniq], np.int64)
    field_of = index[inverse.reshape(-1)]
    bad = np.flatnonzero(field_of < 0)
    if len(bad):
      fail(bad[0], f"unknown field (the fields are {list(ALICCP_RAW_FIELDS)})",
           fields[bad[0]])
    try:
      values = feats.astype(np.int64)
    except ValueError:
      values = None
    if values is None or np.any(values < 0):
      for t in range(len(feats)):
        try:
          ok = int(feats[t:t + 1].astype(np.int64)[0]) >= 0
        except ValueError:
          ok = False
        if not ok:
          fail(t, "feature ids must be non-negative integers", feats[t])
    order = np.argsort(field_of, kind="stable")  # by field, line order within a field.
    starts = np.searchsorted(field_of[order], np.arange(len(ALICCP_RAW_FIELDS) + 1))
    lists = {}
    for k, name in enumerate(ALICCP_RAW_FIELDS):
      if name in self.list_names:
        sel = order[starts[k]:starts[k + 1]]
        lists[name] = (rows[sel], values[sel], columns[sel])
    user = lists.get("101") or (rows[order[starts[0]:starts[1]]],
                                values[order[starts[0]:starts[1]]], None)
    group = np.full(n, -1, np.int64)
    group[user[0]] = user[1]
    return Chunk(lines=line_nos, click=label_values[:, 0].astype(np.float32),
                 conversion=label_values[:, 1].astype(np.float32), sparse=[], dense=None,
                 lists=lists, group=group)


FORMATS = {
    "census": CensusFormat,
    "aliexpress": aliexpress,
    "aliccp_csv": aliccp_csv,
    "aliccp_aitm": aliccp_aitm,
    "aliccp_raw": AliccpRawFormat,
}


def get_format(name: str, *, sparse=None, dense=None) -> Format:
  """The reader of format ``name`` (see ``FORMATS``), with optional feature overrides:
  ``sparse`` / ``dense`` are column names replacing the format's default features."""
  if name not in FORMATS:
    raise ValueError(f"unknown format {name!r}; expected one of {sorted(FORMATS)}")
  return FORMATS[name](sparse=sparse, dense=dense)
