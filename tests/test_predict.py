"""pico_jax.predict (launch/predict.py): raw rows scored with the run's vocabularies agree with
pico_jax.train.restore.evaluate on the same rows (checkpoint and exported artifact), labels are
optional, and bad rows fail with file/line/column, leaving nothing at --output."""

import csv
import gzip
import os
import re

import numpy as np
import pytest

from conftest import run_script, small_config
from pico_jax import predict
from pico_jax.ingest import preprocess
from pico_jax.train.restore import evaluate
from shared_data import ALIEXPRESS, needs_data

TRAIN = os.path.join(ALIEXPRESS, "fuxictr-tiny_mtl", "train.csv")
TEST = os.path.join(ALIEXPRESS, "fuxictr-tiny_mtl", "test.csv")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A few checkpointed training steps on a store of the AliExpress sample (its test
  split is test.csv, in file order)."""
  tmp = tmp_path_factory.mktemp("predict")
  store_dir = str(tmp / "store")
  preprocess.build_store("aliexpress", [TRAIN, TEST], store_dir,
                         options=preprocess.Options(min_count=2))
  config = small_config(**{"data.name": "store", "data.path": store_dir,
                           "checkpoint.enabled": True, "checkpoint.every_steps": 4,
                           "train.steps": 4, "train.eval_every": 4, "train.log_every": 4,
                           "train.eval_batch_size": 64})
  workdir = str(tmp / "run")
  from pico_jax.train.loop import train_and_evaluate
  train_and_evaluate(config, workdir)
  return workdir, tmp


@needs_data
@pytest.mark.parametrize("fmt,inputs,options", [
    ("aliexpress", (TRAIN, TEST), {"min_count": 2}),
    ("aliccp_raw", ("paddlerec-esmm-sample/train_small.txt",
                    "paddlerec-esmm-sample/test_small.txt"), {"multi_max_len": 8}),
])
def test_encoder_from_store_reproduces_the_store(tmp_path, fmt, inputs, options):
  """Raw test rows encoded by the store's saved encoder are the store's test split,
  array for array (the test file is the test split, in file order)."""
  from pico_jax.ingest.encode import Encoder
  from shared_data import ALICCP
  inputs = [p if os.path.isabs(p) else os.path.join(ALICCP, p) for p in inputs]
  preprocess.build_store(fmt, inputs, str(tmp_path / "s"),
                         options=preprocess.Options(**options))
  encoder, reader, _ = Encoder.from_store(str(tmp_path / "s"))
  layout = reader.open_input(inputs[1], labels_optional=True)
  parsed = [reader.parse_block(inputs[1], data, block.first_line, layout)
            for block, data in reader.stream(inputs[1], layout, 7) if block]
  assert_is_the_test_split([encoder.encode(chunk, inputs[1])[0] for chunk in parsed],
                           str(tmp_path / "s"))


def assert_is_the_test_split(encoded, store_dir, labels=True):
  """The encoded blocks, concatenated, are the store's test split, array for array."""
  from pico_jax.data import store
  want = store.load_store(store_dir).splits["test"]
  if not labels:
    want = {k: v for k, v in want.items() if k not in ("click", "conversion")}
  assert set(encoded[0]) == set(want)
  for key, column in want.items():
    np.testing.assert_array_equal(np.concatenate([e[key] for e in encoded]), column,
                                  err_msg=key)


def _read(path):
  with open(path) as f:
    rows = list(csv.reader(f))
  return rows[0], np.array(rows[1:], dtype=object)


@needs_data
def test_scores_agree_with_evaluate(run):
  workdir, tmp = run
  out = str(tmp / "preds.csv")
  done = run_script("predict", f"--workdir={workdir}", "--checkpoint=latest",
                    f"--input={TEST}", "--format=aliexpress", f"--output={out}",
                    "--noprogress")
  assert done.returncode == 0, done.stderr
  printed = done.stdout
  assert "100 rows scored" in printed and "mapped to id 0" in printed
  header, rows = _read(out)
  assert header == ["search_id", "p_ctr", "p_cvr", "p_ctcvr"]
  raw = np.loadtxt(TEST, delimiter=",", skiprows=1)
  np.testing.assert_array_equal(rows[:, 0].astype(np.int64), raw[:, 0].astype(np.int64))

  # The same rows, scored as launch/evaluate.py scores the store's test split.
  from pico_jax.train.restore import restore
  trainer = restore(workdir, "latest")
  want = trainer.predict("test")
  for j, key in enumerate(("p_ctr", "p_cvr", "p_ctcvr"), start=1):
    np.testing.assert_allclose(rows[:, j].astype(np.float64), want[key], rtol=0,
                               atol=1e-6, err_msg=key)
  store_dir = trainer.config.data.path
  summary = predict.predict_files(
      predict.checkpoint_scorer(workdir, "latest")[0], store_dir, [TEST],
      str(tmp / "again.csv"), log=lambda m: None)
  metrics = evaluate(workdir, "test", "latest")
  for key, value in summary["metrics"].items():  # NaN where a task has one class.
    np.testing.assert_allclose(value, metrics[key], rtol=0, atol=1e-6, err_msg=key)
  # min_count=2 leaves rare test values unseen: they are counted, per field.
  assert sum(summary["id0"].values()) > 0
  assert set(summary["id0"]) == {f"categorical_{i}" for i in range(1, 17)}

  # Labels are optional: the same file without them scores the same, no metrics; so
  # does a gzip copy, after it (one output row per input row, inputs in order).
  unlabeled = tmp / "unlabeled.csv"
  with open(TEST) as f, open(unlabeled, "w") as g:
    g.writelines(",".join(line.rstrip("\n").split(",")[:-2]) + "\n" for line in f)
  packed = tmp / "unlabeled.csv.gz"
  packed.write_bytes(gzip.compress(unlabeled.read_bytes()))
  summary = predict.predict_files(
      predict.checkpoint_scorer(workdir, "latest")[0], store_dir,
      [str(unlabeled), str(packed)], str(tmp / "unlabeled_preds.csv"), chunk_rows=30)
  assert summary["metrics"] is None and summary["rows"] == 200
  np.testing.assert_array_equal(_read(str(tmp / "unlabeled_preds.csv"))[1],
                                np.concatenate([rows, rows]))

  # An exported artifact scores the same rows the same way.
  from pico_jax import export
  artifact = str(tmp / "artifact")
  export.export_model(trainer.model, trainer.state.params, trainer.schema, artifact,
                      platforms=("cpu",), step=trainer.resumed_step, config=trainer.config)
  out2 = str(tmp / "artifact_preds.csv")
  predict.predict_files(predict.artifact_scorer(artifact, 32)[0], store_dir, [TEST], out2)
  _, rows2 = _read(out2)
  np.testing.assert_allclose(rows2[:, 1:].astype(np.float64),
                             rows[:, 1:].astype(np.float64), rtol=0, atol=1e-6)


@needs_data
def test_bad_rows_name_file_line_column(run, tmp_path):
  workdir, _ = run
  lines = open(TEST).read().splitlines()
  tokens = lines[7].split(",")
  tokens[20] = "oops"
  lines[7] = ",".join(tokens)
  bad = tmp_path / "bad.csv"
  bad.write_text("\n".join(lines) + "\n")
  out = tmp_path / "preds.csv"
  done = run_script("predict", f"--workdir={workdir}", f"--input={bad}",
                    f"--output={out}", "--noprogress")
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == (  # one line, no traceback.
      f"error: {bad}:8: column 21 ('numerical_4'): non-numeric value 'oops'")
  assert sorted(os.listdir(tmp_path)) == ["bad.csv"]  # no output, no temporary file.


@needs_data
def test_a_format_or_artifact_that_does_not_match_the_store_is_one_line(run, tmp_path):
  """--format other than the store's, and an artifact whose manifest names no store:
  a DataError each, which the CLI prints as one line."""
  from pico_jax import export
  from pico_jax.data.errors import DataError
  from pico_jax.train.restore import restore
  workdir, _ = run
  out = tmp_path / "preds.csv"
  score, store_dir = predict.checkpoint_scorer(workdir, "latest")
  with pytest.raises(DataError, match=re.escape(
      f"--format census: the run's store was built from format aliexpress ({store_dir})")):
    predict.predict_files(score, store_dir, [TEST], str(out), fmt_name="census")
  done = run_script("predict", f"--workdir={workdir}", f"--input={TEST}",
                    f"--output={out}", "--format=census", "--noprogress")
  assert done.returncode == 1
  assert "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines()[-1] == (
      f"error: --format census: the run's store was built from format aliexpress "
      f"({store_dir}); leave --format out or give aliexpress")
  assert not out.exists()
  trainer = restore(workdir, "latest")
  artifact = str(tmp_path / "artifact")
  export.export_model(trainer.model, trainer.state.params, trainer.schema, artifact,
                      platforms=("cpu",), config=None)
  with pytest.raises(DataError, match="names no training store") as e:
    predict.artifact_scorer(artifact, 32)
  assert e.value.path == os.path.join(artifact, "manifest.json")


def _zeros(columns):
  n = len(next(iter(columns.values())))
  return {k: np.zeros(n, np.float32) for k in predict.OUTPUTS}


@needs_data
@pytest.mark.parametrize("content,message", [
    ("header", "no data rows after the header"),
    ("search_id", "group key 2147483648 does not fit int32"),
])
def test_predict_rejects_what_preprocess_rejects(tmp_path, content, message):
  """One validation for both: a header-only file and a search_id (the group key, an
  int32 column of the store) at 2**31 are errors in preprocess and predict alike."""
  from pico_jax.data.errors import DataError
  with open(TEST) as f:
    header, first = f.readline(), f.readline()
  bad = tmp_path / "bad.csv"
  if content == "header":
    bad.write_text(header)
  else:
    bad.write_text(header + str(2 ** 31) + first[first.index(","):])
  store_dir = str(tmp_path / "store")
  preprocess.build_store("aliexpress", [TRAIN, TEST], store_dir)
  with pytest.raises(DataError, match=message) as e:
    preprocess.build_store("aliexpress", [TRAIN, str(bad)], str(tmp_path / "other"))
  want = (e.value.path, e.value.line)
  with pytest.raises(DataError, match=message) as e:
    predict.predict_files(_zeros, store_dir, [str(bad)], str(tmp_path / "out.csv"),
                          log=lambda msg: None)
  assert (e.value.path, e.value.line) == want
  assert not os.path.exists(tmp_path / "out.csv")


@needs_data
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_table_store_scores_its_csv_or_parquet_rows(tmp_path, kind):
  """Format table (CSV or Parquet inputs): predict encodes the test file's rows as the
  store holds them (what the model is given is the store's test split), writes the
  declared id column and takes the file without its label columns too."""
  import pyarrow.csv as pacsv
  import pyarrow.parquet as pq
  from test_table_format import ROLES, SAMPLE, to_parquet
  inputs = [SAMPLE.format("train"), SAMPLE.format("test")]
  if kind == "parquet":
    inputs = [to_parquet(p, tmp_path / f"{i}.parquet", 7) for i, p in enumerate(inputs)]
  store_dir = str(tmp_path / "store")
  preprocess.build_store("table", inputs, store_dir,
                         options=preprocess.Options(table=ROLES, chunk_rows=8))
  given = []
  score = lambda columns: given.append(columns) or _zeros(columns)
  summary = predict.predict_files(score, store_dir, [inputs[1]], str(tmp_path / "p.csv"),
                                  chunk_rows=8, log=lambda msg: None)
  assert_is_the_test_split(given, store_dir)
  header, rows = _read(str(tmp_path / "p.csv"))
  raw = np.loadtxt(SAMPLE.format("test"), delimiter=",", skiprows=1)
  assert header == ["search_id", "p_ctr", "p_cvr", "p_ctcvr"]
  np.testing.assert_array_equal(rows[:, 0].astype(np.int64), raw[:, 0].astype(np.int64))
  assert summary["rows"] == len(raw) and summary["metrics"] is not None

  table = pacsv.read_csv(SAMPLE.format("test")).drop_columns(["click", "conversion"])
  unlabeled = str(tmp_path / f"unlabeled.{kind}")
  (pq.write_table if kind == "parquet" else pacsv.write_csv)(table, unlabeled)
  given.clear()
  summary = predict.predict_files(score, store_dir, [unlabeled], str(tmp_path / "q.csv"),
                                  chunk_rows=8, log=lambda msg: None)
  assert_is_the_test_split(given, store_dir, labels=False)
  assert summary["metrics"] is None
  np.testing.assert_array_equal(_read(str(tmp_path / "q.csv"))[1], rows)


def test_a_store_without_vocabularies_is_a_located_error(tmp_path):
  """A store not built from raw files (here a synthetic one) cannot encode raw rows:
  one DataError naming it."""
  from pico_jax.data.errors import DataError
  from pico_jax.data.schema import Schema, SparseField
  from pico_jax.ingest.store_writer import StoreWriter
  sizes = {"train": 2, "val": 1, "test": 1}
  with StoreWriter(str(tmp_path / "s"), Schema(sparse=(SparseField("a", 3),)),
                   sizes) as writer:
    writer.commit({"format": "synthetic"})
  with pytest.raises(DataError, match="not built from raw files") as e:
    predict.predict_files(_zeros, str(tmp_path / "s"), [TEST], str(tmp_path / "p.csv"))
  assert e.value.path == str(tmp_path / "s")
