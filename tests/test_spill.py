"""The spill: parsed blocks held in memory up to a budget, and mapped back from files."""

import os

import numpy as np

from pico_jax.ingest import format_contract, spill
from pico_jax.ingest.encode import Factorized


def test_spill_files_map_every_kind_of_array_back(tmp_path):
  """A block written to a spill file comes back equal, field by field (factorized ids,
  bytes ids, key:value lists, None), its arrays read-only views of the mapped file."""
  rng = np.random.default_rng(2)
  chunk = format_contract.Chunk(
      lines=np.arange(5, 12), click=np.ones(7, np.float32), conversion=None,
      sparse=[Factorized(np.array([3, 9, 2**40]), rng.integers(0, 3, 7).astype(np.int32)),
              np.array([b"a", b"bcd", b"", b"e", b"f", b"g", b"h"])],
      dense=rng.normal(size=(7, 3)), lists={"f": (np.array([0, 0, 4]), np.array([7, 8, 9]),
                                                  np.array([2, 3, 2]))},
      group=None, ids=np.zeros((0,), np.int64))
  path = str(tmp_path / "0.pkl")
  spill.Spill(0).put(path, chunk)
  got = spill.Spill(0).take(path)
  assert not os.path.exists(path)
  assert got.click.tobytes() == chunk.click.tobytes() and got.conversion is None
  np.testing.assert_array_equal(got.lines, chunk.lines)
  np.testing.assert_array_equal(got.sparse[0].keys, chunk.sparse[0].keys)
  np.testing.assert_array_equal(got.sparse[0].inverse, chunk.sparse[0].inverse)
  np.testing.assert_array_equal(got.sparse[1], chunk.sparse[1])
  assert got.dense.tobytes() == chunk.dense.tobytes() and got.dense.shape == (7, 3)
  for g, w in zip(got.lists["f"], chunk.lists["f"]):
    np.testing.assert_array_equal(g, w)
  assert got.group is None and got.ids.shape == (0,)
  assert not got.dense.flags.writeable and not got.dense.flags.owndata  # mapped.
  assert got.dense.ctypes.data % 64 == 0


def test_spill_holds_blocks_up_to_its_budget_then_writes_files(tmp_path):
  held = spill.Spill(memory_bytes=2 * 8_000 + 100)
  chunks = [_parsed_block(k) for k in range(4)]
  paths = [str(tmp_path / f"{k}.pkl") for k in range(4)]
  for path, chunk in zip(paths, chunks):
    held.put(path, chunk)
  assert [os.path.exists(p) for p in paths] == [False, False, True, True]
  for path, chunk in zip(paths, chunks):
    got = held.take(path)
    np.testing.assert_array_equal(got.dense, chunk.dense)
    assert not os.path.exists(path)
  assert os.listdir(tmp_path) == []


def _parsed_block(seed):
  """A parsed block whose arrays keep 8,000 bytes alive: ``dense`` is a view of a
  [100, 10] float64 array, and counts as all of it."""
  base = np.random.default_rng(seed).normal(size=(100, 10))
  chunk = format_contract.Chunk(lines=np.zeros(0, np.int64), click=None, conversion=None,
                                sparse=[], dense=base[:, 2:], lists={}, group=None)
  assert spill._held_bytes(chunk) == 8_000
  return chunk


def test_a_spill_without_memory_writes_even_an_empty_block(tmp_path):
  """``Spill(0)`` is a worker process's: every block must reach its file, since the
  next pass may run in another process."""
  empty = format_contract.Chunk(lines=np.zeros(0, np.int64), click=None, conversion=None,
                                sparse=[], dense=None, lists={}, group=None)
  path = str(tmp_path / "0.pkl")
  spill.Spill(0).put(path, empty)
  assert os.path.exists(path)
  assert len(spill.Spill(0).take(path)) == 0
