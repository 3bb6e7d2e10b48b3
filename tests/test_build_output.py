"""Nothing deleted by mistake: --overwrite replaces only a store or an empty directory,
and the leftovers of a killed build are removed by the next build of the same output."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from conftest import kill_preprocess_once, run_script
from pico_jax.data import store
from pico_jax.data.errors import DataError
from pico_jax.ingest import preprocess, store_writer
from pico_jax.ingest.table import TableRoles

ROLES = TableRoles(click="click", conversion="conversion", sparse=("a", "b"), dense=("x",))


def write_csv(path, rows=40, seed=0):
  rng = np.random.default_rng(seed)
  click = (rng.random(rows) < 0.5).astype(np.int64)
  pacsv.write_csv(pa.table({"click": click, "conversion": click * (rng.random(rows) < 0.5),
                            "a": rng.integers(0, 50, rows), "b": rng.integers(0, 9, rows),
                            "x": rng.normal(size=rows)}), path)
  return str(path)


def build(csv, out, **kw):
  return preprocess.build_store("table", [csv], str(out),
                                options=preprocess.Options(table=ROLES), **kw)


def test_overwrite_refuses_a_directory_that_is_not_a_store(tmp_path):
  csv = write_csv(tmp_path / "in.csv")
  out = tmp_path / "out"
  out.mkdir()
  (out / "important.txt").write_text("keep me")
  with pytest.raises(DataError, match="is not a store .* nothing was changed") as e:
    build(csv, out, overwrite=True)
  assert e.value.path == str(out)
  assert (out / "important.txt").read_text() == "keep me"
  assert sorted(os.listdir(tmp_path)) == ["in.csv", "out"]
  result = run_script("preprocess", "--format=table", f"--input={csv}",
                      f"--output={out}", "--overwrite", "--click=click",
                      "--conversion=conversion", "--sparse=a,b", "--noprogress")
  assert result.returncode == 1 and result.stderr.count("\n") == 1
  assert result.stderr.startswith(f"error: {out}: is not a store")
  assert (out / "important.txt").exists()


def test_overwrite_replaces_a_store_or_an_empty_directory(tmp_path):
  csv = write_csv(tmp_path / "in.csv")
  (tmp_path / "empty").mkdir()
  build(csv, tmp_path / "empty", overwrite=True)
  first = store.load_store(str(tmp_path / "empty")).info["meta"]["fingerprint"]
  build(write_csv(tmp_path / "in2.csv", seed=1), tmp_path / "empty", overwrite=True)
  assert store.load_store(str(tmp_path / "empty")).info["meta"]["fingerprint"] != first
  with pytest.raises(FileExistsError, match="pass --overwrite"):
    build(csv, tmp_path / "empty")
  (tmp_path / "file").write_text("x")
  with pytest.raises(DataError, match="is not a store"):
    build(csv, tmp_path / "file", overwrite=True)


@pytest.mark.parametrize("num_shards", [0, 2])
def test_leftovers_of_dead_builds_are_removed_and_said(tmp_path, num_shards):
  """The columnar build and the sharded one (whose store is written by
  ``shard_writer.open_root``, as the Beam build's is) remove the same leftovers."""
  csv = write_csv(tmp_path / "in.csv")
  dead = 2 ** 22 + 7  # above Linux's default pid_max: never a running process.
  for kind in ("tmp", "spill", "old"):
    (tmp_path / f".out.{kind}-{dead}-abc" / "x").mkdir(parents=True)
  live = tmp_path / f".out.tmp-{os.getppid()}-def"  # a running build's: kept.
  live.mkdir()
  other = tmp_path / f".other.tmp-{dead}-abc"  # another output's: kept.
  other.mkdir()
  lines = []
  build(csv, tmp_path / "out", log=lines.append, num_shards=num_shards)
  assert sorted(os.listdir(tmp_path)) == sorted(
      ["in.csv", "out", live.name, other.name])
  said = [line for line in lines if line.startswith("removed")]
  assert len(said) == 1 and said[0].startswith("removed 3 leftover(s) of an interrupted "
                                               f"build of {tmp_path / 'out'}")


def test_a_commit_killed_between_its_renames_gets_the_old_store_back(tmp_path):
  csv = write_csv(tmp_path / "in.csv")
  build(csv, tmp_path / "out")
  fingerprint = store.load_store(str(tmp_path / "out")).info["meta"]["fingerprint"]
  old = tmp_path / f".out.old-{2 ** 22 + 7}-abc"
  old.mkdir()
  os.rename(tmp_path / "out", old / "store")
  assert store_writer.clear_leftovers(str(tmp_path / "out")) == [str(old)]
  assert store.load_store(str(tmp_path / "out")).info["meta"]["fingerprint"] == fingerprint


@pytest.mark.parametrize("kill_at,sharded,left_kinds", [
    (".out.tmp-", (), {".out.tmp", ".out.spill"}),
    (".out.columnar-", ("--num_shards=2",), {".out.columnar"})])
def test_a_sigkilled_build_leaves_what_the_next_build_removes(tmp_path, kill_at, sharded,
                                                              left_kinds):
  """SIGKILL of launch/preprocess.py while it writes the store (its spill and
  temporary store directories exist; for a sharded store, the columnar build's
  directory), then a rerun: they are gone, and it says so."""
  csv = write_csv(tmp_path / "in.csv", rows=200_000)
  out = tmp_path / "out"
  args = ("--format=table", f"--input={csv}", f"--output={out}", "--click=click",
          "--conversion=conversion", "--sparse=a,b", "--dense=x", "--noprogress", *sharded)
  # Small blocks, spilled to disk, one worker: the killed build is still writing.
  kill_preprocess_once(tmp_path, kill_at, *args, "--chunk_rows=2000",
                       "--spill_memory_mb=0", "--workers=1")
  left = sorted(n for n in os.listdir(tmp_path) if n.startswith(".out."))
  assert {n.split("-")[0] for n in left} == left_kinds
  result = run_script("preprocess", *args)
  assert result.returncode == 0, result.stderr
  assert f"removed {len(left)} leftover(s) of an interrupted build of {out}" in result.stdout
  assert sorted(os.listdir(tmp_path)) == ["in.csv", "out"]
  store.load_store(str(out))
