"""Raw files -> columnar store, streaming with bounded memory; every byte parsed once.

  0. scan: line count and block offsets of every file (``raw_files.scan_file``); every
     row is assigned a split (and its order inside the split, ``splits``) before any
     statistic is taken. The files' BLAKE3 digest is computed on a thread of its own,
     beside this pass and the next ones.
  1. parse + count: every block is parsed and checked once (``passes.count_block``,
     on ``workers`` threads, or processes with ``processes``); vocabularies (counts
     of the training rows), dense mean/std (training rows, merged block by block in
     file order) and the multiplicity of key:value fields are accumulated; the parsed
     rows are spilled (ids factorized per block): held in memory up to
     ``Options.spill_memory`` bytes, to a temporary file per block beyond that.
  2. write: every spilled block is encoded (``encode.Encoder``) and scattered into the
     preallocated memory-mapped columns of its split (``passes.write_block``).

Memory: the per-row bookkeeping (split int8, order int64, kept bool, position int64:
18 bytes a row, 0.7 GB for 40M rows; 8 more while the positions are computed), the
distinct values of the vocabularies, two blocks per worker and the spilled blocks held
in memory (at most ``spill_memory`` bytes). Disk: the spill files hold the parsed
values of the other blocks until they are written (each block's distinct ids and an
int32 index per value, float64 dense values: about the size of the input). They sit
beside the output; the store is written into a temporary directory and renamed at
the end, and both are removed on any error.

Conversions without a click (ESMM's entire space): a row with conversion = 1 and
click = 0 breaks ESMM's c = 1 => y = 1. The policy is per format
(``Format.default_policy``), overridable: "error" (default: the first such row is
reported with file/line/column), "drop" (rows are skipped and counted in meta.json,
as the AITM recipe does) or "keep" (census, whose two tasks are independent;
meta.json records ``task_relation: "independent"``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import tempfile
from typing import Callable, Sequence

import numpy as np

from pico_jax.ingest import (blocks, format_contract, formats, layout, passes, raw_files,
                             store_writer)
from pico_jax.ingest.spill import Spill
from pico_jax.ingest.splits import SPLIT_ID, assign, parse_inputs
from pico_jax.ingest.table import TableRoles, ValuePolicy
from pico_jax.ingest.vocab import Counter

POLICIES = ("error", "drop", "keep")
DENSE_TRANSFORMS = ("standardize", "none")


class OptionError(ValueError):
  """An option out of its range: ``field`` names it, ``what`` says what it must be."""

  def __init__(self, field: str, value, what: str):
    self.field, self.what = field, what
    super().__init__(f"{field}={value!r}: {what}")


def _option(default, text: str, **flag):
  """An ``Options`` field: its default and its one-line help, with how its flag of
  launch/preprocess.py differs from the field (``pico_jax.dataclass_flags``)."""
  return dataclasses.field(default=default, metadata={"help": text, **flag})


@dataclasses.dataclass(frozen=True)
class Options:
  """Preprocessing options, checked when made (raises OptionError); every one is
  recorded in meta.json. Each field's help is its flag's in launch/preprocess.py.

  More than the help says: a list longer than ``multi_max_len`` keeps its first L ids
  (in line order), and its row is counted in meta.json. Stores depend on
  ``chunk_rows`` in the last bits (it orders the merge of the dense statistics), never
  on ``workers``, ``processes`` or ``spill_memory``. Threads start free, and the
  parse, the hashing and the large array operations release the GIL; worker processes
  share no GIL but cost their start, and spill every block to a file. ``table``: the
  column roles of format "table" (``table.TableRoles``, flags of their own).
  """
  min_count: int = _option(1, "Training-split count below which a value maps to id 0.")
  hash_buckets: tuple[tuple[str, int], ...] = _option(
      (), "hash these fields into a fixed number of buckets.", flag="hash",
      metavar="FIELD=BUCKETS")
  max_vocab: int = _option(0, "Hash any field keeping more values than this into that "
                           "many buckets (0: none).")
  multi_max_len: int = _option(64, "Padded length of multi-valued fields (longer lists "
                               "are truncated).")
  multi_fields: tuple[str, ...] = _option((), "key:value fields to store as "
                                          "multi-valued.")
  policy: str | None = _option(
      None, "Rows with conversion=1, click=0: error, drop (counted) or keep (default: "
      "the format's policy; census keeps, the others error).",
      flag="conversion_without_click", choices=POLICIES)
  dense_transform: str = _option(
      "standardize", "Dense feature transform: standardize (mean and population std "
      "of the training rows) or none.", choices=DENSE_TRANSFORMS)
  seed: int = _option(0, "Seed of the split permutation.")
  split_fractions: tuple[float, float, float] = _option(
      (0.8, 0.1, 0.1), "train,val,test fractions when one input is given.")
  val_fraction: float = _option(0.1, "Part of the train file used as val when train "
                                "and test are given.")
  chunk_rows: int = _option(blocks.CHUNK_ROWS, "Lines per block (the unit of parallel "
                            "work).")
  workers: int = _option(0, "Blocks parsed and written in parallel, by threads of this "
                         "process (0: one per CPU, never more than the CPUs or the "
                         "blocks).")
  processes: bool = _option(False, "The workers are processes instead of threads (one "
                            "per idle CPU, at most one per 16 MiB of input).")
  spill_memory: int = _option(
      1 << 30, "MiB of parsed blocks held in memory between the two passes; the blocks "
      "beyond it are spilled to temporary files beside --output (0: every block; "
      "worker processes always spill to files).", flag="spill_memory_mb", unit=1 << 20)
  sparse: tuple[str, ...] | None = _option(None, "Categorical columns (replaces the "
                                           "format's default).")
  dense: tuple[str, ...] | None = _option(None, "Dense columns (replaces the format's "
                                          "default).")
  table: TableRoles | None = _option(None, "The column roles of format table.")
  values: ValuePolicy = _option(ValuePolicy(), "Format table's null and timestamp "
                                "policy.")

  def __post_init__(self):
    checks = (
        ("min_count", self.min_count >= 1, "must be >= 1"),
        ("policy", self.policy in (None, *POLICIES), f"expected one of {list(POLICIES)}"),
        ("dense_transform", self.dense_transform in DENSE_TRANSFORMS,
         f"expected one of {list(DENSE_TRANSFORMS)}"),
        ("split_fractions", len(self.split_fractions) == 3
         and min(self.split_fractions) >= 0 and abs(sum(self.split_fractions) - 1) <= 1e-9,
         "three non-negative fractions summing to 1"),
        ("val_fraction", 0 <= self.val_fraction < 1, "must be in [0, 1)"),
        ("chunk_rows", self.chunk_rows >= 1, "must be >= 1"),
        ("multi_max_len", self.multi_max_len >= 1, "must be >= 1"),
        ("workers", self.workers >= 0, "must be >= 0"),
        ("spill_memory", self.spill_memory >= 0, "must be >= 0"),
        ("max_vocab", self.max_vocab >= 0, "must be >= 0"),
        ("hash_buckets", all(b >= 1 for _, b in self.hash_buckets),
         "every bucket count must be >= 1"))
    for field, holds, what in checks:
      if not holds:
        raise OptionError(field, getattr(self, field), what)


def build_store(format_name: str, inputs: Sequence[str], output: str, *,
                options: Options = Options(), overwrite: bool = False,
                log: Callable[[str], None] = lambda msg: None,
                progress: bool = False, tables=None, num_shards: int = 0) -> dict:
  """Converts raw ``inputs`` of ``format_name`` into a store at ``output``.

  With ``num_shards`` > 0 the store is sharded (``pico_jax.data.sharded``; ``output``
  may be a URI): the columnar store is built in a temporary directory by the same
  passes, then written as ``num_shards`` shards per split, and removed. A split kept
  in input order (named ``SPLIT=PATH`` inputs) has one time partition per input file,
  named by the file.

  Args:
    format_name: one of ``formats.FORMATS``.
    inputs: ``PATH`` or ``SPLIT=PATH`` strings (see ``splits``).
    output: the store directory (created; replaced only with ``overwrite``).
    options: see ``Options``.
    log: called with progress lines.
    progress: show tqdm bars (rows/s, ETA) on stderr.
    tables: format table's in-memory inputs, {KEY: pyarrow.Table}, given in ``inputs``
      as ``memory:KEY`` (``memory.store_from_table``).

  Returns:
    The store's meta dict (also written to ``output/meta.json``).

  Raises:
    DataError: bad input, naming file, line and column. No store is written (an
      existing one at ``output`` stays as it was) and no temporary file is left.
    OptionError: ``hash_buckets`` names a field that is not categorical.
  """
  raw_files.blake3_module()  # a missing dependency fails now, not after the passes.
  if num_shards:
    return _build_sharded(format_name, inputs, output, options=options,
                          overwrite=overwrite, log=log, progress=progress, tables=tables,
                          num_shards=num_shards)
  return _build_columnar(format_name, inputs, output, options=options,
                         overwrite=overwrite, log=log, progress=progress, tables=tables)[0]


def open_format(format_name: str, options: Options, tables=None
                ) -> format_contract.Format:
  """The format of a build, ``options`` checked against it: a value policy is format
  table's only, ``hash_buckets`` may name categorical fields only (OptionError)."""
  if format_name != "table":
    for field in dataclasses.fields(ValuePolicy):
      if getattr(options.values, field.name) != field.default:
        raise OptionError(field.name, getattr(options.values, field.name),
                          "format table's option (other formats have no nulls)")
  fmt = formats.get_format(format_name, sparse=options.sparse, dense=options.dense,
                           table=options.table, values=options.values)
  if tables:
    fmt.add_tables(tables)
  unknown = {name for name, _ in options.hash_buckets} - {*fmt.sparse_names,
                                                          *fmt.list_names}
  if unknown:
    raise OptionError("hash_buckets", options.hash_buckets, f"{sorted(unknown)}: not "
                      f"categorical fields of format {fmt.name}")
  return fmt


def _build_columnar(format_name, inputs, output, *, options, overwrite, log, progress,
                    tables):
  """``build_store`` of a columnar store: (its meta, ``_partitions``)."""
  fmt = open_format(format_name, options, tables)
  output = os.path.abspath(output)
  store_writer.clear_leftovers(output, log)
  store_writer.check_output(output, overwrite)
  spill_dir = store_writer.make_temp_dir(output, "spill")
  # Decided once: for processes it follows the load average, which moves.
  threads = blocks.thread_budget(options.workers, options.processes)
  # The inputs' digests are computed on a thread of its own, beside the passes.
  hasher = concurrent.futures.ThreadPoolExecutor(1)
  try:
    sources = _scan(fmt, inputs, options, progress, hasher, threads)
    log(f"scanned {sum(s.info.files for s in sources)} file(s), "
        f"{sum(s.rows for s in sources):,} rows")
    workers = blocks.effective_workers(
        threads, sum(s.info.size for s in sources),
        sum(len(s.info.blocks) for s in sources), options.processes)
    with blocks.Runner(workers, threads=not options.processes) as runner:
      meta, kept = _build(passes.Build(fmt, sources, inputs, output, options, overwrite,
                                       log, progress, runner, threads, spill_dir))
    return meta, _partitions(sources, kept, options)
  finally:
    hasher.shutdown(wait=True, cancel_futures=True)
    shutil.rmtree(spill_dir, ignore_errors=True)


def _partitions(sources, kept, options) -> dict[str, list[tuple[str, int]]]:
  """split -> [(input file name, its kept rows)] for the splits stored in input order
  (``splits.assign``): the time partitions of a sharded store."""
  if any(s.split == "all" for s in sources):
    return {}
  ordered = set(SPLIT_ID)
  if not any(s.split == "val" for s in sources) and options.val_fraction > 0:
    ordered = {"test"}
  out: dict[str, list[tuple[str, int]]] = {}
  for source, n in zip(sources, kept):
    if source.split in ordered:
      out.setdefault(source.split, []).append((os.path.basename(source.path), n))
  return out


def _build_sharded(format_name, inputs, output, *, num_shards, overwrite, log, **kwargs):
  """``build_store`` of a sharded store: the columnar build, then its conversion."""
  from pico_jax.data import filesystem
  from pico_jax.ingest import shard_writer
  # Before the columnar build: a refused output fails now, not after the passes.
  shard_writer.check_target(output, overwrite, log)
  # The columnar store is built beside a local output, or in the system's temporary
  # directory for a URI, in a directory named with this process's id: the next build
  # removes it if this one is killed.
  anchor = (os.path.join(tempfile.gettempdir(), "pico_jax-sharded-build")
            if filesystem.is_uri(output) else os.path.abspath(output))
  store_writer.clear_leftovers(anchor, log, kinds=("columnar",))
  tmp = store_writer.make_temp_dir(anchor, "columnar")
  try:
    _, partitions = _build_columnar(format_name, inputs, os.path.join(tmp, "store"),
                                    overwrite=False, log=log, **kwargs)
    return shard_writer.convert(os.path.join(tmp, "store"), output, num_shards=num_shards,
                                seed=kwargs["options"].seed, overwrite=overwrite,
                                partitions=partitions, log=log)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _scan(fmt, inputs, options, progress, hasher, threads) -> list[passes.Source]:
  """Pass 0: every file's first line checked, then scanned (its hash started on
  ``hasher``, with one thread per ``raw_files.WORKERS_PER_HASH_THREAD`` of ``threads``)."""
  pairs = parse_inputs(inputs)
  layouts = [fmt.open_input(path) for _, path in pairs]
  bar = blocks.Progress(sum(fmt.input_bytes(p) for _, p in pairs), "scan", "B", progress)
  sources, offset, digests = [], 0, {}
  hash_threads = -(-threads // raw_files.WORKERS_PER_HASH_THREAD)
  for (split, path), layout in zip(pairs, layouts):
    if path not in digests:
      digests[path] = hasher.submit(fmt.digest, path, hash_threads)
    info = fmt.scan(path, layout, options.chunk_rows)
    rows = info.num_lines - int(layout.header)
    if rows == 0:
      raise format_contract.no_rows(path)
    sources.append(passes.Source(split, path, info, layout, rows, offset, digests[path]))
    offset += rows
    bar.update(rows, info.size)
  bar.close()
  return sources


def _vocabularies(counters: dict[str, Counter], options: Options, hashed: dict[str, int],
                  threads: int):
  """(name -> Vocab, name -> its meta.json entry) from the training counts, the fields
  merged on ``threads`` threads (the merge of int64 ids releases the GIL)."""
  vocabs, vocab_meta = {}, {}
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    results = pool.map(lambda counter: counter.result(), counters.values())
    for name, (keys, key_counts) in zip(counters, results):
      vocabs[name], vocab_meta[name] = layout.vocabulary(keys, key_counts, options,
                                                  hashed.get(name, 0))
  return vocabs, vocab_meta


def _build(build: passes.Build) -> tuple[dict, list[int]]:
  """Passes 1 and 2 over the scanned sources, then the store committed: (its meta, the
  kept rows of every source)."""
  fmt, options, sources, runner = build.fmt, build.options, build.sources, build.runner
  policy = options.policy or fmt.default_policy
  split_of, rank_of = assign(sources, options.seed, options.split_fractions,
                             options.val_fraction)
  hashed = dict(options.hash_buckets)
  spill = Spill(options.spill_memory if runner.in_process else 0)
  counts = passes.count_pass(build, split_of, policy, spill)
  keep = counts.keep
  build.log(f"pass 1: {len(keep):,} rows parsed and checked")
  dropped = {s: int(np.sum(~keep & (split_of == sid))) for s, sid in SPLIT_ID.items()}

  position, split_rows = layout.positions(keep, split_of, rank_of, build.inputs)
  del rank_of
  fields = layout.Fields.of(fmt, options, counts.max_mult)

  # The store's columns do not depend on the vocabularies' sizes: they are allocated
  # (written as zeros) on a thread while the vocabularies are merged.
  # Inside the writer's block, so that any exception (an interrupt included) waits for
  # the allocation, then removes the new store.
  with store_writer.StoreWriter(build.output, fields.schema(lambda name: 1), split_rows,
                                overwrite=build.overwrite, allocate=False) as writer:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      allocating = pool.submit(writer.allocate)
      vocabs, vocab_meta = _vocabularies(counts.counters, options, hashed, build.threads)
      allocating.result()
    schema = fields.schema(lambda name: vocabs[name].vocab_size)
    encoder = fields.encoder(fmt, vocabs, counts.moments.result(), options)

    # Pass 2: encode and write.
    kept_split = np.where(keep, split_of, -1).astype(np.int8)
    truncated = passes.write_pass(build, writer, encoder, counts, kept_split, position,
                                  spill)
    for relpath, keys in fields.vocab_files(vocabs, vocab_meta).items():
      writer.save_array(relpath, keys)
    digests = [s.digest.result() for s in sources]  # the hash reads each file last.
    for source in sources:
      fmt.check_unchanged(source.info)
    meta = writer.commit(layout.store_facts(
        fmt, options, policy, dropped,
        [{"path": fmt.source_path(s.path), "split": s.split, "blake3": digest,
          "rows": s.rows, "header": s.layout.header} for s, digest in zip(sources, digests)],
        vocab_meta, encoder, truncated), schema=schema)
  build.log(f"wrote {build.output}: "
            + ", ".join(f"{s} {n:,}" for s, n in split_rows.items()))
  return meta, [int(np.count_nonzero(keep[s.offset:s.offset + s.rows])) for s in sources]
