"""Format table's null and type policy (docs/data.md section 3): nulls per role, int64 ids
over the whole range, hashed group keys, timestamps, empty tokens, the file count."""

import datetime
import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_script
from pico_jax.data import store
from pico_jax.data.errors import DataError
from pico_jax.ingest import format_contract, preprocess
from pico_jax.ingest.encode import Encoder
from pico_jax.ingest.table import TableRoles, ValuePolicy

N = 12


def logs(**columns):
  """N rows with labels (click alternating, no conversion) and the given columns."""
  return pa.table({"click": [i % 2 for i in range(N)], "conversion": [0] * N, **columns})


def build(tmp_path, table, roles, name="s", values=ValuePolicy(), **options):
  """The store of ``table`` (train = the whole table, val and test its first rows)."""
  paths = []
  for split, rows in (("train", table), ("val", table.slice(0, 3)),
                      ("test", table.slice(0, 3))):
    paths.append(f"{split}={tmp_path / f'{name}_{split}.parquet'}")
    pq.write_table(rows, paths[-1].split("=", 1)[1])
  meta = preprocess.build_store("table", paths, str(tmp_path / name), options=(
      preprocess.Options(table=TableRoles("click", "conversion", **roles), values=values,
                         **options)))
  return meta, store.load_store(str(tmp_path / name)).splits


def fails(tmp_path, table, roles, values=ValuePolicy()):
  with pytest.raises(DataError) as e:
    build(tmp_path, table, roles, name="bad", values=values)
  assert "\n" not in str(e.value) and not (tmp_path / "bad").exists()
  return e.value


USERS = ["a", None, "b", "a", None, "c", "a", "b", "a", "c", "b", "a"]
PRICES = [1.0, None, 3.0, 5.0, None, 2.0, 1.0, 4.0, 2.0, 3.0, 1.0, 2.0]


def test_a_null_is_an_error_naming_row_and_the_option_by_default(tmp_path):
  e = fails(tmp_path, logs(u=USERS), {"sparse": ("u",)})
  assert e.column_name == "u" and "row 2 (row group 0): missing value " \
      "(--missing_sparse=default maps it to id 0)" in str(e)
  e = fails(tmp_path, logs(p=PRICES), {"dense": ("p",)})
  assert "row 2 (row group 0): missing value (--missing_dense=default" in str(e)


def test_a_missing_sparse_value_is_id_0_and_never_counted(tmp_path):
  meta, splits = build(tmp_path, logs(u=USERS, e=[""] * N), {"sparse": ("u", "e")},
                       values=ValuePolicy(missing_sparse="default"))
  ids = splits["train"]["sparse"][:, 0]
  assert (ids[[1, 4]] == 0).all() and (ids[[0, 2, 3, 5]] > 0).all()
  assert meta["vocab"]["u"]["size"] == 4  # a, b, c and id 0: the nulls are no value.
  assert meta["vocab"]["e"]["size"] == 2  # a real empty string is a value.


def test_a_missing_dense_value_is_the_training_mean_with_an_indicator(tmp_path):
  policy = ValuePolicy(missing_dense="default", missing_indicator=("p",))
  meta, splits = build(tmp_path, logs(p=PRICES), {"dense": ("p",)}, values=policy)
  known = [p for p in PRICES if p is not None]
  assert meta["schema"]["dense"] == ["p", "p:missing"]
  assert meta["dense_stats"]["fill"][0] == pytest.approx(np.mean(known))
  assert meta["dense_stats"]["mean"][0] == pytest.approx(np.mean(known))
  assert meta["dense_stats"]["std"][0] == pytest.approx(np.std(known))
  dense = splits["train"]["dense"]
  assert (dense[[1, 4], 0] == 0).all() and (dense[[0, 2], 0] != 0).all()
  indicator = dense[:, 1] > 0
  assert indicator.tolist() == [p is None for p in PRICES]
  _, raw = build(tmp_path, logs(p=PRICES), {"dense": ("p",)}, name="raw",
                 values=policy, dense_transform="none")
  assert raw["train"]["dense"][1, 0] == pytest.approx(np.mean(known), rel=1e-6)
  assert raw["train"]["dense"][:, 1].tolist() == [float(p is None) for p in PRICES]
  with pytest.raises(DataError, match=r"--missing_indicator names \['q'\]"):
    build(tmp_path, logs(p=PRICES), {"dense": ("p",)}, name="q",
          values=ValuePolicy(missing_indicator=("q",)))


def test_scoring_encodes_nulls_as_the_store_did(tmp_path):
  policy = ValuePolicy(missing_sparse="default", missing_dense="default",
                       missing_indicator=("p",))
  _, splits = build(tmp_path, logs(u=USERS, p=PRICES), {"sparse": ("u",), "dense": ("p",)},
                    values=policy)
  encoder, fmt, _ = Encoder.from_store(str(tmp_path / "s"))
  path = str(tmp_path / "s_train.parquet")
  layout = fmt.open_input(path)
  info = fmt.scan(path, layout, 100)
  (block, data), = fmt.blocks(info)
  cols, _ = encoder.encode(fmt.parse_block(path, data, block.first_line, layout), path)
  for key in ("sparse", "dense"):
    np.testing.assert_array_equal(cols[key], splits["train"][key])


def test_int64_ids_are_exact_over_the_whole_range(tmp_path):
  big = [2 ** 63 - 1, 2 ** 63 - 2, 2 ** 53 + 1, 2 ** 53, -(2 ** 63), 5] * 2
  meta, splits = build(tmp_path, logs(i=pa.array(big, pa.int64())), {"sparse": ("i",)})
  keys = np.load(tmp_path / "s" / meta["vocab"]["i"]["file"])
  assert keys.dtype == np.int64 and keys.tolist() == sorted(set(big))
  assert len(set(splits["train"]["sparse"][:6, 0].tolist())) == 6
  huge = pa.array([2 ** 64 - 1] + [1] * (N - 1), pa.uint64())
  e = fails(tmp_path, logs(i=huge), {"sparse": ("i",)})
  assert "row 1 (row group 0): categorical id '18446744073709551615' is beyond int64" in \
      str(e)


def test_a_string_group_key_is_hashed_as_documented(tmp_path):
  users = [f"user-{i % 4}" for i in range(N)]
  _, splits = build(tmp_path, logs(u=users, x=list(range(N))),
                    {"group": "u", "sparse": ("x",)})
  expected = [int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(),
                             "little") % 2 ** 31 for u in users]
  assert splits["train"]["group"].tolist() == expected


def test_timestamps_as_dense_are_refused_or_converted_as_declared(tmp_path):
  stamps = [datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
            + datetime.timedelta(seconds=7 * i) for i in range(N)]
  days = [datetime.date(2024, 1, 1 + i) for i in range(N)]
  table = logs(t=pa.array(stamps, pa.timestamp("ms", tz="UTC")), d=days)
  e = fails(tmp_path, table, {"dense": ("t",)})
  assert e.column_name == "t" and "timestamp[ms, tz=UTC] column is not a dense value as " \
      "is; --timestamps=epoch_seconds converts it" in str(e)
  _, splits = build(tmp_path, table, {"dense": ("t", "d")}, dense_transform="none",
                    values=ValuePolicy(timestamps="epoch_seconds"))
  dense = splits["train"]["dense"]
  assert dense[:, 0].tolist() == [np.float32(s.timestamp()) for s in stamps]
  assert dense[:, 1].tolist() == [np.float32(datetime.datetime(
      d.year, d.month, d.day, tzinfo=datetime.timezone.utc).timestamp()) for d in days]


def test_empty_tokens_and_lists_are_absent_values(tmp_path):
  joined = ["a||b", "b|", "", "|a|", "a|b", "b", "a", "b", "a|b", "a", "b", "a"]
  lists = [t.split("|") for t in joined]
  absent = [[v for v in t if v] for t in lists]
  _, a = build(tmp_path, logs(tags=joined), {"multi": (("tags", "|"),)}, name="a")
  _, b = build(tmp_path, logs(tags=lists), {"multi": (("tags", "|"),)}, name="b")
  _, c = build(tmp_path, logs(tags=absent), {"multi": (("tags", "|"),)}, name="c")
  encoded = pa.array(lists, pa.list_(pa.dictionary(pa.int32(), pa.string())))
  _, d = build(tmp_path, logs(tags=encoded), {"multi": (("tags", "|"),)}, name="d")
  for split in store.SPLITS:
    for key in a[split]:
      for other in (a, b, d):
        np.testing.assert_array_equal(other[split][key], c[split][key])
  assert not a["train"]["multi_mask"][2].any()


def test_a_directory_of_files_is_counted_as_its_files(tmp_path):
  os.makedirs(tmp_path / "logs")
  for k in range(3):
    pq.write_table(logs(x=list(range(N))), tmp_path / "logs" / f"part-{k}.parquet")
  lines = []
  preprocess.build_store("table", [str(tmp_path / "logs")], str(tmp_path / "s"),
                         options=preprocess.Options(table=TableRoles(
                             "click", "conversion", sparse=("x",))), log=lines.append)
  assert lines[0] == f"scanned 3 file(s), {3 * N} rows"


def test_the_policy_flags(tmp_path):
  path = tmp_path / "t.parquet"
  pq.write_table(logs(u=USERS, p=PRICES), path)
  args = ("--format=table", f"--input={path}", "--click=click", "--conversion=conversion",
          "--sparse=u", "--dense=p", "--noprogress")
  result = run_script("preprocess", *args, f"--output={tmp_path / 's'}",
                      "--missing_sparse=default", "--missing_dense=default",
                      "--missing_indicator=p")
  assert result.returncode == 0, result.stderr
  assert store.load_store(str(tmp_path / "s")).schema.dense == ("p", "p:missing")
  result = run_script("preprocess", "--format=census", f"--input={path}",
                      f"--output={tmp_path / 'c'}", "--missing_dense=default")
  assert result.returncode == 1 and result.stderr.count("\n") == 1
  assert result.stderr.startswith("error: --missing_dense=default: format table's option")
