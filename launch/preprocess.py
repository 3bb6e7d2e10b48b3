"""Convert raw CTR/CVR files into a columnar store for training.

  python launch/preprocess.py --format census \
      --input ../shared/data/census-income-kdd/census-income.test.gz --output data/census
  python launch/preprocess.py --format aliexpress --input train.csv test.csv --output DIR
  python launch/preprocess.py --format aliccp_aitm --input train=ctr_cvr.train \
      val=ctr_cvr.dev test=ctr_cvr.test --output DIR --conversion-without-click drop

Inputs: one file is split 80/10/10 by a seeded permutation (docs/data.md), two are
train and test (val carved from train by --val-fraction), three are train, val, test;
or name them SPLIT=PATH. Bad input stops with a message naming file, line and column,
and nothing is left at --output. Every byte is parsed once, by --workers threads;
the parsed blocks wait for the second pass in memory (up to --spill-memory-mb) or in
temporary files beside --output; progress bars show rows/s and the time left. See
pico_jax/data/preprocess.py.
"""

import argparse
import sys
import time

from pico_jax.data import formats, preprocess
from pico_jax.data.errors import DataError


def _names(text):
  return None if text is None else tuple(n for n in text.split(",") if n)


def _hash(parser, items):
  out = []
  for item in items:
    name, sep, buckets = item.rpartition("=")
    if not sep or not buckets.isdigit():
      parser.error(f"--hash {item!r}: expected FIELD=BUCKETS")
    out.append((name, int(buckets)))
  return tuple(out)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--format", required=True, choices=sorted(formats.FORMATS))
  p.add_argument("--input", required=True, nargs="+", metavar="[SPLIT=]PATH")
  p.add_argument("--output", required=True, help="store directory to create")
  p.add_argument("--overwrite", action="store_true", help="replace an existing store")
  p.add_argument("--min-count", type=int, default=1,
                 help="training-split count below which a value maps to id 0")
  p.add_argument("--hash", nargs="*", default=[], metavar="FIELD=BUCKETS",
                 help="hash these fields into a fixed number of buckets")
  p.add_argument("--max-vocab", type=int, default=0,
                 help="hash any field keeping more values than this into that many buckets")
  p.add_argument("--multi-max-len", type=int, default=64,
                 help="padded length of multi-valued fields (longer lists are truncated)")
  p.add_argument("--multi-fields", default="",
                 help="comma-separated key:value fields to store as multi-valued")
  p.add_argument("--conversion-without-click", choices=preprocess.POLICIES, default=None,
                 help="rows with conversion=1, click=0: error, drop (counted) or keep "
                      "(default: the format's policy; census keeps, the others error)")
  p.add_argument("--dense-transform", choices=("standardize", "none"),
                 default="standardize")
  p.add_argument("--seed", type=int, default=0, help="seed of the split permutation")
  p.add_argument("--split-fractions", default="0.8,0.1,0.1",
                 help="train,val,test fractions when one input is given")
  p.add_argument("--val-fraction", type=float, default=0.1,
                 help="part of the train file used as val when train and test are given")
  p.add_argument("--sparse", default=None, help="comma-separated categorical columns "
                 "(replaces the format's default)")
  p.add_argument("--dense", default=None, help="comma-separated dense columns "
                 "(replaces the format's default)")
  p.add_argument("--chunk-rows", type=int, default=65_536,
                 help="lines per block (the unit of parallel work)")
  p.add_argument("--no-progress", action="store_true",
                 help="no progress bars (rows/s, ETA) on stderr")
  p.add_argument("--workers", type=int, default=0,
                 help="blocks parsed and written in parallel, by threads of this "
                      "process (default 0: one per CPU, os.cpu_count(); never more "
                      "than the CPUs or the blocks)")
  p.add_argument("--processes", action="store_true",
                 help="the workers are processes instead of threads (by default one "
                      "per idle CPU, os.cpu_count() less the load average, and at "
                      "most one per 16 MiB of input)")
  p.add_argument("--spill-memory-mb", type=int,
                 default=preprocess.Options.spill_memory >> 20,
                 help="MiB of parsed blocks held in memory between the two passes; the "
                      "blocks beyond it are spilled to temporary files beside --output "
                      "(0: every block; worker processes always spill to files)")
  args = p.parse_args(argv)
  try:
    fractions = tuple(float(x) for x in args.split_fractions.split(","))
  except ValueError:
    p.error(f"--split-fractions {args.split_fractions!r}: expected TRAIN,VAL,TEST")
  options = preprocess.Options(
      min_count=args.min_count, hash_buckets=_hash(p, args.hash), max_vocab=args.max_vocab,
      multi_max_len=args.multi_max_len, multi_fields=_names(args.multi_fields),
      policy=args.conversion_without_click, dense_transform=args.dense_transform,
      seed=args.seed,
      split_fractions=fractions,
      val_fraction=args.val_fraction, chunk_rows=args.chunk_rows, workers=args.workers,
      processes=args.processes, spill_memory=args.spill_memory_mb << 20,
      sparse=_names(args.sparse), dense=_names(args.dense))
  return args, options


def main(argv=None):
  args, options = parse_args(argv)
  start = time.perf_counter()
  try:
    meta = preprocess.build_store(args.format, args.input, args.output, options=options,
                                  overwrite=args.overwrite,
                                  log=lambda msg: print(msg, flush=True),
                                  progress=not args.no_progress)
  except (DataError, ValueError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  rows = sum(s["rows"] for s in meta["sources"])
  elapsed = time.perf_counter() - start
  dropped = sum(s["dropped_conversion_without_click"] for s in meta["splits"].values())
  print(f"{rows:,} rows in {elapsed:.1f}s ({rows / elapsed:,.0f} rows/s); "
        f"task relation {meta['task_relation']}; dropped (conversion without click): "
        f"{dropped}; truncated multi-valued rows: {meta['multi_truncated_rows']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
