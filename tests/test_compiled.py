"""The compiled preprocessing kernels (``pico_jax.ingest.compiled``) are bit-identical to
the numpy expressions they replace (what keeps stores byte-identical to the numpy
code): standardization, the dense moments of the training rows, and the scatter of
rows into the split columns, memory maps included."""

import numpy as np
import pytest

from pico_jax.ingest import compiled


def wide_range(rng, n, d):
  """float64 [n, d] whose columns differ in scale (1e-12 to 1e12), some far from zero
  (cancellation in the deviations), with exact zeros and -0.0 among them."""
  scale = 10.0 ** rng.integers(-12, 13, size=d)
  offset = np.where(rng.random(d) < 0.3, 10.0 ** rng.integers(0, 9, size=d), 0.0)
  x = offset + scale * rng.standard_normal((n, d)) * 10.0 ** rng.integers(-3, 4, (n, d))
  x[rng.random((n, d)) < 0.01] = 0.0
  x[rng.random((n, d)) < 0.01] = -0.0
  return x


def reference_moments(x, rows):
  y = x[rows]
  mean = y.mean(0)
  return rows.sum(), mean, np.square(y - mean).sum(0)


def assert_moments(x, rows):
  count, mean, m2 = compiled.moments(x, rows)
  want = reference_moments(x, rows)
  assert count == want[0]
  assert mean.dtype == m2.dtype == np.float64
  assert mean.tobytes() == want[1].tobytes(), (x.shape, int(want[0]))
  assert m2.tobytes() == want[2].tobytes(), (x.shape, int(want[0]))


def test_standardize_matches_numpy_bit_for_bit():
  """standardize(x, mean, std) == ((x - mean) / std).astype(np.float32), with float64
  and float32 statistics, strided and Fortran-ordered inputs."""
  rng = np.random.default_rng(3)
  for n, d in [(1, 1), (7, 3), (1000, 8), (5000, 63)]:
    x = wide_range(rng, n, d)
    mean = x.mean(0)
    std = np.where(x.std(0) > 0, x.std(0), 1.0)  # as the preprocessor's moments give.
    for m, s in [(mean, std), (mean.astype(np.float32), std.astype(np.float32))]:
      want = ((x - m) / s).astype(np.float32)
      got = compiled.standardize(x, m, s)
      assert got.dtype == np.float32 and got.shape == x.shape
      assert got.tobytes() == want.tobytes(), (n, d)
    if d > 1:
      for view in (x[:, ::2], np.asfortranarray(x)):
        m, s = mean[:view.shape[1]], std[:view.shape[1]]
        assert compiled.standardize(view, m, s).tobytes() == (
            ((view - m) / s).astype(np.float32).tobytes())


def test_standardize_rounds_to_float32_as_astype():
  """The float64 -> float32 rounding is astype's: ties to even, overflow to inf,
  subnormals, -0.0."""
  x = np.array([[1 + 2.0 ** -24], [1 + 3 * 2.0 ** -24], [-(1 + 2.0 ** -24)], [1e300],
                [-1e300], [3.4028235677973366e38], [3.4028235677973362e38], [1e-42],
                [-1e-46], [-0.0], [0.0], [2.0 ** -149 * 1.5]])
  for mean, std in [(0.0, 1.0), (-0.0, 1.0), (0.5, 3.0), (1e-300, 1e-10)]:
    m, s = np.array([mean]), np.array([std])
    with np.errstate(over="ignore"):
      want = ((x - m) / s).astype(np.float32)
    assert compiled.standardize(x, m, s).tobytes() == want.tobytes(), (mean, std)
  assert np.isinf(compiled.standardize(x, np.zeros(1), np.ones(1))[3, 0])
  # x / std within an ulp of a float32 tie t (a float32 plus half its ulp), where
  # rounding twice is most fragile: a kernel multiplying by 1 / std rounds some of
  # them to the other float32.
  rng = np.random.default_rng(9)
  f = rng.standard_normal(1000).astype(np.float32).astype(np.float64)
  t = f + np.spacing(f.astype(np.float32)).astype(np.float64) / 2
  std = np.array([3.0, 7.0, 10.0, 0.1, 1.7])
  x = [(t + side * np.spacing(t))[:, None] * std for side in (-1, 0, 1)]
  x = np.concatenate([x0 + k * np.spacing(x0) for x0 in x for k in (-1, 0, 1)])
  mean = np.zeros(len(std))
  want = ((x - mean) / std).astype(np.float32)
  assert np.sum(want != (x * (1 / std)).astype(np.float32)) > 100  # the fragile cases.
  assert compiled.standardize(x, mean, std).tobytes() == want.tobytes()


def test_standardize_by_a_zero_std_is_numpy_inf_and_nan():
  """std == 0 gives numpy's inf and nan, not an exception."""
  x = np.array([[1.0], [0.0]])
  with np.errstate(divide="ignore", invalid="ignore"):
    want = ((x - 0.0) / np.zeros(1)).astype(np.float32)
  assert compiled.standardize(x, np.zeros(1), np.zeros(1)).tobytes() == want.tobytes()


@pytest.mark.parametrize("n", [1, 2, 7, 9, 130, 1000, 70_000])
def test_moments_match_numpy_bit_for_bit(n):
  """(count, mean, sum of squared deviations) of the selected rows are those of
  x[rows].mean(0) and np.square(x[rows] - mean).sum(0), bit for bit, for D >= 2."""
  rng = np.random.default_rng(100 + n)
  for d in (2, 3, 8, 17, 63):
    x = wide_range(rng, n, d)
    for rows in (rng.random(n) < 0.8, np.ones(n, bool), np.arange(n) == n - 1):
      if rows.any():
        assert_moments(x, rows)
  # A strided and a Fortran-ordered x (numpy's x[rows] is C-ordered either way).
  x = wide_range(rng, n, 8)
  rows = rng.random(n) < 0.5
  rows[0] = True
  assert_moments(x[:, ::2], rows)
  assert_moments(np.asfortranarray(x), rows)


def test_moments_of_all_negative_zero_and_constant_columns():
  """Columns of -0.0 only (their sum is numpy's +0.0) and constant columns (zero
  deviation) come out as numpy's."""
  x = np.zeros((20, 4))
  x[:, 0] = -0.0
  x[:, 1] = 1e150
  x[:, 2] = 0.1
  x[::2, 3] = -0.0
  for rows in (np.ones(20, bool), np.arange(20) == 3, np.arange(20) % 3 == 0):
    assert_moments(x, rows)


def test_moments_of_a_single_column_match_numpy():
  """With one dense feature (D == 1) the moments are numpy's too, bit for bit."""
  rng = np.random.default_rng(200)
  for n in (1, 7, 100, 1000, 70_000):
    x = wide_range(rng, n, 1)
    rows = rng.random(n) < 0.8
    rows[0] = True
    assert_moments(x, rows)


def test_moments_none_without_selected_rows():
  """No selected row (or no row at all): None, not NaN."""
  rng = np.random.default_rng(5)
  assert compiled.moments(rng.standard_normal((10, 3)), np.zeros(10, bool)) is None
  assert compiled.moments(np.zeros((0, 3)), np.zeros(0, bool)) is None
  assert compiled.moments(rng.standard_normal((10, 3)), np.arange(10) == 9) is not None


def scatter_case(rng, tail, dtype, n=300):
  """(src [n, *tail], split int8, where int64, sizes): rows in splits 0..2 and -1;
  every split's rows land on a random permutation of the first ``count`` rows of an
  output with spare rows, where the skipped rows also point."""
  if dtype == np.bool_:
    src = rng.random((n,) + tail) < 0.5
  elif dtype == np.int32:
    src = rng.integers(-2 ** 31, 2 ** 31, (n,) + tail, dtype=np.int32)
  else:
    src = (rng.standard_normal((n,) + tail) * 1e3).astype(dtype)
  split = rng.integers(-1, 3, n).astype(np.int8)
  where = np.zeros(n, np.int64)
  sizes = []
  for s in range(3):
    idx = np.flatnonzero(split == s)
    where[idx] = rng.permutation(len(idx))
    sizes.append(len(idx) + 5)
  skipped = np.flatnonzero(split == -1)
  where[skipped] = rng.integers(0, min(sizes), len(skipped))  # writes would show.
  return src, split, where, sizes


def fill(shape, dtype):
  """A sentinel no source row equals (bool: the complement is checked instead)."""
  return np.full(shape, True if dtype == np.bool_ else 77, dtype)


def expected(src, split, where, sizes, init):
  outs = [init((size,) + src.shape[1:], src.dtype) for size in sizes]
  for s in range(3):
    outs[s][where[split == s]] = src[split == s]
  return outs


CASES = [((), np.float32), ((4,), np.float32), ((3, 5), np.float32),
         ((), np.int32), ((6,), np.int32), ((2, 3), np.int32),
         ((), np.bool_), ((7,), np.bool_), ((2, 4), np.bool_)]


@pytest.mark.parametrize("tail,dtype", CASES)
def test_scatter_rows_matches_numpy(tail, dtype):
  """outs[split[i]][where[i]] = src[i] for splits 0..2, -1 rows skipped, for 1-D, 2-D
  and 3-D rows of float32, int32 and bool."""
  rng = np.random.default_rng(hash((tail, np.dtype(dtype).str)) % 2 ** 32)
  src, split, where, sizes = scatter_case(rng, tail, dtype)
  assert (split == -1).any() and all((split == s).any() for s in range(3))
  for init in (fill, lambda shape, dt: ~fill(shape, dt) if dt == np.bool_
               else fill(shape, dt)):
    outs = tuple(init((size,) + tail, dtype) for size in sizes)
    compiled.scatter_rows(src, split, where, outs)
    for got, want in zip(outs, expected(src, split, where, sizes, init)):
      assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
  # A strided source is read as its values.
  wide = np.repeat(src[:, None], 2, axis=1)[:, 0]
  outs = tuple(fill((size,) + tail, dtype) for size in sizes)
  compiled.scatter_rows(wide, split, where, outs)
  for got, want in zip(outs, expected(src, split, where, sizes, fill)):
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("tail,dtype", [((), np.float32), ((3,), np.int32),
                                        ((2, 4), np.bool_)])
def test_scatter_rows_reaches_memory_mapped_files(tmp_path, tail, dtype):
  """Into np.lib.format.open_memmap outputs (and np.load(mmap_mode="r+") ones, as the
  preprocessor's workers open them) the rows reach the files."""
  rng = np.random.default_rng(len(tail) * 10 + np.dtype(dtype).itemsize)
  src, split, where, sizes = scatter_case(rng, tail, dtype)
  paths = [str(tmp_path / f"split{s}.npy") for s in range(3)]
  outs = []
  for path, size in zip(paths, sizes):
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(size,) + tail)
    out[...] = fill(out.shape, dtype)
    outs.append(out)
  half = len(src) // 2  # two blocks: one through each kind of map.
  compiled.scatter_rows(src[:half], split[:half], where[:half], tuple(outs))
  for out in outs:
    out.flush()
  del outs, out
  outs = tuple(np.load(path, mmap_mode="r+") for path in paths)
  compiled.scatter_rows(src[half:], split[half:], where[half:], outs)
  for out in outs:
    out.flush()
  del outs
  for path, want in zip(paths, expected(src, split, where, sizes, fill)):
    got = np.load(path)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def test_scatter_rows_of_an_empty_block_or_split():
  """A block without rows, or a split without rows, is a no-op, not an error."""
  outs = (np.zeros((3, 2), np.int32), np.zeros((0, 2), np.int32), np.zeros((1, 2), np.int32))
  compiled.scatter_rows(np.zeros((0, 2), np.int32), np.zeros(0, np.int8),
                       np.zeros(0, np.int64), outs)
  compiled.scatter_rows(np.ones((2, 2), np.int32), np.array([0, 2], np.int8),
                       np.array([1, 0]), outs)
  assert outs[0].tolist() == [[0, 0], [1, 1], [0, 0]] and outs[2].tolist() == [[1, 1]]


def assert_factorize(values, rows):
  """``compiled.factorize_int64`` is ``np.unique(values, return_inverse=True)`` and the
  ``np.bincount`` of the selected rows' inverse."""
  keys, inverse, counts = compiled.factorize_int64(values, rows)
  want_keys, want_inverse = np.unique(values, return_inverse=True)
  assert keys.dtype == np.int64 and inverse.dtype == np.int32
  assert np.array_equal(keys, want_keys) and np.array_equal(inverse, want_inverse)
  assert np.array_equal(counts, np.bincount(want_inverse[rows], minlength=len(keys)))


@pytest.mark.parametrize("n,distinct", [(0, 1), (1, 1), (1000, 1), (1000, 7),
                                        (5000, 4000), (70_000, 500_000)])
def test_factorize_is_unique_and_bincount(n, distinct):
  """keys, inverse and counts are ``np.unique(values, return_inverse=True)`` and the
  ``np.bincount`` of the selected rows' inverse: negative ids, ids near 2**53 and
  values that collide in the hash table's low bits included."""
  rng = np.random.default_rng(300 + n)
  pool = np.concatenate([rng.integers(-2 ** 53 + 1, 2 ** 53, distinct),
                         np.arange(distinct) << 20])  # equal low bits.
  values = rng.choice(pool, n).astype(np.int64)
  rows = rng.random(n) < 0.7
  assert_factorize(values, rows)


def test_count_newlines_is_bytes_count():
  """Newlines of any buffer, as ``bytes.count``: empty, without a newline, CR only,
  and random bytes of every value (so a signed/unsigned mix-up would show)."""
  rng = np.random.default_rng(400)
  cases = [b"", b"abc", b"\r\r", b"\n", b"a\nb\r\n", rng.integers(0, 256, 100_003,
                                                                 dtype=np.uint8).tobytes()]
  for data in cases:
    assert compiled.count_newlines(data) == data.count(b"\n")
    assert compiled.count_newlines(memoryview(data)[1:]) == data[1:].count(b"\n")


@pytest.mark.parametrize("low,span,n", [(-50, 100, 1000), (10 ** 12, 100, 5000),
                                        (7, 1, 1), (0, 1999, 1000)])
def test_factorize_of_a_narrow_range_is_unique_and_bincount(low, span, n):
  """Values within 2n of each other take the table indexed by value (negative and
  large offsets, one value, a range just under 2n): the same three arrays."""
  rng = np.random.default_rng(500 + n)
  values = (low + rng.integers(0, span, n)).astype(np.int64)
  values[0], values[-1] = low, low + span - 1  # the whole span is used.
  rows = rng.random(n) < 0.5
  assert_factorize(values, rows)


def test_merge_counts_matches_sorting_the_pieces():
  """Pieces of sorted distinct ids with counts (what each block's factorize gives):
  the merge equals a stable sort of all of them and a sum per id, whatever the number
  of pieces, their overlap, empty pieces and ids of any sign."""
  rng = np.random.default_rng(0)
  for trial in range(200):
    pieces = int(rng.integers(1, 9))
    span = int(rng.choice([5, 100, 1 << 40]))
    keys = [np.unique(rng.integers(-span, span, int(rng.integers(0, 50)))) for _ in
            range(pieces)]
    counts = [rng.integers(1, 1000, len(k)) for k in keys]
    allk, allc = np.concatenate(keys), np.concatenate(counts)
    want_keys, inverse = np.unique(allk, return_inverse=True)
    want_counts = np.bincount(inverse, weights=allc, minlength=len(want_keys))
    got_keys, got_counts = compiled.merge_counts(keys, counts)
    assert got_keys.dtype == np.int64 and got_counts.dtype == np.int64
    np.testing.assert_array_equal(got_keys, want_keys, err_msg=str(trial))
    np.testing.assert_array_equal(got_counts, want_counts.astype(np.int64))
  empty_keys, empty_counts = compiled.merge_counts([], [])
  assert len(empty_keys) == 0 and len(empty_counts) == 0


def test_standardize_rows_equals_standardize_then_scatter():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 7)) * 100
  mean, std = rng.normal(size=7), rng.random(7) + 0.1
  split = rng.integers(-1, 3, 50).astype(np.int8)
  where = np.zeros(50, np.int64)
  for s in range(3):
    where[split == s] = rng.permutation(int(np.sum(split == s)))
  sizes = [int(np.sum(split == s)) for s in range(3)]
  want = tuple(np.full((n, 7), 7.0, np.float32) for n in sizes)
  compiled.scatter_rows(compiled.standardize(x, mean, std), split, where, want)
  got = tuple(np.full((n, 7), 7.0, np.float32) for n in sizes)
  compiled.standardize_rows(x, mean, std, split, where, got)
  for g, w in zip(got, want):
    assert g.tobytes() == w.tobytes()


def test_split_positions_match_sorting_each_split_by_rank():
  """Random splits, dropped rows, and ranks that repeat across splits (a test file
  given before the train file it is not pooled with): numpy's per-split sort."""
  rng = np.random.default_rng(4)
  for trial in range(100):
    n = int(rng.integers(0, 300))
    split_of = rng.integers(0, 3, n).astype(np.int8)
    rank_of = np.empty(n, np.int64)
    for s in range(3):  # distinct within a split, shared across splits.
      members = np.flatnonzero(split_of == s)
      rank_of[members] = rng.permutation(n)[:len(members)]
    keep = rng.random(n) < 0.8
    position, rows = compiled.split_positions(split_of, rank_of, keep)
    for s in range(3):
      members = np.flatnonzero((split_of == s) & keep)
      members = members[np.argsort(rank_of[members])]
      np.testing.assert_array_equal(position[members], np.arange(len(members)),
                                    err_msg=str(trial))
      assert rows[s] == len(members)
