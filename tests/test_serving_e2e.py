"""From a user's own logs to served predictions: partitioned Parquet with nulls,
strings, int64 ids above 2**53 and lists goes through preprocess, a few training
steps, export and the artifact's scoring of raw rows, which equals
``launch/predict.py --checkpoint``; the optional TF SavedModel scores the same raw rows
through TF's own loader."""

import csv
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_script, small_config
from pico_jax import export, predict

ROLES = ("--click=click", "--conversion=conversion", "--sparse=user_id,item_id,category",
         "--multi=tags:|", "--dense=price,age", "--group=user_id", "--missing_sparse=default",
         "--missing_dense=default", "--missing_indicator=price")
TAGS = np.array(["red", "blue", "green", "big", "small", "new"])


def click_log(rows: int, seed: int) -> pa.Table:
  """A click log as users have them: string and hashed 64-bit ids (above 2**53), a
  list column (some empty), nulls in a string and a float column, a timestamp no role
  uses; conversions only on clicks."""
  rng = np.random.default_rng(seed)
  user = rng.integers(0, 40, rows)
  item = rng.integers(0, 30, rows)
  tags = [list(TAGS[rng.choice(len(TAGS), rng.integers(0, 4), replace=False)])
          for _ in range(rows)]
  price = np.round(rng.lognormal(3, 1, rows), 2)
  click = (rng.random(rows) < 0.2 + 0.3 * (user % 3 == 0)).astype(np.int64)
  category = [None if i % 7 == 0 else f"c{i % 5}" for i in item]
  return pa.table({
      "user_id": [f"u{u}" for u in user],
      "item_id": pa.array(item * 7_919_000_003 + 2 ** 62, pa.int64()),
      "category": pa.array(category, pa.string()),
      "tags": pa.array(tags, pa.list_(pa.string())),
      "price": pa.array(price, mask=rng.random(rows) < 0.1),
      "age": rng.integers(18, 70, rows).astype(np.float64),
      "click": click,
      "conversion": click * (rng.random(rows) < 0.3),
      "ts": pa.array(rng.integers(0, 10 ** 9, rows) * 10 ** 9, pa.timestamp("ns")),
  })


def write_partitioned(table: pa.Table, root, days: int):
  """``table`` as hive partitions ``date=2026-01-0D/part-0.parquet``."""
  bounds = np.linspace(0, table.num_rows, days + 1).astype(int)
  for d in range(days):
    part = root / f"date=2026-01-0{d + 1}"
    part.mkdir(parents=True)
    pq.write_table(table.slice(bounds[d], bounds[d + 1] - bounds[d]),
                   part / "part-0.parquet", row_group_size=64)
  return str(root)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """The log preprocessed (launch/preprocess.py), trained a few steps, exported
  (launch/export.py), and new rows scored by launch/predict.py --checkpoint."""
  tmp = tmp_path_factory.mktemp("e2e")
  logs = write_partitioned(click_log(600, seed=0), tmp / "logs", days=3)
  store_dir = str(tmp / "store")
  done = run_script("preprocess", "--format=table", f"--input={logs}",
                    f"--output={store_dir}", *ROLES, "--noprogress")
  assert done.returncode == 0, done.stderr
  config = small_config(**{"data.name": "store", "data.path": store_dir,
                           "checkpoint.enabled": True, "checkpoint.every_steps": 4,
                           "train.steps": 4, "train.eval_every": 4, "train.log_every": 4})
  workdir = str(tmp / "run")
  from pico_jax.train.loop import train_and_evaluate
  train_and_evaluate(config, workdir)
  artifact = str(tmp / "artifact")
  done = run_script("export", f"--workdir={workdir}", f"--output={artifact}",
                    "--platforms=cpu")
  assert done.returncode == 0, done.stderr
  new_rows = write_partitioned(click_log(150, seed=1), tmp / "new", days=2)
  out = str(tmp / "preds.csv")
  done = run_script("predict", f"--workdir={workdir}", f"--input={new_rows}",
                    f"--output={out}", "--noprogress")
  assert done.returncode == 0, done.stderr
  with open(out) as f:
    rows = list(csv.DictReader(f))
  want = {k: np.array([float(r[k]) for r in rows]) for k in predict.OUTPUTS}
  return {"workdir": workdir, "artifact": artifact, "new": new_rows, "want": want,
          "tmp": tmp}


def assert_scores(got, want, atol):
  for key in predict.OUTPUTS:
    assert got[key].shape == want[key].shape, key
    np.testing.assert_allclose(got[key], want[key], rtol=0, atol=atol, err_msg=key)


def test_artifact_scores_raw_rows_as_predict_from_the_checkpoint(served):
  """The artifact alone scores the raw partitioned Parquet, and the same rows as an
  in-memory Arrow table (labels and unused columns left in or out), within 1e-6 of
  predict.py --checkpoint."""
  artifact = export.load(served["artifact"])
  assert artifact.manifest["encoding"]["format"] == "table"
  from pico_jax.data import store
  meta = store.read_meta(os.path.join(os.path.dirname(served["workdir"]), "store"))
  assert artifact.manifest["store"] == {"fingerprint": meta["fingerprint"]}
  assert_scores(artifact.score(served["new"]), served["want"], 1e-6)
  import pyarrow.dataset as pads
  table = pads.dataset(served["new"], format="parquet", partitioning="hive").to_table()
  assert_scores(artifact.score(table, batch_size=64, chunk_rows=50), served["want"], 1e-6)
  features_only = table.drop_columns(["click", "conversion", "ts", "date"])
  assert_scores(artifact.score(features_only), served["want"], 1e-6)
  assert_scores(artifact.score(features_only.to_pandas()), served["want"], 1e-6)


def test_raw_rows_missing_a_column_are_one_located_error(served):
  from pico_jax.data.errors import DataError
  artifact = export.load(served["artifact"])
  with pytest.raises(DataError, match=r"^memory:rows0: no column\(s\) \[.*'price'\]"):
    artifact.score(pa.table({"user_id": ["u1"], "item_id": [1], "category": ["c1"],
                             "tags": [["red"]], "age": [30.0]}))
  with pytest.raises(DataError, match="cannot score a dict"):
    artifact.score({"user_id": ["u1"]})


def test_tf_saved_model_scores_raw_rows_as_predict(served):
  """The optional TF SavedModel (pip install -e .[tf]): TF's loader, fed raw columns
  (the lists joined by their separator), scores within 1e-5 of predict.py."""
  tf = pytest.importorskip("tensorflow")
  # A null goes to TF Serving as what the SavedModel maps to id 0 (a string the
  # vocabulary lacks) or to the training mean (NaN).
  artifact = str(served["tmp"] / "tf_artifact")
  manifest = export.export_run(served["workdir"], artifact, platforms=("cpu",),
                               tf_saved_model=True)[1]
  inputs = manifest["saved_model"]["inputs"]
  assert inputs == {"user_id": "string", "item_id": "int64", "category": "string",
                    "tags": "string", "price": "float64", "age": "float64"}
  import pyarrow.dataset as pads
  table = pads.dataset(served["new"], format="parquet", partitioning="hive").to_table()
  raw = {name: table.column(name).to_pylist() for name in inputs}
  raw["tags"] = ["|".join(tags) for tags in raw["tags"]]
  raw["category"] = ["" if c is None else c for c in raw["category"]]
  raw["price"] = [np.nan if p is None else p for p in raw["price"]]
  assert "" in raw["category"] and np.isnan(raw["price"]).any() and "" in raw["tags"]
  loaded = tf.saved_model.load(os.path.join(artifact, "saved_model"))
  serve = loaded.signatures["serving_default"]
  got = serve(**{k: tf.constant(v, getattr(tf, inputs[k])) for k, v in raw.items()})
  assert_scores({k: v.numpy() for k, v in got.items()}, served["want"], 1e-5)
  export.load(artifact)  # the SavedModel's files are checksummed with the rest.
