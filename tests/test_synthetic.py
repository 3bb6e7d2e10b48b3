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


def test_training_batches_follow_the_seeded_epoch_permutation(data):
  """The pipeline over synthetic columns: batch k is rows perm[k*B:(k+1)*B] (the
  pipeline's own contract is tested in test_pipeline.py)."""
  cols = data.splits["train"]
  n = len(cols[B.CLICK])
  per_epoch = n // 100
  batches = list(pipeline.train_iterator(cols, global_batch_size=100,
                                         num_batches=per_epoch + 1, seed=7, num_threads=1))
  for epoch, batch in ((0, batches[3]), (1, batches[per_epoch])):
    start = 300 if epoch == 0 else 0
    rows = pipeline.epoch_permutation(n, 7, epoch)[start:start + 100]
    for key in (B.SPARSE, B.CLICK, B.P_CTR_TRUE):
      np.testing.assert_array_equal(batch[key], cols[key][rows])
