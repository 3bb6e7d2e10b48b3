"""Training from a sharded store: a local build equal to the columnar one, a resume in
the middle of an epoch bit-identical to the run that never stopped, from local disk and
from local S3 and Google Cloud Storage servers (conftest's ``s3`` and ``gcs``, on
127.0.0.1), and one-line failures naming the URI."""

import os

import numpy as np
import pyarrow.fs as pafs
import pytest

from conftest import run_script, small_config
from pico_jax import cli
from pico_jax.data import filesystem, integrity, store
from pico_jax.data.errors import DataError
from pico_jax.ingest import preprocess
from shared_data import ALIEXPRESS, needs_data
from test_faults import saved_state
from test_resume import _without_throughput, killed_and_resumed
from test_sharded_store import write

SAMPLE = os.path.join(ALIEXPRESS, "torch-rechub-sample", "aliexpress_{}_sample.csv")
def _config(path):
  return small_config(**{
      "data.name": "store", "data.path": path, "data.shuffle_window": 256,
      "model.backbone": "shared_bottom", "train.steps": 24, "train.log_every": 4,
      "train.eval_every": 100, "checkpoint.enabled": True, "checkpoint.every_steps": 5,
      "mesh.data": -1})


@pytest.fixture(scope="module")
def data():
  from pico_jax.data import synthetic
  return synthetic.generate(seed=0, num_rows=1_250, num_users=50, num_items=40)


@pytest.mark.parametrize("where", ["local", "s3", "gcs"])
def test_a_run_stopped_mid_epoch_resumes_bit_identical(tmp_path, monkeypatch, request,
                                                         data, where):
  """1,000 training rows in 3 shards, batch 64: the run is killed after step 17 (the
  second epoch's third batch) and resumes from its checkpoint of step 15."""
  path = (str(tmp_path / "store") if where == "local"
          else request.getfixturevalue(where)(f"resume-{tmp_path.name}"))
  write(path, data, num_shards=3)
  config = _config(path)
  reference, workdir = killed_and_resumed(config, tmp_path, monkeypatch)
  import jax
  jax.tree.map(np.testing.assert_array_equal, saved_state(workdir), saved_state(reference))
  assert (_without_throughput(os.path.join(workdir, "train_metrics.jsonl"))
          == _without_throughput(os.path.join(reference, "train_metrics.jsonl")))


def _assert_same_rows(sharded_path, columnar_path):
  a, b = store.load_store(sharded_path), store.load_store(columnar_path)
  assert a.schema == b.schema
  for split in store.SPLITS:
    for key, column in b.splits[split].items():
      np.testing.assert_array_equal(a.splits[split][key], column, err_msg=(split, key))
  for key in ("vocab", "dense_stats", "dense_constant", "multi_truncated_rows", "sources"):
    assert a.info["meta"][key] == b.info["meta"][key], key


@needs_data
def test_the_sharded_build_has_the_columnar_builds_rows_vocabularies_and_statistics(tmp_path):
  inputs = [SAMPLE.format("train"), SAMPLE.format("test")]
  preprocess.build_store("aliexpress", inputs, str(tmp_path / "v1"))
  meta = preprocess.build_store("aliexpress", inputs, str(tmp_path / "v2"), num_shards=4)
  assert [len(meta["splits"][s]["shards"]) for s in store.SPLITS] == [4, 4, 4]
  _assert_same_rows(str(tmp_path / "v2"), str(tmp_path / "v1"))
  v1_vocab = sorted(os.listdir(tmp_path / "v1" / "vocab"))
  assert v1_vocab == sorted(os.listdir(tmp_path / "v2" / "vocab"))
  for name in v1_vocab:
    np.testing.assert_array_equal(np.load(tmp_path / "v1" / "vocab" / name),
                                  np.load(tmp_path / "v2" / "vocab" / name))


@needs_data
def test_named_inputs_are_the_time_partitions_of_their_split(tmp_path):
  lines = open(SAMPLE.format("train")).read().splitlines(keepends=True)
  days = []
  for i, part in enumerate((lines[1:60], lines[60:])):
    days.append(tmp_path / f"2026-01-0{i + 1}.csv")
    days[-1].write_text(lines[0] + "".join(part))
  inputs = [f"train={days[0]}", f"train={days[1]}", f"val={SAMPLE.format('test')}",
            f"test={SAMPLE.format('test')}"]
  meta = preprocess.build_store("aliexpress", inputs, str(tmp_path / "v2"), num_shards=2)
  assert [(s["partition"], s["rows"]) for s in meta["splits"]["train"]["shards"]] == [
      ("2026-01-01.csv", 59), ("2026-01-02.csv", 41)]
  assert {s["partition"] for s in meta["splits"]["val"]["shards"]} == {
      "aliexpress_test_sample.csv"}


@needs_data
@pytest.mark.parametrize("where", ["s3", "gcs"])
def test_preprocess_writes_to_object_storage_and_training_reads_it(tmp_path, request,
                                                                   where):
  from pico_jax.train import loop
  uri = request.getfixturevalue(where)("built")
  inputs = f"--input={SAMPLE.format('train')},{SAMPLE.format('test')}"
  done = run_script("preprocess", "--format=aliexpress", inputs, f"--output={uri}",
                    "--num_shards=3", "--progress=false")
  assert done.returncode == 0, done.stderr
  preprocess.build_store("aliexpress", inputs[len("--input="):].split(","),
                         str(tmp_path / "v1"))
  _assert_same_rows(uri, str(tmp_path / "v1"))
  config = _config(uri)
  config.train.steps, config.train.batch_size, config.checkpoint.enabled = 4, 16, False
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert os.path.exists(tmp_path / "run" / "train_metrics.jsonl")


@pytest.mark.parametrize("where", ["s3", "gcs"])
def test_object_store_failures_are_one_line_naming_the_uri(request, data, where):
  uri_of = request.getfixturevalue(where)
  missing_bucket = uri_of("store", bucket="no-such-bucket")
  with pytest.raises(DataError) as e:
    store.load_store(missing_bucket)
  assert cli.is_user_error(e.value) and "\n" not in str(e.value)
  assert str(e.value) == f"{missing_bucket}: no bucket 'no-such-bucket' (or no access to it)"
  uri = uri_of("damaged")
  write(uri, data, num_shards=2)
  shard = filesystem.join(uri, "val", "part-00001.parquet")
  fs, path = pafs.FileSystem.from_uri(shard)
  fs.delete_file(path)
  with pytest.raises(integrity.IntegrityError) as e:
    store.load_store(uri).splits["val"]["click"]
  assert str(e.value).startswith(f"{shard}: ")
  assert cli.is_user_error(e.value) and "\n" not in str(e.value)
