"""The Grain pipeline over a columnar store: order, epochs, per-process sharding (two
real local processes), checkpointable state and whole-batch gathers."""

import collections
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT
from pico_jax import batch as B
from pico_jax.data import pipeline, store
from pico_jax.ingest import store_writer
from pico_jax.data.schema import Schema, SparseField

N = 96  # rows of the train split; 8 global batches of 12.


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
  """A store whose ``group`` column is the row index, so batches say which rows they hold."""
  path = str(tmp_path_factory.mktemp("pipe") / "store")
  schema = Schema(sparse=(SparseField("a", 11),), multi=(SparseField("m", 11, 2),),
                  dense=("x",), extras=(B.GROUP,))
  rows = {"train": N, "val": 29, "test": 5}
  with store_writer.StoreWriter(path, schema, rows) as writer:
    for split, n in rows.items():
      cols = writer.columns[split]
      cols[B.GROUP][:] = np.arange(n)
      cols[B.SPARSE][:] = (np.arange(n) % 10 + 1)[:, None]
      cols[B.MULTI][:] = (np.arange(n) % 10 + 1)[:, None, None]
      cols[B.MULTI_MASK][:] = True
      cols[B.DENSE][:] = np.arange(n, dtype=np.float32)[:, None]
      cols[B.CLICK][:] = np.arange(n) % 2
      cols[B.CONVERSION][:] = 0
    writer.commit({})
  return path


@pytest.fixture(scope="module")
def train(store_path):
  return store.load_store(store_path).splits["train"]


def rows_of(batches):
  return [b[B.GROUP].copy() for b in batches]


def iterate(columns, num_batches, **kwargs):
  kwargs = {"global_batch_size": 12, "seed": 3, "num_threads": 2, "prefetch": 3, **kwargs}
  return pipeline.train_iterator(columns, num_batches=num_batches, **kwargs)


def test_batches_are_whole_gathers_of_the_same_rows(train):
  batch = next(iterate(train, 1))
  rows = batch[B.GROUP]
  assert batch[B.SPARSE].shape == (12, 1) and batch[B.MULTI].shape == (12, 1, 2)
  assert batch[B.MULTI_MASK].dtype == bool and batch[B.MASK].tolist() == [1.0] * 12
  np.testing.assert_array_equal(batch[B.DENSE][:, 0], rows)  # every column, same rows.
  np.testing.assert_array_equal(batch[B.SPARSE][:, 0], rows % 10 + 1)


def test_epochs_are_seeded_permutations(train):
  per_epoch = N // 12
  rows = rows_of(iterate(train, 3 * per_epoch))
  epochs = [np.concatenate(rows[e * per_epoch:(e + 1) * per_epoch]) for e in range(3)]
  for e in epochs:
    np.testing.assert_array_equal(np.sort(e), np.arange(N))  # each row once per epoch.
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch.
  again = rows_of(iterate(train, 3 * per_epoch))
  np.testing.assert_array_equal(np.concatenate(again), np.concatenate(rows))
  other = rows_of(iterate(train, per_epoch, seed=4))
  assert not np.array_equal(np.concatenate(other), epochs[0])


def test_the_last_partial_batch_of_an_epoch_is_dropped(train):
  rows = rows_of(iterate(train, 7, global_batch_size=13))
  epoch = np.concatenate(rows[:7])  # 96 // 13 = 7 full batches, 5 rows left out.
  assert len(np.unique(epoch)) == 91


@pytest.mark.parametrize("skip", [0, 3, 8, 13])  # mid-epoch, at and after an epoch edge.
def test_get_state_set_state_round_trip(train, skip):
  it = iterate(train, 20)
  for _ in range(skip):
    next(it)
  state = it.get_state()
  expected = rows_of([next(it) for _ in range(4)])
  fresh = iterate(train, 20)
  fresh.set_state(state)
  np.testing.assert_array_equal(np.stack(rows_of([next(fresh) for _ in range(4)])),
                                np.stack(expected))
  json.dumps(state)  # the state is small and JSON-serialisable (Orbax saves it).


def test_process_shards_concatenate_to_the_global_batch(train):
  whole = rows_of(iterate(train, 16))
  parts = [rows_of(iterate(train, 16, process_index=p, process_count=3)) for p in range(3)]
  for k in range(16):
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
  with pytest.raises(ValueError, match="not divisible by 5 processes"):
    iterate(train, 1, process_count=5)


_WORKER = """
import json, sys
from pico_jax import batch as B
from pico_jax.data import pipeline, store
path, index, count, steps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ds = store.load_store(path)
it = pipeline.train_iterator(ds.splits["train"], global_batch_size=12, num_batches=steps,
                             seed=3, process_index=index, process_count=count)
train = [next(it)[B.GROUP].tolist() for _ in range(steps)]
evals = [(b[B.GROUP].tolist(), b[B.MASK].tolist()) for b in pipeline.eval_batches(
    ds.splits["val"], global_batch_size=8, process_index=index, process_count=count)]
print(json.dumps({"train": train, "eval": evals}))
"""


def test_two_processes_cover_every_row_once_per_epoch(store_path, train):
  """Two real local processes, each with its own process_index, read the same store."""
  steps = 2 * (N // 12)  # two epochs.
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, ROOT, store_path, str(p), "2",
                             str(steps)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu")) for p in range(2)]
  outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
  assert all(p.returncode == 0 for p in procs)
  per_epoch = N // 12
  for epoch in range(2):
    steps_e = range(epoch * per_epoch, (epoch + 1) * per_epoch)
    seen = np.concatenate([outs[p]["train"][k] for p in range(2) for k in steps_e])
    np.testing.assert_array_equal(np.sort(seen), np.arange(N))  # exactly once.
    assert len(set(np.concatenate([outs[0]["train"][k] for k in steps_e]))
               & set(np.concatenate([outs[1]["train"][k] for k in steps_e]))) == 0
  # The two local halves form the same global batches as one process alone.
  whole = rows_of(iterate(train, steps))
  for k in range(steps):
    np.testing.assert_array_equal(outs[0]["train"][k] + outs[1]["train"][k], whole[k])
  # Evaluation: every one of the 29 val rows exactly once, padding masked out.
  real = [r for p in range(2) for rows, mask in outs[p]["eval"]
          for r, m in zip(rows, mask) if m]
  assert sorted(real) == list(range(29))


def test_eval_batches_pad_the_last_batch(store_path):
  val = store.load_store(store_path).splits["val"]
  batches = list(pipeline.eval_batches(val, global_batch_size=8))
  assert len(batches) == 4 and all(len(b[B.MASK]) == 8 for b in batches)
  assert batches[-1][B.MASK].tolist() == [1.0] * 5 + [0.0] * 3
  rows = np.concatenate([b[B.GROUP][b[B.MASK] > 0] for b in batches])
  np.testing.assert_array_equal(rows, np.arange(29))


def test_bad_columns_and_sizes(train):
  with pytest.raises(ValueError, match="columns differ in row count"):
    iterate({B.CLICK: np.zeros(10), B.DENSE: np.zeros((9, 1))}, 1)
  with pytest.raises(ValueError, match="exceeds the 96 rows"):
    iterate(train, 1, global_batch_size=128)
  with pytest.raises(ValueError, match="not divisible by 3"):
    next(pipeline.eval_batches(train, global_batch_size=8, process_count=3))


def _slow_counted_permutation(monkeypatch, delay=0.005):
  """Patches ``pipeline.epoch_permutation`` to count its calls per epoch and to sleep
  (releasing the GIL) so that threads asking for the same epoch overlap."""
  real, calls, lock = pipeline.epoch_permutation, collections.Counter(), threading.Lock()

  def slow(num_rows, seed, epoch):
    with lock:
      calls[epoch] += 1
    time.sleep(delay)
    return real(num_rows, seed, epoch)

  monkeypatch.setattr(pipeline, "epoch_permutation", slow)
  return real, calls


def test_permutation_cache_under_grain_threads(monkeypatch):
  """Eight Grain threads over six short epochs: every batch holds the rows of its own
  epoch's permutation, and each epoch's permutation is computed once, although threads
  ask for it together and, at an epoch edge, for two epochs in turn."""
  n, batch, epochs = 512, 8, 6
  per_epoch = n // batch
  real, calls = _slow_counted_permutation(monkeypatch)
  columns = {B.GROUP: np.arange(n, dtype=np.int32)}
  it = pipeline.train_iterator(columns, global_batch_size=batch, num_batches=epochs * per_epoch,
                               seed=5, num_threads=8, prefetch=8)
  got = rows_of(it)
  assert len(got) == epochs * per_epoch
  for index, rows in enumerate(got):
    e, k = divmod(index, per_epoch)
    np.testing.assert_array_equal(rows, real(n, 5, e)[k * batch:(k + 1) * batch])
  assert dict(calls) == {e: 1 for e in range(epochs)}


def test_permutation_cache_hammered_in_random_order(monkeypatch):
  """Threads asking for batches of many epochs in random order (the worst case for a
  per-epoch cache) still get exactly the rows of each batch's own epoch."""
  n, batch, epochs, threads = 64, 16, 40, 8
  per_epoch = n // batch
  real, _ = _slow_counted_permutation(monkeypatch, delay=0.0005)
  source = pipeline._TrainBatches({B.GROUP: np.arange(n, dtype=np.int32)},
                                  global_batch_size=batch, seed=3, shuffle=True,
                                  process_index=0, process_count=1)
  expected = {e: real(n, 3, e) for e in range(epochs)}
  wrong = []

  def work(t):
    for index in np.random.default_rng(t).permutation(epochs * per_epoch):
      e, k = divmod(int(index), per_epoch)
      if not np.array_equal(source(index)[B.GROUP], expected[e][k * batch:(k + 1) * batch]):
        wrong.append(int(index))

  workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
  for w in workers:
    w.start()
  for w in workers:
    w.join()
  assert wrong == []
