"""The columnar store (write, commit, load, errors), vocabularies, the store recipes and
training end to end on a Census store."""

import dataclasses
import glob
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, small_config
from shared_data import CENSUS
from configs import census as census_recipe
from pico_jax import batch as B
from pico_jax.ingest import preprocess, store_writer
from pico_jax.data import integrity, load_dataset, store
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema, SparseField
from pico_jax.ingest.vocab import Counter, Vocab, build_vocab, stable_hash

SCHEMA = Schema(sparse=(SparseField("a", 5), SparseField("b", 9)),
                multi=(SparseField("m", 7, 3),), dense=("x", "y", "z"), extras=(B.GROUP,))


def random_columns(rng, n):
  mask = rng.random((n, 1, 3)) < 0.6
  return {
      B.SPARSE: rng.integers(0, 5, (n, 2)).astype(np.int32),
      B.MULTI: np.where(mask, rng.integers(1, 7, (n, 1, 3)), 0).astype(np.int32),
      B.MULTI_MASK: mask,
      B.DENSE: rng.normal(size=(n, 3)).astype(np.float32),
      B.CLICK: (rng.random(n) < 0.3).astype(np.float32),
      B.CONVERSION: np.zeros(n, np.float32),
      B.GROUP: np.arange(n, dtype=np.int32),
  }


def write_store(path, rows=None, seed=0):
  rng = np.random.default_rng(seed)
  rows = rows or {"train": 50, "val": 7, "test": 0}
  data = {s: random_columns(rng, n) for s, n in rows.items()}
  with store_writer.StoreWriter(str(path), SCHEMA, rows) as writer:
    for split, cols in data.items():
      for key, values in cols.items():
        writer.columns[split][key][:] = values
    writer.save_array("vocab/000.npy", np.array([b"x", b"yy"]))
    writer.commit({"format": "test", "task_relation": "entire_space", "tasks": {}})
  return data


def test_round_trip_memory_mapped(tmp_path):
  data = write_store(tmp_path / "s")
  ds = store.load_store(str(tmp_path / "s"))
  assert ds.schema == SCHEMA
  for split, cols in data.items():
    assert set(ds.splits[split]) == set(cols)
    for key, values in cols.items():
      got = ds.splits[split][key]
      assert isinstance(got, np.memmap) and not got.flags.writeable
      assert got.dtype == values.dtype and got.shape == values.shape
      np.testing.assert_array_equal(got, values)
  meta = json.load(open(tmp_path / "s" / "meta.json"))
  assert meta["splits"]["train"]["rows"] == 50 and meta["splits"]["test"]["rows"] == 0
  assert meta["columns"][B.MULTI] == {"shape": [1, 3], "dtype": "int32"}
  assert ds.info["task_relation"] == "entire_space"
  assert not glob.glob(str(tmp_path / ".s.tmp-*"))


def test_an_exception_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError):
    with store_writer.StoreWriter(str(tmp_path / "s"), SCHEMA, {"train": 4, "val": 1, "test": 1}):
      raise RuntimeError("interrupted")
  assert os.listdir(tmp_path) == []


def test_a_failed_allocation_leaves_nothing(tmp_path, monkeypatch):
  """A column that cannot be allocated (here: a full disk on the third) raises, and
  the writer leaves no temporary directory and no column behind."""
  made = []

  def zeroed_map(path, dtype, shape):
    made.append(path)
    if len(made) == 3:
      raise OSError(28, "No space left on device")
    return real(path, dtype, shape)
  real = store_writer._zeroed_map
  monkeypatch.setattr(store_writer, "_zeroed_map", zeroed_map)
  with pytest.raises(OSError, match="No space left"):
    store_writer.StoreWriter(str(tmp_path / "s"), SCHEMA, {"train": 4, "val": 1, "test": 1})
  assert len(made) >= 3 and os.listdir(tmp_path) == []


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 27 0:40 / /mnt/shared\\040data rw,relatime - nfs4 server:/export rw,vers=4.2
32 31 0:41 / /mnt/shared\\040data/local rw,relatime - xfs /dev/vdb rw
33 27 0:42 / /buckets/logs rw,nosuid - fuse.gcsfuse logs rw
"""


def test_file_system_is_the_longest_mount_above_the_path(tmp_path):
  """The type of the mount closest above a path, from Linux's mountinfo (octal
  escapes in mount points decoded); None where mountinfo cannot be read."""
  info = tmp_path / "mountinfo"
  info.write_text(MOUNTINFO)
  kind = lambda path: store_writer.file_system(path, str(info))
  assert kind("/home/user/store") == "ext4"
  assert kind("/mnt/shared data/run/store") == "nfs4"
  assert kind("/mnt/shared data/local/store") == "xfs"
  assert kind("/mnt/shared datax") == "ext4"  # a prefix of a name is not a parent.
  assert kind("/buckets/logs/s") == "fuse.gcsfuse"
  assert store_writer.file_system("/x", str(tmp_path / "absent")) is None


@pytest.mark.parametrize("kind,flushed", [("ext4", False), ("tmpfs", False),
                                          ("nfs4", True), ("fuse.gcsfuse", True),
                                          (None, True)])
def test_columns_are_flushed_unless_the_file_system_is_local(tmp_path, monkeypatch,
                                                             kind, flushed):
  """On a network (or unknown) file system the columns' maps are flushed before
  meta.json names the store: another host would read zeros where the rows sit only
  in this host's page cache."""
  calls = []
  monkeypatch.setattr(store_writer, "file_system", lambda path, *a: kind)
  monkeypatch.setattr(np.memmap, "flush", lambda self: calls.append(self.filename))
  rows = {"train": 4, "val": 1, "test": 1}
  with store_writer.StoreWriter(str(tmp_path / "s"), SCHEMA, rows) as writer:
    writer.commit({})
  assert (len(calls) == 3 * len(store.column_specs(SCHEMA))) == flushed
  assert flushed or not calls


def test_existing_store_is_replaced_only_when_asked(tmp_path):
  write_store(tmp_path / "s")
  with pytest.raises(FileExistsError):
    store_writer.StoreWriter(str(tmp_path / "s"), SCHEMA, {"train": 1})
  data = write_store(tmp_path / "s2", {"train": 3, "val": 2, "test": 2}, seed=1)
  with store_writer.StoreWriter(str(tmp_path / "s"), SCHEMA, {"train": 3, "val": 2, "test": 2},
                         overwrite=True) as writer:
    for split, cols in data.items():
      for key, values in cols.items():
        writer.columns[split][key][:] = values
    writer.commit({})
  assert store.load_store(str(tmp_path / "s")).num_rows("train") == 3
  assert sorted(os.listdir(tmp_path)) == ["s", "s2"]


def test_load_errors_name_the_file(tmp_path):
  with pytest.raises(DataError, match=r"nothere: not a store \(no meta\.json\)"):
    store.load_store(str(tmp_path / "nothere"))
  write_store(tmp_path / "s")
  meta_path = tmp_path / "s" / "meta.json"
  meta = json.load(open(meta_path))
  column = tmp_path / "s" / "train" / "dense.npy"
  np.save(column, np.zeros((50, 4), np.float32))
  with pytest.raises(DataError, match=r"train/dense\.npy: store file has 928 bytes"):
    store.load_store(str(tmp_path / "s"))
  # Unverified (a store being sealed), the shape is checked against meta.json.
  with pytest.raises(DataError, match=r"train/dense\.npy: column 'dense' has shape"):
    store.open_columns(str(tmp_path / "s"), meta, verify=False)
  os.remove(column)
  with pytest.raises(DataError, match=r"train/dense\.npy: missing column 'dense'"):
    store.load_store(str(tmp_path / "s"))
  json.dump(dict(meta, store_version=99), open(meta_path, "w"))
  with pytest.raises(DataError, match=r"meta\.json: store version 99"):
    store.load_store(str(tmp_path / "s"))
  meta_path.write_text('{\n "store_version": 1,\n oops\n}')
  with pytest.raises(DataError, match=r"meta\.json:3: column 2: invalid JSON"):
    store.load_store(str(tmp_path / "s"))


def test_same_arrays_in_every_process(tmp_path):
  """Two processes mapping the store concurrently see exactly the parent's arrays."""
  write_store(tmp_path / "s", {"train": 300, "val": 20, "test": 20})

  def digest(ds):
    return {f"{s}/{k}": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
            for s, cols in ds.splits.items() for k, v in cols.items()}

  script = ("import hashlib, json, sys, numpy as np;"
            "from pico_jax.data import store; ds = store.load_store(sys.argv[2]);"
            "print(json.dumps({f'{s}/{k}': hashlib.sha256(np.ascontiguousarray(v)"
            ".tobytes()).hexdigest() for s, c in ds.splits.items() for k, v in c.items()}))")
  procs = [subprocess.Popen([sys.executable, "-c", script, ROOT, str(tmp_path / "s")],
                            stdout=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
  expected = digest(store.load_store(str(tmp_path / "s")))
  assert outs[0] == outs[1] == expected


# -------------------------------------------------------------------------- vocab


def test_counter_merges_chunks_exactly():
  rng = np.random.default_rng(0)
  chunks = [rng.integers(0, 3000, 5000) for _ in range(600)]  # forces several merges.
  counter = Counter()
  for c in chunks:
    counter.add_counts(*np.unique(c, return_counts=True))
  keys, counts = counter.result()
  want_keys, want_counts = np.unique(np.concatenate(chunks), return_counts=True)
  np.testing.assert_array_equal(keys, want_keys)
  np.testing.assert_array_equal(counts, want_counts)
  words = Counter()
  words.add_counts(*np.unique(np.array([b"b", b"a", b"b"]), return_counts=True))
  words.add_counts(*np.unique(np.array([b"ccc", b"a"]), return_counts=True))
  keys, counts = words.result()
  assert keys.tolist() == [b"a", b"b", b"ccc"] and counts.tolist() == [2, 2, 1]
  assert Counter().result()[0] is None


def test_vocab_lookup_min_count_and_hashing():
  keys, counts = np.array([3, 10, 42, 99]), np.array([5, 1, 2, 7])
  v = build_vocab(keys, counts, min_count=2)
  assert v.vocab_size == 4  # 3, 42, 99 kept; id 0 for the rest.
  np.testing.assert_array_equal(v.lookup(np.array([[3, 10], [99, 1000]])), [[1, 0], [3, 0]])
  assert build_vocab(keys, counts, max_size=2).buckets == 2  # 4 kept > 2: hashed.
  h = build_vocab(keys, counts, buckets=5)
  ids = h.lookup(np.arange(1000))
  assert h.vocab_size == 6 and ids.min() == 1 and ids.max() == 5
  np.testing.assert_array_equal(ids, h.lookup(np.arange(1000)))
  assert Vocab().lookup(np.array([1, 2])).tolist() == [0, 0]
  assert build_vocab(None, np.zeros(0, np.int64)).vocab_size == 1


def test_stable_hash_is_fixed():
  """Hashed ids must not change between machines or versions: pinned values."""
  assert stable_hash(np.array([0, 1, 2**40])).tolist() == [
      16294208416658607535, 10451216379200822465, 2296115805719413641]
  assert stable_hash(np.array([b"abc", b""])).tolist() == [
      int.from_bytes(hashlib.blake2b(b"abc", digest_size=8).digest(), "little"),
      int.from_bytes(hashlib.blake2b(b"", digest_size=8).digest(), "little")]


# --------------------------------------------------------- recipes and training


# The recipes themselves are tested in test_config.py.


@pytest.fixture(scope="module")
def census_sample_store(tmp_path_factory):
  sample = os.path.join(CENSUS, "deepctr-sample", "census-income.sample")
  if not os.path.exists(sample):
    pytest.skip("../shared/data absent")
  out = str(tmp_path_factory.mktemp("census") / "store")
  # Split seed 6 puts clicks (income > 50K) in val and test: the sample has only 12.
  preprocess.build_store("census", [sample], out, options=preprocess.Options(seed=6))
  return out


def test_load_dataset_from_config(census_sample_store):
  config = small_config(**{"data.name": "store", "data.path": census_sample_store})
  ds = load_dataset(config)
  assert ds.num_rows("train") == 160 and ds.info["task_relation"] == "independent"
  assert ds.info["tasks"]["click"] == "income > 50K"
  assert set(ds.splits["val"]) == {B.SPARSE, B.DENSE, B.CLICK, B.CONVERSION}


def test_census_trains_end_to_end(census_sample_store, tmp_path):
  from pico_jax.train.loop import train_and_evaluate
  config = census_recipe.get_config("backbone=mmoe,pico=true")
  config.data.path = census_sample_store
  config.data.num_threads = 1
  config.model.embed_dim = 4  # W1 shapes are checked above; keep compilation short here.
  config.model.mmoe.num_experts = 2
  config.model.mmoe.expert_hidden = (8,)
  config.model.tower_hidden = (8,)
  config.contrast.proj_dim = 8
  config.contrast.proj_hidden = (8,)
  config.contrast.relatedness_hidden = (8,)
  config.train.batch_size = 64
  config.train.eval_batch_size = 64
  config.train.steps = 6
  config.train.log_every = 3
  config.train.eval_every = 3
  config.checkpoint.enabled = False
  result = train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(result["ctr_auc"]) and {"cvr_auc", "ctcvr_auc"} <= set(result)
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert records[-1]["split"] == "test"


@pytest.mark.parametrize("drop", ["schema", "splits"])
def test_meta_json_missing_key_names_file_and_key(tmp_path, drop):
  directory = tmp_path / "store"
  directory.mkdir()
  meta = {"store_version": store.STORE_VERSION,
          "schema": {"sparse": [], "multi": [], "dense": [], "extras": []}, "splits": {}}
  del meta[drop]
  meta = integrity.seal(meta, str(directory), [])  # sealed: the keys are checked next.
  (directory / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(DataError, match=f"meta.json.*{drop}|{drop}.*meta.json"):
    store.load_store(str(directory))


def test_commit_takes_the_final_schema_of_the_same_columns(tmp_path):
  """Columns are allocated before the vocabulary sizes are known; commit records the
  final schema, and refuses one with other columns."""
  rows = {"train": 2, "val": 1, "test": 1}
  bigger = dataclasses.replace(SCHEMA, sparse=tuple(
      dataclasses.replace(f, vocab_size=f.vocab_size + 7) for f in SCHEMA.sparse))
  with store_writer.StoreWriter(str(tmp_path / "s"), SCHEMA, rows) as writer:
    writer.commit({}, schema=bigger)
  assert store.load_store(str(tmp_path / "s")).schema == bigger
  other = dataclasses.replace(SCHEMA, dense=SCHEMA.dense + ("another",))
  with pytest.raises(ValueError, match="other columns"):
    with store_writer.StoreWriter(str(tmp_path / "t"), SCHEMA, rows) as writer:
      writer.commit({}, schema=other)
  assert sorted(os.listdir(tmp_path)) == ["s"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_the_store_takes_the_umask_s_permissions(tmp_path, umask):
  """Other users of a shared store can read it when the umask lets them (a
  ``tempfile.mkdtemp`` directory renamed into place would stay 0o700)."""
  path = tmp_path / "in.csv"
  path.write_text("".join(f"{i}," + f"{i % 3}," * 16 + f"{i}," * 63 + "0,0\n"
                          for i in range(40)))
  old = os.umask(umask)
  try:
    preprocess.build_store("aliexpress", [str(path)], str(tmp_path / "s"))
  finally:
    os.umask(old)
  for sub in ("", "train", "val", "test", "vocab"):
    mode = os.stat(tmp_path / "s" / sub).st_mode & 0o777
    assert mode == 0o777 & ~umask, (sub, oct(mode))
