"""Learning-rate schedules: the formula and bad settings. The logged rate and resuming
under a schedule are tested by tests/test_faults.py's kill test, the lazy table's
schedule by tests/test_sparse_optimizer.py."""

import math

import pytest

from conftest import small_config
from pico_jax.config import validate
from pico_jax.config_keys import ConfigError
from pico_jax.train.optimizer import learning_rate_schedule


def _expected(schedule, lr, warmup, decay, t):
  """The documented formula, written out independently of optax."""
  if schedule == "constant":
    return lr
  if t < warmup:
    return lr * t / warmup
  if t >= decay:
    return 0.0
  frac = (t - warmup) / (decay - warmup)
  return lr * (1 + math.cos(math.pi * frac)) / 2 if schedule == "warmup_cosine" else lr * (1 - frac)


@pytest.mark.parametrize("schedule", ["constant", "warmup_cosine", "warmup_linear"])
@pytest.mark.parametrize("warmup,decay", [(0, 10), (3, 10), (4, 0)])
def test_schedule_follows_its_formula(schedule, warmup, decay):
  config = small_config(**{"optimizer.schedule": schedule, "optimizer.learning_rate": 0.02,
                           "optimizer.warmup_steps": warmup, "optimizer.decay_steps": decay})
  fn = learning_rate_schedule(config.optimizer, total_steps=12)
  for t in range(16):
    want = _expected(schedule, 0.02, warmup, decay or 12, t)
    assert float(fn(t)) == pytest.approx(want, abs=1e-8), t


@pytest.mark.parametrize("overrides,key", [
    ({"optimizer.schedule": "cosine"}, "optimizer.schedule"),
    ({"optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 20},
     "optimizer.warmup_steps"),
    ({"optimizer.schedule": "warmup_linear", "optimizer.warmup_steps": 5,
      "optimizer.decay_steps": 5}, "optimizer.warmup_steps"),
    ({"optimizer.decay_steps": -1}, "optimizer.decay_steps"),
])
def test_bad_schedule_settings_name_the_key(overrides, key):
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    validate(small_config(**overrides))
