"""Format "table": users' own logs as CSV or Parquet, with the column roles declared.

An input is one file, a glob or a directory of hive-style partitions (``k=v/``
folders, whose keys become columns), read through ``pyarrow.dataset``. The roles
(``TableRoles``: click, conversion, an optional group key and id, sparse columns,
multi-valued columns with their separator, dense columns) come from flags or a small
JSON file. Everything after the parse is the other formats' code: the passes, the
vocabularies, the split, the dense standardisation and the store.

Blocks are ``block_rows`` rows of one file, in file order (as a CSV format's blocks
of lines are, so a table holding a CSV format's rows gives the same store). The parent
reads them in order (a Parquet row group or a CSV stream cannot be cut by byte
offset); the workers convert and check them. A problem is reported with the file,
the row (a CSV file's line; a Parquet file's row and row group) and the column.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from pico_jax.data import integrity
from pico_jax.data.errors import DataError
from pico_jax.ingest import raw_files, table_columns as columns
from pico_jax.ingest.format_contract import Chunk, Format, Layout

_PARQUET = columns.PARQUET
MEMORY = columns.MEMORY  # the prefix of an in-memory table's input name.


def _option(default, text: str, **flag):
  """A ``TableRoles`` field: its default (MISSING: required) and one-line help, with
  how its flag of launch/preprocess.py differs (``pico_jax.dataclass_flags``)."""
  return dataclasses.field(default=default, metadata={"help": text, **flag})


MISSING = ("error", "default")
TIMESTAMPS = ("error", "epoch_seconds")
INDICATOR = "{}:missing"  # the name of a dense column's missing-value indicator.


@dataclasses.dataclass(frozen=True)
class ValuePolicy:
  """What format table does with a null, per role, and with a timestamp given as dense
  (docs/data.md section 3). Labels, group keys and ids are never null."""
  missing_sparse: str = _option(
      "error", "a null in a sparse or multi-valued column: error, or default (id 0, as "
      "an unseen value; a null list is an empty one).", choices=MISSING)
  missing_dense: str = _option(
      "error", "a null in a dense column: error, or default (the training rows' mean of "
      "the column: 0 once standardized).", choices=MISSING)
  missing_indicator: tuple[str, ...] = _option(
      (), "dense columns that get a 0/1 dense column 'NAME:missing' beside them (1 "
      "where the value was null; with --missing_dense=default).")
  timestamps: str = _option(
      "error", "a timestamp or date column given as dense: error, or epoch_seconds "
      "(seconds since 1970-01-01 UTC, a date at its midnight).", choices=TIMESTAMPS)

  def __post_init__(self):
    for field, allowed in (("missing_sparse", MISSING), ("missing_dense", MISSING),
                           ("timestamps", TIMESTAMPS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"{field}={getattr(self, field)!r}: expected one of "
                         f"{list(allowed)}")

  @classmethod
  def from_json(cls, d: dict | None) -> "ValuePolicy":
    """From meta.json's ``options.values`` (absent in stores built before it)."""
    d = dict(d or {})
    return cls(**dict(d, missing_indicator=tuple(d.get("missing_indicator", ()))))


@dataclasses.dataclass(frozen=True)
class TableRoles:
  """What each column of a table is. ``multi``: (column, separator) pairs: a string
  column of values joined by the separator, or a list column (separator unused)."""
  click: str = _option(dataclasses.MISSING, "the click label column.")
  conversion: str = _option(dataclasses.MISSING, "the conversion label column.")
  group: str | None = _option(None, "the group key column (GAUC): integers below "
                              "2**31, or any other values, hashed (docs/data.md).")
  id: str | None = _option(None, "the id column written beside predictions.")
  sparse: tuple[str, ...] = _option((), "the categorical columns.")
  multi: tuple[tuple[str, str], ...] = _option(
      (), "multi-valued columns (a list column takes any separator).",
      metavar="COLUMN:SEPARATOR")
  dense: tuple[str, ...] = _option((), "the dense columns.")

  @classmethod
  def from_json(cls, d: dict) -> "TableRoles":
    """From a dict (a schema file's, or meta.json's ``options.table``)."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown or "click" not in d or "conversion" not in d:
      raise ValueError(f"table roles {sorted(d)}: expected click, conversion and "
                       "optionally group, id, sparse, multi, dense")
    multi = d.get("multi", ())
    if isinstance(multi, dict):
      multi = multi.items()
    return cls(click=d["click"], conversion=d["conversion"], group=d.get("group"),
               id=d.get("id"), sparse=tuple(d.get("sparse", ())),
               multi=tuple((str(c), str(s)) for c, s in multi),
               dense=tuple(d.get("dense", ())))

  @classmethod
  def from_file(cls, path: str) -> "TableRoles":
    """From a JSON file: {"click": ..., "conversion": ..., "sparse": [...], "multi":
    {"tags": "|"}, "dense": [...]}."""
    try:
      with open(path) as f:
        return cls.from_json(json.load(f))
    except json.JSONDecodeError as e:
      raise DataError(f"invalid JSON: {e.msg}", path=path, line=e.lineno,
                      column=e.colno) from None
    except ValueError as e:
      raise DataError(str(e), path=path) from None


@dataclasses.dataclass(frozen=True)
class _Input:
  """A scanned input: its dataset and, per file, (path, rows, size, mtime_ns)."""
  dataset: pads.Dataset
  files: tuple[tuple[str, int, int, int], ...]


def _dataset(path: str) -> pads.Dataset:
  if os.path.isdir(path):
    files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                   if os.path.isfile(f) and not os.path.basename(f).startswith((".", "_")))
  elif glob.has_magic(path):
    files = sorted(glob.glob(path))
  else:
    files = [path] if os.path.isfile(path) else []
  if not files:
    raise DataError("no input files (a file, a glob or a directory of them)", path=path)
  kind = "parquet" if files[0].endswith(_PARQUET) else "csv"
  base = path if os.path.isdir(path) else None
  try:
    return pads.dataset(files, format=kind, partition_base_dir=base,
                        partitioning="hive" if base else None)
  except (pa.ArrowException, OSError) as e:
    raise DataError(f"unreadable {kind} input: {e}", path=files[0]) from None


class TableFormat(Format):
  """A CSV or Parquet table whose column roles are declared (``TableRoles``)."""
  name = "table"

  def __init__(self, roles: TableRoles | None, sparse=None, dense=None,
               values: ValuePolicy = ValuePolicy()):
    if roles is None:
      raise ValueError("format table: declare the column roles (--click, --conversion, "
                       "--sparse, --multi, --dense, or --table_schema)")
    self.roles = roles
    self.tasks = {"click": roles.click, "conversion": roles.conversion}
    self.conversion_column = (None, roles.conversion)
    self.sparse_names = tuple(sparse if sparse is not None else roles.sparse)
    self.values = values
    self.read_dense = tuple(dense if dense is not None else roles.dense)
    unknown = set(values.missing_indicator) - set(self.read_dense)
    if unknown:
      raise DataError(f"--missing_indicator names {sorted(unknown)}, which are not dense "
                      f"columns ({list(self.read_dense)})")
    self.dense_names = self.read_dense + tuple(INDICATOR.format(c)
                                               for c in values.missing_indicator)
    self.list_names = tuple(c for c, _ in roles.multi)
    self.group_name, self.id_name = roles.group, roles.id
    features = self.sparse_names + self.list_names + self.read_dense
    for name in (roles.click, roles.conversion):
      if name in features:
        raise DataError("is a label of format table; labels are never features",
                        column_name=name)
    if len(set(features)) != len(features):
      raise DataError(f"a column has two feature roles: {list(features)}")
    self._inputs: dict[str, _Input] = {}
    self._memory: dict[str, pa.Table] = {}

  def _columns(self, labels: bool = True) -> list[str]:
    names = [self.roles.click, self.roles.conversion] if labels else []
    names += [*self.sparse_names, *self.list_names, *self.read_dense]
    names += [c for c in (self.group_name, self.id_name) if c]
    return list(dict.fromkeys(names))

  def add_tables(self, tables: dict[str, pa.Table]) -> None:
    """Registers in-memory tables as inputs named ``memory:KEY`` (``store_from_table``),
    which errors name with the row."""
    self._memory.update({MEMORY + key: t for key, t in tables.items()})

  def open_input(self, path: str, labels_optional: bool = False) -> Layout:
    memory = self._memory.get(path)
    dataset = _dataset(path) if memory is None else pads.dataset(memory)
    missing = [c for c in self._columns() if c not in dataset.schema.names]
    labels = True
    if missing and labels_optional and set(missing) <= {self.roles.click,
                                                        self.roles.conversion}:
      labels, missing = False, []
    if missing:
      raise DataError(f"no column(s) {missing}; the table has {dataset.schema.names}",
                      path=path)
    files = [(path, memory.num_rows, memory.nbytes, 0)] if memory is not None else []
    for fragment in dataset.get_fragments() if memory is None else ():
      stat = os.stat(fragment.path)
      files.append((fragment.path, fragment.count_rows(), stat.st_size,
                    stat.st_mtime_ns))
    self._inputs[path] = _Input(dataset, tuple(files))
    return Layout(header=False, labels=labels)

  def scan(self, path, layout, block_rows):
    entry = self._inputs[path]
    blocks = []
    for file, rows, _, _ in entry.files:
      for start in range(0, rows, block_rows):
        # ``offset``: the block's first row in its file; ``length``: its rows.
        blocks.append(raw_files.Block(file, start + self._first_row(file), min(
            block_rows, rows - start), start, 0))
    return raw_files.FileInfo(path, sum(f[1] for f in entry.files),
                              sum(f[2] for f in entry.files), False, tuple(blocks),
                              files=len(entry.files))

  @staticmethod
  def _first_row(file: str) -> int:
    """The 1-based number of a file's first row: its line (after the header) in a CSV
    file, its row in a Parquet file."""
    return 1 if file.endswith(_PARQUET) or file.startswith(MEMORY) else 2

  def blocks(self, info):
    entry = self._inputs[info.path]
    columns = [c for c in self._columns() if c in entry.dataset.schema.names]
    if info.path in self._memory:
      table = self._memory[info.path].select(columns)
      for block in info.blocks:
        yield block, table.slice(block.offset, block.num_lines)
      return
    by_file = {}
    for block in info.blocks:
      by_file.setdefault(block.path, []).append(block)
    schema = pa.schema([entry.dataset.schema.field(c) for c in columns])
    for fragment in entry.dataset.get_fragments():
      pending, parts, have = list(by_file.get(fragment.path, [])), [], 0
      for batch in fragment.to_batches(schema=entry.dataset.schema, columns=columns):
        parts.append(batch)
        have += batch.num_rows
        while pending and have >= pending[0].num_lines:
          table = pa.Table.from_batches(parts, schema)
          block = pending.pop(0)
          yield block, table.slice(0, block.num_lines)
          rest = table.slice(block.num_lines)
          parts, have = rest.to_batches(), rest.num_rows
      if pending and have:
        yield pending.pop(0), pa.Table.from_batches(parts, schema)

  def stream(self, path, layout, block_rows):
    """The input's blocks, in order; after each, its files' bytes read so far (a
    file's share counted by its rows)."""
    before, done = {}, 0
    for file, rows, size, _ in self._inputs[path].files:
      before[file], done = (done, rows, size), done + size
    for block, data in self.blocks(self.scan(path, layout, block_rows)):
      yield block, data
      start, rows, size = before[block.path]
      yield None, start + size * (block.offset + block.num_lines) // rows

  def input_bytes(self, path):
    return sum(f[2] for f in self._inputs[path].files) if path in self._inputs else 0

  def source_path(self, path):
    return path if path in self._memory else super().source_path(path)

  def digest(self, path, threads):
    """BLAKE3 over the input's files in order (each file's bytes, as read); of an
    in-memory table, over its Arrow IPC stream."""
    digest = integrity.new_digest(threads)
    if path in self._memory:
      with pa.ipc.new_stream(_Digesting(digest), self._memory[path].schema) as out:
        out.write_table(self._memory[path])
      return digest.hexdigest()
    for file, *_ in self._inputs[path].files:
      integrity.hash_into(digest, file)
    return digest.hexdigest()

  def check_unchanged(self, info):
    for file, _, size, mtime_ns in self._inputs[info.path].files:
      if file in self._memory:
        continue
      stat = os.stat(file)
      if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
        raise DataError("the file changed while it was being read; rerun on a file "
                        "nothing is writing", path=file)

  def parse_block(self, path, data, first_line_no, layout, num_lines=None, threads=1):
    """The rows of ``data`` (a pyarrow Table of the block's rows)."""
    table: pa.Table = data
    n = table.num_rows
    lines = np.arange(first_line_no, first_line_no + n, dtype=np.int64)
    where = columns.Where(path, lines)
    labels = layout.labels
    policy = self.values
    click = columns.label(table, self.roles.click, where) if labels else None
    conversion = columns.label(table, self.roles.conversion, where) if labels else None
    sparse, missing = [], {}
    for j, c in enumerate(self.sparse_names):
      sparse.append(columns.ids(table, c, where, policy.missing_sparse))
      nulls = columns.nulls(table, c)
      if nulls is not None:
        missing[j] = nulls
    dense = None
    if self.dense_names:
      dense = np.empty((n, len(self.dense_names)))
      for k, c in enumerate(self.read_dense):
        dense[:, k] = columns.floats(table, c, where, policy.missing_dense,
                                     policy.timestamps)
      for k, c in enumerate(policy.missing_indicator, start=len(self.read_dense)):
        dense[:, k] = np.isnan(dense[:, self.read_dense.index(c)])
    lists = {c: columns.bag(table, c, sep, where, policy.missing_sparse)
             for c, sep in self.roles.multi}
    group = columns.group(table, self.group_name, where) if self.group_name else None
    ids = columns.ids(table, self.id_name, where) if self.id_name else None
    return Chunk(lines=lines, click=click, conversion=conversion, sparse=sparse,
                 dense=dense, lists=lists, group=group, ids=ids, missing=missing)


class _Digesting(io.RawIOBase):
  """A write-only file that feeds what is written to a BLAKE3 digest."""

  def __init__(self, digest):
    self.digest = digest

  def writable(self):
    return True

  def write(self, data):
    self.digest.update(data)
    return len(data)
