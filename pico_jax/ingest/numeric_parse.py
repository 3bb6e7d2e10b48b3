"""A compiled parser for blocks of all-numeric CSV: one pass over the bytes.

``parse_columns`` reads the ``n`` lines of a block straight into the typed arrays the
preprocessor needs: int64 columns (ids, labels, the group key) and a row-major float64
matrix (the dense features), checking every other column without storing it. It is a
Numba function that releases the GIL, so the preprocessor's worker threads parse blocks
side by side.

It accepts a strict subset of what ``np.loadtxt`` accepts, with the same values, and
reports the first token outside that subset instead of guessing:

  line     = token ("," token)* ("\\n" | "\\r\\n")     (the last line may lack the end)
  token    = ["-"] digits ["." digits*] [("e"|"E") ["-"|"+"] digits]    (floats)
           | ["-"] digits                                               (integers)

(a float may also start with "." when digits follow). An integer column takes only
integers below 2**53 in magnitude, and not "-0". A float is correctly rounded, as
``np.loadtxt`` rounds: a decimal mantissa below 2**53 times 10**e with |e| <= 22 is
one IEEE multiplication or division of two exact doubles (Clinger's fast path); any
other float token (more digits, as in the 17 significant digits of ``repr``, or a
larger exponent) is converted by the C library's ``strtod`` (glibc's is correctly
rounded), from the kernel itself. Anything else (a space, a quote, "nan",
hexadecimal, a byte-order mark, a lone carriage return, a missing or extra column, a
stored float that overflows to infinity) stops the parse at that row and column: the
caller then lets the reference parser decide, which either agrees or raises the
exact error.
"""

from __future__ import annotations

import concurrent.futures
import locale

import numba
import numpy as np
from numba import types

from pico_jax.ingest import compiled

MAX_EXACT_INT = 1 << 53  # ids at or beyond it are rejected: float64 loses them.
_POW10 = np.array([10.0 ** k for k in range(23)])  # exact doubles.

OK = -1  # ``_kernel``'s row when every line parsed.
# double strtod(const char *, char **), bound by symbol name (so the compiled kernel
# can be cached); its pointers are passed as integers, as the x86-64 and AArch64
# calling conventions allow.
_strtod = types.ExternalFunction("strtod", types.float64(types.intp, types.intp))


@numba.njit(inline="always")
def _digits(buf, i, w):
  """(the index after the run of digits at ``buf[i]``, ``w`` with them appended)."""
  while True:
    # Below "0" the difference wraps: one comparison tells a digit.
    c = np.uint64(buf[np.uint64(i)]) - np.uint64(48)
    if c > 9:
      return i, w
    w = w * 10 + np.int64(c)
    i += 1


@numba.njit(nogil=True, cache=True)
def _kernel(buf, n, int_slot, float_slot, ints, floats, pow10):
  """Parses ``buf`` (whose last byte is ``\n``: every token ends before the end) into
  ``ints`` int64 [I, n] and ``floats`` float64 [n, D].

  Returns (row, column): (OK, 0) when every line parsed, else the first row and
  column (0-based) of a token outside the grammar.
  """
  # Unsigned byte indices: a signed one costs a wraparound check per byte.
  ncol = int_slot.shape[0]
  last = ncol - 1
  end = len(buf)
  base = buf.ctypes.data
  i = 0
  for r in range(n):
    if i >= end:
      return r, 0
    for j in range(ncol):
      s = i
      neg = buf[np.uint64(i)] == 45  # "-"
      if neg:
        i += 1
      d = i
      # w: the digits as one integer, exact while there are at most 18.
      i, w = _digits(buf, i, 0)
      digits = i - d
      e = 0
      is_int = int_slot[j] >= 0
      if buf[np.uint64(i)] == 46:  # "."
        if is_int:
          return r, j
        i += 1
        f = i
        i, w = _digits(buf, i, w)
        e = f - i
        digits += i - f
      if digits == 0:
        return r, j
      b = buf[np.uint64(i)]
      if b == 101 or b == 69:  # "e", "E"
        if is_int:
          return r, j
        i += 1
        b = buf[np.uint64(i)]
        eneg = b == 45
        if eneg or b == 43:
          i += 1
        ev = 0
        es = i
        while True:
          c = np.uint64(buf[np.uint64(i)]) - np.uint64(48)
          if c > 9:
            break
          if ev < 100000:
            ev = ev * 10 + np.int64(c)
          i += 1
        if i == es:
          return r, j
        e += -ev if eneg else ev
        b = buf[np.uint64(i)]
      if j < last:
        if b != 44:  # ","
          return r, j
      elif b == 13:  # "\r\n"
        if buf[np.uint64(i + 1)] != 10:
          return r, j
        i += 1
      elif b != 10:
        return r, j
      i += 1
      if is_int:
        # "-0" too: an int64 loses the sign that np.loadtxt keeps (a label -0.0).
        if digits > 18 or w >= MAX_EXACT_INT or (neg and w == 0):
          return r, j
        ints[int_slot[j], r] = -w if neg else w
      k = float_slot[j]
      if k < 0:
        continue
      if digits <= 18 and w <= MAX_EXACT_INT and -22 <= e <= 22:
        x = np.float64(w)
        x = x * pow10[e] if e >= 0 else x / pow10[-e]
        floats[r, k] = -x if neg else x
      else:  # strtod stops at the "," or the line end that the grammar checked.
        x = _strtod(base + s, 0)
        if not np.isfinite(x):  # an overflow (1e400): the reference names it.
          return r, j
        floats[r, k] = x
  if i != end:
    return n, 0
  return OK, 0


@numba.njit(nogil=True, cache=True)
def _line_ends(buf, starts):
  """The index after the first newline at or after each of ``starts`` (or len(buf))."""
  ends = np.empty(len(starts), np.int64)
  for k in range(len(starts)):
    i = starts[k]
    while i < len(buf) and buf[np.uint64(i)] != 10:
      i += 1
    ends[k] = min(i + 1, len(buf))
  return ends


def _pieces(buf, n: int, threads: int) -> list[tuple[int, int, int, int]] | None:
  """(byte start, byte end, first row, rows) of ``threads`` runs of whole lines of
  about equal size that cover the ``n`` lines of ``buf``, or None where a run would be
  empty."""
  cuts = _line_ends(buf, np.arange(1, threads, dtype=np.int64) * len(buf) // threads)
  bounds = [0] + [int(c) for c in cuts] + [len(buf)]
  rows = [compiled.count_newlines(buf[a:b]) for a, b in zip(bounds[:-2], bounds[1:-1])]
  rows.append(n - sum(rows))
  if min(rows) < 1 or any(b <= a for a, b in zip(bounds, bounds[1:])):
    return None
  firsts = np.cumsum([0] + rows[:-1])
  return [(a, b, int(f), r) for a, b, f, r in zip(bounds, bounds[1:], firsts, rows)]


def parse_columns(data, n: int, int_columns: tuple[int, ...],
                  float_columns: tuple[int, ...], num_columns: int, threads: int = 1):
  """Parses the ``n`` lines of ``data`` (a block of whole lines).

  Args:
    data: the block's bytes (bytes or any buffer, e.g. a view of a mapped file).
    n: its number of lines.
    int_columns: columns stored as int64 (in this order): integers below 2**53.
    float_columns: columns stored as float64 (in this order); a column may be in both.
    num_columns: columns per line; the others are checked, not stored.
    threads: the block is cut into this many runs of lines, parsed side by side (the
      same arrays, whatever the number); preprocessing gives its last blocks the
      threads of the workers left without one.

  Returns:
    (ints int64 [len(int_columns), n], floats float64 [n, len(float_columns)]), or
    None when a token is outside the grammar above (the caller's reference parser
    then decides).
  """
  if locale.localeconv()["decimal_point"] != ".":  # strtod follows LC_NUMERIC.
    return None
  buf = np.frombuffer(data, np.uint8)
  if not len(buf) or buf[-1] != 10:  # the kernel needs an end byte after every token.
    if len(buf) and buf[-1] == 13:  # a lone CR at the end: the reference decides.
      return None
    buf = np.append(buf, np.uint8(10))
  int_slot = np.full(num_columns, -1, np.int64)
  int_slot[list(int_columns)] = np.arange(len(int_columns))
  float_slot = np.full(num_columns, -1, np.int64)
  float_slot[list(float_columns)] = np.arange(len(float_columns))
  ints = np.empty((len(int_columns), n), np.int64)
  floats = np.empty((n, len(float_columns)), np.float64)
  pieces = _pieces(buf, n, threads) if threads > 1 else None
  if pieces is None:
    row, _ = _kernel(buf, n, int_slot, float_slot, ints, floats, _POW10)
    return (ints, floats) if row == OK else None

  def run(piece):
    start, end, first, rows = piece
    return _kernel(buf[start:end], rows, int_slot, float_slot,
                   ints[:, first:first + rows], floats[first:first + rows], _POW10)[0]

  with concurrent.futures.ThreadPoolExecutor(len(pieces) - 1) as pool:
    others = pool.map(run, pieces[1:])  # submitted now, while this thread runs the first.
    rows = [run(pieces[0]), *others]
  return (ints, floats) if all(row == OK for row in rows) else None
