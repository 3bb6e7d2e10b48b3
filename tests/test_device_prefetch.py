"""Device prefetch (Grain's thread prefetch over ``.map(put)``, ``pipeline.train_iterator``
with ``put`` and ``device_prefetch``): the order, the end, errors, and resume."""

import threading
import time

import grain
import jax
import numpy as np
import pytest

from pico_jax import parallel
from pico_jax.data import pipeline


def _columns(n=200, seed=0):
  rng = np.random.default_rng(seed)
  return {"click": (rng.random(n) < 0.3).astype(np.float32),
          "conversion": (rng.random(n) < 0.1).astype(np.float32),
          "f": rng.integers(0, 50, size=(n, 3)).astype(np.int32)}


def _iterator(num_batches=12, **prefetch):
  # 200 rows in batches of 32: 6 per epoch, so 12 batches cross an epoch boundary.
  return pipeline.train_iterator(_columns(), global_batch_size=32, num_batches=num_batches,
                                 seed=3, prefetch=2, num_threads=1, **prefetch)


class _Put:
  """``parallel.shard_batch`` onto ``mesh``, counting the batches placed."""

  def __init__(self, mesh):
    self.mesh, self.calls, self._lock = mesh, 0, threading.Lock()

  def __call__(self, batch):
    with self._lock:
      self.calls += 1
    return parallel.shard_batch(batch, self.mesh)


def _prefetcher(mesh, buffer_size=2):
  put = _Put(mesh)
  return _iterator(put=put, device_prefetch=buffer_size), put


def _host(batch):
  return {k: np.asarray(jax.device_get(v)) for k, v in batch.items()}


def _assert_same(got, want):
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh(8, 1)


@pytest.fixture(scope="module")
def plain():
  """Every batch of the plain iterator, and its state after each one."""
  it = _iterator()
  batches, states = [], []
  for batch in it:
    batches.append(batch)
    states.append(it.get_state())
  return batches, states


def test_same_batches_in_the_same_order_then_the_end(mesh, plain):
  batches, _ = plain
  prefetcher, _ = _prefetcher(mesh, buffer_size=2)
  got = list(prefetcher)
  assert len(got) == len(batches)
  for placed, want in zip(got, batches):
    assert placed["click"].sharding.is_equivalent_to(parallel.batch_sharding(mesh), 1)
    _assert_same(_host(placed), want)
  with pytest.raises(StopIteration):
    next(prefetcher)
  prefetcher.close()


@pytest.mark.parametrize("consumed", [0, 1, 5, 7])
def test_state_is_after_the_last_consumed_batch_not_the_prefetched_ones(mesh, plain,
                                                                         consumed):
  batches, states = plain
  prefetcher, put = _prefetcher(mesh, buffer_size=3)
  for _ in range(consumed):
    next(prefetcher)
  prefetcher.start_prefetch()
  # Let the thread run ahead (place its buffer's batches) before the state is read.
  deadline = time.monotonic() + 60
  while put.calls < min(consumed + 3, len(batches)):
    assert time.monotonic() < deadline, f"the prefetch thread placed {put.calls} batches"
    time.sleep(0.01)
  state = prefetcher.get_state()
  assert state == (states[consumed - 1] if consumed else _iterator().get_state())
  prefetcher.close()
  # A fresh pipeline resumed from that state yields exactly the unconsumed batches.
  resumed, _ = _prefetcher(mesh)
  resumed.set_state(state)
  rest = [_host(b) for b in resumed]
  assert len(rest) == len(batches) - consumed
  for got, want in zip(rest, batches[consumed:]):
    _assert_same(got, want)
  resumed.close()


def test_grain_checkpoint_round_trip_and_rewind(mesh, plain, tmp_path):
  batches, _ = plain
  prefetcher, _ = _prefetcher(mesh)
  for _ in range(4):
    next(prefetcher)
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(tmp_path, args=grain.checkpoint.CheckpointSave(prefetcher))
  _assert_same(_host(next(prefetcher)), batches[4])
  restored = handler.restore(tmp_path, args=grain.checkpoint.CheckpointRestore(
      _prefetcher(mesh)[0]))
  _assert_same(_host(next(restored)), batches[4])
  # set_state on a running prefetcher drops its read-ahead and rewinds.
  prefetcher.set_state(restored.get_state())
  _assert_same(_host(next(prefetcher)), batches[5])
  # The state has the plain iterator's format: a checkpoint resumes either way.
  plain_it = _iterator()
  plain_it.set_state(prefetcher.get_state())
  _assert_same(next(plain_it), batches[6])
  restored.close()
  prefetcher.close()


def test_errors_reach_the_consumer_at_their_batch(mesh, plain):
  batches, _ = plain
  put = _Put(mesh)

  def broken(batch):
    if put.calls == 2:
      raise OSError("disk gone")
    return put(batch)

  prefetcher = _iterator(put=broken, device_prefetch=2)
  _assert_same(_host(next(prefetcher)), batches[0])
  _assert_same(_host(next(prefetcher)), batches[1])
  with pytest.raises(OSError, match="disk gone"):
    next(prefetcher)
  prefetcher.close()
  with pytest.raises(ValueError, match="device_prefetch"):
    _iterator(put=put, device_prefetch=-1)
