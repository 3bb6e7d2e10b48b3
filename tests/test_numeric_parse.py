"""The compiled numeric CSV parser (``pico_jax.ingest.numeric_parse``) against its
reference, ``np.loadtxt``: whenever it returns arrays they are those of ``np.loadtxt``
bit for bit (random spellings of floats, fast-path and hard, and of integer ids); for
any token outside its grammar it returns None, never other values or an exception; it
runs on threads side by side; and the real samples take it rather than the fallback.
"""

import concurrent.futures
import locale
import mmap
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from pico_jax.ingest import formats, numeric_parse, raw_files
from shared_data import ALICCP, ALIEXPRESS, needs_data

MAX_EXACT_INT = 2 ** 53
_TOKEN = re.compile(r"-?(\d*)(?:\.(\d*))?(?:[eE]([-+]?\d+))?")


def reference(data: bytes, int_columns, float_columns):
  """(ints int64 [I, n], floats float64 [n, F]) of ``np.loadtxt``, the promise."""
  values = np.loadtxt(raw_files.split_lines(bytes(data)), delimiter=",", dtype=np.float64,
                      comments=None, ndmin=2, quotechar=None)
  return (values[:, list(int_columns)].T.astype(np.int64),
          values[:, list(float_columns)])


def assert_same(got, want):
  assert got is not None, "parse_columns gave up on a block inside its grammar"
  for a, b in zip(got, want):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()  # bits: -0.0 and 0.0 differ.


def is_hard(token: str) -> bool:
  """The module docstring's rule, written independently of the kernel: a float token
  is hard unless its mantissa has at most 18 digits, is at most 2**53 and its decimal
  exponent is within 22."""
  m = _TOKEN.fullmatch(token)
  assert m, token
  digits = m.group(1) + (m.group(2) or "")
  exponent = int(m.group(3) or 0) - len(m.group(2) or "")
  return len(digits) > 18 or int(digits) > MAX_EXACT_INT or abs(exponent) > 22


# Spellings at the edges of the fast path, the float range and np.loadtxt's grammar.
EDGE_FLOATS = [
    "0", "-0", "-0.0", "0.0", ".5", "-.5", "5.", "5.e3", "1E+05", "1e-05", "1e+0",
    "0.1", "0.3", "1e22", "1e23", "1e-22", "1e-23", "-1e22", "9.999999999999999e22",
    "9007199254740992", "9007199254740993", "9007199254740993.0", "9007199254740992e-5",
    "9007199254740993e-5", "18014398509481985", "999999999999999999",
    "9999999999999999999", "123456789012345678e4", "123456789012345678e-22",
    "0.9999999999999999999", "0.99999999999999999", "1.0000000000000000001",
    "0.000000000000000000001", "0000000000000000000000.5", "4.9e-324", "5e-324",
    "2.4703282292062327e-324", "2.4703282292062328e-324", "2.2250738585072014e-308",
    "2.2250738585072011e-308", "1.7976931348623157e308", "1e-400", "0e99999",
    "1e-99999999999", "8.98846567431158e307", "0.054221000000000005",
    "0.11914000000000001", "1e200", "1e-30", "3.0", "1e3",
]


def spell_float(rng) -> str:
  """One random spelling of one random float (seeded by ``rng``)."""
  kind = int(rng.integers(7))
  if kind == 0:
    return EDGE_FLOATS[int(rng.integers(len(EDGE_FLOATS)))]
  if kind == 1:  # Clinger's boundary: mantissas around 2**53, every fast exponent.
    w = int(rng.integers(MAX_EXACT_INT - 4096, MAX_EXACT_INT + 4096))
    return f"{'-' if rng.random() < 0.5 else ''}{w}e{int(rng.integers(-24, 25))}"
  if kind == 2:  # 17 to 19 digits of mantissa, a point anywhere.
    digits = "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(17, 20))))
    k = int(rng.integers(len(digits) + 1))
    return digits[:k] + "." + digits[k:] if k < len(digits) else digits
  x = float(rng.standard_normal() * 10.0 ** int(rng.integers(-40, 40)))
  if kind == 3:
    x = float(rng.integers(-10 ** 6, 10 ** 6)) / 10 ** int(rng.integers(0, 8))
  fmt = ["repr", ".17g", ".3e", ".6f", ".12g", ".3E", ".20e"][int(rng.integers(7))]
  token = repr(x) if fmt == "repr" else format(x, fmt)
  if token.startswith("0.") and rng.random() < 0.3:
    token = token[1:]  # ".5", np.loadtxt's spelling too.
  return token


def spell_int(rng) -> str:
  kind = int(rng.integers(4))
  if kind == 0:
    return ["0", "00", "1", "-1", str(MAX_EXACT_INT - 1), str(-(MAX_EXACT_INT - 1)),
            "000000000000000007"][int(rng.integers(7))]
  if kind == 1:
    return str(int(rng.integers(-(MAX_EXACT_INT - 1), MAX_EXACT_INT)))
  return str(int(rng.integers(-1000, 10 ** int(rng.integers(1, 16)))))


# The fuzz block: column 0 a 0/1 label, 1 an id also stored as float (the group key
# as a dense feature), 2-7 floats, 8 a float nobody stores, 9 a (negative) id. The
# orders are scrambled to catch a slot mix-up.
INT_COLUMNS = (9, 0, 1)
FLOAT_COLUMNS = (7, 2, 1, 3, 5, 4, 6)
NUM_COLUMNS = 10


def fuzz_block(rng, hard_pool, fast_pool, lines: int, hard_per_block: int) -> bytes:
  """``lines`` lines of the fuzz layout, ``hard_per_block`` of whose stored float
  tokens are hard (the rest take the fast path)."""
  slots = lines * 6
  floats = ([hard_pool[int(i)] for i in rng.integers(len(hard_pool), size=hard_per_block)]
            + [fast_pool[int(i)] for i in rng.integers(len(fast_pool),
                                                       size=slots - hard_per_block)])
  floats = [floats[int(i)] for i in rng.permutation(slots)]
  newline = "\r\n" if rng.random() < 0.3 else "\n"
  out = []
  for r in range(lines):
    tokens = [str(int(rng.integers(2))), spell_int(rng)] + floats[6 * r:6 * r + 6]
    tokens += [spell_float(rng), spell_int(rng)]
    out.append(",".join(tokens) + newline)
  if rng.random() < 0.3:
    out[-1] = out[-1].rstrip("\r\n")  # the file's last line may lack its end.
  return "".join(out).encode()


def test_random_spellings_match_loadtxt_bit_for_bit():
  """Random spellings of floats (fast-path and hard, in every stored column) and of
  ids up to 2**53-1 parse to np.loadtxt's values, bit for bit."""
  rng = np.random.default_rng(20260601)
  pool = [spell_float(rng) for _ in range(20_000)]
  hard_pool = [t for t in pool if is_hard(t)]
  fast_pool = [t for t in pool if not is_hard(t)]
  # The fuzz reaches both conversions, and the edges of each.
  assert len(hard_pool) > 3000 and len(fast_pool) > 3000, (len(hard_pool), len(fast_pool))
  assert {"9007199254740993e-5", "0.9999999999999999999", "1e23"} <= set(hard_pool)
  assert {"9007199254740992e-5", "1e22", "-0", ".5"} <= set(fast_pool)
  counts = {"hard": 0, "fast": 0, "blocks": 0}
  for _ in range(60):
    lines = int(rng.integers(1, 80))
    hard = int(rng.integers(0, lines * 6 + 1))
    data = fuzz_block(rng, hard_pool, fast_pool, lines, hard)
    want = reference(data, INT_COLUMNS, FLOAT_COLUMNS)
    for threads in (1, 2, 3, 7):  # the block cut into runs of lines parsed side by side.
      got = numeric_parse.parse_columns(data, lines, INT_COLUMNS, FLOAT_COLUMNS,
                                        NUM_COLUMNS, threads)
      assert_same(got, want)
    counts["hard"] += hard
    counts["fast"] += lines * 6 - hard
    counts["blocks"] += 1
  assert counts["hard"] > 1000 and counts["fast"] > 3000, counts


def test_every_edge_spelling_alone():
  """Each edge spelling, alone in a stored float column, is np.loadtxt's value (or,
  for 1e400-like overflows only, None)."""
  for token in EDGE_FLOATS + ["1e400", "-1e400", "1e309", "1.8e308", "1e99999999"]:
    data = f"1,{token},2\n".encode()
    got = numeric_parse.parse_columns(data, 1, (0,), (1, 2), 3)
    want = reference(data, (0,), (1, 2))
    if not np.all(np.isfinite(want[1])):
      assert got is None, token
    else:
      assert_same(got, want)


def test_integer_columns_take_ids_below_2_53():
  """Labels and ids up to +-(2**53-1) in integer columns; a column in both lists is
  the integer and its float, as np.loadtxt's value cast to int64."""
  tokens = ["0", "1", "-1", "7", str(MAX_EXACT_INT - 1), str(-(MAX_EXACT_INT - 1)),
            "1234567890123456", "000000000000000042"]
  data = "".join(f"{t},{t},{t}\n" for t in tokens).encode()
  got = numeric_parse.parse_columns(data, len(tokens), (0, 2), (2, 1), 3)
  assert_same(got, reference(data, (0, 2), (2, 1)))
  assert got[0][1].tolist() == [int(t) for t in tokens]


def test_negative_zero_in_an_integer_column_is_left_to_the_reference():
  """"-0" in an integer column gives None (an int64 would drop the sign np.loadtxt
  keeps), while a float column keeps it; through the format, a label "-0" is then
  the reference's float32 -0.0, bit for bit."""
  assert numeric_parse.parse_columns(b"-0,1\n", 1, (0,), (1,), 2) is None
  got = numeric_parse.parse_columns(b"1,-0\n", 1, (0,), (1,), 2)
  assert np.signbit(got[1][0, 0])
  fmt = formats.get_format("aliccp_aitm")
  line = ",".join(["-0", "0"] + ["1"] * len(fmt.sparse_names)).encode() + b"\n"
  layout = fmt.inspect("x.csv", line)
  fast = fmt.parse_block("x.csv", line, 1, layout)
  ref = fmt.parse("x.csv", [line], 1, layout)
  assert fast.click.tobytes() == ref.click.tobytes() and np.signbit(fast.click[0])


@pytest.mark.parametrize("token", [
    "3.0", "3.", ".5", "1e3", "1E0", "9007199254740992", "-9007199254740992",
    "12345678901234567890", "1e400"])
def test_integer_column_rejects_non_integers(token):
  """In an integer column, a point, an exponent or a magnitude >= 2**53 is None; the
  same token in a float column parses (so the integer rule, not the token, says no)."""
  line = f"1,{token},2\n".encode()
  assert numeric_parse.parse_columns(line, 1, (1,), (0, 2), 3) is None
  assert numeric_parse.parse_columns(line, 1, (1,), (), 3) is None
  as_float = numeric_parse.parse_columns(line, 1, (0,), (1,), 3)
  if token != "1e400":
    assert_same(as_float, reference(line, (0,), (1,)))


# Tokens outside the grammar; np.loadtxt accepts several of them ("+3", " 7", "nan").
BAD_TOKENS = ["", " ", " 7", "7 ", "\t1", "\"5\"", "'5'", "nan", "NaN", "inf", "-inf",
              "Infinity", "+3", "+.5", "0x10", "0X1f", "1_0", "\xef\xbb\xbf1", "1\r2",
              "1\r", "-", ".", "-.", "e5", "1e", "1e+", "1e-", "1.2.3", "1e5e5", "--1",
              "1-", "1,5", "abc", "\xff", "1\x00", "\u0661"]


@pytest.mark.parametrize("column", [0, 1, 2, 3, 4])
def test_tokens_outside_the_grammar_give_none(column):
  """A bad token in any column (integer, integer and float, float, unstored, last) of
  any line makes the block None, never other values or an exception."""
  # Columns: 0 int, 1 int and float, 2 float, 3 stored by nobody, 4 float (last).
  base = [["1", "2", "2.5", "3e1", "4"], ["0", "-5", "-.5", "7", "1e-30"],
          ["1", "6", "8", "9", "10.25"]]
  ints, floats = (0, 1), (1, 2, 4)
  block = lambda rows, end="\n": "".join(",".join(r) + end for r in rows).encode("utf-8")
  # The untouched block parses: the None below is the token's doing.
  assert_same(numeric_parse.parse_columns(block(base), 3, ints, floats, 5),
              reference(block(base), ints, floats))
  for token in BAD_TOKENS:
    for row in range(3):
      for end in ("\n", "\r\n"):
        if token == "1\r" and column == 4 and end == "\n":
          continue  # that is "1" ending its line with CRLF: valid.
        rows = [list(r) for r in base]
        rows[row][column] = token
        data = block(rows, end)
        for threads in (1, 2, 3):  # whichever run of lines holds it.
          assert numeric_parse.parse_columns(data, 3, ints, floats, 5, threads) is None, (
              token, row, threads)


@pytest.mark.parametrize("case,data,n", [
    ("missing column", b"1,2,3\n4,5\n", 2),
    ("extra column", b"1,2,3\n4,5,6,7\n", 2),
    ("trailing comma", b"1,2,3,\n4,5,6\n", 2),
    ("empty line", b"1,2,3\n\n4,5,6\n", 3),
    ("empty line at the end", b"1,2,3\n4,5,6\n\n", 3),
    ("blank line of spaces", b"1,2,3\n  \n4,5,6\n", 3),
    ("fewer lines than n", b"1,2,3\n4,5,6\n", 3),
    ("more lines than n", b"1,2,3\n4,5,6\n", 1),
    ("more lines than n, last without end", b"1,2,3\n4,5,6", 1),
    ("empty block", b"", 1),
    ("only a newline", b"\n", 1),
    ("byte-order mark", b"\xef\xbb\xbf1,2,3\n4,5,6\n", 2),
    ("byte-order mark inside", b"1,2,3\n\xef\xbb\xbf4,5,6\n", 2),
    ("lone CR ends a line", b"1,2,3\r4,5,6\n", 2),
    ("lone CR ends a line, counted as one", b"1,2,3\r4,5,6\n", 1),
    ("CR CR LF", b"1,2,3\r\r\n4,5,6\n", 2),
    ("LF CR", b"1,2,3\n\r4,5,6\n", 2),
    ("space before the end", b"1,2,3 \n4,5,6\n", 2),
    ("semicolons", b"1;2;3\n", 1),
    ("spaces between columns", b"1 2 3\n", 1),
    ("tabs between columns", b"1\t2\t3\n", 1),
    ("NUL", b"1,2,3\x00\n", 1),
])
def test_malformed_lines_give_none(case, data, n):
  """Missing or extra columns, empty lines, a line count other than ``n``, a BOM,
  a carriage return that does not end a line: None."""
  for threads in (1, 2, 3):
    assert numeric_parse.parse_columns(data, n, (0,), (1, 2), 3, threads) is None, case
    assert numeric_parse.parse_columns(memoryview(data), n, (), (), 3, threads) is None, case


def test_unstored_columns_are_checked_not_stored():
  """A column in neither list must hold a valid token but is not returned (its inf,
  from 1e400, is np.loadtxt's too: the kept columns still match)."""
  data = b"1,abc,2\n"
  assert numeric_parse.parse_columns(data, 1, (0,), (2,), 3) is None
  data = b"1,1e400,2\n3,-7.5e-3,4\n"
  got = numeric_parse.parse_columns(data, 2, (0,), (2,), 3)
  assert_same(got, reference(data, (0,), (2,)))
  assert got[0].shape == (1, 2) and got[1].shape == (2, 1)
  got = numeric_parse.parse_columns(data, 2, (), (), 3)
  assert got[0].shape == (0, 2) and got[1].shape == (2, 0)


def test_line_endings_and_buffers(tmp_path):
  """LF, CRLF and mixed endings, a last line without its end, and a block given as a
  memoryview slice of a bigger buffer (bytes, bytearray, a read-only and a writable
  mmap) all parse to np.loadtxt's values, reading nothing outside the slice."""
  rng = np.random.default_rng(7)
  rows = [[str(int(rng.integers(2))), str(int(rng.integers(-10 ** 15, 10 ** 15))),
           repr(float(rng.standard_normal() * 1e-3)), f"{rng.random():.3e}"]
          for _ in range(40)]
  blocks = []
  for end in ("\n", "\r\n", "mixed"):
    for last_end in (True, False):
      text = "".join(",".join(r) + (end if end != "mixed" else ("\r\n", "\n")[i % 2])
                     for i, r in enumerate(rows))
      if not last_end:
        text = text.rstrip("\r\n")
      blocks.append(text.encode())
  ints, floats = (1, 0), (2, 3, 1)
  # Digits around each block: a read past either end would change a value or a count.
  big = b"".join(b"987654321" + b + b"123456789" for b in blocks)
  path = tmp_path / "blocks.csv"
  path.write_bytes(big)
  with open(path, "r+b") as f:
    maps = [mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ),
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE)]
  try:
    for buffer in [big, bytearray(big)] + maps:
      view, offset = memoryview(buffer), 9
      for b in blocks:
        piece = view[offset:offset + len(b)]
        assert bytes(piece) == b
        assert_same(numeric_parse.parse_columns(piece, len(rows), ints, floats, 4),
                    reference(b, ints, floats))
        offset += len(b) + 18
      del view, piece  # the maps close only once no view holds them.
  finally:
    for m in maps:
      m.close()
  for b in blocks:
    assert_same(numeric_parse.parse_columns(b, len(rows), ints, floats, 4),
                reference(b, ints, floats))


BOUNDS_SCRIPT = """
import numpy as np
from pico_jax.ingest import compiled, numeric_parse
rng = np.random.default_rng(7)
alphabet = np.frombuffer(b"0123456789.-+eE,\\r\\n x", np.uint8)
ends = [b"1", b"1.", b"1e", b"1e-", b"-", b".", b"1\\r", b"1,", b"1,2\\r\\n", b"12345"]
cases = [e for e in ends] + [b"1,2\\n" + e for e in ends]
cases += [rng.choice(alphabet, int(rng.integers(1, 40))).tobytes() for _ in range(3000)]
parsed = 0
for data in cases:
  for n in (1, 2, 3):
    for ints, floats in (((0,), (1,)), ((), (0, 1)), ((0, 1), ())):
      got = numeric_parse.parse_columns(data, n, ints, floats, 2, 1 + len(data) % 3)
      parsed += got is not None
  compiled.count_newlines(data)
values = rng.integers(-5, 5, 1000)
compiled.factorize_int64(values, rng.random(1000) < 0.5)
compiled.factorize_int64(values * (1 << 40), rng.random(1000) < 0.5)
print("ok", parsed)
"""


def test_no_read_outside_the_buffer(tmp_path):
  """The kernels run with Numba's bounds checks on (a fresh compile, in a child
  process) over blocks cut at every awkward byte and random byte soup: an index past
  the buffer would raise IndexError there, where the cached build reads memory."""
  env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path))
  result = subprocess.run([sys.executable, "-c", BOUNDS_SCRIPT], capture_output=True,
                          text=True, timeout=300, env=env)
  assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-3000:]
  assert int(result.stdout.split()[1]) > 10  # some blocks parse: the kernel ran through.


def test_parses_on_threads_side_by_side():
  """The kernel is compiled nogil; blocks parsed by two threads at once are the
  serial results."""
  assert numeric_parse._kernel.targetoptions.get("nogil") is True
  rng = np.random.default_rng(11)
  pool = [spell_float(rng) for _ in range(4000)]
  hard_pool = [t for t in pool if is_hard(t)]
  fast_pool = [t for t in pool if not is_hard(t)]
  blocks = []
  for _ in range(16):
    lines = int(rng.integers(500, 2000))
    blocks.append((fuzz_block(rng, hard_pool, fast_pool, lines, 60), lines))
  parse = lambda item: numeric_parse.parse_columns(item[0], item[1], INT_COLUMNS,
                                                 FLOAT_COLUMNS, NUM_COLUMNS)
  serial = [parse(item) for item in blocks]
  with concurrent.futures.ThreadPoolExecutor(2) as pool_:
    threaded = list(pool_.map(parse, blocks * 2))
  for got, want in zip(threaded, serial * 2):
    assert_same(got, want)
  for want, (data, _) in zip(serial[:2], blocks):
    assert_same(want, reference(data, INT_COLUMNS, FLOAT_COLUMNS))


def test_a_decimal_comma_locale_declines():
  """Under a locale whose decimal point is not "." (strtod would then stop at the
  "."), the compiled parser declines rather than misread hard tokens."""
  data = b"0.054221000000000005,1\n"
  assert numeric_parse.parse_columns(data, 1, (1,), (0,), 2) is not None
  real = locale.localeconv
  try:
    locale.localeconv = lambda: dict(real(), decimal_point=",")
    assert numeric_parse.parse_columns(data, 1, (1,), (0,), 2) is None
  finally:
    locale.localeconv = real


def test_hard_tokens_have_no_quota():
  """A block of valid hard tokens (e.g. pandas' repr of values below 0.1, 19+ digits)
  parses, however many there are."""
  data = b"".join(b"0.054221000000000005,0.060171400000000014\n" for _ in range(40))
  assert_same(numeric_parse.parse_columns(data, 40, (), (0, 1), 2),
              reference(data, (), (0, 1)))


# ------------------------------------------------------------------ real samples


def _sample_chunks(name, path):
  fmt = formats.get_format(name)
  with open(path, "rb") as f:
    lines = raw_files.split_lines(f.read())
  layout = fmt.inspect(path, lines[0])
  first = 1 + int(layout.header)
  data = b"".join(lines[first - 1:])
  return fmt, layout, data, first


@needs_data
@pytest.mark.parametrize("name,path", [
    ("aliexpress", os.path.join(ALIEXPRESS, "fuxictr-tiny_mtl", "test.csv")),
    ("aliccp_csv", os.path.join(ALICCP, "torch-rechub-sample", "ali_ccp_val_sample.csv")),
])
def test_real_samples_take_the_compiled_path(name, path):
  """The real samples parse with the compiled parser (not the pyarrow or loadtxt
  fallback), and the chunk is the reference parser's, array by array."""
  fmt, layout, data, first = _sample_chunks(name, path)
  n = len(raw_files.split_lines(data))  # the Ali-CCP sample's last line has no end.
  assert n > 40
  assert fmt._parse_compiled(data, n, first, layout) is not None
  fast = fmt.parse_block(path, data, first, layout)
  ref = fmt.parse(path, raw_files.split_lines(data), first, layout)
  for key in ("lines", "click", "conversion", "dense", "group", "ids"):
    a, b = getattr(fast, key), getattr(ref, key)
    assert (a is None) == (b is None), key
    if a is not None:
      assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), key
  assert len(fast.sparse) == len(ref.sparse) > 0
  for a, b in zip(fast.sparse, ref.sparse):
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
  assert fast.dense is not None and fast.dense.shape == (n, len(fmt.dense_names))


@needs_data
def test_full_precision_sample_takes_the_compiled_path_in_big_blocks():
  """The torch-rechub AliExpress sample (full-precision spellings, ~0.85 hard tokens a
  line) repeated to a block of 2000 lines still parses with the compiled parser."""
  path = os.path.join(ALIEXPRESS, "torch-rechub-sample", "aliexpress_test_sample.csv")
  fmt, layout, data, first = _sample_chunks("aliexpress", path)
  data = data * 100
  assert fmt._parse_compiled(data, data.count(b"\n"), first, layout) is not None


def test_runs_of_lines_cover_the_block_once():
  """``_pieces`` cuts a block into runs of whole lines, in order, each non-empty, whose
  rows add up to the block's; it declines where a run would be empty."""
  rng = np.random.default_rng(3)
  for _ in range(300):
    lines = [b"x" * int(rng.integers(0, 9)) for _ in range(int(rng.integers(1, 30)))]
    data = np.frombuffer(b"".join(line + b"\n" for line in lines), np.uint8)
    threads = int(rng.integers(2, 6))
    pieces = numeric_parse._pieces(data, len(lines), threads)
    if pieces is None:
      continue
    assert len(pieces) == threads
    assert [p[0] for p in pieces[1:]] == [p[1] for p in pieces[:-1]]
    assert pieces[0][0] == 0 and pieces[-1][1] == len(data)
    assert [p[2] for p in pieces] == list(np.cumsum([0] + [p[3] for p in pieces[:-1]]))
    for start, end, first, rows in pieces:
      assert rows >= 1 and data[start:end].tobytes().count(b"\n") == rows
      assert data[start:end].tobytes() == b"".join(l + b"\n" for l in lines[first:first + rows])
  assert numeric_parse._pieces(np.frombuffer(b"1\n", np.uint8), 1, 2) is None


def test_threads_take_the_threaded_path(monkeypatch):
  """``threads`` really cuts the block: the kernel runs once per run of lines."""
  rng = np.random.default_rng(5)
  pool = [spell_float(rng) for _ in range(500)]
  data = fuzz_block(rng, [t for t in pool if is_hard(t)], [t for t in pool if not is_hard(t)],
                    100, 10)
  calls = []
  kernel = numeric_parse._kernel
  monkeypatch.setattr(numeric_parse, "_kernel", lambda buf, n, *rest: (
      calls.append(n), kernel(buf, n, *rest))[1])
  got = numeric_parse.parse_columns(data, 100, INT_COLUMNS, FLOAT_COLUMNS, NUM_COLUMNS, 3)
  assert len(calls) == 3 and sum(calls) == 100
  assert_same(got, reference(data, INT_COLUMNS, FLOAT_COLUMNS))
