"""Convert raw CTR/CVR files into a columnar store for training.

  python launch/preprocess.py --format=census --input=census-income.test.gz --output=DIR
  python launch/preprocess.py --format=aliexpress --input=train.csv,test.csv --output=DIR
  python launch/preprocess.py --format=table --input='logs/*.parquet' --output=DIR \
      --click=clicked --conversion=bought --sparse=user,item --multi=tags:'|' \
      --dense=price
  python launch/preprocess.py ... --num_shards=64 --output=s3://bucket/store  # sharded
  python launch/preprocess.py --convert=DIR --output=SHARDED_DIR  # columnar -> sharded
  python launch/preprocess.py --runner=DirectRunner --format=census \
      --input='logs/*.gz' --output=gs://BUCKET/census   # Apache Beam: a sharded store

Inputs: one file is split 80/10/10 by a seeded permutation (docs/data.md), two are
train and test (val carved from train by --val_fraction), three are train, val, test;
or name them SPLIT=PATH. Bad input stops with a message naming file, line and column,
and nothing is left at --output. Every byte is parsed once, by --workers threads;
parsed blocks wait for pass 2 in memory (up to --spill_memory_mb) or in temporary files
beside --output. The store records every file's BLAKE3 checksum; --seal=DIR adds them
to a store written before they existed. See pico_jax/ingest/preprocess.py.
"""

import shlex
import time

from absl import flags

from pico_jax import cli, dataclass_flags
from pico_jax.ingest import (distributed, formats, preprocess, shard_writer, store_writer,
                             table)

_FORMAT = flags.DEFINE_enum("format", None, sorted(formats.FORMATS), "The raw format.")
_INPUT = flags.DEFINE_list("input", None, "[SPLIT=]PATH,...: the raw files.")
_OUTPUT = flags.DEFINE_string("output", None, "Store to create: a directory, or with "
                              "--num_shards a URI (s3://bucket/dir, gs://...).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing store (only a "
                               "store or an empty directory is ever replaced).")
_SEAL = flags.DEFINE_string("seal", None, "Instead of a build: add checksums to the store "
                            "DIR written before stores had them, trusting its bytes as "
                            "they are now (trust on first use; its values are checked "
                            "first).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "Write a sharded store with this many "
                                   "Parquet shards per split (0: a columnar store).")
_CONVERT = flags.DEFINE_string("convert", None, "Instead of a build: rewrite the columnar "
                               "store DIR as a sharded one (--num_shards, default 16) at "
                               "--output.")
_RUNNER = flags.DEFINE_enum("runner", None, list(distributed.RUNNERS), "Build a sharded "
                            "store with Apache Beam on this runner (pip install -e '.[beam]'; "
                            "one shard per block and split; --workers, --processes and "
                            "--spill_memory_mb are then the runner's concern).")
_BEAM_ARGS = flags.DEFINE_string("beam_args", "", "--runner: the runner's own options, "
                                 "e.g. '--project=P --region=R --temp_location=gs://B/t'.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bars (rows/s, ETA) on stderr.")
# One flag per build option and per column role (the fields' help is theirs).
_OPTIONS = dataclass_flags.Fields(preprocess.Options, exclude=("table", "values"))
_VALUES = dataclass_flags.Fields(table.ValuePolicy, help_prefix="--format=table: ")
_ROLES = dataclass_flags.Fields(table.TableRoles, exclude=("sparse", "dense"),
                                help_prefix="--format=table: ")
_TABLE_SCHEMA = flags.DEFINE_string(
    "table_schema", None, "--format=table: a JSON file of the column roles ({\"click\": "
    "..., \"conversion\": ..., \"sparse\": [...], \"multi\": {COLUMN: SEPARATOR}, "
    "\"dense\": [...]}) instead of the role flags.")


def _table_roles(sparse, dense) -> table.TableRoles | None:
  """The column roles of --format=table, from --table_schema or the role flags."""
  given = _ROLES.values()
  roles = {name: value for name, value in given.items() if value}
  role_flags = ", ".join(f"--{name}" for name in given)
  if _FORMAT.value != "table":
    if roles or _TABLE_SCHEMA.value:
      raise cli.FlagError(f"{role_flags} and --table_schema declare the columns of "
                          "--format=table only")
    return None
  if _TABLE_SCHEMA.value:
    if roles:
      raise cli.FlagError(f"--table_schema and the role flags ({role_flags}): give one "
                          "of them")
    return table.TableRoles.from_file(_TABLE_SCHEMA.value)
  if not {"click", "conversion"} <= set(roles):
    raise cli.FlagError("--format=table needs --click and --conversion (or "
                        "--table_schema)")
  return table.TableRoles(**roles, sparse=sparse or (), dense=dense or ())


def options() -> preprocess.Options:
  """The build options the flags give (raises OptionError for one out of range)."""
  values = _OPTIONS.values()
  return preprocess.Options(**values, table=_table_roles(values["sparse"],
                                                         values["dense"]),
                            values=table.ValuePolicy(**_VALUES.values()))


def _seal(path: str):
  meta, sealed = store_writer.seal_store(path)
  print(f"{path}: " + ("checksums added (trusted as it is now)" if sealed else "has "
        "checksums already; verified") + f"; fingerprint {meta['fingerprint']}")


def _beam_build(log) -> dict:
  cli.refuse_flags(("num_shards",), "--runner writes a shard per block and split")
  try:
    from pico_jax.ingest import beam_pipeline
  except ImportError as e:
    raise cli.FlagError(f"--runner needs apache-beam ({e}): pip install -e '.[beam]'")
  return beam_pipeline.build_store(
      _FORMAT.value, _INPUT.value, _OUTPUT.value, options=options(), log=log,
      overwrite=_OVERWRITE.value, runner=_RUNNER.value, pipeline_args=shlex.split(_BEAM_ARGS.value))


_BUILD_FLAGS = ("format", "input", "runner", "beam_args")  # not for --seal, --convert


def main():
  if _SEAL.value:
    cli.refuse_flags(_BUILD_FLAGS + ("output", "convert", "num_shards", "overwrite"),
                     "--seal adds checksums to the store DIR")
    return _seal(_SEAL.value)
  if not _RUNNER.value:
    cli.refuse_flags(("beam_args",), "--beam_args are options of a Beam --runner")
  start, log = time.perf_counter(), lambda msg: print(msg, flush=True)
  try:
    if _CONVERT.value:
      cli.refuse_flags(_BUILD_FLAGS, "--convert rewrites a store here, on no Beam runner")
      if _OUTPUT.value is None:
        raise cli.FlagError("--convert needs --output")
      shard_writer.convert(_CONVERT.value, _OUTPUT.value, seed=options().seed, log=log,
                           num_shards=_NUM_SHARDS.value or 16, overwrite=_OVERWRITE.value)
      return print(f"wrote {_OUTPUT.value} in {time.perf_counter() - start:.1f}s")
    missing = [f"--{f.name}" for f in (_FORMAT, _INPUT, _OUTPUT) if f.value is None]
    if missing:
      raise cli.FlagError(f"{', '.join(missing)} required (or --seal=DIR)")
    if _RUNNER.value:
      meta = _beam_build(log)
    else:
      meta = preprocess.build_store(_FORMAT.value, _INPUT.value, _OUTPUT.value,
                                    options=options(), overwrite=_OVERWRITE.value, log=log,
                                    progress=_PROGRESS.value, num_shards=_NUM_SHARDS.value)
  except preprocess.OptionError as e:  # out of range, or not for this format.
    fields = _VALUES if e.field in table.ValuePolicy.__dataclass_fields__ else _OPTIONS
    raise fields.error(e.field, e.what) from None
  rows = sum(s["rows"] for s in meta["sources"])
  elapsed = time.perf_counter() - start
  dropped = sum(s["dropped_conversion_without_click"] for s in meta["splits"].values())
  print(f"{rows:,} rows in {elapsed:.1f}s ({rows / elapsed:,.0f} rows/s); "
        f"task relation {meta['task_relation']}; dropped (conversion without click): "
        f"{dropped}; truncated multi-valued rows: {meta['multi_truncated_rows']}")


if __name__ == "__main__":
  cli.run(main)
