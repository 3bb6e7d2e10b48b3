"""Device prefetch: the order, the end, errors, and resume of the wrapped Grain iterator."""

import grain
import jax
import numpy as np
import pytest

from pico_jax import parallel
from pico_jax.data import pipeline
from pico_jax.data.device_prefetch import DevicePrefetcher


def _columns(n=200, seed=0):
  rng = np.random.default_rng(seed)
  return {"click": (rng.random(n) < 0.3).astype(np.float32),
          "conversion": (rng.random(n) < 0.1).astype(np.float32),
          "f": rng.integers(0, 50, size=(n, 3)).astype(np.int32)}


def _iterator(num_batches=12):
  # 200 rows in batches of 32: 6 per epoch, so 12 batches cross an epoch boundary.
  return pipeline.train_iterator(_columns(), global_batch_size=32, num_batches=num_batches,
                                 seed=3, prefetch=2, num_threads=1)


def _put(mesh):
  return lambda batch: parallel.shard_batch(batch, mesh)


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
  prefetcher = DevicePrefetcher(_iterator(), _put(mesh), buffer_size=2)
  got = list(prefetcher)
  assert len(got) == len(batches)
  for placed, want in zip(got, batches):
    assert placed["click"].sharding.is_equivalent_to(parallel.batch_sharding(mesh), 1)
    _assert_same(_host(placed), want)
  with pytest.raises(StopIteration):
    next(prefetcher)


@pytest.mark.parametrize("consumed", [0, 1, 5, 7])
def test_state_is_after_the_last_consumed_batch_not_the_prefetched_ones(mesh, plain,
                                                                         consumed):
  batches, states = plain
  prefetcher = DevicePrefetcher(_iterator(), _put(mesh), buffer_size=3)
  for _ in range(consumed):
    next(prefetcher)
  prefetcher.start_prefetch()
  # Let the producer run ahead (fill its buffer) before the state is read.
  while prefetcher._thread is not None and not prefetcher._queue.full():
    prefetcher._thread.join(0.01)
  state = prefetcher.get_state()
  assert state == (states[consumed - 1] if consumed else _iterator().get_state())
  prefetcher.close()
  # A fresh pipeline resumed from that state yields exactly the unconsumed batches.
  resumed = DevicePrefetcher(_iterator(), _put(mesh))
  resumed.set_state(state)
  rest = [_host(b) for b in resumed]
  assert len(rest) == len(batches) - consumed
  for got, want in zip(rest, batches[consumed:]):
    _assert_same(got, want)


def test_grain_checkpoint_round_trip_and_rewind(mesh, plain, tmp_path):
  batches, _ = plain
  prefetcher = DevicePrefetcher(_iterator(), _put(mesh))
  for _ in range(4):
    next(prefetcher)
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(tmp_path, args=grain.checkpoint.CheckpointSave(prefetcher))
  _assert_same(_host(next(prefetcher)), batches[4])
  restored = handler.restore(tmp_path, args=grain.checkpoint.CheckpointRestore(
      DevicePrefetcher(_iterator(), _put(mesh))))
  _assert_same(_host(next(restored)), batches[4])
  # set_state on a running prefetcher drops its read-ahead and rewinds.
  prefetcher.set_state(restored.get_state())
  _assert_same(_host(next(prefetcher)), batches[5])
  restored.close()
  prefetcher.close()


def test_errors_reach_the_consumer():
  def broken():
    yield {"x": np.zeros(2)}
    raise OSError("disk gone")

  class Stateless:
    def __init__(self):
      self._it = broken()

    def __next__(self):
      return next(self._it)

    def get_state(self):
      return {}

  prefetcher = DevicePrefetcher(Stateless(), lambda b: b)
  assert next(prefetcher)["x"].shape == (2,)
  with pytest.raises(OSError, match="disk gone"):
    next(prefetcher)
  with pytest.raises(ValueError, match="buffer_size"):
    DevicePrefetcher(Stateless(), lambda b: b, buffer_size=0)
