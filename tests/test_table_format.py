"""Format "table": CSV or Parquet with declared roles gives the same store as the
format that knows the columns, and bad values are reported by file, row (group) and
column."""

import json
import os

import blake3
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import run_script
from pico_jax.data import store
from pico_jax.data.errors import DataError
from pico_jax.ingest import preprocess
from pico_jax.ingest.table import TableRoles
from shared_data import ALIEXPRESS, needs_data

SAMPLE = os.path.join(ALIEXPRESS, "torch-rechub-sample", "aliexpress_{}_sample.csv")
ROLES = TableRoles(click="click", conversion="conversion", group="search_id",
                   id="search_id", sparse=tuple(f"categorical_{i}" for i in range(1, 17)),
                   dense=tuple(f"numerical_{i}" for i in range(1, 64)))


def to_parquet(csv_path, out, row_group_size):
  pq.write_table(pacsv.read_csv(csv_path), out, row_group_size=row_group_size)
  return str(out)


def assert_same_store(a, b):
  a, b = store.load_store(a), store.load_store(b)
  assert a.schema == b.schema
  for split in store.SPLITS:
    assert sorted(a.splits[split]) == sorted(b.splits[split])
    for key, column in a.splits[split].items():
      np.testing.assert_array_equal(column, b.splits[split][key], err_msg=(split, key))
  ma, mb = a.info["meta"], b.info["meta"]
  for key in ("vocab", "dense_stats", "splits", "dense_constant", "multi_truncated_rows"):
    assert ma[key] == mb[key], key
  vocab_a = sorted(os.listdir(os.path.join(a.info["path"], "vocab")))
  assert vocab_a == sorted(os.listdir(os.path.join(b.info["path"], "vocab")))
  for name in vocab_a:
    np.testing.assert_array_equal(np.load(os.path.join(a.info["path"], "vocab", name)),
                                  np.load(os.path.join(b.info["path"], "vocab", name)))


@needs_data
@pytest.mark.parametrize("chunk_rows,row_group_size", [(65_536, 64), (30, 7)])
def test_parquet_with_declared_roles_equals_the_aliexpress_csv(tmp_path, chunk_rows,
                                                               row_group_size):
  csv_inputs = [SAMPLE.format("train"), SAMPLE.format("test")]
  parquet = [to_parquet(p, tmp_path / f"{s}.parquet", row_group_size)
             for p, s in zip(csv_inputs, ("train", "test"))]
  options = dict(chunk_rows=chunk_rows, min_count=1)
  preprocess.build_store("aliexpress", csv_inputs, str(tmp_path / "csv"),
                         options=preprocess.Options(**options))
  preprocess.build_store("table", parquet, str(tmp_path / "parquet"),
                         options=preprocess.Options(table=ROLES, **options))
  assert_same_store(str(tmp_path / "csv"), str(tmp_path / "parquet"))
  # The same rows as CSV read through the table format, and as a glob.
  preprocess.build_store("table", csv_inputs, str(tmp_path / "table_csv"),
                         options=preprocess.Options(table=ROLES, **options))
  assert_same_store(str(tmp_path / "csv"), str(tmp_path / "table_csv"))


def write_logs(root):
  """A hive-partitioned directory day=1/, day=2/ of Parquet files: user and item ids
  (strings and ints), tags joined by "|", a price."""
  rng = np.random.default_rng(0)
  for day in (1, 2):
    n = 40
    click = (rng.random(n) < 0.5).astype(np.int64)
    table = pa.table({
        "clicked": click, "bought": click * (rng.random(n) < 0.5),
        "user": [f"u{i}" for i in rng.integers(0, 9, n)],
        "item": rng.integers(0, 30, n), "price": rng.normal(size=n),
        "tags": ["|".join(f"t{t}" for t in rng.integers(0, 5, rng.integers(1, 4)))
                 for _ in range(n)]})
    os.makedirs(root / f"day={day}")
    pq.write_table(table, root / f"day={day}" / "part-0.parquet", row_group_size=16)


def test_a_partitioned_directory_with_multi_valued_tags(tmp_path):
  write_logs(tmp_path / "logs")
  roles = TableRoles(click="clicked", conversion="bought", sparse=("user", "item", "day"),
                     multi=(("tags", "|"),), dense=("price",))
  meta = preprocess.build_store("table", [str(tmp_path / "logs")], str(tmp_path / "s"),
                                options=preprocess.Options(table=roles, chunk_rows=16))
  ds = store.load_store(str(tmp_path / "s"))
  assert sum(meta["splits"][s]["rows"] for s in store.SPLITS) == 80
  assert [f.name for f in ds.schema.sparse] == ["user", "item", "day"]
  assert [f.name for f in ds.schema.multi] == ["tags"]
  assert meta["vocab"]["day"]["size"] == 3 and meta["vocab"]["tags"]["size"] == 6
  assert ds.info["meta"]["options"]["table"]["multi"] == [["tags", "|"]]
  # The input's digest: BLAKE3 over its files' bytes, one after another, in path order.
  files = sorted(os.path.join(d, n) for d, _, names in os.walk(tmp_path / "logs")
                 for n in names)
  assert len(files) > 1
  assert meta["sources"][0]["blake3"] == blake3.blake3(
      b"".join(open(f, "rb").read() for f in files)).hexdigest()


def test_the_roles_flags_and_schema_file(tmp_path):
  write_logs(tmp_path / "logs")
  glob = str(tmp_path / "logs" / "day=*" / "*.parquet")
  run_script("preprocess", "--format=table", f"--input={glob}",
             f"--output={tmp_path / 'a'}", "--click=clicked", "--conversion=bought",
             "--sparse=user,item", "--multi=tags:|", "--dense=price", "--noprogress")
  schema = tmp_path / "roles.json"
  schema.write_text(json.dumps({"click": "clicked", "conversion": "bought",
                                "sparse": ["user", "item"], "multi": {"tags": "|"},
                                "dense": ["price"]}))
  run_script("preprocess", "--format=table", f"--input={glob}",
             f"--output={tmp_path / 'b'}", f"--table_schema={schema}", "--noprogress")
  assert_same_store(str(tmp_path / "a"), str(tmp_path / "b"))
  result = run_script("preprocess", "--format=table", f"--input={glob}",
                      f"--output={tmp_path / 'c'}", "--click=clicked", "--noprogress")
  assert result.returncode == 1 and "--conversion" in result.stderr


def test_a_bad_parquet_value_names_file_row_group_and_column(tmp_path):
  table = pa.table({"c": [0, 1, 2, 0], "v": [0, 0, 0, 0], "x": ["a", "b", "c", "d"]})
  pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
  roles = TableRoles(click="c", conversion="v", sparse=("x",))
  with pytest.raises(DataError) as e:
    preprocess.build_store("table", [str(tmp_path / "t.parquet")], str(tmp_path / "s"),
                           options=preprocess.Options(table=roles))
  assert e.value.path.endswith("t.parquet") and e.value.column_name == "c"
  assert "row 3 (row group 1)" in str(e.value) and "label must be 0 or 1" in str(e.value)
  assert not (tmp_path / "s").exists()
  with pytest.raises(DataError, match="no column"):
    preprocess.build_store("table", [str(tmp_path / "t.parquet")], str(tmp_path / "s"),
                           options=preprocess.Options(table=TableRoles("c", "w")))


def test_a_null_group_key_is_a_located_error(tmp_path):
  """The group key is never null (a string one is hashed: test_value_policy): a null is
  reported at its file, row and column, not as a numpy error."""
  table = pa.table({"c": [0, 1, 0], "v": [0, 0, 0], "u": ["a", None, "a"], "x": [1, 2, 3]})
  pq.write_table(table, tmp_path / "t.parquet")
  roles = TableRoles(click="c", conversion="v", group="u", sparse=("x",))
  with pytest.raises(DataError, match=r"row 2 \(row group 0\): missing value$") as e:
    preprocess.build_store("table", [str(tmp_path / "t.parquet")], str(tmp_path / "s"),
                           options=preprocess.Options(table=roles))
  assert e.value.column_name == "u" and not (tmp_path / "s").exists()
