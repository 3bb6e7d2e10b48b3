"""The Beam build (DirectRunner) equals the local build: every row of every split (sorted
by row_id), the vocabularies and the statistics, on slices of the real samples and on
tables; bad input is one DataError naming the file and line, and leaves nothing."""

import gzip
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("apache_beam")

from pico_jax.data import sharded, store  # noqa: E402
from pico_jax.data.errors import DataError  # noqa: E402
from pico_jax.ingest import beam_pipeline, preprocess, shard_writer  # noqa: E402
from pico_jax.ingest.table import TableRoles, ValuePolicy  # noqa: E402
from conftest import kill_preprocess_once, run_script  # noqa: E402
from shared_data import ALIEXPRESS, CENSUS, needs_data  # noqa: E402
from test_cli import one_error_line  # noqa: E402
from test_store_equality import write_aliccp_raw  # noqa: E402

# meta.json entries that describe the data, equal in both builds.
FACTS = ("schema", "columns", "vocab", "dense_stats", "dense_constant",
         "multi_truncated_rows", "entire_space_policy", "task_relation", "tasks", "format",
         "preprocess_version")


def read_sharded(path):
  """meta.json and split -> key -> array [rows, *shape] of a sharded store, read by the
  store's reader (every shard verified; rows placed by row_id, each exactly once)."""
  meta = sharded.read_meta(path)
  dataset = sharded.load(path, meta)
  return meta, {split: dict(columns) for split, columns in dataset.splits.items()}


def assert_same_store(local_dir, beam_dir, same_sources=True):
  """The Beam store holds the local (v1) store's rows, vocabularies and facts; and its
  sources, with ``same_sources`` (a glob is one local source, a source per file here)."""
  local = store.load_store(local_dir)
  beam_meta, beam = read_sharded(beam_dir)
  local_meta = local.info["meta"]
  for key in FACTS + (("sources",) if same_sources else ()):
    assert beam_meta[key] == local_meta[key], key
  for split, columns in local.splits.items():
    for name in ("rows", "dropped_conversion_without_click"):
      assert beam_meta["splits"][split][name] == local_meta["splits"][split][name]
    assert sorted(beam[split]) == sorted(columns), split
    for key, values in columns.items():
      np.testing.assert_array_equal(beam[split][key], values, err_msg=f"{split}/{key}")
      assert beam[split][key].dtype == values.dtype
  for entry in local_meta["vocab"].values():
    if "file" in entry:
      want = np.load(os.path.join(local_dir, entry["file"]), allow_pickle=False)
      got = np.load(os.path.join(beam_dir, entry["file"]), allow_pickle=False)
      assert got.dtype == want.dtype
      np.testing.assert_array_equal(got, want)
  # The local sharded layout (the v1 store converted) records the same facts.
  converted = shard_writer.convert(local_dir, local_dir + "-sharded", num_shards=2)
  for key in FACTS + ("store_version", "layout", "shard_format"):
    assert beam_meta[key] == converted[key], key


def build_both(tmp_path, fmt, inputs, same_sources=True, **options):
  options = preprocess.Options(**options)
  local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
  preprocess.build_store(fmt, inputs, local, options=options)
  meta = beam_pipeline.build_store(fmt, inputs, beam, options=options)
  assert_same_store(local, beam, same_sources)
  return meta


@needs_data
def test_aliexpress_two_files(tmp_path):
  """Train and test files, val carved from train by the seeded permutation; blocks of
  30 lines, so the moments merge many blocks (in file order) and min_count applies."""
  sample = os.path.join(ALIEXPRESS, "fuxictr-tiny_mtl", "{}.csv")
  meta = build_both(tmp_path, "aliexpress", [sample.format("train"),
                                             sample.format("test")],
                    min_count=2, chunk_rows=30, val_fraction=0.2, seed=4)
  assert len(meta["splits"]["train"]["shards"]) > 3


@needs_data
def test_census_slice_hashed_and_capped(tmp_path):
  """300 Census lines (gzip) split 80/10/10 by seed; one field hashed, the others
  hashed when they keep more than 40 values (max_vocab), byte-string vocabularies."""
  with gzip.open(os.path.join(CENSUS, "census-income.test.gz"), "rb") as f:
    lines = [f.readline() for _ in range(300)]
  path = tmp_path / "census.gz"
  with gzip.open(path, "wb") as f:
    f.writelines(lines)
  meta = build_both(tmp_path, "census", [str(path)], chunk_rows=64, seed=7,
                    hash_buckets=(("education", 5),), max_vocab=40)
  kinds = {entry["kind"] for entry in meta["vocab"].values()}
  assert kinds == {"hash", "table"}


def test_multi_valued_fields_truncated(tmp_path, monkeypatch):
  """Ali-CCP raw lines with repeated (multi-valued) fields cut at 3 values; the run
  leaves nothing in the temporary directory (Beam's DirectRunner left three empty
  directories a run)."""
  path = write_aliccp_raw(tmp_path / "raw.txt", rows=300)
  (tmp_path / "tmp").mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
  meta = build_both(tmp_path, "aliccp_raw", [path], chunk_rows=64, multi_max_len=3,
                    min_count=2)
  assert sum(meta["multi_truncated_rows"].values()) > 0
  assert os.listdir(tmp_path / "tmp") == []


def _write_table(tmp_path, rows=240, seed=0):
  """Three Parquet files of a log with string ids, a '|'-joined multi-valued column, a
  group key, dense values and a few conversions without a click."""
  rng = np.random.default_rng(seed)
  click = (rng.random(rows) < 0.4).astype(np.int64)
  conversion = (rng.random(rows) < 0.3) & ((click == 1) | (rng.random(rows) < 0.3))
  table = pa.table({
      "clicked": click, "bought": conversion.astype(np.int64),
      "user": rng.integers(0, 30, rows), "item": [f"i{k}" for k in rng.integers(0, 50, rows)],
      "tags": ["|".join(f"t{t}" for t in rng.integers(0, 9, rng.integers(1, 4)))
               for _ in range(rows)],
      "price": rng.lognormal(size=rows), "age": rng.integers(18, 80, rows).astype(float)})
  os.makedirs(tmp_path / "logs")
  for k, start in enumerate(range(0, rows, rows // 3)):
    pq.write_table(table.slice(start, rows // 3), tmp_path / "logs" / f"day{k}.parquet")
  return str(tmp_path / "logs" / "*.parquet")


def test_table_glob_with_drops(tmp_path):
  """format table: a Parquet glob (a unit per file), conversions without a click
  dropped (and counted per split), a multi-valued column and a hashed field."""
  roles = TableRoles(click="clicked", conversion="bought", group="user",
                     sparse=("user", "item"), multi=(("tags", "|"),),
                     dense=("price", "age"))
  meta = build_both(tmp_path, "table", [_write_table(tmp_path)], False, table=roles,
                    policy="drop", chunk_rows=50, hash_buckets=(("item", 16),))
  assert sum(s["dropped_conversion_without_click"] for s in meta["splits"].values()) > 0
  assert [s["path"] for s in meta["sources"]] == [
      str(tmp_path / "logs" / f"day{k}.parquet") for k in range(3)]


def test_table_nulls_take_the_training_mean(tmp_path):
  """format table with nulls under the default policy: a null dense value takes the
  training mean (dense_stats.fill, and a missing-value indicator column), a null id
  id 0, as in the local build."""
  logs = tmp_path / "logs"
  os.makedirs(logs)
  rng = np.random.default_rng(3)
  for day in range(2):
    rows = 90
    price = rng.lognormal(size=rows)
    pq.write_table(pa.table({
        "clicked": (rng.random(rows) < 0.5).astype(np.int64),
        "bought": np.zeros(rows, np.int64),
        "item": [None if k % 7 == 0 else f"i{k % 13}" for k in range(rows)],
        "price": pa.array([None if k % 5 == 0 else p for k, p in enumerate(price)])}),
        logs / f"day{day}.parquet")
  roles = TableRoles(click="clicked", conversion="bought", sparse=("item",),
                     dense=("price",))
  values = ValuePolicy(missing_sparse="default", missing_dense="default",
                       missing_indicator=("price",))
  meta = build_both(tmp_path, "table", [str(logs / "*.parquet")], False, table=roles,
                    values=values, chunk_rows=40)
  assert len(meta["dense_stats"]["fill"]) == 2


def test_bad_line_names_file_and_line_and_leaves_nothing(tmp_path):
  path = write_aliccp_raw(tmp_path / "raw.txt", rows=200)
  with open(path) as f:
    lines = f.readlines()
  lines[150] = lines[150].replace(":", ";", 1)
  with open(path, "w") as f:
    f.writelines(lines)
  out = tmp_path / "store"
  with pytest.raises(DataError) as e:
    beam_pipeline.build_store("aliccp_raw", [path], str(out),
                              options=preprocess.Options(chunk_rows=64))
  assert str(e.value).startswith(f"{path}:151:"), str(e.value)
  assert "while running" not in str(e.value)
  assert os.listdir(tmp_path) == ["raw.txt"]


def test_glob_that_matches_nothing(tmp_path):
  with pytest.raises(DataError, match="no input files match"):
    beam_pipeline.build_store("census", [str(tmp_path / "*.gz")], str(tmp_path / "s"))


def test_uri_inputs_and_output(tmp_path):
  """Inputs and output as URIs (file://: the object-store path, through pyarrow.fs):
  the glob is listed, each file copied to the worker, the store written in place with
  meta.json last; a bad row is reported at the input's URI."""
  roles = TableRoles(click="clicked", conversion="bought", sparse=("user", "item"),
                     dense=("price",))
  pattern = "file://" + _write_table(tmp_path)
  options = preprocess.Options(table=roles, policy="keep", chunk_rows=64)
  preprocess.build_store("table", [_write_table(tmp_path / "copy")],
                         str(tmp_path / "local"), options=options)
  beam_pipeline.build_store("table", [pattern], f"file://{tmp_path}/beam", options=options)
  assert_same_store(str(tmp_path / "local"), str(tmp_path / "beam"), same_sources=False)

  bad = pq.read_table(tmp_path / "logs" / "day1.parquet").to_pydict()
  bad["price"][5] = None
  pq.write_table(pa.table(bad), tmp_path / "logs" / "day1.parquet")
  with pytest.raises(DataError) as e:
    beam_pipeline.build_store("table", [pattern], f"file://{tmp_path}/beam2",
                              options=options)
  assert str(e.value).startswith(
      f"file://{tmp_path}/logs/day1.parquet: column 'price': row 6 "), e.value
  assert not os.path.exists(tmp_path / "beam2" / "meta.json")


def test_command_line(tmp_path):
  """launch/preprocess.py --runner: a sharded store, or one error line naming the line;
  a build killed (SIGKILL) once its temporary store exists leaves it, and the next
  build removes it and says so in one line, as the local build does."""
  path = write_aliccp_raw(tmp_path / "raw.txt", rows=120)
  args = ("--runner=DirectRunner", "--format=aliccp_raw", f"--input={path}",
          f"--output={tmp_path / 'store'}", "--chunk_rows=50")
  kill_preprocess_once(tmp_path, ".store.tmp-", *args, timeout=120)
  (left,) = [n for n in os.listdir(tmp_path) if n.startswith(".store.")]
  proc = run_script("preprocess", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  said = [line for line in proc.stdout.splitlines() if line.startswith("removed")]
  assert said == [f"removed 1 leftover(s) of an interrupted build of "
                  f"{tmp_path / 'store'}: {left}"]
  assert sorted(os.listdir(tmp_path)) == ["raw.txt", "store"]
  _, splits = read_sharded(str(tmp_path / "store"))
  assert sum(len(s["click"]) for s in splits.values()) == 120
  with open(path, "a") as f:
    f.write("121,1,0,101:x\n")
  proc = run_script("preprocess", "--runner=DirectRunner", "--format=aliccp_raw",
                    f"--input={path}", f"--output={tmp_path / 'store2'}", "--chunk_rows=50")
  assert one_error_line(proc).startswith(f"error: {path}:121: "), proc.stderr
  assert not (tmp_path / "store2").exists()
