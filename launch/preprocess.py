"""Convert raw CTR/CVR files into a columnar store for training.

  python launch/preprocess.py --format=census \
      --input=../shared/data/census-income-kdd/census-income.test.gz --output=data/census
  python launch/preprocess.py --format=aliexpress --input=train.csv,test.csv --output=DIR
  python launch/preprocess.py --format=table --input='logs/*.parquet' --output=DIR \
      --click=clicked --conversion=bought --sparse=user,item --multi=tags:'|' \
      --dense=price
  python launch/preprocess.py --format=aliccp_aitm --output=DIR \
      --input=train=ctr_cvr.train,val=ctr_cvr.dev,test=ctr_cvr.test \
      --conversion_without_click=drop

Inputs: one file is split 80/10/10 by a seeded permutation (docs/data.md), two are
train and test (val carved from train by --val_fraction), three are train, val, test;
or name them SPLIT=PATH. Bad input stops with a message naming file, line and column,
and nothing is left at --output. Every byte is parsed once, by --workers threads;
the parsed blocks wait for the second pass in memory (up to --spill_memory_mb) or in
temporary files beside --output; progress bars show rows/s and the time left. See
pico_jax/ingest/preprocess.py.
"""

import time

from absl import flags

from pico_jax import cli
from pico_jax.ingest import formats, preprocess, table

_FORMAT = flags.DEFINE_enum("format", None, sorted(formats.FORMATS), "The raw format.",
                            required=True)
_INPUT = flags.DEFINE_list("input", None, "[SPLIT=]PATH,...: the raw files.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Store directory to create.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing store.")
_MIN_COUNT = flags.DEFINE_integer("min_count", 1, "Training-split count below which a "
                                  "value maps to id 0.")
_HASH = flags.DEFINE_list("hash", [], "FIELD=BUCKETS,...: hash these fields into a fixed "
                          "number of buckets.")
_MAX_VOCAB = flags.DEFINE_integer("max_vocab", 0, "Hash any field keeping more values "
                                  "than this into that many buckets.")
_MULTI_MAX_LEN = flags.DEFINE_integer("multi_max_len", 64, "Padded length of multi-valued "
                                      "fields (longer lists are truncated).")
_MULTI_FIELDS = flags.DEFINE_list("multi_fields", [], "key:value fields to store as "
                                  "multi-valued.")
_POLICY = flags.DEFINE_enum("conversion_without_click", None, list(preprocess.POLICIES),
                            "Rows with conversion=1, click=0: error, drop (counted) or keep "
                            "(default: the format's policy; census keeps, the others error).")
_DENSE_TRANSFORM = flags.DEFINE_enum("dense_transform", "standardize",
                                     ["standardize", "none"], "Dense feature transform.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the split permutation.")
_SPLIT_FRACTIONS = flags.DEFINE_list("split_fractions", ["0.8", "0.1", "0.1"],
                                     "train,val,test fractions when one input is given.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.1, "Part of the train file used as "
                                   "val when train and test are given.")
_SPARSE = flags.DEFINE_list("sparse", None, "Categorical columns (replaces the format's "
                            "default).")
_DENSE = flags.DEFINE_list("dense", None, "Dense columns (replaces the format's default).")
_CLICK = flags.DEFINE_string("click", None, "--format=table: the click label column.")
_CONVERSION = flags.DEFINE_string("conversion", None, "--format=table: the conversion "
                                  "label column.")
_GROUP = flags.DEFINE_string("group", None, "--format=table: the group key column "
                             "(GAUC; an integer below 2**31).")
_ID = flags.DEFINE_string("id", None, "--format=table: the id column written beside "
                          "predictions.")
_MULTI = flags.DEFINE_list("multi", [], "--format=table: COLUMN:SEPARATOR,...: "
                           "multi-valued columns (a list column takes any separator).")
_TABLE_SCHEMA = flags.DEFINE_string("table_schema", None, "--format=table: a JSON file "
                                    "of the column roles ({\"click\": ..., "
                                    "\"conversion\": ..., \"sparse\": [...], \"multi\": "
                                    "{COLUMN: SEPARATOR}, \"dense\": [...]}) instead of the "
                                    "role flags.")
_CHUNK_ROWS = flags.DEFINE_integer("chunk_rows", 65_536, "Lines per block (the unit of "
                                   "parallel work).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bars (rows/s, ETA) on stderr.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Blocks parsed and written in parallel, by "
                                "threads of this process (0: one per CPU, never more than "
                                "the CPUs or the blocks).")
_PROCESSES = flags.DEFINE_bool("processes", False, "The workers are processes instead of "
                               "threads (one per idle CPU, at most one per 16 MiB of input).")
_SPILL_MEMORY_MB = flags.DEFINE_integer(
    "spill_memory_mb", preprocess.Options.spill_memory >> 20,
    "MiB of parsed blocks held in memory between the two passes; the blocks beyond it "
    "are spilled to temporary files beside --output (0: every block; worker processes "
    "always spill to files).")


def _hash_buckets(items) -> tuple[tuple[str, int], ...]:
  out = []
  for item in items:
    name, sep, buckets = item.rpartition("=")
    if not sep or not buckets.isdigit():
      raise cli.FlagError(f"--hash {item!r}: expected FIELD=BUCKETS")
    out.append((name, int(buckets)))
  return tuple(out)


def _table_roles() -> table.TableRoles | None:
  """The column roles of --format=table, from --table_schema or the role flags."""
  role_flags = (_CLICK.value, _CONVERSION.value, _GROUP.value, _ID.value, _MULTI.value)
  if _FORMAT.value != "table":
    if any(role_flags) or _TABLE_SCHEMA.value:
      raise cli.FlagError("--click, --conversion, --group, --id, --multi and "
                          "--table_schema declare the columns of --format=table only")
    return None
  if _TABLE_SCHEMA.value:
    if any(role_flags):
      raise cli.FlagError("--table_schema and the role flags: give one of them")
    return table.TableRoles.from_file(_TABLE_SCHEMA.value)
  if not (_CLICK.value and _CONVERSION.value):
    raise cli.FlagError("--format=table needs --click and --conversion (or "
                        "--table_schema)")
  multi = []
  for item in _MULTI.value:
    column, sep, separator = item.partition(":")
    if not sep or not separator:
      raise cli.FlagError(f"--multi {item!r}: expected COLUMN:SEPARATOR")
    multi.append((column, separator))
  return table.TableRoles(click=_CLICK.value, conversion=_CONVERSION.value,
                          group=_GROUP.value, id=_ID.value,
                          sparse=tuple(_SPARSE.value or ()), multi=tuple(multi),
                          dense=tuple(_DENSE.value or ()))


def options() -> preprocess.Options:
  """The build options the flags give."""
  try:
    fractions = tuple(float(x) for x in _SPLIT_FRACTIONS.value)
  except ValueError:
    raise cli.FlagError(f"--split_fractions={','.join(_SPLIT_FRACTIONS.value)}: expected "
                        "TRAIN,VAL,TEST") from None
  names = lambda values: None if values is None else tuple(values)
  return preprocess.Options(
      min_count=_MIN_COUNT.value, hash_buckets=_hash_buckets(_HASH.value),
      max_vocab=_MAX_VOCAB.value, multi_max_len=_MULTI_MAX_LEN.value,
      multi_fields=tuple(_MULTI_FIELDS.value), policy=_POLICY.value,
      dense_transform=_DENSE_TRANSFORM.value, seed=_SEED.value, split_fractions=fractions,
      val_fraction=_VAL_FRACTION.value, chunk_rows=_CHUNK_ROWS.value,
      workers=_WORKERS.value, processes=_PROCESSES.value,
      spill_memory=_SPILL_MEMORY_MB.value << 20, sparse=names(_SPARSE.value),
      dense=names(_DENSE.value), table=_table_roles())


def main():
  start = time.perf_counter()
  meta = preprocess.build_store(_FORMAT.value, _INPUT.value, _OUTPUT.value,
                                options=options(), overwrite=_OVERWRITE.value,
                                log=lambda msg: print(msg, flush=True),
                                progress=_PROGRESS.value)
  rows = sum(s["rows"] for s in meta["sources"])
  elapsed = time.perf_counter() - start
  dropped = sum(s["dropped_conversion_without_click"] for s in meta["splits"].values())
  print(f"{rows:,} rows in {elapsed:.1f}s ({rows / elapsed:,.0f} rows/s); "
        f"task relation {meta['task_relation']}; dropped (conversion without click): "
        f"{dropped}; truncated multi-valued rows: {meta['multi_truncated_rows']}")


if __name__ == "__main__":
  cli.run(main)
