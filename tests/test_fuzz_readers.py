"""Reader fuzzing: the real samples of every format, corrupted at random (seeded).

Every case either preprocesses to a valid store or raises ``DataError`` naming the
file and the line; no other exception escapes, and nothing is left at the output. For
the numeric CSV formats, every corrupted block is also parsed by both parsers: the
fast (pyarrow) one must give exactly the reference (``np.loadtxt``) one's rows, or
the same error.
"""

import gzip
import os

import numpy as np

from pico_jax import batch as B
from pico_jax.ingest import formats, preprocess, raw_files
from pico_jax.data import store
from pico_jax.data.errors import DataError
from shared_data import ALICCP, ALIEXPRESS, CENSUS, needs_data

CASES_PER_SAMPLE = 60
MAX_LINES = 12  # small inputs keep a case at a few milliseconds.
SAMPLES = {
    "census": os.path.join(CENSUS, "deepctr-sample", "census-income.sample"),
    "aliexpress": os.path.join(ALIEXPRESS, "fuxictr-tiny_mtl", "test.csv"),
    "aliccp_csv": os.path.join(ALICCP, "torch-rechub-sample", "ali_ccp_val_sample.csv"),
    "aliccp_aitm": os.path.join(ALICCP, "paddlerec-aitm-sample", "train.csv"),
    "aliccp_raw": os.path.join(ALICCP, "paddlerec-esmm-sample", "test_small.txt"),
}
NASTY = [b"", b"abc", b"nan", b"-inf", b"inf", b"NaN", b"1e999", b"0x10", b"1_0", b" 7 ",
         b"+3", b"-0", b"3.0", b"1e3", b"\"5\"", b"9" * 25, b"\xff\xfe", b"\xc3\x28", b"2",
         b"0.5", b"-1", b"101:x", b"999:1", b"205-6", b"\t1", b"\xef\xbb\xbf1"]


def _mutate(rng, lines: list[bytes]) -> tuple[list[bytes], str]:
  """One random corruption of ``lines`` (each ending in b"\\n"); its name."""
  kind = rng.choice(["truncate_line", "extra_column", "missing_column", "token", "token",
                     "token",
                     "non_utf8", "crlf", "blank_line", "lone_cr", "bom", "cut_file",
                     "swap_header", "no_final_newline", "duplicate_line"])
  lines = list(lines)
  i = int(rng.integers(len(lines)))
  line = lines[i].rstrip(b"\r\n")
  tokens = line.split(b",")
  j = int(rng.integers(len(tokens)))
  if kind == "truncate_line":
    lines[i] = line[:int(rng.integers(len(line) + 1))] + b"\n"
  elif kind == "extra_column":
    tokens.insert(j, rng.choice(NASTY[:6] + [b"1"]))
    lines[i] = b",".join(tokens) + b"\n"
  elif kind == "missing_column":
    del tokens[j]
    lines[i] = b",".join(tokens) + b"\n"
  elif kind == "token":
    tokens[j] = NASTY[int(rng.integers(len(NASTY)))]
    lines[i] = b",".join(tokens) + b"\n"
  elif kind == "non_utf8":
    k = int(rng.integers(len(line) + 1))
    lines[i] = line[:k] + rng.choice([b"\xff", b"\xc3\x28", b"\x80\x80"]) + line[k:] + b"\n"
  elif kind == "crlf":
    lines = [l.rstrip(b"\n") + b"\r\n" for l in lines]
  elif kind == "blank_line":
    lines.insert(i, rng.choice([b"\n", b"  \n", b"\r\n"]))
  elif kind == "lone_cr":
    k = int(rng.integers(len(line) + 1))
    lines[i] = line[:k] + b"\r" + line[k:] + b"\n"
  elif kind == "bom":
    lines[i] = b"\xef\xbb\xbf" + lines[i]
  elif kind == "cut_file":
    text = b"".join(lines)
    return [text[:int(rng.integers(len(text) + 1))]], kind
  elif kind == "swap_header":
    lines.insert(i, lines[0])
  elif kind == "no_final_newline":
    lines[-1] = lines[-1].rstrip(b"\r\n")
  else:
    lines.insert(i, lines[i])
  return lines, kind


def _check_store(path, data_lines):
  ds = store.load_store(path)
  rows = sum(ds.num_rows(s) for s in ds.splits)
  assert rows <= 3 * data_lines  # the file is every split: train=, val=, test=.
  for cols in ds.splits.values():
    assert set(np.unique(cols[B.CLICK])) <= {0.0, 1.0}
    if ds.schema.sparse:
      sizes = np.array([f.vocab_size for f in ds.schema.sparse])
      assert np.all((cols[B.SPARSE] >= 0) & (cols[B.SPARSE] < sizes))
    if ds.schema.dense:
      assert np.all(np.isfinite(cols[B.DENSE]))


def _same_parse(fmt, path, data: bytes, layout):
  """The fast parser agrees with the reference parser on ``data``."""
  def run(parse):
    try:
      return parse()
    except DataError as e:
      return ("error", e.line, e.column)
  fast = run(lambda: fmt.parse_block(path, data, 1, layout))
  ref = run(lambda: fmt.parse(path, raw_files.split_lines(data), 1, layout))
  if isinstance(ref, tuple) or isinstance(fast, tuple):
    assert fast == ref
    return
  for name in ("lines", "click", "conversion", "dense", "group", "ids"):
    a, b = getattr(fast, name), getattr(ref, name)
    assert (a is None) == (b is None), name
    if a is not None:
      assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
  for a, b in zip(fast.sparse, ref.sparse):
    assert a.tobytes() == b.tobytes()


@needs_data
def test_corrupted_samples_fail_cleanly_or_build(tmp_path):
  rng = np.random.default_rng(20261128)
  tried, built, counts = 0, 0, {}
  for fmt_name, sample in SAMPLES.items():
    with open(sample, "rb") as f:
      original = f.readlines()[:MAX_LINES]
    fmt = formats.get_format(fmt_name)
    for case in range(CASES_PER_SAMPLE):
      lines, kind = _mutate(rng, original)
      if rng.random() < 0.3:
        lines, second = _mutate(rng, lines)
        kind += "+" + second
      if rng.random() < 0.05:
        lines, kind = [], "empty_file"
      data = b"".join(lines)
      path = tmp_path / f"{fmt_name}_{case}.txt"
      if rng.random() < 0.1:  # gzip, sometimes cut short.
        packed = gzip.compress(data)
        if rng.random() < 0.5:
          packed, kind = packed[:int(rng.integers(2, len(packed) + 1))], kind + "+gzip_cut"
        path.write_bytes(packed)
      else:
        path.write_bytes(data)
      out = tmp_path / "out"
      try:
        preprocess.build_store(fmt_name, [f"train={path}", f"val={path}", f"test={path}"],
                               str(out), options=preprocess.Options(workers=1))
      except DataError as e:
        assert e.path == str(path) and e.line is not None, (kind, str(e))
        assert not [p for p in os.listdir(tmp_path) if p.startswith((".out", "out"))], kind
      else:
        _check_store(str(out), data.count(b"\n") + 1)
        built += 1
        os.rename(out, tmp_path / f"built_{fmt_name}_{case}")
      counts[kind.split("+")[0]] = counts.get(kind.split("+")[0], 0) + 1
      tried += 1
      if fmt_name not in ("census", "aliccp_raw") and data:
        try:
          layout = fmt.inspect(str(path), raw_files.split_lines(data)[0])
        except DataError:
          continue
        body = b"".join(raw_files.split_lines(data)[int(layout.header):])
        if body:
          _same_parse(fmt, str(path), body, layout)
  print(f"reader fuzzing: {tried} cases ({built} built a store, {tried - built} raised "
        f"DataError), corruptions: {counts}")
  assert tried == CASES_PER_SAMPLE * len(SAMPLES)
  assert 0 < built < tried  # the corruptions hit both outcomes.
