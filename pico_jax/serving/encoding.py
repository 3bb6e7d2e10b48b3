"""A run's feature encoding as plain data, and raw rows read through it.

An ``Encoding`` is what turns raw rows into model inputs: the format's reader (its
name and the store's options that rebuild it) and the ``ingest.encode.Encoder``
(vocabularies, hash settings, dense statistics, column roles). It comes from the
training store (``from_store``) or from an artifact (``from_plain``: JSON and numpy
arrays, no pickles, no code), and ``read`` runs raw rows (files of the format, or an
in-memory Arrow table or pandas DataFrame for format ``table``) through the same
parse and ``Encoder.encode`` as preprocessing.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

import numpy as np
import pyarrow as pa

from pico_jax.data import integrity, store
from pico_jax.data.errors import DataError
from pico_jax.ingest import formats
from pico_jax.ingest.encode import Encoder
from pico_jax.ingest.format_contract import Format, Layout
from pico_jax.ingest.table import MEMORY
from pico_jax.ingest.vocab import Vocab


@dataclasses.dataclass
class Encoding:
  """Raw rows -> model inputs, with where the encoding came from.

  Attributes:
    encoder: the store's ``Encoder``.
    fmt: the reader of the store's raw format, with its feature columns.
    options: the store's preprocessing options (``meta.json``'s ``options``).
    task_relation: the store's ``task_relation`` (how metrics treat conversions).
    fingerprint: the store's fingerprint, or None for a store built before stores
      had one.
  """
  encoder: Encoder
  fmt: Format
  options: dict
  task_relation: str | None
  fingerprint: str | None

  @classmethod
  def from_store(cls, path: str) -> "Encoding":
    """The encoding the store at ``path`` was written with. Raises DataError for a
    store not built from raw files."""
    encoder, fmt, meta = Encoder.from_store(path)
    return cls(encoder, fmt, meta.get("options", {}), meta.get("task_relation"),
               meta.get(integrity.FINGERPRINT))

  def to_plain(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON-able dict, named arrays) that ``from_plain`` rebuilds this from."""
    arrays, fields = {}, {}
    for field in dataclasses.fields(Encoder):
      value = getattr(self.encoder, field.name)
      if field.name == "vocabs":
        value = {name: _vocab_plain(vocab, arrays) for name, vocab in value.items()}
      elif isinstance(value, np.ndarray):
        arrays[f"encoder.{field.name}"] = value
        value = {"array": f"encoder.{field.name}"}
      fields[field.name] = _json_value(value, field.name)
    plain = {"format": self.fmt.name, "options": self.options, "encoder": fields,
             "task_relation": self.task_relation}
    return plain, arrays

  @classmethod
  def from_plain(cls, plain: dict[str, Any], arrays, fingerprint: str | None
                 ) -> "Encoding":
    """The encoding ``to_plain`` wrote (``arrays``: a mapping of its named arrays)."""
    hints = typing.get_type_hints(Encoder)
    fields = {}
    for name, value in plain["encoder"].items():
      if name == "vocabs":
        value = {k: Vocab(keys=arrays[v["keys"]] if v["keys"] else None,
                          buckets=v["buckets"]) for k, v in value.items()}
      elif isinstance(value, dict) and "array" in value:
        value = np.asarray(arrays[value["array"]])
      elif isinstance(value, list) and "tuple" in str(hints[name]):
        value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
      fields[name] = value
    fmt = formats.from_options(plain["format"], plain["options"])
    return cls(Encoder(**fields), fmt, plain["options"], plain["task_relation"],
               fingerprint)

  def open(self, sources) -> list[tuple[str, Layout]]:
    """(input name, layout) of each source, all checked before any row is read: a file
    of the format (its labels optional), or for format ``table`` an Arrow table or
    pandas DataFrame (its input name ``memory:rows<i>``; the next ``open`` replaces
    it)."""
    names = []
    for i, source in enumerate(sources):
      if isinstance(source, (str, os.PathLike)):
        names.append(os.fspath(source))
      elif self.fmt.name != "table":
        raise DataError(f"an in-memory table holds the rows of format table; the model "
                        f"reads format {self.fmt.name}: give its files")
      else:
        self.fmt.add_tables({f"rows{i}": _arrow_table(source)})
        names.append(f"{MEMORY}rows{i}")
    return [(name, self.fmt.open_input(name, labels_optional=True)) for name in names]

  def read(self, name: str, layout: Layout, chunk_rows: int):
    """Blocks of an opened input, in order: ``(chunk, columns)`` (the parsed rows,
    their model inputs from ``Encoder.encode``), and ``(None, bytes read so far)``
    between them, for progress."""
    for block, data in self.fmt.stream(name, layout, chunk_rows):
      if block is None:
        yield None, data
        continue
      chunk = self.fmt.parse_block(block.path, data, block.first_line, layout,
                                   block.num_lines)
      yield chunk, self.encoder.encode(chunk, block.path)[0]


def for_run(config) -> Encoding | None:
  """The encoding of a run's training data: its store's, or None when the run did not
  train on a store built from raw files (synthetic data)."""
  if config.data.name != "store":
    return None
  if store.read_meta(config.data.path).get("format") not in formats.FORMATS:
    return None
  return Encoding.from_store(config.data.path)


def _arrow_table(rows) -> pa.Table:
  """``rows`` (an Arrow table or record batch, or a pandas DataFrame) as a pa.Table."""
  if isinstance(rows, pa.Table):
    return rows
  if isinstance(rows, pa.RecordBatch):
    return pa.Table.from_batches([rows])
  if type(rows).__name__ == "DataFrame" and hasattr(rows, "dtypes"):
    return pa.Table.from_pandas(rows, preserve_index=False)
  raise DataError(f"cannot score a {type(rows).__name__}: give a file path, a pyarrow "
                  "Table or a pandas DataFrame")


def _vocab_plain(vocab: Vocab, arrays: dict) -> dict:
  """A vocabulary as JSON, its keys added to ``arrays`` under a positional name (a
  field name may hold any character)."""
  key = None
  if vocab.keys is not None:
    key = f"vocab.{len(arrays)}"
    arrays[key] = vocab.keys
  return {"keys": key, "buckets": int(vocab.buckets)}


def _json_value(value, name: str):
  """``value`` as JSON data (tuples as lists); a value of another kind is a bug."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, (tuple, list)):
    return [_json_value(v, name) for v in value]
  if isinstance(value, dict):
    return {str(k): _json_value(v, name) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"Encoder.{name}: cannot write {type(value).__name__} as plain data")
