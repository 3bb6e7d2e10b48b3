"""Stores are byte-identical to the ones the previous (``np.loadtxt``, two-parse)
preprocessor wrote: the real samples of every format and generated files of a few
thousand rows, compared array by array (every column of every split, every vocabulary
file, the schema, the dense statistics and the split sizes) with digests recorded in
``golden/stores.json`` before the parser was rebuilt.

Re-record (only after a deliberate change of the store): PICO_JAX_RECORD_GOLDEN=1 pytest
tests/test_store_equality.py.
"""

import hashlib
import json
import os

import numpy as np
import pytest

from pico_jax.ingest import blocks, preprocess, spill
from shared_data import ALICCP, ALIEXPRESS, CENSUS, needs_data

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "stores.json")
RECORD = bool(os.environ.get("PICO_JAX_RECORD_GOLDEN"))
# meta.json entries that describe the data (not the paths or run options).
META_KEYS = ("schema", "splits", "vocab", "dense_stats", "multi_truncated_rows",
             "entire_space_policy", "task_relation", "tasks", "columns", "format")


def write_aliexpress(path, rows=3000, seed=0):
  """An AliExpress-format file whose numbers are spelled in every way the reader takes:
  exponents, signs, padding, many digits, '-0', CRLF endings; ids up to 2**40."""
  rng = np.random.default_rng(seed)
  header = (["search_id"] + [f"categorical_{i}" for i in range(1, 17)]
            + [f"numerical_{i}" for i in range(1, 64)] + ["click", "conversion"])
  spell = [lambda x: repr(float(x)), lambda x: f"{x:.3e}", lambda x: f"{x:+.6f}",
           lambda x: f" {x:.4f} ", lambda x: f"{x:.17g}", lambda x: "-0" if x == 0 else
           f"{x:.2f}"]
  vocab = np.array([3, 10, 50, 200, 1000, 5000, 2**40] + [20] * 9)
  lines = [",".join(header)]
  for i in range(rows):
    click = int(rng.random() < 0.3)
    conversion = int(click and rng.random() < 0.3)
    ids = [str(int(rng.integers(0, v))) if rng.random() > 0.05 else
           f"{float(rng.integers(0, v)):.1f}" for v in vocab]
    dense = rng.normal(size=63) * 10.0 ** rng.integers(-3, 4, size=63)
    dense[rng.random(63) < 0.2] = 0.0
    nums = [spell[int(rng.integers(len(spell)))](x) for x in dense]
    lines.append(",".join([str(i // 7)] + ids + nums + [str(click), str(conversion)]))
  text = "".join(line + ("\r\n" if k % 11 == 5 else "\n") for k, line in enumerate(lines))
  with open(path, "w", newline="") as f:
    f.write(text)
  return str(path)


def write_aliccp_raw(path, rows=1500, seed=1):
  """Ali-CCP raw lines with missing, repeated (multi-valued) and shuffled fields."""
  rng = np.random.default_rng(seed)
  fields = ["101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "205",
            "206", "207", "210", "216", "508", "853", "301"]
  lines = []
  for i in range(rows):
    click = int(rng.random() < 0.4)
    tokens = []
    for f in fields:
      repeat = int(rng.integers(0, 6)) if f in ("110_14", "210") else int(rng.random() > 0.1)
      tokens += [f"{f}:{int(rng.integers(0, 400))}" for _ in range(repeat)]
    rng.shuffle(tokens)
    lines.append(",".join([str(i), str(click), str(int(click and rng.random() < 0.2))]
                          + tokens))
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


def _cases(tmp):
  ae = os.path.join(ALIEXPRESS, "torch-rechub-sample", "aliexpress_{}_sample.csv")
  fuxi = os.path.join(ALIEXPRESS, "fuxictr-tiny_mtl", "{}.csv")
  ccp = os.path.join(ALICCP, "torch-rechub-sample", "ali_ccp_{}_sample.csv")
  aitm = os.path.join(ALICCP, "paddlerec-aitm-sample", "{}.csv")
  esmm = os.path.join(ALICCP, "paddlerec-esmm-sample", "{}_small.txt")
  gen_ae = write_aliexpress(tmp / "generated_aliexpress.csv")
  gen_raw = write_aliccp_raw(tmp / "generated_aliccp_raw.txt")
  return {
      "census_full": ("census", [os.path.join(CENSUS, "census-income.test.gz")], {}),
      "census_deepctr": ("census", [os.path.join(CENSUS, "deepctr-sample",
                                                 "census-income.sample")],
                         {"seed": 6, "chunk_rows": 64}),
      "aliexpress_rechub": ("aliexpress", [ae.format("train"), ae.format("test")], {}),
      "aliexpress_fuxictr": ("aliexpress", [fuxi.format("train"), fuxi.format("test")],
                             {"min_count": 2, "chunk_rows": 30}),
      "aliccp_csv": ("aliccp_csv", [ccp.format(s) for s in ("train", "val", "test")],
                     {"dense_transform": "none"}),
      "aliccp_aitm": ("aliccp_aitm", [aitm.format("train"), aitm.format("test")],
                      {"policy": "drop"}),
      "aliccp_raw": ("aliccp_raw", [esmm.format("train"), esmm.format("test")],
                     {"val_fraction": 0.2, "multi_max_len": 400}),
      "aliccp_raw_truncated": ("aliccp_raw", [esmm.format("train")],
                               {"multi_max_len": 8, "split_fractions": (0.6, 0.2, 0.2)}),
      "generated_aliexpress": ("aliexpress", [gen_ae],
                               {"chunk_rows": 512, "hash_buckets": (("categorical_2", 50),),
                                "max_vocab": 1000, "seed": 3}),
      "generated_aliexpress_two_files": ("aliexpress", [gen_ae, gen_ae],
                                         {"chunk_rows": 1000, "val_fraction": 0.25}),
      "generated_aliccp_raw": ("aliccp_raw", [gen_raw],
                               {"chunk_rows": 256, "multi_max_len": 3, "min_count": 3}),
  }


def _digest(array) -> list:
  array = np.ascontiguousarray(array)
  return [list(array.shape), array.dtype.str, hashlib.sha256(array.tobytes()).hexdigest()]


def store_digests(path: str) -> dict:
  """Every array of the store at ``path`` (columns and vocabularies) by its relative
  path -> [shape, dtype, sha256], and the data-describing meta.json entries."""
  out = {}
  for dirpath, _, files in os.walk(path):
    for name in sorted(files):
      if name.endswith(".npy"):
        full = os.path.join(dirpath, name)
        out[os.path.relpath(full, path)] = _digest(np.load(full, allow_pickle=False))
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  for key in META_KEYS:
    out[f"meta/{key}"] = meta.get(key)
  return out


@needs_data
def test_stores_equal_the_recorded_ones(tmp_path):
  cases = _cases(tmp_path)
  got = {}
  for name, (fmt, inputs, options) in cases.items():
    out = str(tmp_path / name)
    preprocess.build_store(fmt, inputs, out, options=preprocess.Options(**options))
    got[name] = store_digests(out)
  if RECORD:
    with open(GOLDEN, "w") as f:
      json.dump(got, f, indent=1, sort_keys=True)
    pytest.skip(f"recorded {GOLDEN}")
  with open(GOLDEN) as f:
    golden = json.load(f)
  assert sorted(got) == sorted(golden)
  for name in cases:
    assert sorted(got[name]) == sorted(golden[name]), name
    for key, want in golden[name].items():
      assert got[name][key] == want, f"{name}: {key} differs"


@needs_data
@pytest.mark.parametrize("spill_memory", [0, 400_000])
def test_stores_do_not_depend_on_where_blocks_wait(tmp_path, monkeypatch, spill_memory):
  """Every block spilled to a file (0), or the first few held in memory and the rest in
  files (400 kB holds one or three of these files' blocks of 100-320 kB): the same
  stores as the recorded ones, which hold every block in memory."""
  with open(GOLDEN) as f:
    golden = json.load(f)
  to_files = []
  dump = spill._dump
  monkeypatch.setattr(spill, "_dump", lambda path, chunk: (to_files.append(path),
                                                            dump(path, chunk)))
  cases = _cases(tmp_path)
  for name in ("generated_aliexpress", "generated_aliccp_raw"):
    fmt, inputs, options = cases[name]
    to_files.clear()
    out = str(tmp_path / name)
    preprocess.build_store(fmt, inputs, out, options=preprocess.Options(
        **options, spill_memory=spill_memory))
    assert store_digests(out) == golden[name], name
    spilled = len([f for f in to_files if f.endswith(".pkl")])
    assert (spilled == 6) if spill_memory == 0 else (0 < spilled < 6), (name, spilled)


@needs_data
def test_stores_do_not_depend_on_parse_threads(tmp_path, monkeypatch):
  """Every block parsed in 3 runs of lines side by side: the recorded stores."""
  with open(GOLDEN) as f:
    golden = json.load(f)
  monkeypatch.setattr(blocks, "parse_threads", lambda block, num_blocks, threads: 3)
  cases = _cases(tmp_path)
  for name in ("generated_aliexpress", "generated_aliexpress_two_files"):
    fmt, inputs, options = cases[name]
    out = str(tmp_path / name)
    preprocess.build_store(fmt, inputs, out, options=preprocess.Options(**options))
    assert store_digests(out) == golden[name], name
