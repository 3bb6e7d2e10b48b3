"""pico_jax.predict (launch/predict.py): raw rows scored with the run's vocabularies agree with
pico_jax.train.restore.evaluate on the same rows (checkpoint and exported artifact), labels are
optional, and bad rows fail with file/line/column, leaving nothing at --output."""

import csv
import gzip
import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import run_script, small_config
from pico_jax import predict
from pico_jax.data import store
from pico_jax.ingest import preprocess
from pico_jax.serving.encoding import Encoding
from pico_jax.train.restore import evaluate
from shared_data import ALICCP, ALIEXPRESS, CENSUS, needs_data

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


SAMPLES = {  # format: (inputs, the test file, preprocessing options)
    "census": (("train={0}", "test={0}"), "{0}", {},
               os.path.join(CENSUS, "deepctr-sample", "census-income.sample")),
    "aliexpress": (("{0}/train.csv", "{0}/test.csv"), "{0}/test.csv", {"min_count": 2},
                   os.path.join(ALIEXPRESS, "fuxictr-tiny_mtl")),
    "aliccp_csv": (("{0}/ali_ccp_train_sample.csv", "{0}/ali_ccp_val_sample.csv",
                    "{0}/ali_ccp_test_sample.csv"), "{0}/ali_ccp_test_sample.csv", {},
                   os.path.join(ALICCP, "torch-rechub-sample")),
    "aliccp_aitm": (("{0}/train.csv", "{0}/test.csv"), "{0}/test.csv", {"policy": "keep"},
                    os.path.join(ALICCP, "paddlerec-aitm-sample")),
    "aliccp_raw": (("{0}/train_small.txt", "{0}/test_small.txt"), "{0}/test_small.txt",
                   {"multi_max_len": 8}, os.path.join(ALICCP, "paddlerec-esmm-sample")),
}


def through_artifact_files(encoding, tmp_path):
  """``encoding`` written as an artifact holds it (JSON and .npz) and read back."""
  plain, arrays = encoding.to_plain()
  np.savez(tmp_path / "encoding.npz", **arrays)
  plain = json.loads(json.dumps(plain))
  with np.load(tmp_path / "encoding.npz", allow_pickle=False) as z:
    return Encoding.from_plain(plain, {k: z[k] for k in z.files}, encoding.fingerprint)


@needs_data
@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_predict_encodes_every_format_as_its_store(tmp_path, fmt):
  """predict's rows of each format (the test file of a store built from it) reach the
  model as the store's test split, array for array, through the store's encoding
  (a checkpoint) and through the copy an artifact holds; the ids are written."""
  inputs, test, options, where = SAMPLES[fmt]
  inputs = [p.format(where) for p in inputs]
  test = test.format(where)
  store_dir = str(tmp_path / "s")
  preprocess.build_store(fmt, inputs, store_dir, options=preprocess.Options(**options))
  from_store = Encoding.from_store(store_dir)
  for encoding in (from_store, through_artifact_files(from_store, tmp_path)):
    given = []
    score = lambda columns: given.append(columns) or _zeros(columns)
    summary = predict.predict_files(score, encoding, [test], str(tmp_path / "p.csv"),
                                    chunk_rows=7, log=lambda msg: None)
    assert_is_the_test_split(given, store_dir)
    header, rows = _read(str(tmp_path / "p.csv"))
    assert header[-3:] == list(predict.OUTPUTS) and len(rows) == summary["rows"]
    assert summary["metrics"] is not None


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
  encoding = Encoding.from_store(store_dir)
  summary = predict.predict_files(
      predict.checkpoint_scorer(workdir, "latest")[0], encoding, [TEST],
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
      predict.checkpoint_scorer(workdir, "latest")[0], encoding,
      [str(unlabeled), str(packed)], str(tmp / "unlabeled_preds.csv"), chunk_rows=30)
  assert summary["metrics"] is None and summary["rows"] == 200
  np.testing.assert_array_equal(_read(str(tmp / "unlabeled_preds.csv"))[1],
                                np.concatenate([rows, rows]))

  # The exported artifact, alone (its store moved away), scores the same raw rows the
  # same way: predict.py --artifact, and export.load(...).score in Python.
  from pico_jax import export
  artifact = str(tmp / "artifact")
  done = run_script("export", f"--workdir={workdir}", "--checkpoint=latest",
                    f"--output={artifact}", "--platforms=cpu")
  assert done.returncode == 0, done.stderr
  assert "scores raw rows of format aliexpress" in done.stdout
  os.rename(store_dir, store_dir + ".away")
  try:
    out2 = str(tmp / "artifact_preds.csv")
    done = run_script("predict", f"--artifact={artifact}", f"--input={TEST}",
                      f"--output={out2}", "--batch_size=32", "--noprogress")
    assert done.returncode == 0, done.stderr
    header2, rows2 = _read(out2)
    assert header2 == header
    np.testing.assert_array_equal(rows2[:, 0], rows[:, 0])
    np.testing.assert_allclose(rows2[:, 1:].astype(np.float64),
                               rows[:, 1:].astype(np.float64), rtol=0, atol=1e-6)
    scored = export.load(artifact).score(TEST)
    for j, key in enumerate(predict.OUTPUTS, start=1):
      np.testing.assert_allclose(scored[key], rows[:, j].astype(np.float64), rtol=0,
                                 atol=1e-6, err_msg=key)
  finally:
    os.rename(store_dir + ".away", store_dir)
  text = open(os.path.join(artifact, export.MANIFEST_FILE)).read()
  assert str(tmp) not in text and '"/' not in text  # no absolute path.
  manifest = json.loads(text)
  assert manifest["store"] == {"fingerprint": store.read_meta(store_dir).get("fingerprint")}


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
  """--format other than the store's, and an artifact without a feature encoding: a
  DataError each, which the CLI prints as one line."""
  from pico_jax import export
  from pico_jax.data.errors import DataError
  from pico_jax.train.restore import restore
  workdir, _ = run
  out = tmp_path / "preds.csv"
  score, encoding = predict.checkpoint_scorer(workdir, "latest")
  message = ("--format census: the model's inputs are encoded from format aliexpress; "
             "leave --format out or give aliexpress")
  with pytest.raises(DataError, match=re.escape(message)):
    predict.predict_files(score, encoding, [TEST], str(out), fmt_name="census")
  done = run_script("predict", f"--workdir={workdir}", f"--input={TEST}",
                    f"--output={out}", "--format=census", "--noprogress")
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines()[-1] == f"error: {message}"
  assert not out.exists()
  trainer = restore(workdir, "latest")
  artifact = str(tmp_path / "artifact")
  export.export_model(trainer.model, trainer.state.params, trainer.schema, artifact,
                      platforms=("cpu",), config=None)
  with pytest.raises(DataError, match="holds no feature encoding") as e:
    predict.artifact_scorer(artifact, 32)
  assert e.value.path == os.path.join(artifact, "manifest.json")


@needs_data
def test_the_default_step_is_logged_and_a_rebuilt_store_is_refused(run, tmp_path):
  """Without --checkpoint, predict scores the run's best step and says which; a store
  rebuilt at the run's data.path (another vocabulary) is one error line naming both
  data, before any row is encoded with it."""
  workdir, tmp = run
  out = tmp_path / "preds.csv"
  done = run_script("predict", f"--workdir={workdir}", f"--input={TEST}",
                    f"--output={out}", "--noprogress")
  assert done.returncode == 0, done.stderr
  # The default: the best step, or the latest where none was saved with an evaluation.
  assert re.search(r"using checkpoint 4 of \S+ \(the (best by|latest: none)", done.stderr)
  store_dir = str(tmp / "store")
  os.rename(store_dir, store_dir + ".trained")
  try:
    preprocess.build_store("aliexpress", [TEST, TRAIN], store_dir)
    done = run_script("predict", f"--workdir={workdir}", f"--input={TEST}",
                      f"--output={tmp_path / 'other.csv'}", "--noprogress")
  finally:
    shutil.rmtree(store_dir, ignore_errors=True)
    os.rename(store_dir + ".trained", store_dir)
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert re.match(rf"error: checkpoint \S+ was trained on store {re.escape(store_dir)} "
                  ".*; this run reads store", done.stderr.strip().splitlines()[-1])
  assert not (tmp_path / "other.csv").exists()


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
    predict.predict_files(_zeros, Encoding.from_store(store_dir), [str(bad)],
                          str(tmp_path / "out.csv"),
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
  encoding = Encoding.from_store(store_dir)
  summary = predict.predict_files(score, encoding, [inputs[1]], str(tmp_path / "p.csv"),
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
  summary = predict.predict_files(score, encoding, [unlabeled], str(tmp_path / "q.csv"),
                                  chunk_rows=8, log=lambda msg: None)
  assert_is_the_test_split(given, store_dir, labels=False)
  assert summary["metrics"] is None
  np.testing.assert_array_equal(_read(str(tmp_path / "q.csv"))[1], rows)

  # The same rows in memory (an Arrow table, as an artifact's encoding reads them).
  encoding = through_artifact_files(encoding, tmp_path)
  for source, labels in ((table, False), (pacsv.read_csv(SAMPLE.format("test")), True)):
    [(name, layout)] = encoding.open([source])
    assert_is_the_test_split([cols for chunk, cols in encoding.read(name, layout, 8)
                              if chunk is not None], store_dir, labels=labels)


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
    Encoding.from_store(str(tmp_path / "s"))
  assert e.value.path == str(tmp_path / "s")


@needs_data
def test_a_store_in_object_storage_scores_as_its_local_copy(tmp_path, s3):
  """A run trained on an s3:// store: predict from its checkpoint and from its export
  read the store's encoding (meta.json, vocabularies) through the URI, checked against
  the same checksums, and score exactly as with the store copied to local disk."""
  import pyarrow.fs as pafs
  from pico_jax import export
  from pico_jax.data import filesystem, integrity
  from pico_jax.train.loop import train_and_evaluate
  uri = s3(f"predict-{tmp_path.name}")
  preprocess.build_store("aliexpress", [TRAIN, TEST], uri, num_shards=2,
                         options=preprocess.Options(min_count=2))
  local = str(tmp_path / "copy")
  fs, path = filesystem.resolve(uri)
  pafs.copy_files(path, local, source_filesystem=fs,
                  destination_filesystem=pafs.LocalFileSystem())
  # A window of less than an epoch: a larger one reads the 90 rows from S3 many times.
  config = small_config(**{"data.name": "store", "data.path": uri, "data.shuffle_window": 64,
                           "checkpoint.enabled": True, "checkpoint.every_steps": 2,
                           "train.steps": 2, "train.eval_every": 2, "train.log_every": 2,
                           "train.eval_batch_size": 64})
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)
  score, remote = predict.checkpoint_scorer(workdir, "latest")
  copied = Encoding.from_store(local)
  assert remote.fingerprint == copied.fingerprint
  scores = {}
  for name, encoding in (("s3", remote), ("local", copied)):
    predict.predict_files(score, encoding, [TEST], str(tmp_path / f"{name}.csv"))
    scores[name] = _read(str(tmp_path / f"{name}.csv"))[1]
  np.testing.assert_array_equal(scores["s3"], scores["local"])
  assert len(scores["s3"]) == 100

  exported, manifest, _ = export.export_run(workdir, str(tmp_path / "artifact"),
                                            checkpoint="latest", platforms=("cpu",))
  assert manifest["store"] == {"fingerprint": copied.fingerprint}
  score, from_artifact = predict.artifact_scorer(exported, 32)
  predict.predict_files(score, from_artifact, [TEST], str(tmp_path / "artifact.csv"))
  artifact_scores = _read(str(tmp_path / "artifact.csv"))[1]
  np.testing.assert_allclose(artifact_scores[:, 1:].astype(float),
                             scores["local"][:, 1:].astype(float), rtol=0, atol=1e-6)
  loaded = export.load(exported).raw_encoding()
  for field, vocab in copied.encoder.vocabs.items():
    np.testing.assert_array_equal(loaded.encoder.vocabs[field].keys, vocab.keys)

  # A vocabulary changed in the bucket is refused as it is on disk, naming its URI.
  relpath = next(r for r in store.read_meta(local)[integrity.FILES]
                 if r.startswith("vocab/"))
  vocab_uri = filesystem.join(uri, *relpath.split("/"))
  fs, path = filesystem.resolve(vocab_uri)
  with fs.open_output_stream(path) as f:
    f.write(b"changed")
  with pytest.raises(integrity.IntegrityError) as e:
    Encoding.from_store(uri)
  assert str(e.value).startswith(f"{vocab_uri}: ")
