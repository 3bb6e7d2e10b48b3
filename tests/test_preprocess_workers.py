"""Preprocessing workers and failures mid-build: threads and processes write the same
store, a worker's error keeps its place, a dead worker process fails the run, and a
failure or Ctrl-C while the store is allocated leaves nothing behind."""

import os
import subprocess
import sys

import numpy as np
import pytest

from pico_jax.ingest import blocks, preprocess
from pico_jax.data import store
from pico_jax.ingest import store_writer
from pico_jax.data.errors import DataError

from test_readers import ae_row, good_ae, write


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


def test_no_two_threads_parse_npy_headers_at_once(tmp_path, monkeypatch):
  """numpy parses a ``.npy`` header with ``ast.literal_eval``, and CPython 3.11's ast
  keeps one recursion counter for all threads: two parses at once can fail with
  "SystemError: AST constructor recursion depth mismatch" (it failed CI once, in the
  columns' allocation). Each parse here is held open for 20 ms, so threads that parse
  side by side overlap, and the overlap is counted."""
  import ast
  import threading
  import time
  monkeypatch.setattr(blocks, "MIN_BYTES_PER_WORKER", 1)
  monkeypatch.setattr(os, "cpu_count", lambda: 4)  # the allocation's thread pool.
  literal_eval, lock = ast.literal_eval, threading.Lock()
  parsing, most = 0, 0

  def held_open(text):
    nonlocal parsing, most
    with lock:
      parsing += 1
      most = max(most, parsing)
    try:
      time.sleep(0.02)
      return literal_eval(text)
    finally:
      with lock:
        parsing -= 1

  monkeypatch.setattr(ast, "literal_eval", held_open)
  path = write(tmp_path, "ae.csv", good_ae(tmp_path, n=300))
  preprocess.build_store("aliexpress", [path], str(tmp_path / "out"),
                         options=preprocess.Options(chunk_rows=16, workers=2))
  assert most <= 1
  monkeypatch.undo()
  assert len(store.load_store(str(tmp_path / "out")).splits["train"]["click"]) > 0


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


def test_parse_threads_go_to_the_last_blocks():
  # 2 threads, 5 blocks: the fifth is parsed on both; 16 threads, 5 blocks: 4 each.
  assert [blocks.parse_threads(k, 5, 2) for k in range(5)] == [1, 1, 1, 1, 2]
  assert [blocks.parse_threads(k, 5, 16) for k in range(5)] == [4] * 5
  assert [blocks.parse_threads(k, 13, 8) for k in range(13)] == [1] * 8 + [2] * 5
  assert [blocks.parse_threads(k, 6, 2) for k in range(6)] == [1] * 6
  assert [blocks.parse_threads(k, 3, 1) for k in range(3)] == [1] * 3
