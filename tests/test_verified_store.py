"""A verified store: every column and vocabulary checked against the checksums recorded
when it was written, meta.json against its fingerprint, every value against what its
column may hold, all before any step uses the data; stores without checksums named as
such, with the command that seals them."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from conftest import run_script
from pico_jax.data import integrity, store
from pico_jax.data.errors import DataError
from pico_jax.ingest import preprocess, store_writer
from pico_jax.ingest.encode import Encoder
from pico_jax.ingest.table import TableRoles

SPARSE = tuple(f"f{i}" for i in range(8))
ROLES = TableRoles(click="click", conversion="conversion", sparse=SPARSE, dense=("x",))


def build(tmp_path, name="s", rows=60):
  """A small table store with 8 table vocabularies (vocab/000..007.npy)."""
  rng = np.random.default_rng(0)
  click = (rng.random(rows) < 0.5).astype(np.int64)
  columns = {"click": click, "conversion": click * (rng.random(rows) < 0.5),
             "x": rng.normal(size=rows)}
  columns.update({f: rng.integers(0, 6, rows) for f in SPARSE})
  csv = tmp_path / f"{name}.csv"
  pacsv.write_csv(pa.table(columns), csv)
  out = str(tmp_path / name)
  preprocess.build_store("table", [str(csv)], out,
                         options=preprocess.Options(table=ROLES))
  return out


def unseal(path):
  """The store as a version without checksums wrote it."""
  meta_path = os.path.join(path, store.META)
  meta = json.load(open(meta_path))
  meta.pop(integrity.FILES), meta.pop(integrity.FINGERPRINT)
  json.dump(meta, open(meta_path, "w"))


def edit_column(path, split, key, index, value):
  column = np.load(os.path.join(path, split, f"{key}.npy"), mmap_mode="r+")
  column[index] = value
  column.flush()
  del column


def test_the_writer_records_every_file(tmp_path):
  out = build(tmp_path)
  meta = json.load(open(os.path.join(out, store.META)))
  assert "train/click.npy" in meta["files"] and "vocab/006.npy" in meta["files"]
  assert len(meta["fingerprint"]) == 64
  ds = store.load_store(out)
  assert ds.info["meta"]["fingerprint"] == meta["fingerprint"]


def _flip_header(path):
  file = os.path.join(path, "train", "sparse.npy")
  data = bytearray(open(file, "rb").read())
  data[20] ^= 0x20  # inside the header's dict: 'descr' becomes another dtype text.
  open(file, "wb").write(bytes(data))
  return file


def _truncate(path):
  file = os.path.join(path, "val", "dense.npy")
  data = open(file, "rb").read()
  open(file, "wb").write(data[:-8])
  return file


def _meta_vocab_size(path):
  file = os.path.join(path, store.META)
  meta = json.load(open(file))
  meta["schema"]["sparse"][0]["vocab_size"] = 2
  json.dump(meta, open(file, "w"))
  return file


def _click(path):
  edit_column(path, "train", "click", 3, 7.0)
  return os.path.join(path, "train", "click.npy")


def _sparse(path):
  edit_column(path, "train", "sparse", (0, 1), -5)
  return os.path.join(path, "train", "sparse.npy")


def _vocab_key(path):
  file = os.path.join(path, "vocab", "006.npy")
  keys = np.load(file)
  keys[0] = 99
  np.save(file, keys)
  return file


@pytest.mark.parametrize("damage", [_flip_header, _truncate, _meta_vocab_size, _click,
                                    _sparse, _vocab_key])
def test_a_damaged_store_is_one_error_naming_the_file(tmp_path, damage):
  """Rows 2, 3 and 8 of the trust table: each damage is caught at load, before any
  step, and by the encoder that scoring loads, naming the file."""
  out = build(tmp_path)
  file = damage(out)
  with pytest.raises(DataError) as e:
    store.load_store(out)
  assert e.value.path == file and "\n" not in str(e.value)
  if damage in (_meta_vocab_size, _vocab_key):
    with pytest.raises(DataError) as e:
      Encoder.from_store(out)
    assert e.value.path == file


@pytest.mark.parametrize("key,index,value,expected", [
    ("click", 3, 7.0, r"split 'train', column 'click', row 3: label 7.0, not 0 or 1"),
    ("sparse", (0, 1), -5, r"split 'train', column 'sparse' \(field 'f1'\), row 0: id -5 "
     r"outside \[0, 7\)"),
    ("sparse", (4, 0), 10 ** 6, r"row 4: id 1000000 outside"),
    ("conversion", 2, 1.0, r"split 'val', column 'conversion', row 2: conversion without "
     r"click"),
    ("dense", (1, 0), np.inf, r"split 'test', column 'dense' \(field 'x'\), row 1: dense "
     r"value inf is not finite"),
])
def test_values_a_column_cannot_hold_name_split_column_and_row(tmp_path, key, index,
                                                                value, expected):
  """A store without checksums is sealed only once its values pass the load-time
  range checks: a bad value is one line naming split, column and row."""
  out = build(tmp_path)
  split = {"conversion": "val", "dense": "test"}.get(key, "train")
  if key == "conversion":
    click = np.load(os.path.join(out, split, "click.npy"))
    index = int(np.flatnonzero(click == 0)[0])
    expected = expected.replace("row 2", f"row {index}")
  unseal(out)
  edit_column(out, split, key, index, value)
  with pytest.raises(DataError, match=expected) as e:
    store_writer.seal_store(out)
  assert e.value.path == os.path.join(out, split, f"{key}.npy")
  assert "files" not in json.load(open(os.path.join(out, store.META)))


@pytest.mark.parametrize("damage", [_flip_header, _truncate])
def test_a_damaged_store_without_checksums_is_not_sealed(tmp_path, damage):
  out = build(tmp_path)
  unseal(out)
  file = damage(out)
  with pytest.raises(DataError) as e:
    store_writer.seal_store(out)
  assert e.value.path == file and "\n" not in str(e.value)


def test_a_store_without_checksums_is_named_with_the_command_that_seals_it(tmp_path):
  out = build(tmp_path)
  before = store.load_store(out).info["meta"]["fingerprint"]
  unseal(out)
  with pytest.raises(DataError, match=r"no checksums: the store was written before .*"
                     r"trust on first use.*launch/preprocess.py --seal=" + out):
    store.load_store(out)
  result = run_script("preprocess", f"--seal={out}")
  assert result.returncode == 0, result.stderr
  assert "checksums added" in result.stdout
  assert store.load_store(out).info["meta"]["fingerprint"] == before
  result = run_script("preprocess", f"--seal={out}")
  assert result.returncode == 0 and "verified" in result.stdout
  _click(out)
  result = run_script("preprocess", f"--seal={out}")
  assert result.returncode == 1 and result.stderr.count("\n") == 1
  assert result.stderr.startswith("error: ") and "train/click.npy" in result.stderr
  result = run_script("preprocess", f"--output={out}")
  assert result.returncode == 1
  assert result.stderr == "error: --format, --input required (or --seal=DIR)\n"


def test_training_on_a_changed_vocabulary_is_one_line_before_any_step(tmp_path):
  """Row 3 of the trust table, from the command line: a key changed in vocab/006.npy
  stops launch/train.py in one line naming the file, and no step runs."""
  out = build(tmp_path)
  file = _vocab_key(out)
  result = run_script("train", f"--workdir={tmp_path / 'run'}", "--config.data.name=store",
                      f"--config.data.path={out}", "--config.train.steps=2")
  assert result.returncode == 1, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: {file}: store file changed since it was written (BLAKE3 "
                    "differs from meta.json)"]
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
