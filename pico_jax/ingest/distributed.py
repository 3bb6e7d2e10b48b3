"""The build's steps as functions of one input file or of the whole plan, for an engine
that runs them on many machines (``beam_pipeline`` wires them into Apache Beam).

The steps are the local build's (``preprocess``), cut where a distributed engine can
cut them, and they give the same store row for row:

  scan        per input file: rows, blocks of ``chunk_rows`` lines, BLAKE3 digest
  split_plan  once: every row's split (``splits.assign``, the local build's rule and
              seeded permutation), sliced per file
  count_unit  per file: its blocks parsed, checked and counted (``passes.count_block``)
  encoding    once: vocabularies (``vocab.Counter`` merged per field), dense moments
              (``moments.Moments``, blocks merged in file order, as locally) and the
              ``encode.Encoder``
  placement   once: every kept row's index in its split (``layout.positions``)
  write_unit  per file: its blocks parsed again, encoded by ``Encoder.encode`` and
              written as one shard per block and split (``shard_writer``), each row
              with its ``row_id``: its index in the split of the local build
  finish      once: vocabularies and meta.json (``shard_writer.finish_store``)

An input given as a URI (``s3://``, ``gs://``) is copied to a temporary local file by
the step that reads it (the readers map local files); errors name the URI. The split
plan and the placement hold 9 bytes per row on one worker: the local build's split is
one seeded permutation of all rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import glob
import os
import shutil
import tempfile

import numpy as np
import pyarrow.fs as pafs

from pico_jax.data import filesystem, sharded
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema
from pico_jax.data.store import column_specs, columns_meta
from pico_jax.ingest import format_contract, layout, passes, preprocess, shard_writer
from pico_jax.ingest.encode import Encoder, StoreRows
from pico_jax.ingest.moments import Moments
from pico_jax.ingest.splits import SPLIT_ID, assign, parse_inputs

_SPLITS = tuple(SPLIT_ID)
# The Beam runners the build is written for (DirectRunner tested; docs/data.md).
RUNNERS = ("DirectRunner", "PrismRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")


@dataclasses.dataclass(frozen=True)
class Job:
  """What every step needs: the format's name and the build options."""
  format_name: str
  options: preprocess.Options

  def format(self) -> format_contract.Format:
    """The format, the options checked against it (``preprocess.open_format``)."""
    return preprocess.open_format(self.format_name, self.options)

  @property
  def policy(self) -> str:
    return self.options.policy or self.format().default_policy


@dataclasses.dataclass(frozen=True)
class Unit:
  """One input file (or a table's directory of partitions): its place among the
  inputs (``index``), its split role and its location (a path or a URI)."""
  index: int
  split: str
  location: str


@dataclasses.dataclass(frozen=True)
class Scanned:
  """``scan``'s result: the unit's data rows, blocks, header and BLAKE3 digest."""
  unit: Unit
  rows: int
  blocks: int
  header: bool
  digest: str


def _match(location: str) -> list[str]:
  """The files a glob names, sorted (a location without a wildcard as is)."""
  fs, path = filesystem.resolve(location)
  if not glob.has_magic(path):
    return [location]
  if not filesystem.is_uri(location):
    return sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
  base = path[:min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
  try:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
  except OSError as e:
    raise DataError(f"cannot list the input files: {e}", path=location) from None
  depth = None if "**" in path else path.count("/")
  scheme, query = location.split("://", 1)[0], filesystem.split_query(location)[1]
  return sorted(f"{scheme}://{info.path}{query}" for info in infos
                if info.type == pafs.FileType.File and fnmatch.fnmatchcase(info.path, path)
                and depth in (None, info.path.count("/")))


def units(inputs) -> list[Unit]:
  """The ``[SPLIT=]PATH`` inputs as units, a glob expanded to its files in sorted
  order (the rows, blocks and splits of the local build given the same files in that
  order). Raises DataError for a glob that matches nothing."""
  out = []
  for split, location in parse_inputs(inputs):
    files = _match(location)
    if not files:
      raise DataError("no input files match", path=location)
    out += [Unit(len(out) + k, split, f) for k, f in enumerate(files)]
  return out


def _stage(location: str, tmp: str) -> str:
  """A local path holding ``location``'s bytes: itself, or a copy of a URI's file."""
  if not filesystem.is_uri(location):
    return location
  fs, path = filesystem.resolve(location)
  local = os.path.join(tmp, os.path.basename(path))
  try:
    if fs.get_file_info(path).type != pafs.FileType.File:
      raise DataError("not a file (give the files of a table on object storage as a "
                      "glob)", path=location)
    with fs.open_input_stream(path) as src, open(local, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 22)
  except OSError as e:
    raise DataError(f"cannot read the input: {e}", path=location) from None
  return local


@contextlib.contextmanager
def _opened(fmt: format_contract.Format, unit: Unit, chunk_rows: int):
  """(local path, layout, scan) of ``unit``; a DataError inside names its location."""
  with tempfile.TemporaryDirectory(prefix="pico-jax-input-") as tmp:
    path = _stage(unit.location, tmp)
    try:
      layout = fmt.open_input(path)
      yield path, layout, fmt.scan(path, layout, chunk_rows)
    except DataError as e:
      if path == unit.location or e.path is None:
        raise
      where = unit.location if e.path == path else e.path.replace(tmp, unit.location)
      raise DataError(e._message, path=where, line=e.line, column=e.column,
                      column_name=e.column_name) from None


def scan(job: Job, unit: Unit) -> Scanned:
  fmt = job.format()
  with _opened(fmt, unit, job.options.chunk_rows) as (path, layout, info):
    rows = info.num_lines - int(layout.header)
    if rows == 0:
      raise format_contract.no_rows(path)
    return Scanned(unit, rows, len(info.blocks), layout.header, fmt.digest(path, 1))


@dataclasses.dataclass(frozen=True)
class _Source:
  """What ``splits.assign`` reads of an input."""
  split: str
  offset: int
  rows: int


def _assignment(job: Job, scans: list[Scanned]):
  """(scans in input order, first row of each, split_of int8 [N], rank_of int64 [N])."""
  scans = sorted(scans, key=lambda s: s.unit.index)
  offsets = np.cumsum([0] + [s.rows for s in scans]).tolist()
  o = job.options
  split_of, rank_of = assign([_Source(s.unit.split, a, s.rows)
                              for s, a in zip(scans, offsets)],
                             o.seed, o.split_fractions, o.val_fraction)
  return scans, offsets, split_of, rank_of


def first_blocks(scans: list[Scanned]) -> dict[int, int]:
  """Unit index -> the number of its first block among all inputs' blocks."""
  scans = sorted(scans, key=lambda s: s.unit.index)
  starts = np.cumsum([0] + [s.blocks for s in scans]).tolist()
  return {s.unit.index: start for s, start in zip(scans, starts)}


def split_plan(job: Job, scans: list[Scanned]):
  """(unit, split ids int8 [rows] of its rows) for every unit."""
  scans, offsets, split_of, _ = _assignment(job, scans)
  for s, a in zip(scans, offsets):
    yield s.unit, split_of[a:a + s.rows]


class _Discard:
  """A spill that keeps nothing: the write step parses a block again."""

  def put(self, path, chunk):
    pass


def count_unit(job: Job, unit: Unit, split: np.ndarray) -> list[passes.BlockStats]:
  """Pass 1 of a unit: every block's ``passes.BlockStats``, in order (``split``: int8
  [rows], its rows' split ids)."""
  fmt, stats, row = job.format(), [], 0
  with _opened(fmt, unit, job.options.chunk_rows) as (_, layout, info):
    for block, data in fmt.blocks(info):
      task = passes.CountTask(fmt, block, layout, data, split[row:row + block.num_lines],
                              job.policy, "")
      stats.append(passes.count_block(task, spill=_Discard()))
      row += block.num_lines
  return stats


@dataclasses.dataclass
class Encoding:
  """What pass 2 needs of pass 1: the field layout, the encoder, the schema and the
  vocabularies' meta.json entries."""
  fields: layout.Fields
  encoder: Encoder
  schema: Schema
  vocab_meta: dict


def encoding(job: Job, counts: dict, block_moments: list, max_mult: dict) -> Encoding:
  """The encoder from pass 1's results: ``counts`` field -> (sorted distinct training
  values, int64 counts) (a field without any: absent); ``block_moments`` (block
  number, ``moments.block_moments``) of every block with training rows, in any order;
  ``max_mult`` key:value field -> the most values one row has."""
  fmt, options = job.format(), job.options
  hashed = dict(options.hash_buckets)
  vocabs, vocab_meta = {}, {}
  for name in fmt.sparse_names + fmt.list_names:
    keys, key_counts = counts.get(name, (None, np.zeros(0, np.int64)))
    vocabs[name], vocab_meta[name] = layout.vocabulary(keys, key_counts, options,
                                                       hashed.get(name, 0))
  moments = Moments(len(fmt.dense_names))
  for _, block in sorted(block_moments, key=lambda item: item[0]):  # file order.
    moments.add(*block)
  fields = layout.Fields.of(fmt, options, {n: max_mult.get(n, 0) for n in fmt.list_names})
  return Encoding(fields, fields.encoder(fmt, vocabs, moments.result(), options),
                  fields.schema(lambda name: vocabs[name].vocab_size), vocab_meta)


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where the rows go: ``rows`` and ``dropped`` (conversion without click) per split."""
  rows: dict[str, int]
  dropped: dict[str, int]


def placement(job: Job, scans: list[Scanned], dropped: dict[int, np.ndarray],
              inputs) -> tuple[Placement, list]:
  """(the splits' sizes, [(unit, kept split int8 [rows] (-1: dropped), index in the
  split int64 [rows])]) from every unit's dropped rows (bool [rows], by unit index)."""
  scans, offsets, split_of, rank_of = _assignment(job, scans)
  keep = ~np.concatenate([dropped[s.unit.index] for s in scans])
  position, rows = layout.positions(keep, split_of, rank_of, inputs)
  kept_split = np.where(keep, split_of, -1).astype(np.int8)
  lost = {s: int(np.sum(~keep & (split_of == sid))) for s, sid in SPLIT_ID.items()}
  return Placement(rows, lost), [(s.unit, kept_split[a:a + s.rows], position[a:a + s.rows])
                                 for s, a in zip(scans, offsets)]


def write_unit(job: Job, unit: Unit, first_block: int, enc: Encoding,
               kept_split: np.ndarray, position: np.ndarray, root: str):
  """Pass 2 of a unit: (shards, truncated). Each block's rows of each split are
  encoded by ``Encoder.encode`` (as the local build's) and written as the shard
  ``SPLIT/part-BBBBB`` (B: the block's number among all inputs' blocks) under
  ``root``; shards: (split, block, file, rows, checksum entry); truncated: rows cut per
  multi-valued field."""
  fmt, shards, row = job.format(), [], 0
  truncated = {name: 0 for name in enc.encoder.multi_names}
  specs = column_specs(enc.schema)
  with _opened(fmt, unit, job.options.chunk_rows) as (path, layout, info):
    for k, (block, data) in enumerate(fmt.blocks(info)):
      chunk = passes.parse(fmt, block, layout, data)
      split = kept_split[row:row + len(chunk)]
      members = [np.flatnonzero(split == sid) for sid in range(len(_SPLITS))]
      where = np.zeros(len(chunk), np.int64)
      for rows in members:
        where[rows] = np.arange(len(rows))
      outs = {key: tuple(np.zeros((len(rows),) + tail, dtype) for rows in members)
              for key, (tail, dtype) in specs.items()}
      _, cut = enc.encoder.encode(chunk, unit.location,
                                  StoreRows(split, where, outs.__getitem__))
      for name, n in cut.items():
        truncated[name] += n
      for sid, rows in enumerate(members):
        if len(rows):
          # In a seeded order, as the local writer's shards (the row_id keeps the place).
          rows = rows[np.random.default_rng([job.options.seed, sid, first_block + k])
                      .permutation(len(rows))]
          relpath = f"{_SPLITS[sid]}/part-{first_block + k:05d}.{sharded.SHARD_EXT}"
          table = shard_writer.shard_table({key: outs[key][sid][where[rows]]
                                            for key in specs},
                                           position[row:row + len(chunk)][rows],
                                           enc.schema)
          shards.append((_SPLITS[sid], first_block + k, relpath, len(rows),
                         shard_writer.write_shard(table, root, relpath)))
      row += len(chunk)
  return shards, truncated


def finish(job: Job, scans: list[Scanned], enc: Encoding, placed: Placement,
           written: list, root: str, output: str) -> dict:
  """Commits the store: ``written`` are ``write_unit``'s results of every unit."""
  fmt, shards, truncated = job.format(), [], {n: 0 for n in enc.encoder.multi_names}
  for unit_shards, unit_truncated in written:
    shards += unit_shards
    for name, n in unit_truncated.items():
      truncated[name] += n
  shards.sort(key=lambda shard: shard[1])  # block order: the inputs' order.
  split_meta = {split: {"rows": placed.rows[split],
                        "dropped_conversion_without_click": placed.dropped[split],
                        "shards": [{"file": f, "rows": n, "partition": None}
                                   for s, _, f, n, _ in shards if s == split]}
                for split in _SPLITS}
  vocab = enc.fields.vocab_files(enc.encoder.vocabs, enc.vocab_meta)
  sources = [{"path": s.unit.location if filesystem.is_uri(s.unit.location)
              else fmt.source_path(s.unit.location), "split": s.unit.split,
              "blake3": s.digest, "rows": s.rows, "header": s.header}
             for s in sorted(scans, key=lambda s: s.unit.index)]
  meta = layout.store_facts(fmt, job.options, job.policy, placed.dropped, sources,
                            enc.vocab_meta, enc.encoder, truncated)
  meta["schema"] = enc.schema.to_json()
  meta["columns"] = columns_meta(enc.schema)
  return shard_writer.finish_store(root, output, meta, split_meta,
                                   {f: entry for _, _, f, _, entry in shards}, vocab)
