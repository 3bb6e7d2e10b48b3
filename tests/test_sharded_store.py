"""The sharded store: its format, the exactly-once streaming, time order, clear failures.

Training from it (resume, S3) is in test_sharded_training.py.
"""

import json
import os

import numpy as np
import pytest

from conftest import run_script
from pico_jax import batch as B
from pico_jax.data import integrity, sharded, store, stream, synthetic
from pico_jax.data.errors import DataError
from pico_jax.ingest import shard_writer

_ROW_ID = {sharded.ROW_ID: ((), np.dtype(np.int64))}


def write(path, data, num_shards, partitions=None, seed=0):
  meta = {"schema": data.schema.to_json(), "format": "synthetic",
          "task_relation": "entire_space"}
  return shard_writer.write_store(str(path), meta, data.splits, {}, num_shards=num_shards,
                                  partitions=partitions, seed=seed, overwrite=True)


@pytest.fixture(scope="module")
def data():
  return synthetic.generate(seed=0, num_rows=1_250, num_users=50, num_items=40)


def epoch_rows(split, process_index, process_count, *, order="shuffle", window=64,
               epoch=0, piece_rows=stream.PIECE_ROWS):
  pieces = stream.process_pieces([s.rows for s in split.shards],
                                 stream.groups_of(split, order), process_index,
                                 process_count, piece_rows)
  ds = stream.epoch_dataset(split, pieces, epoch=epoch, seed=3, order=order, window=window,
                            process_index=process_index, specs={**split.specs, **_ROW_ID})
  packets = list(ds)
  return np.concatenate([p[sharded.ROW_ID] for p in packets]) if packets else np.zeros(0, int)


def test_splits_read_back_in_row_order_with_checksums(tmp_path, data):
  meta = write(tmp_path / "s", data, num_shards=3)
  integrity.check_meta(meta, "meta")
  assert meta["store_version"] == 2 and meta["layout"] == "sharded"
  assert [s["rows"] for s in meta["splits"]["train"]["shards"]] == [333, 333, 334]
  loaded = store.load_store(str(tmp_path / "s"))
  assert loaded.num_rows("train") == 1_000 and loaded.schema == data.schema
  for split in ("train", "val", "test"):
    for key, column in data.splits[split].items():
      np.testing.assert_array_equal(loaded.splits[split][key], column, err_msg=key)
  # Inside a shard the rows are in a seeded order; row_id keeps their place.
  first = loaded.splits["train"].read_shard(loaded.splits["train"].shards[0],
                                            {**loaded.splits["train"].specs, **_ROW_ID})
  assert sorted(first[sharded.ROW_ID]) == list(range(333))
  assert list(first[sharded.ROW_ID]) != list(range(333))
  np.testing.assert_array_equal(first[B.DENSE],
                                data.splits["train"][B.DENSE][first[sharded.ROW_ID]])


@pytest.mark.parametrize("num_shards", [1, 2, 5, 7])
def test_every_row_once_per_epoch_whatever_the_process_and_shard_counts(
    tmp_path, data, num_shards):
  write(tmp_path / "s", data, num_shards=num_shards)
  split = store.load_store(str(tmp_path / "s")).splits["train"]
  for processes in (1, 2, 3):
    for epoch in (0, 1):
      rows = [epoch_rows(split, p, processes, epoch=epoch, piece_rows=150)
              for p in range(processes)]
      every = np.concatenate(rows)
      np.testing.assert_array_equal(np.sort(every), np.arange(1_000))
      assert max(map(len, rows)) - min(map(len, rows)) <= 1, (processes, num_shards)
  assert not np.array_equal(epoch_rows(split, 0, 1, epoch=0), epoch_rows(split, 0, 1, epoch=1))


def test_fewer_shards_than_processes_read_row_ranges(tmp_path, data):
  write(tmp_path / "s", data, num_shards=2)
  split = store.load_store(str(tmp_path / "s")).splits["train"]
  assert stream.process_pieces([s.rows for s in split.shards], [[0, 1]], 1, 3) == [
      stream.Piece(0, 333, 500), stream.Piece(1, 0, 166)]


def test_train_iterator_batches_every_row_of_an_epoch_before_the_next(tmp_path, data):
  write(tmp_path / "s", data, num_shards=3)
  split = store.load_store(str(tmp_path / "s")).splits["train"]
  it = stream.train_iterator(split, global_batch_size=100, num_batches=20, seed=3,
                             window=64, prefetch=0)
  batches = [next(it) for _ in range(20)]
  dense = np.concatenate([b[B.DENSE] for b in batches])
  keys = lambda rows: sorted(map(bytes, rows))
  assert keys(dense[:1_000]) == keys(data.splits["train"][B.DENSE])
  assert keys(dense[1_000:]) == keys(data.splits["train"][B.DENSE])
  assert all(b[B.MASK].shape == (100,) and b[B.MASK].all() for b in batches)


def test_time_order_reads_partitions_in_order(tmp_path, data):
  days = [("2026-01-01", 300), ("2026-01-02", 450), ("2026-01-03", 250)]
  meta = write(tmp_path / "s", data, num_shards=6, partitions={"train": days})
  assert [s["partition"] for s in meta["splits"]["train"]["shards"]] == [
      "2026-01-01"] * 2 + ["2026-01-02"] * 3 + ["2026-01-03"] * 2
  split = store.load_store(str(tmp_path / "s")).splits["train"]
  bounds = np.cumsum([0] + [n for _, n in days])
  for processes in (1, 2):
    rows = [epoch_rows(split, p, processes, order="time", window=32) for p in range(processes)]
    np.testing.assert_array_equal(np.sort(np.concatenate(rows)), np.arange(1_000))
    for part in rows:
      day = np.searchsorted(bounds, part, side="right") - 1
      assert list(day) == sorted(day)  # never a row of day d after one of day d + 1.
      assert len(set(day)) == 3


def test_a_changed_or_missing_shard_is_one_line_naming_it(tmp_path, data):
  write(tmp_path / "s", data, num_shards=3)
  shard = tmp_path / "s" / "train" / "part-00001.parquet"
  raw = bytearray(shard.read_bytes())
  raw[len(raw) // 2] ^= 1
  shard.write_bytes(bytes(raw))
  split = store.load_store(str(tmp_path / "s")).splits["train"]
  with pytest.raises(integrity.IntegrityError, match="part-00001.parquet: store file "
                     "changed since it was written"):
    epoch_rows(split, 0, 1)
  shard.unlink()
  split = store.load_store(str(tmp_path / "s")).splits["train"]
  with pytest.raises(integrity.IntegrityError, match="part-00001.parquet: missing store file"):
    split[B.CLICK]


def test_an_edited_meta_json_is_refused(tmp_path, data):
  write(tmp_path / "s", data, num_shards=2)
  path = tmp_path / "s" / "meta.json"
  meta = json.loads(path.read_text())
  meta["splits"]["train"]["shards"][0]["rows"] += 1
  path.write_text(json.dumps(meta))
  with pytest.raises(integrity.IntegrityError, match="meta.json was changed"):
    store.load_store(str(tmp_path / "s"))


def test_convert_cli_and_its_errors(tmp_path, data):
  from pico_jax.ingest.store_writer import StoreWriter
  v1 = str(tmp_path / "v1")
  rows = {s: len(c[B.CLICK]) for s, c in data.splits.items()}
  with StoreWriter(v1, data.schema, rows) as writer:
    for split, columns in data.splits.items():
      for key, column in columns.items():
        writer.columns[split][key][:] = column
    writer.commit({"format": "synthetic", "task_relation": "entire_space"})
  out = str(tmp_path / "v2")
  done = run_script("preprocess", f"--convert={v1}", f"--output={out}", "--num_shards=4")
  assert done.returncode == 0, done.stderr
  loaded = store.load_store(out)
  assert len(loaded.splits["train"].shards) == 4
  for key, column in data.splits["test"].items():
    np.testing.assert_array_equal(loaded.splits["test"][key], column)
  again = run_script("preprocess", f"--convert={v1}", f"--output={out}")
  assert again.returncode == 1 and again.stderr.strip().splitlines() == [
      f"error: {out} exists; pass --overwrite to replace it"]
  missing = run_script("preprocess", f"--convert={tmp_path / 'nothing'}", f"--output={out}2")
  assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
  assert "nothing" in missing.stderr and "error: " in missing.stderr
  twice = run_script("preprocess", f"--convert={out}", f"--output={out}3")
  assert twice.stderr.strip() == (f"error: {out}: not a columnar (version 1) store: "
                                  "nothing to convert")


def test_a_window_larger_than_an_epoch_still_yields_every_batch(tmp_path, data):
  write(tmp_path / "s", data, num_shards=2)
  split = store.load_store(str(tmp_path / "s")).splits["train"]
  it = stream.train_iterator(split, global_batch_size=100, num_batches=3, seed=0,
                             window=2_500, prefetch=0)
  assert [len(next(it)[B.CLICK]) for _ in range(3)] == [100] * 3


def test_a_resume_with_another_window_or_order_is_refused_and_verification_is_not():
  from pico_jax.train import checkpoint_compat
  from conftest import small_config
  saved = small_config().to_dict()
  for key, value in (("data.shuffle_window", 1024), ("data.order", "time")):
    assert [d.split(":")[0] for d in checkpoint_compat.data_order_differences(
        saved, small_config(**{key: value}).to_dict())] == [key]
  unverified = small_config(**{"data.verify_shards": False}).to_dict()
  assert checkpoint_compat.model_differences(saved, unverified) == []


def test_flags_that_seal_convert_or_a_local_build_would_ignore_are_one_line(tmp_path):
  """--convert without --output, and flags the chosen command has no use for, are
  refused in one line before anything is read or written."""
  refused = {
      (f"--convert={tmp_path / 'x'}",): "--convert needs --output",
      (f"--convert={tmp_path / 'x'}", "--runner=DirectRunner", f"--output={tmp_path / 'y'}"):
          "--convert rewrites a store here, on no Beam runner: leave out --runner",
      (f"--seal={tmp_path / 'x'}", "--format=census", f"--output={tmp_path / 'y'}"):
          "--seal adds checksums to the store DIR: leave out --format, --output",
      ("--format=census", f"--input={tmp_path / 'x'}", f"--output={tmp_path / 'y'}",
       "--beam_args=--num_workers=2"):
          "--beam_args are options of a Beam --runner: leave out --beam_args",
  }
  for args, message in refused.items():
    done = run_script("preprocess", *args)
    assert (done.returncode, done.stderr.strip()) == (1, f"error: {message}"), args
  assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("key,index,value,match", [
    (B.CLICK, (3,), 7.0, r"split 'train', column 'click', row 3: "),
    (B.SPARSE, (5, 1), -5, r"split 'train', column 'sparse' \(field '[^']+'\), row 5: "),
])
def test_impossible_values_are_refused_before_a_sharded_store_is_sealed(
    tmp_path, data, key, index, value, match):
  """The reader trusts a shard that matches its BLAKE3, so the writer checks values."""
  splits = {name: dict(columns) for name, columns in data.splits.items()}
  splits["train"][key] = bad = np.array(splits["train"][key])
  bad[index] = value
  meta = {"schema": data.schema.to_json(), "format": "synthetic",
          "task_relation": "entire_space"}
  with pytest.raises(DataError, match=match):
    shard_writer.write_store(str(tmp_path / "s"), meta, splits, {}, num_shards=2)
  assert not os.path.exists(tmp_path / "s")
