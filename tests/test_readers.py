"""Readers: the real samples in ../shared/data, the exact Census split of docs/data.md
(section 4), gzip and split arguments, and how files are cut into blocks and hashed.
Bad input is in test_bad_input.py; workers and failures mid-build in
test_preprocess_workers.py."""

import gzip
import os

import numpy as np
import pytest

from pico_jax import batch as B
from pico_jax.ingest import preprocess
from pico_jax.data import store
from pico_jax.data.errors import DataError

from shared_data import ALICCP, ALIEXPRESS, CENSUS, needs_data


def build(tmp_path, fmt, inputs, name="store", **options):
  out = str(tmp_path / name)
  meta = preprocess.build_store(fmt, [str(i) for i in inputs], out,
                                options=preprocess.Options(**options))
  return meta, store.load_store(out)


def check_store(ds):
  """Invariants every store holds: ids inside vocab, finite dense, 0/1 labels."""
  for split, cols in ds.splits.items():
    n = len(cols[B.CLICK])
    assert set(np.unique(cols[B.CLICK])) <= {0.0, 1.0}
    assert set(np.unique(cols[B.CONVERSION])) <= {0.0, 1.0}
    if ds.schema.sparse:
      sizes = np.array([f.vocab_size for f in ds.schema.sparse])
      assert cols[B.SPARSE].shape == (n, len(sizes))
      assert np.all((cols[B.SPARSE] >= 0) & (cols[B.SPARSE] < sizes)), split
    if ds.schema.multi:
      sizes = np.array([f.vocab_size for f in ds.schema.multi])[:, None]
      assert np.all((cols[B.MULTI] >= 0) & (cols[B.MULTI] < sizes))
      assert not np.any(cols[B.MULTI][~cols[B.MULTI_MASK]])  # padding holds id 0.
    if ds.schema.dense:
      assert np.all(np.isfinite(cols[B.DENSE]))


def csv_labels(path, click_col, conv_col, header=True):
  rows = [line.strip().split(",") for line in open(path)][int(header):]
  return (np.array([float(r[click_col]) for r in rows]),
          np.array([float(r[conv_col]) for r in rows]))


# -------------------------------------------------------------------- real samples


@pytest.fixture(scope="module")
def census_full(tmp_path_factory):
  out = tmp_path_factory.mktemp("census") / "store"
  meta = preprocess.build_store("census", [os.path.join(CENSUS, "census-income.test.gz")],
                                str(out))
  return meta, store.load_store(str(out))


def _census_reference(path):
  """docs/data.md, sections 2-4, written independently of the reader: plain Python per row."""
  with gzip.open(path, "rt") as f:
    rows = [[t.strip() for t in line.rstrip("\n").split(",")] for line in f]
  n = len(rows)
  perm = np.random.default_rng(0).permutation(n)
  n_train, n_val = int(0.8 * n), int(0.1 * n)
  parts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val],
           "test": perm[n_train + n_val:]}
  continuous = [0, 5, 16, 17, 18, 30, 39]
  categorical = [j for j in range(42) if j not in continuous + [7, 24, 41]]
  vocab = {j: sorted({rows[i][j] for i in parts["train"]}) for j in categorical}
  index = {j: {v: k + 1 for k, v in enumerate(vocab[j])} for j in categorical}
  dense_all = np.array([[float(r[j]) for j in continuous] for r in rows])
  mean, std = dense_all[parts["train"]].mean(0), dense_all[parts["train"]].std(0)
  out = {}
  for split, idx in parts.items():
    out[split] = {
        B.CLICK: np.array([rows[i][41] == "50000+." for i in idx], np.float32),
        B.CONVERSION: np.array([rows[i][7] == "Never married" for i in idx], np.float32),
        B.SPARSE: np.array([[index[j].get(rows[i][j], 0) for j in categorical]
                            for i in idx], np.int32),
        B.DENSE: ((dense_all[idx] - mean) / std).astype(np.float32),
    }
  return out, [vocab[j] for j in categorical]


@needs_data
def test_census_matches_the_documented_split(census_full):
  meta, ds = census_full
  ref, vocabs = _census_reference(os.path.join(CENSUS, "census-income.test.gz"))
  for split in ("train", "val", "test"):
    for key in (B.CLICK, B.CONVERSION, B.SPARSE):
      np.testing.assert_array_equal(ds.splits[split][key], ref[split][key], err_msg=key)
    np.testing.assert_allclose(ds.splits[split][B.DENSE], ref[split][B.DENSE], rtol=1e-5,
                               atol=1e-5)
  assert [f.vocab_size for f in ds.schema.sparse] == [len(v) + 1 for v in vocabs]
  assert meta["splits"]["train"]["rows"] == 79_809
  assert meta["splits"]["val"]["rows"] == 9_976 and meta["splits"]["test"]["rows"] == 9_977
  # The label counts over the whole file (docs/data.md, section 4).
  total = lambda key: sum(int(ds.splits[s][key].sum()) for s in ds.splits)
  assert total(B.CLICK) == 6_186 and total(B.CONVERSION) == 43_143
  assert ds.info["task_relation"] == "independent"
  assert meta["sources"][0]["blake3"] == (  # b3sum of the file.
      "342deb53454a898f2e8b8a75f1f5c24088b4b16975660329b6c6cd7c49514a8b")
  assert len(ds.schema.sparse) == 32 and ds.schema.num_dense == 7
  assert "marital stat" not in [f.name for f in ds.schema.sparse]
  assert "instance weight" not in ds.schema.dense
  # The saved vocabulary maps raw values back: id k is vocab[k - 1].
  keys = np.load(os.path.join(ds.info["path"], meta["vocab"]["education"]["file"]))
  assert [k.decode() for k in keys] == vocabs[[f.name for f in ds.schema.sparse].index(
      "education")]


@needs_data
def test_census_deepctr_sample_with_row_index(tmp_path):
  meta, ds = build(tmp_path, "census",
                   [os.path.join(CENSUS, "deepctr-sample", "census-income.sample")])
  check_store(ds)
  assert sum(meta["splits"][s]["rows"] for s in ("train", "val", "test")) == 200
  assert len(ds.schema.sparse) == 32


@needs_data
@pytest.mark.parametrize("sample", ["torch-rechub-sample/aliexpress_{}_sample.csv",
                                    "fuxictr-tiny_mtl/{}.csv"])
def test_aliexpress_samples(tmp_path, sample):
  train, test = (os.path.join(ALIEXPRESS, sample.format(s)) for s in ("train", "test"))
  meta, ds = build(tmp_path, "aliexpress", [train, test])
  check_store(ds)
  click, conv = csv_labels(test, 80, 81)
  np.testing.assert_array_equal(ds.splits["test"][B.CLICK], click)  # file order.
  np.testing.assert_array_equal(ds.splits["test"][B.CONVERSION], conv)
  n_train = len(csv_labels(train, 80, 81)[0])
  assert meta["splits"]["val"]["rows"] == int(0.1 * n_train)
  assert meta["splits"]["train"]["rows"] == n_train - int(0.1 * n_train)
  assert ds.schema.num_dense == 63 and len(ds.schema.sparse) == 16
  assert B.GROUP in ds.splits["train"]
  assert ds.info["task_relation"] == "entire_space"


@needs_data
def test_aliccp_csv_sample(tmp_path):
  paths = [os.path.join(ALICCP, "torch-rechub-sample", f"ali_ccp_{s}_sample.csv")
           for s in ("train", "val", "test")]
  meta, ds = build(tmp_path, "aliccp_csv", paths)
  check_store(ds)
  assert [meta["splits"][s]["rows"] for s in ("train", "val", "test")] == [100, 50, 50]
  assert int(ds.splits["train"][B.CLICK].sum()) == 7
  assert int(ds.splits["train"][B.CONVERSION].sum()) == 1
  assert len(ds.schema.sparse) == 23 and ds.schema.num_dense == 8


@needs_data
def test_aliccp_aitm_sample_conversion_without_click(tmp_path):
  train = os.path.join(ALICCP, "paddlerec-aitm-sample", "train.csv")  # header
  test = os.path.join(ALICCP, "paddlerec-aitm-sample", "test.csv")  # no header
  # The sample has rows with purchase = 1, click = 0: an error by default ...
  with pytest.raises(DataError, match=r"train\.csv:9: column 2 \('purchase'\)"):
    build(tmp_path, "aliccp_aitm", [train, test])
  assert not os.listdir(tmp_path)  # nothing half-written.
  # ... dropped and counted with the AITM recipe's policy.
  meta, ds = build(tmp_path, "aliccp_aitm", [train, test], policy="drop")
  check_store(ds)
  dropped = sum(meta["splits"][s]["dropped_conversion_without_click"] for s in meta["splits"])
  raw = [csv_labels(train, 0, 1), csv_labels(test, 0, 1, header=False)]
  expected = sum(int(np.sum((c == 0) & (v == 1))) for c, v in raw)
  assert dropped == expected > 0
  assert sum(meta["splits"][s]["rows"] for s in meta["splits"]) == 98 - expected
  for cols in ds.splits.values():
    assert not np.any((cols[B.CONVERSION] == 1) & (cols[B.CLICK] == 0))


@needs_data
def test_aliccp_raw_sample_multi_valued(tmp_path):
  train = os.path.join(ALICCP, "paddlerec-esmm-sample", "train_small.txt")
  test = os.path.join(ALICCP, "paddlerec-esmm-sample", "test_small.txt")
  meta, ds = build(tmp_path, "aliccp_raw", [train, test], val_fraction=0.2,
                   multi_max_len=400)
  check_store(ds)
  multi = [f.name for f in ds.schema.multi]
  assert set(multi) == {"109_14", "110_14", "127_14", "150_14", "210", "853"}
  assert ds.schema.multi_len == 342  # the longest list (110_14) fits untruncated.
  # Test rows are in file order: compare with a plain parse of test_small.txt.
  lines = open(test).read().splitlines()
  cols = ds.splits["test"]
  g = multi.index("110_14")
  for i, line in enumerate(lines):
    tokens = line.split(",")
    assert cols[B.CLICK][i] == float(tokens[1])
    assert cols[B.CONVERSION][i] == float(tokens[2])
    n_110 = sum(t.startswith("110_14:") for t in tokens[3:])
    assert cols[B.MULTI_MASK][i, g].sum() == n_110
    present = {t.split(":")[0] for t in tokens[3:]}
    for j, field in enumerate(ds.schema.sparse):
      if field.name not in present:  # a missing single-valued field is id 0.
        assert cols[B.SPARSE][i, j] == 0, field.name
  assert meta["multi_truncated_rows"] == {n: 0 for n in multi}


@needs_data
def test_aliccp_raw_truncates_long_lists_and_counts_them(tmp_path):
  train = os.path.join(ALICCP, "paddlerec-esmm-sample", "train_small.txt")
  meta, ds = build(tmp_path, "aliccp_raw", [f"train={train}", f"val={train}",
                                            f"test={train}"], multi_max_len=8)
  assert ds.schema.multi_len == 8
  assert meta["multi_truncated_rows"]["110_14"] == 30  # every row, in all three splits.
  assert np.all(ds.splits["train"][B.MULTI_MASK][:, [f.name for f in ds.schema.multi]
                                                 .index("110_14")].sum(-1) == 8)


@needs_data
def test_min_count_and_hashing(tmp_path):
  paths = [os.path.join(ALICCP, "torch-rechub-sample", f"ali_ccp_{s}_sample.csv")
           for s in ("train", "val", "test")]
  _, plain = build(tmp_path, "aliccp_csv", paths, name="plain")
  _, rare = build(tmp_path, "aliccp_csv", paths, name="rare", min_count=5)
  _, hashed = build(tmp_path, "aliccp_csv", paths, name="hashed",
                    hash_buckets=(("205", 7),), max_vocab=10)
  names = [f.name for f in plain.schema.sparse]
  j = names.index("205")  # the item id: many values, most seen once.
  assert rare.schema.sparse[j].vocab_size < plain.schema.sparse[j].vocab_size
  assert np.sum(rare.splits["train"][B.SPARSE][:, j] == 0) > 0
  assert hashed.schema.sparse[j].vocab_size == 8
  big = [k for k, f in enumerate(plain.schema.sparse) if f.vocab_size > 11 and k != j]
  assert big and all(hashed.schema.sparse[k].vocab_size == 11 for k in big)
  assert hashed.splits["test"][B.SPARSE][:, j].min() >= 1  # hashing has no "unseen".


# ---------------------------------------------------- generated AliExpress files


AE_HEADER = ",".join(["search_id"] + [f"categorical_{i}" for i in range(1, 17)]
                     + [f"numerical_{i}" for i in range(1, 64)] + ["click", "conversion"])


def ae_row(i=0, click=1, conversion=0, numeric="0.5"):
  return ",".join([str(i)] + [str(i % 3)] * 16 + [numeric] * 63 + [str(click),
                                                                     str(conversion)])


def write(tmp_path, name, lines, end="\n"):
  path = tmp_path / name
  path.write_text("\n".join(lines) + end)
  return str(path)


def good_ae(tmp_path, n=20):
  return [AE_HEADER] + [ae_row(i, click=i % 2) for i in range(n)]


def test_gzip_input_and_split_arguments(tmp_path):
  lines = good_ae(tmp_path, n=30)
  path = tmp_path / "ae.csv.gz"
  with gzip.open(path, "wt") as f:
    f.write("\n".join(lines) + "\n")
  meta = preprocess.build_store("aliexpress", [f"train={path}", f"val={path}",
                                               f"test={path}"], str(tmp_path / "s"))
  assert [meta["splits"][s]["rows"] for s in ("train", "val", "test")] == [30, 30, 30]
  with pytest.raises(ValueError, match="SPLIT=PATH"):
    preprocess.parse_inputs([f"train={path}", str(path)])
  with pytest.raises(ValueError, match="4 inputs"):
    preprocess.parse_inputs(["a", "b", "c", "d"])


def test_blocks_cut_at_line_boundaries(tmp_path, monkeypatch):
  """Scanned blocks (read by offset) and streamed blocks hold every line once, in
  order, whatever the read size, the block size, the header and the last newline."""
  from pico_jax.ingest import raw_files
  rng = np.random.default_rng(0)
  path = tmp_path / "f.txt"
  for _ in range(300):
    lines = [b"x" * int(rng.integers(1, 6)) for _ in range(int(rng.integers(1, 30)))]
    text = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
    path.write_bytes(text)
    monkeypatch.setattr(raw_files, "_READ_BYTES", int(rng.integers(1, 20)))
    rows, header = int(rng.integers(1, 8)), bool(rng.random() < 0.5)
    info = raw_files.scan_file(str(path), rows, header)
    data = [raw_files.read_block(b) for b in info.blocks]
    assert b"".join(data) == b"".join(raw_files.split_lines(text)[int(header):])
    assert [len(raw_files.split_lines(d)) for d in data] == [
        b.num_lines for b in info.blocks]
    assert [b.first_line for b in info.blocks] == [
        1 + int(header) + k * rows for k in range(len(info.blocks))]
    assert info.num_lines == len(raw_files.split_lines(text))
    streamed = [(b, d) for b, d in raw_files.stream_blocks(str(path), rows, header) if b]
    assert streamed == list(zip(info.blocks, data))
