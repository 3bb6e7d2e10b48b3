"""A store from a table in memory (``pico_jax.ingest.store_from_table``): the same store
as the table written to a file and preprocessed, without the file."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pico_jax import ingest
from pico_jax.data import store
from pico_jax.data.errors import DataError
from pico_jax.ingest import preprocess
from pico_jax.ingest.table import TableRoles

ROLES = {"click": "clicked", "conversion": "bought", "group": "user",
         "sparse": ["user", "item"], "multi": {"tags": "|"}, "dense": ["price"]}


def logs(n=60, seed=0):
  rng = np.random.default_rng(seed)
  click = (rng.random(n) < 0.5).astype(np.int64)
  return pa.table({"clicked": click, "bought": click * (rng.random(n) < 0.5),
                   "user": [f"u{i}" for i in rng.integers(0, 7, n)],
                   "item": rng.integers(2 ** 60, 2 ** 60 + 20, n),
                   "tags": ["|".join(f"t{t}" for t in rng.integers(0, 5, rng.integers(0, 3)))
                            for _ in range(n)],
                   "price": rng.normal(size=n)})


def same_store(a, b):
  x, y = store.load_store(a), store.load_store(b)
  for split in store.SPLITS:
    assert sorted(x.splits[split]) == sorted(y.splits[split])
    for key in x.splits[split]:
      np.testing.assert_array_equal(x.splits[split][key], y.splits[split][key])
  ma, mb = x.info["meta"], y.info["meta"]
  for key in ("schema", "vocab", "dense_stats", "splits"):
    assert ma[key] == mb[key], key
  for name in ma["vocab"]:
    if "file" in ma["vocab"][name]:
      assert ma["files"][ma["vocab"][name]["file"]] == mb["files"][mb["vocab"][name]["file"]]


def test_a_table_in_memory_gives_the_store_of_its_file(tmp_path):
  table = logs()
  pq.write_table(table, tmp_path / "logs.parquet")
  preprocess.build_store("table", [str(tmp_path / "logs.parquet")], str(tmp_path / "file"),
                         options=preprocess.Options(table=TableRoles.from_json(ROLES)))
  lines = []
  meta = ingest.store_from_table(table, str(tmp_path / "memory"), roles=ROLES,
                                 log=lines.append)
  same_store(str(tmp_path / "file"), str(tmp_path / "memory"))
  assert meta["sources"][0]["path"] == "memory:all" and len(meta["sources"][0]["blake3"]) == 64
  assert lines[-1].startswith(f"wrote {tmp_path / 'memory'}")
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_splits_options_and_the_value_policy(tmp_path):
  train, test = logs(seed=1), logs(n=20, seed=2)
  train = train.set_column(5, "price", pa.array([None] + train["price"].to_pylist()[1:],
                                                pa.float64()))
  meta = ingest.store_from_table({"train": train, "test": test}, str(tmp_path / "s"),
                                 roles=TableRoles.from_json(ROLES), val_fraction=0.25,
                                 values={"missing_dense": "default"}, min_count=2)
  assert meta["splits"]["test"]["rows"] == 20 and meta["splits"]["val"]["rows"] == 15
  assert meta["options"]["min_count"] == 2
  assert json.load(open(tmp_path / "s" / "meta.json"))["dense_stats"]["fill"]
  with pytest.raises(preprocess.OptionError, match="min_count"):
    ingest.store_from_table(train, str(tmp_path / "t"), roles=ROLES, min_count=0)
  with pytest.raises(preprocess.OptionError, match="missing_dense='zero'"):
    ingest.store_from_table(train, str(tmp_path / "t"), roles=ROLES,
                            values={"missing_dense": "zero"})
  with pytest.raises(preprocess.OptionError, match="expected click, conversion"):
    ingest.store_from_table(train, str(tmp_path / "t"), roles={"click": "clicked"})


def test_a_bad_value_names_the_table_row_and_column(tmp_path):
  table = logs()
  bad = table.set_column(0, "clicked", pa.array([0, 1, 3] + [0] * 57))
  with pytest.raises(DataError) as e:
    ingest.store_from_table({"all": bad}, str(tmp_path / "s"), roles=ROLES)
  assert str(e.value) == "memory:all: column 'clicked': row 3: label must be 0 or 1, got 3.0"
  assert not os.listdir(tmp_path)
  with pytest.raises(DataError, match="memory:all: not a table pyarrow can read"):
    ingest.store_from_table(42, str(tmp_path / "s"), roles=ROLES)


def test_a_pandas_dataframe_gives_the_store_of_its_arrow_table(tmp_path):
  table = logs(seed=3)
  ingest.store_from_table(table, str(tmp_path / "arrow"), roles=ROLES)
  ingest.store_from_table(table.to_pandas(), str(tmp_path / "pandas"), roles=ROLES)
  same_store(str(tmp_path / "arrow"), str(tmp_path / "pandas"))
