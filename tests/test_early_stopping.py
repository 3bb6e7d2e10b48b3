"""Early stopping: patience, modes, replay from history, and the loop's use of it."""

import json
import math

import pytest

from conftest import small_config
from pico_jax import config as config_lib
from pico_jax.config_keys import ConfigError
from pico_jax.train.early_stopping import EarlyStopping, metric_mode


def test_patience_and_best_in_max_mode():
  s = EarlyStopping("mean_auc", patience=2)
  assert s.mode == "max"
  assert s.update(10, {"mean_auc": 0.70})
  assert s.update(20, {"mean_auc": 0.72})
  assert not s.update(30, {"mean_auc": 0.72})  # equal is not an improvement
  assert not s.should_stop
  assert not s.update(40, {"mean_auc": 0.71})
  assert s.should_stop
  assert (s.best_step, s.best_value, s.bad_evals) == (20, 0.72, 2)


def test_min_mode_for_losses_and_nan_never_improves():
  assert metric_mode("ctcvr_logloss") == "min" and metric_mode("loss") == "min"
  assert metric_mode("cvr_gauc") == "max"
  s = EarlyStopping("ctcvr_logloss", patience=1)
  assert not s.update(1, {"ctcvr_logloss": math.nan})
  assert s.best_step is None and s.should_stop
  s = EarlyStopping("ctcvr_logloss", patience=3)
  assert s.update(1, {"ctcvr_logloss": 0.3})
  assert s.update(2, {"ctcvr_logloss": 0.2})
  assert not s.update(3, {"ctcvr_logloss": 0.25})


def test_bad_settings_name_the_key():
  with pytest.raises(ConfigError, match="config.train.patience=0"):
    config_lib.validate(small_config(**{"train.patience": 0}))
  s = EarlyStopping("mean_acu", patience=1)
  with pytest.raises(KeyError, match="'mean_acu' is not among.*mean_auc"):
    s.update(1, {"mean_auc": 0.5})
  assert EarlyStopping.from_config(small_config()) is None


def test_from_history_replays_eval_split_up_to_step():
  records = [
      {"step": 10, "split": "val", "mean_auc": 0.6},
      {"step": 10, "split": "train", "loss": 1.0},
      {"step": 20, "split": "val", "mean_auc": 0.8},
      {"step": 20, "split": "test", "mean_auc": 0.9},
      {"step": 30, "split": "val", "mean_auc": 0.7},
      {"step": 30, "split": "val", "mean_auc": 0.75},  # rewritten by a resumed run
      {"step": 40, "split": "val", "mean_auc": 0.95},  # after the restored step
  ]
  s = EarlyStopping.from_history("mean_auc", 3, records, split="val", up_to_step=30)
  assert (s.best_step, s.best_value, s.bad_evals) == (20, 0.8, 1)


def test_loop_stops_early_and_tests_the_best_params(tmp_path):
  """The run stops `patience` evaluations after its best one and tests the best step's
  params. Evaluating on the test split during training makes that checkable: the final
  test record equals the record of the best evaluation, not that of the last one."""
  from pico_jax.train.loop import train_and_evaluate
  config = small_config(**{"train.steps": 300, "train.eval_every": 5, "train.log_every": 5,
                           "data.eval_split": "test", "train.patience": 1,
                           "train.early_stopping_metric": "mean_auc"})
  result = train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  *evals, final = records
  last = evals[-1]["step"]
  assert last < 300 and [r["step"] for r in evals] == list(range(5, last + 1, 5))
  assert evals[-1]["mean_auc"] <= evals[-2]["mean_auc"]
  best = max(evals, key=lambda r: r["mean_auc"])
  assert final["step"] == best["step"] == last - 5  # patience 1
  assert final == best and final != evals[-1]
  assert result["ctr_auc"] == final["ctr_auc"]
