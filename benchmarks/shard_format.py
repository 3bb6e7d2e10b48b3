"""Which file format a shard is: decode rates of W2-shaped rows, one process.

  python benchmarks/shard_format.py --rows 262144

Writes ``--rows`` W2-shaped rows (``benchmarks/pipeline.py``) once per layout and times
reading them back into batch arrays (key -> [n, *tail]) on this process's thread:

* Parquet, tensors as ``fixed_size_binary`` raw bytes (what ``shard_writer`` writes; read
  with and without ``pre_buffer``), as fixed-size lists, and as one column per element,
  row groups of 16,384 rows;
* ArrayRecord, one record per row (its tensors' bytes), read through
  ``grain.python.ArrayRecordDataSource`` in batches of 4,096 random keys (what Grain's
  index shuffle asks for) and decoded with one ``np.frombuffer`` per batch;
* Grain's ``ParquetIterDataset``: one Python dict per row.

With ``--s3 ENDPOINT`` (a running S3 server, e.g. moto) the fixed_size_binary shard is
also read from ``s3://bench/``. Prints one JSON object (rows/s).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pico_jax.data import sharded
from pico_jax.data.store import column_specs
from pico_jax.ingest import shard_writer

import pipeline as w2  # benchmarks/pipeline.py


def _rate(rows, fn, repeat=3) -> int:
  best = min(_timed(fn) for _ in range(repeat))
  return round(rows / best)


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", type=int, default=262_144)
  p.add_argument("--s3", help="HOST:PORT of an S3 server to read a shard from as well")
  args = p.parse_args()
  rng, n = np.random.default_rng(0), args.rows
  sparse, dense, click, conversion = w2._w2_block(rng, n)
  schema = w2.w2_schema()
  specs = column_specs(schema)
  block = {"sparse": sparse, "dense": dense, "click": click, "conversion": conversion,
           "group": np.arange(n, dtype=np.int32) // 20}
  tmp = tempfile.mkdtemp(prefix="shard_format_")
  result = {"rows": n}

  table = shard_writer.shard_table(block, np.arange(n), schema)
  shard_writer.write_shard(table, tmp, "fsb.parquet")

  def read_parquet(file, pre_buffer=True):
    f = pq.ParquetFile(file, pre_buffer=pre_buffer)
    for g in range(f.num_row_groups):
      sharded.read_row_group(f, g, specs)
  for pre_buffer in (True, False):
    result[f"parquet_fixed_size_binary_pre_buffer_{pre_buffer}"] = _rate(
        n, lambda: read_parquet(f"{tmp}/fsb.parquet", pre_buffer))

  def write_and_time(name, columns, decode):
    """rows/s of reading a Parquet file of ``columns`` back, each row group decoded."""
    pq.write_table(pa.table({**{k: pa.array(block[k]) for k in ("click", "conversion",
                                                                  "group")}, **columns}),
                   f"{tmp}/{name}.parquet", row_group_size=shard_writer.ROW_GROUP_ROWS,
                   compression="none", use_dictionary=False)

    def read():
      f = pq.ParquetFile(f"{tmp}/{name}.parquet")
      for g in range(f.num_row_groups):
        decode(f.read_row_group(g))
    return _rate(n, read)

  result["parquet_fixed_size_list"] = write_and_time(
      "lists", {"sparse": pa.FixedSizeListArray.from_arrays(pa.array(sparse.ravel()), 16),
                "dense": pa.FixedSizeListArray.from_arrays(pa.array(dense.ravel()), 63)},
      lambda t: [t.column(k).combine_chunks().flatten().to_numpy().reshape(-1, width)
                 for k, width in (("sparse", 16), ("dense", 63))])
  result["parquet_column_per_element"] = write_and_time(
      "flat", {**{f"sparse_{i}": sparse[:, i] for i in range(16)},
               **{f"dense_{i}": dense[:, i] for i in range(63)}},
      lambda t: [np.stack([t.column(f"{k}_{i}").to_numpy() for i in range(width)], 1)
                 for k, width in (("sparse", 16), ("dense", 63))])

  from array_record.python import array_record_module
  import grain.python as gp
  rows = np.concatenate([sparse.view(np.uint8), dense.view(np.uint8),
                         click.view(np.uint8).reshape(n, 4)], 1)
  writer = array_record_module.ArrayRecordWriter(f"{tmp}/rows.array_record", "group_size:1")
  for row in rows:
    writer.write(row.tobytes())
  writer.close()
  source = gp.ArrayRecordDataSource([f"{tmp}/rows.array_record"])

  def read_array_record():
    keys = np.random.default_rng(1).permutation(n)
    for start in range(0, n, 4096):
      records = source.__getitems__(keys[start:start + 4096].tolist())
      np.frombuffer(b"".join(records), np.uint8).reshape(len(records), -1)
  result["array_record_random_batches"] = _rate(n, read_array_record, repeat=1)

  from grain.experimental import ParquetIterDataset
  per_row = min(n, 65_536)

  def read_grain_parquet():
    for i, _ in zip(range(per_row), ParquetIterDataset(f"{tmp}/fsb.parquet")):
      pass
  result["grain_parquet_iter_dataset_per_row"] = _rate(per_row, read_grain_parquet, repeat=1)

  if args.s3:
    import pyarrow.fs as pafs
    pafs.S3FileSystem(endpoint_override=args.s3, scheme="http",
                      allow_bucket_creation=True).create_dir("bench")
    uri = f"s3://bench/x?endpoint_override={args.s3}&scheme=http"
    shard_writer.write_shard(table, uri, "fsb.parquet")
    fs, path = pafs.FileSystem.from_uri(f"s3://bench/x/fsb.parquet?endpoint_override="
                                        f"{args.s3}&scheme=http")
    for pre_buffer in (True, False):
      result[f"parquet_fixed_size_binary_s3_pre_buffer_{pre_buffer}"] = _rate(
          n, lambda: read_parquet(fs.open_input_file(path), pre_buffer))
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
