"""Bad lines are reported where they are, in messages of bounded length."""

import numpy as np
import pytest

from pico_jax.data.errors import DataError
from pico_jax.ingest import format_contract, numeric_csv, preprocess

HEADER = ",".join(numeric_csv.aliexpress().columns)


def row(x: str) -> str:
  return "1," + "0," * 16 + x + ",0" * 62 + ",0,0"


def build(path, fmt="aliexpress"):
  preprocess.build_store(fmt, [str(path)], str(path.parent / "store"),
                         options=preprocess.Options(workers=1))


@pytest.mark.parametrize("line5,column", [
    (row("0.5") + "\r\r\n", 82),  # a CR too many before the line end: the last column.
    (row("0.5\r") + "\n", 18),  # a field ending in a CR.
    (row("0.5\r") + "\r\n", 18),
])
def test_a_stray_carriage_return_is_located(tmp_path, line5, column):
  lines = [HEADER + "\n"] + [row(str(i)) + "\n" for i in range(3)] + [line5] + [
      row(str(i)) + "\n" for i in range(8)]
  path = tmp_path / "in.csv"
  path.write_bytes("".join(lines).encode())
  with pytest.raises(DataError) as e:
    build(path)
  assert (e.value.line, e.value.column) == (5, column), str(e.value)
  assert "carriage return" in str(e.value)


def test_a_huge_token_is_cut_in_the_message(tmp_path):
  path = tmp_path / "in.csv"
  path.write_text("\n".join([HEADER, row("1"), row("x" * 3_000_000), row("2")]) + "\n")
  with pytest.raises(DataError) as e:
    build(path)
  assert (e.value.line, e.value.column) == (3, 18)
  assert len(str(e.value)) < 400 and "3,000,000 bytes" in str(e.value)


@pytest.mark.parametrize("fmt", ["aliexpress", "aliccp_csv", "census", "aliccp_raw"])
def test_a_binary_file_gives_a_short_message(tmp_path, fmt):
  """Random bytes without a newline or a comma: one 2.65 MB token."""
  data = np.frombuffer(np.random.default_rng(0).bytes(2_650_000), np.uint8)
  path = tmp_path / "in.bin"
  path.write_bytes(np.where(np.isin(data, [10, 44]), 32, data).astype(np.uint8).tobytes())
  with pytest.raises(DataError) as e:
    build(path, fmt)
  assert len(str(e.value)) < 400, len(str(e.value))


def test_echo_keeps_short_tokens_whole():
  assert format_contract.echo(b"abc") == "'abc'"
  long = format_contract.echo(b"y" * 81)
  assert long == repr("y" * 80) + "... (81 bytes)"
