"""Readers and preprocessing: the real samples in ../shared/data, the exact Census split
of docs/data.md (section 4), and one generated file per bad-input case (each error names the
file, the line and the column, and leaves nothing behind)."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from pico_jax import batch as B
from pico_jax.ingest import blocks, formats, preprocess
from pico_jax.data import store
from pico_jax.ingest import store_writer
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


# ------------------------------------------------------------------ bad input cases

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


def expect_error(tmp_path, fmt, inputs, pattern, **options):
  out = tmp_path / "out"
  with pytest.raises(DataError, match=pattern) as info:
    preprocess.build_store(fmt, inputs, str(out), options=preprocess.Options(**options))
  leftovers = [p for p in os.listdir(tmp_path) if p.startswith((".out", "out"))]
  assert not leftovers, leftovers  # no store, no temporary directory.
  return info.value


def test_missing_file(tmp_path):
  err = expect_error(tmp_path, "aliexpress", [str(tmp_path / "nope.csv")],
                     r"nope\.csv: file not found")
  assert err.path.endswith("nope.csv")


def test_empty_file(tmp_path):
  path = write(tmp_path, "empty.csv", [], end="")
  expect_error(tmp_path, "aliexpress", [path], r"empty\.csv:1: empty file")


def test_header_only_file(tmp_path):
  path = write(tmp_path, "h.csv", [AE_HEADER])
  expect_error(tmp_path, "aliexpress", [path], r"h\.csv:2: no data rows")


def test_wrong_column_count(tmp_path):
  lines = good_ae(tmp_path)
  lines[7] = lines[7].rsplit(",", 1)[0]  # one column short, on line 8.
  path = write(tmp_path, "short.csv", lines)
  err = expect_error(tmp_path, "aliexpress", [path],
                     r"short\.csv:8: column 82: expected 82 columns, found 81")
  assert (err.line, err.column) == (8, 82)


def test_non_numeric_value(tmp_path):
  lines = good_ae(tmp_path)
  lines[5] = lines[5].replace("0.5", "abc", 1)  # first numerical column, line 6.
  path = write(tmp_path, "text.csv", lines)
  expect_error(tmp_path, "aliexpress", [path],
               r"text\.csv:6: column 18 \('numerical_1'\): non-numeric value 'abc'")


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_nan_or_inf_in_dense(tmp_path, bad):
  lines = good_ae(tmp_path)
  lines[3] = ae_row(2, numeric=bad)
  path = write(tmp_path, "nan.csv", lines)
  expect_error(tmp_path, "aliexpress", [path],
               rf"nan\.csv:4: column 18 \('numerical_1'\): NaN/inf value, got '{bad}'")


@pytest.mark.parametrize("column,label", [(81, "2"), (82, "-1"), (81, "0.5"), (82, "nan")])
def test_label_outside_0_1(tmp_path, column, label):
  lines = good_ae(tmp_path)
  tokens = lines[10].split(",")
  tokens[column - 1] = label
  lines[10] = ",".join(tokens)
  path = write(tmp_path, "label.csv", lines)
  name = "click" if column == 81 else "conversion"
  expect_error(tmp_path, "aliexpress", [path],
               rf"label\.csv:11: column {column} \('{name}'\): label must be 0 or 1")


def test_non_integer_categorical(tmp_path):
  lines = good_ae(tmp_path)
  tokens = lines[2].split(",")
  tokens[3] = "1.5"
  lines[2] = ",".join(tokens)
  path = write(tmp_path, "cat.csv", lines)
  expect_error(tmp_path, "aliexpress", [path],
               r"cat\.csv:3: column 4 \('categorical_3'\): categorical ids must be integers")


def test_conversion_without_click_error_and_drop(tmp_path):
  lines = good_ae(tmp_path, n=40)
  lines[12] = ae_row(3, click=0, conversion=1)
  lines[30] = ae_row(4, click=0, conversion=1)
  path = write(tmp_path, "cvr.csv", lines)
  expect_error(tmp_path, "aliexpress", [path],
               r"cvr\.csv:13: column 82 \('conversion'\): conversion without click")
  meta = preprocess.build_store("aliexpress", [path], str(tmp_path / "dropped"),
                                options=preprocess.Options(policy="drop"))
  assert sum(s["dropped_conversion_without_click"] for s in meta["splits"].values()) == 2
  assert sum(s["rows"] for s in meta["splits"].values()) == 38
  assert meta["entire_space_policy"] == "drop"


def test_header_mismatch(tmp_path):
  lines = good_ae(tmp_path)
  lines[0] = lines[0].replace("categorical_3", "cat_3")
  path = write(tmp_path, "hdr.csv", lines)
  expect_error(tmp_path, "aliexpress", [path],
               r"hdr\.csv:1: column 4: header does not match format aliexpress: expected "
               r"'categorical_3', found 'cat_3'")


def test_header_of_another_format(tmp_path):
  ccp = os.path.join(ALICCP, "torch-rechub-sample", "ali_ccp_train_sample.csv")
  if not os.path.exists(ccp):
    pytest.skip("../shared/data absent")
  expect_error(tmp_path, "aliccp_aitm", [ccp],
               r"ali_ccp_train_sample\.csv:1: column 15: header does not match")


@pytest.mark.parametrize("option,column", [("sparse", "click"), ("dense", "conversion")])
def test_label_configured_as_feature(tmp_path, option, column):
  path = write(tmp_path, "ok.csv", good_ae(tmp_path))
  index = 81 if column == "click" else 82
  expect_error(tmp_path, "aliexpress", [path],
               rf"column {index} \('{column}'\): is the {column} label of format "
               rf"aliexpress; labels are never features \(remove it from --{option}\)",
               **{option: ("categorical_1", column)})


def test_census_label_configured_as_feature(tmp_path):
  path = write(tmp_path, "c.txt", ["x"])
  expect_error(tmp_path, "census", [path], r"column 8 \('marital stat'\): is the "
               r"conversion \(never married\) label", sparse=("education", "marital stat"))


def test_empty_line_in_the_middle(tmp_path):
  lines = good_ae(tmp_path)
  lines[9] = ""
  path = write(tmp_path, "gap.csv", lines)
  expect_error(tmp_path, "aliexpress", [path], r"gap\.csv:10: empty line")


def test_error_line_numbers_count_across_blocks(tmp_path):
  lines = good_ae(tmp_path, n=50)
  lines[37] = ae_row(1, numeric="oops")
  path = write(tmp_path, "blocks.csv", lines)
  expect_error(tmp_path, "aliexpress", [path], r"blocks\.csv:38: column 18", chunk_rows=7)


CENSUS_LINE = ("38, Private, 6, 36, 1st 2nd 3rd or 4th grade, 0, Not in universe, "
               "Married-civilian spouse present, Manufacturing-durable goods, Machine "
               "operators assmblrs & inspctrs, White, Mexican (Mexicano), Female, Not in "
               "universe, Not in universe, Full-time schedules, 0, 0, 0, Joint one under 65 "
               "& one 65+, Not in universe, Not in universe, Spouse of householder, Spouse "
               "of householder, 1032.38, ?, ?, ?, Not in universe under 1 year old, ?, 4, "
               "Not in universe, Mexico, Mexico, Mexico, Foreign born- Not a citizen of U S "
               ", 0, Not in universe, 2, 12, 95, - 50000.")


def census_lines(n=30):
  return [CENSUS_LINE.replace("38,", f"{20 + i},", 1) for i in range(n)]


def test_census_bad_income_label(tmp_path):
  lines = census_lines()
  lines[4] = lines[4].replace("- 50000.", "50000")
  path = write(tmp_path, "census.txt", lines)
  expect_error(tmp_path, "census", [path],
               r"census\.txt:5: column 42 \('income'\): income label must be")


def test_census_non_numeric_continuous(tmp_path):
  lines = census_lines()
  lines[6] = lines[6].replace("Private, 6, 36, 1st 2nd 3rd or 4th grade, 0,",
                              "Private, 6, 36, 1st 2nd 3rd or 4th grade, ?,")
  path = write(tmp_path, "census.txt", lines)
  expect_error(tmp_path, "census", [path], r"census\.txt:7: column 6 \('wage per hour'\): "
               r"non-numeric value in a continuous column, got '\?'")


def test_census_wrong_column_count(tmp_path):
  lines = census_lines()
  lines[11] = lines[11].replace(" Female,", "")
  path = write(tmp_path, "census.txt", lines)
  expect_error(tmp_path, "census", [path],
               r"census\.txt:12: column 42: expected 42 columns, found 41")


def test_census_nan_continuous(tmp_path):
  lines = census_lines()
  lines[2] = lines[2].replace(", 2, 12, 95,", ", 2, nan, 95,")
  path = write(tmp_path, "census.txt", lines)
  expect_error(tmp_path, "census", [path],
               r"census\.txt:3: column 40 \('weeks worked in year'\): NaN/inf value")


def test_census_header_mismatch(tmp_path):
  path = write(tmp_path, "census.csv", [AE_HEADER] + census_lines())
  expect_error(tmp_path, "census", [path], r"census\.csv:1: column 4")


RAW = "1,1,0,101:5,205:6,150_14:7,150_14:8,210:9"


@pytest.mark.parametrize("line,pattern", [
    ("2,1,0,101:5,205-6", r"raw\.txt:3: column 5: expected field:feat, got '205-6'"),
    ("2,1,0,101:5,999:6", r"raw\.txt:3: column 5: unknown field"),
    ("2,1,0,101:5,205:x", r"raw\.txt:3: column 5: feature ids must be non-negative "
                          r"integers, got 'x'"),
    ("2,1,3,101:5,205:6", r"raw\.txt:3: column 3 \('purchase'\): label must be 0 or 1"),
    ("2,0,1,101:5,205:6", r"raw\.txt:3: column 3 \('purchase'\): conversion without click"),
    ("2,1", r"raw\.txt:3: column 3: expected 'id,click,purchase,field:feat"),
])
def test_aliccp_raw_bad_lines(tmp_path, line, pattern):
  path = write(tmp_path, "raw.txt", [RAW, RAW, line, RAW])
  expect_error(tmp_path, "aliccp_raw", [f"train={path}", f"val={path}", f"test={path}"],
               pattern)


def test_aliccp_raw_header_mismatch(tmp_path):
  path = write(tmp_path, "raw.txt", ["id,click,purchase,features", RAW])
  expect_error(tmp_path, "aliccp_raw", [path], r"raw\.txt:1: header does not match")


def test_failure_keeps_an_existing_store(tmp_path):
  good = write(tmp_path, "good.csv", good_ae(tmp_path))
  preprocess.build_store("aliexpress", [good], str(tmp_path / "out"))
  before = open(tmp_path / "out" / "meta.json").read()
  bad = write(tmp_path, "bad.csv", good_ae(tmp_path)[:5] + ["1,2,3"])
  with pytest.raises(DataError, match=r"bad\.csv:6"):
    preprocess.build_store("aliexpress", [bad], str(tmp_path / "out"), overwrite=True)
  assert open(tmp_path / "out" / "meta.json").read() == before
  assert sorted(p for p in os.listdir(tmp_path) if "out" in p) == ["out"]
  with pytest.raises(FileExistsError):
    preprocess.build_store("aliexpress", [good], str(tmp_path / "out"))


def test_a_failure_while_the_store_is_allocated_leaves_nothing(tmp_path, monkeypatch):
  """The columns are allocated on a thread while the vocabularies are merged: a failure
  of the merge still removes the new store's temporary directory and the spill, and
  keeps the existing store."""
  good = write(tmp_path, "good.csv", good_ae(tmp_path))
  preprocess.build_store("aliexpress", [good], str(tmp_path / "out"))
  before = open(tmp_path / "out" / "meta.json").read()

  def fail(*args):
    raise MemoryError("no memory for the vocabularies")

  monkeypatch.setattr(preprocess, "_vocabularies", fail)
  with pytest.raises(MemoryError):
    preprocess.build_store("aliexpress", [good], str(tmp_path / "out"), overwrite=True)
  assert open(tmp_path / "out" / "meta.json").read() == before
  assert sorted(p for p in os.listdir(tmp_path) if "out" in p) == ["out"]


def test_without_blake3_preprocessing_stops_before_reading(tmp_path, monkeypatch):
  good = write(tmp_path, "good.csv", good_ae(tmp_path))
  monkeypatch.setitem(sys.modules, "blake3", None)  # "import blake3" raises ImportError.
  with pytest.raises(ImportError, match="blake3 package"):
    preprocess.build_store("aliexpress", [good], str(tmp_path / "out"))
  assert sorted(p for p in os.listdir(tmp_path) if "out" in p) == []


def test_an_interrupt_while_the_store_is_allocated_leaves_nothing(tmp_path, monkeypatch):
  """Ctrl-C while the main thread waits for the columns' allocation (the vocabularies
  merged first): the allocation finishes, then the new store is removed."""
  import _thread
  import threading
  good = write(tmp_path, "good.csv", good_ae(tmp_path))
  zeroed_map, vocabularies = store_writer._zeroed_map, preprocess._vocabularies
  slow = threading.Event()

  def slow_zeroed_map(*args):
    if not slow.is_set():
      slow.set()
      threading.Event().wait(1.0)
    return zeroed_map(*args)

  def interrupt_after(*args):
    result = vocabularies(*args)
    threading.Timer(0.2, _thread.interrupt_main).start()
    return result

  monkeypatch.setattr(store_writer, "_zeroed_map", slow_zeroed_map)
  monkeypatch.setattr(preprocess, "_vocabularies", interrupt_after)
  with pytest.raises(KeyboardInterrupt):
    preprocess.build_store("aliexpress", [good], str(tmp_path / "out"))
  assert slow.is_set()
  assert sorted(p for p in os.listdir(tmp_path) if "out" in p) == []


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


def test_parallel_workers_write_the_same_store(tmp_path, monkeypatch):
  # Worker processes even for this small file (by default one needs 16 MiB of input).
  monkeypatch.setattr(blocks, "MIN_BYTES_PER_WORKER", 1)
  lines = good_ae(tmp_path, n=300)
  path = write(tmp_path, "ae.csv", lines)
  one = preprocess.build_store("aliexpress", [path], str(tmp_path / "one"),
                               options=preprocess.Options(chunk_rows=16))
  two = preprocess.build_store("aliexpress", [path], str(tmp_path / "two"),
                               options=preprocess.Options(chunk_rows=16, workers=2))
  assert one["splits"] == two["splits"]
  a, b = store.load_store(str(tmp_path / "one")), store.load_store(str(tmp_path / "two"))
  for split in a.splits:
    for key in a.splits[split]:
      np.testing.assert_array_equal(a.splits[split][key], b.splits[split][key])
  lines[250] = ae_row(1, numeric="x")  # an error raised inside a worker keeps its place.
  bad = write(tmp_path, "bad.csv", lines)
  with pytest.raises(DataError, match=r"bad\.csv:251: column 18") as info:
    preprocess.build_store("aliexpress", [bad], str(tmp_path / "three"),
                           options=preprocess.Options(chunk_rows=16, workers=2))
  assert (info.value.line, info.value.column) == (251, 18)
  assert not os.path.exists(tmp_path / "three")


def test_parallel_worker_processes_write_the_same_store(tmp_path, monkeypatch):
  """Workers as processes (``processes=True``) write the store that threads write."""
  monkeypatch.setattr(blocks, "MIN_BYTES_PER_WORKER", 1)
  path = write(tmp_path, "ae.csv", good_ae(tmp_path, n=300))
  options = dict(chunk_rows=16, workers=2)
  preprocess.build_store("aliexpress", [path], str(tmp_path / "threads"),
                         options=preprocess.Options(**options))
  preprocess.build_store("aliexpress", [path], str(tmp_path / "processes"),
                         options=preprocess.Options(**options, processes=True))
  a, b = (store.load_store(str(tmp_path / d)) for d in ("threads", "processes"))
  for split in a.splits:
    for key in a.splits[split]:
      np.testing.assert_array_equal(a.splits[split][key], b.splits[split][key])


def _run_child(script: str, cwd) -> subprocess.CompletedProcess:
  """``script`` in a child Python that imports this folder's modules (the misbehaving
  formats), with a time limit: a hang fails the test instead of stalling the suite."""
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [tests_dir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=180, env=env, cwd=cwd)


def test_a_dead_worker_process_fails_the_run_and_leaves_nothing(tmp_path):
  """A worker process killed mid-run (e.g. by the OOM killer) ends the run with an
  error that says so, instead of waiting forever for its result; nothing is left at
  the output, and an existing store there is kept. Run in a child process with a
  time limit, so that a hang fails the test instead of stalling the suite."""
  path = write(tmp_path, "ae.csv", good_ae(tmp_path, n=300))
  out = tmp_path / "out"
  preprocess.build_store("aliexpress", [path], str(out))
  before = sorted(os.listdir(out))
  script = f"""
import os
from pico_jax.ingest import blocks, formats, preprocess
import faulty_formats
blocks.MIN_BYTES_PER_WORKER = 1
formats.FORMATS["dying"] = lambda **kw: faulty_formats.DyingAliexpress(200, os.getpid(), **kw)
try:
  preprocess.build_store("dying", [{path!r}], {str(out)!r}, overwrite=True,
                         options=preprocess.Options(chunk_rows=16, workers=2,
                                                    processes=True))
except Exception as e:
  print(type(e).__name__, e)
"""
  result = _run_child(script, tmp_path)
  assert "WorkerDied a preprocessing worker process died" in result.stdout, (
      result.stdout + result.stderr)
  assert sorted(os.listdir(out)) == before  # the existing store is untouched,
  assert sorted(os.listdir(tmp_path)) == ["ae.csv", "out"]  # no spill, no temporary.


def test_a_worker_death_seen_at_a_submit_is_worker_died_too(tmp_path):
  """When a worker dies while the parent is busy with an earlier result, the next
  submit (not a result) finds the pool broken: that is reported as WorkerDied too."""
  script = """
import time
from pico_jax.ingest import blocks
import faulty_formats
try:
  with blocks.Runner(2, threads=False) as runner:
    for x in runner.map(faulty_formats.die_on_one, range(20), 20):
      time.sleep(1.0)  # the parent is slow: the death happens between submits.
except Exception as e:
  print(type(e).__name__, e)
"""
  result = _run_child(script, tmp_path)
  assert result.stdout.startswith("WorkerDied a preprocessing worker process died"), (
      result.stdout + result.stderr)


def test_an_input_written_during_the_run_fails_it(tmp_path, monkeypatch):
  """A file that changes while it is preprocessed (here: a line appended after the
  scan) fails the run with an error naming it; no store is written."""
  import faulty_formats
  monkeypatch.setitem(formats.FORMATS, "growing", faulty_formats.GrowingAliexpress)
  path = write(tmp_path, "ae.csv", good_ae(tmp_path, n=50))
  expect_error(tmp_path, "growing", [path], r"ae\.csv: the file changed while it was "
               "being read")


def test_command_line(tmp_path):
  """launch/preprocess.py: the flags reach the build; bad input is one line, status 1."""
  from conftest import run_script
  good = write(tmp_path, "ae.csv", good_ae(tmp_path, n=40))
  done = run_script("preprocess", "--format=aliexpress", f"--input={good}",
                    f"--output={tmp_path / 's'}", "--hash=categorical_1=4",
                    "--spill_memory_mb=3", "--noprogress")
  assert done.returncode == 0, done.stderr
  assert "40 rows" in done.stdout
  assert store.load_store(str(tmp_path / "s")).schema.sparse[0].vocab_size == 5
  bad = write(tmp_path, "bad.csv", good_ae(tmp_path)[:3] + ["1,2"])
  done = run_script("preprocess", "--format=aliexpress", f"--input={bad}",
                    f"--output={tmp_path / 't'}", "--noprogress")
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
      f"error: {bad}:4: column 3: expected 82 columns, found 2"]
  done = run_script("preprocess", "--format=aliexpress", f"--input={good}",
                    f"--output={tmp_path / 'u'}", "--hash=categorical_1")
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
      "error: --hash 'categorical_1': expected FIELD=BUCKETS"]


def test_blocks_cut_at_line_boundaries(tmp_path, monkeypatch):
  """Scanned blocks (read by offset) and streamed blocks hold every line once, in
  order, whatever the read size, the block size, the header and the last newline."""
  from pico_jax.ingest import reading
  rng = np.random.default_rng(0)
  path = tmp_path / "f.txt"
  for _ in range(300):
    lines = [b"x" * int(rng.integers(1, 6)) for _ in range(int(rng.integers(1, 30)))]
    text = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
    path.write_bytes(text)
    monkeypatch.setattr(reading, "_READ_BYTES", int(rng.integers(1, 20)))
    rows, header = int(rng.integers(1, 8)), bool(rng.random() < 0.5)
    info = reading.scan_file(str(path), rows, header)
    data = [reading.read_block(b) for b in info.blocks]
    assert b"".join(data) == b"".join(reading.split_lines(text)[int(header):])
    assert [len(reading.split_lines(d)) for d in data] == [b.num_lines for b in info.blocks]
    assert [b.first_line for b in info.blocks] == [
        1 + int(header) + k * rows for k in range(len(info.blocks))]
    assert info.num_lines == len(reading.split_lines(text))
    streamed = [(b, d) for b, d in reading.stream_blocks(str(path), rows, header) if b]
    assert streamed == list(zip(info.blocks, data))



def test_hash_file_is_the_blake3_of_the_bytes(tmp_path, monkeypatch):
  """The digest meta.json records is what ``b3sum`` prints, whatever the read windows."""
  from pico_jax.ingest import reading
  empty = tmp_path / "empty"
  empty.write_bytes(b"")
  # The BLAKE3 specification's digest of the empty input.
  assert reading.hash_file(str(empty)) == (
      "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
  path = tmp_path / "f"
  data = np.random.default_rng(0).integers(0, 256, 10_000, np.uint8).tobytes()
  path.write_bytes(data)
  whole = reading.hash_file(str(path))
  monkeypatch.setattr(reading, "_READ_BYTES", 999)  # 11 windows, the last one short.
  assert reading.hash_file(str(path)) == whole
  assert reading.hash_file(str(path), threads=3) == whole
  path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
  assert reading.hash_file(str(path)) != whole


def test_parse_threads_go_to_the_last_blocks():
  # 2 threads, 5 blocks: the fifth is parsed on both; 16 threads, 5 blocks: 4 each.
  assert [blocks.parse_threads(k, 5, 2) for k in range(5)] == [1, 1, 1, 1, 2]
  assert [blocks.parse_threads(k, 5, 16) for k in range(5)] == [4] * 5
  assert [blocks.parse_threads(k, 13, 8) for k in range(13)] == [1] * 8 + [2] * 5
  assert [blocks.parse_threads(k, 6, 2) for k in range(6)] == [1] * 6
  assert [blocks.parse_threads(k, 3, 1) for k in range(3)] == [1] * 3
