"""The synthetic generator and the Grain pipeline over it."""

import numpy as np
import pytest

from pico_jax import batch as B
from pico_jax.data import pipeline, synthetic


@pytest.fixture(scope="module")
def data():
  return synthetic.generate(seed=3, num_rows=5_000, num_users=100, num_items=50)


def test_same_seed_same_arrays(data):
  again = synthetic.generate(seed=3, num_rows=5_000, num_users=100, num_items=50)
  other = synthetic.generate(seed=4, num_rows=5_000, num_users=100, num_items=50)
  for key, col in data.splits["train"].items():
    np.testing.assert_array_equal(col, again.splits["train"][key])
  assert not np.array_equal(data.splits["train"][B.CLICK], other.splits["train"][B.CLICK])


def test_labels_and_ground_truth_are_consistent(data):
  cols = {k: np.concatenate([data.splits[s][k] for s in ("train", "val", "test")])
          for k in data.splits["train"]}
  assert len(cols[B.CLICK]) == 5_000
  assert set(np.unique(cols[B.CLICK])) <= {0.0, 1.0}
  assert np.all(cols[B.CONVERSION] <= cols[B.CLICK])  # c = 1 implies y = 1.
  assert 0.05 < cols[B.CLICK].mean() < 0.6
  assert cols[B.CONVERSION].sum() > 50
  assert np.all((cols[B.P_CTR_TRUE] > 0) & (cols[B.P_CTR_TRUE] < 1))
  assert data.info["rho"] == [0.0, 0.33, 0.67, 1.0]
  schema = data.schema
  for j, field in enumerate(schema.sparse):
    assert cols[B.SPARSE][:, j].max() < field.vocab_size
  assert cols[B.MULTI].max() < schema.multi[0].vocab_size
  assert np.all(cols[B.MULTI][~cols[B.MULTI_MASK]] == 0)
  assert cols[B.DENSE].shape[1] == schema.num_dense


def test_rho_controls_how_much_conversion_follows_clicks():
  d = synthetic.generate(seed=0, num_rows=60_000, rho=(0.0, 1.0))
  cols = d.splits["train"]
  logit = lambda p: np.log(p / (1 - p))
  corr = [np.corrcoef(logit(cols[B.P_CTR_TRUE][cols[B.SEGMENT] == s]),
                      logit(cols[B.P_CVR_TRUE][cols[B.SEGMENT] == s]))[0, 1] for s in (0, 1)]
  assert corr[1] > corr[0] + 0.3


def test_bad_rho_is_rejected():
  with pytest.raises(ValueError, match="rho"):
    synthetic.generate(seed=0, num_rows=100, rho=(0.5, 1.5))


def test_train_iterator_is_seeded_and_covers_each_epoch(data):
  cols = data.splits["train"]
  n = len(cols[B.CLICK])
  it = pipeline.train_iterator(cols, global_batch_size=100, num_batches=2 * (n // 100),
                               seed=7, num_threads=1)
  batches = list(it)
  assert all(b[B.SPARSE].shape == (100, 5) for b in batches)
  epoch0 = np.concatenate([b[B.GROUP] * 10_000 + b[B.SPARSE][:, 1] for b in batches[:n // 100]])
  again = list(pipeline.train_iterator(cols, global_batch_size=100, num_batches=3, seed=7,
                                       num_threads=1))
  np.testing.assert_array_equal(again[2][B.CLICK], batches[2][B.CLICK])
  rows = pipeline.epoch_permutation(n, 7, 0)[:(n // 100) * 100]
  assert len(np.unique(rows)) == len(rows) == len(epoch0)


def test_iterator_state_round_trips(data):
  kwargs = dict(global_batch_size=64, num_batches=20, seed=1, num_threads=1)
  it = pipeline.train_iterator(data.splits["train"], **kwargs)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = next(it)
  fresh = pipeline.train_iterator(data.splits["train"], **kwargs)
  fresh.set_state(state)
  got = next(fresh)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])


def test_process_shards_partition_the_global_batch(data):
  cols = data.splits["train"]
  whole = next(pipeline.train_iterator(cols, global_batch_size=64, num_batches=1, seed=2,
                                       num_threads=1))
  parts = [next(pipeline.train_iterator(cols, global_batch_size=64, num_batches=1, seed=2,
                                        process_index=p, process_count=2, num_threads=1))
           for p in range(2)]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_eval_batches_visit_every_row_once_with_padding_masked(data):
  cols = data.splits["val"]
  n = len(cols[B.CLICK])
  batches = list(pipeline.eval_batches(cols, global_batch_size=128))
  assert all(len(b[B.MASK]) == 128 for b in batches)
  mask = np.concatenate([b[B.MASK] for b in batches])
  assert mask.sum() == n and np.all(mask[:n] == 1)
  np.testing.assert_array_equal(np.concatenate([b[B.CLICK] for b in batches])[:n], cols[B.CLICK])
