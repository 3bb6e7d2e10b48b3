"""Bad input: one generated file per case; each error names the file, the line and the
column, and leaves nothing behind (an existing store is kept). Also launch/preprocess.py:
bad input is one line, status 1."""

import os

import pytest

from pico_jax.ingest import formats, preprocess
from pico_jax.data import store
from pico_jax.data.errors import DataError

from shared_data import ALICCP
from test_readers import AE_HEADER, ae_row, good_ae, write


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


@pytest.mark.parametrize("flag,message", [
    ("--min_count=0", "--min_count=0: must be >= 1"),
    ("--spill_memory_mb=-1", "--spill_memory_mb=-1: must be >= 0"),
    ("--hash=nope=4", "--hash=nope=4: ['nope']: not categorical fields of format "
     "aliexpress"),
])
def test_an_option_out_of_range_is_one_line_naming_its_flag(tmp_path, flag, message):
  """An option out of its range (the flags come from ``preprocess.Options``) is one
  line naming the flag as given, before any input is read; nothing is written."""
  from conftest import run_script
  good = write(tmp_path, "ae.csv", good_ae(tmp_path, n=20))
  done = run_script("preprocess", "--format=aliexpress", f"--input={good}",
                    f"--output={tmp_path / 's'}", flag, "--noprogress")
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [f"error: {message}"]
  assert sorted(os.listdir(tmp_path)) == ["ae.csv"]
