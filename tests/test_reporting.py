"""Reporting: JSON-lines metrics, TensorBoard event files, the progress bar, tau files."""

import io
import json
import logging
import os
import struct

import numpy as np
import pytest

from pico_jax import batch as B
from pico_jax.data.errors import DataError
from pico_jax.train import reporting


def _events(logdir):
  """(tag, kind) of every summary in the TensorBoard event files under ``logdir``."""
  from tensorboardX.proto import event_pb2
  out = []
  for name in os.listdir(logdir):
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc.
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 16 + length
      for v in event.summary.value:
        out.append((v.tag, v.WhichOneof("value"), event.step))
  return out


def test_reporter_writes_jsonl_tensorboard_tau_and_progress(tmp_path):
  bar = io.StringIO()
  rep = reporting.Reporter(str(tmp_path), total_steps=20, batch_size=32, progress_file=bar)
  for _ in range(10):
    rep.step()
  record = rep.train(10, {"loss": np.float32(0.5), "loss_ctr": 0.25})
  assert record["examples_per_sec"] > 0 and record["steps_per_sec"] > 0
  preds = {"tau": np.array([0.1, 0.2, 0.3, 0.4], np.float32)}
  cols = {B.SEGMENT: np.array([0, 0, 1, 1])}
  rep.eval(10, "val", {"ctr_auc": 0.75, "tau_segment_0": 0.15}, preds, cols)
  rep.eval(10, "test", {"ctr_auc": 0.7})
  rep.close()

  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [(r["split"], r["step"]) for r in lines] == [("val", 10), ("test", 10)]
  assert lines[0]["ctr_auc"] == 0.75
  (train,) = [json.loads(line) for line in open(tmp_path / "train_metrics.jsonl")]
  assert train["step"] == 10 and train["loss"] == 0.5 and train["examples_per_sec"] > 0

  tags = {(tag, kind) for tag, kind, _ in _events(tmp_path / "tensorboard")}
  assert {("train/loss", "simple_value"), ("train/examples_per_sec", "simple_value"),
          ("val/ctr_auc", "simple_value"), ("test/ctr_auc", "simple_value"),
          ("val/tau", "histo"), ("val/tau_segment_1", "histo")} <= tags

  tau = np.load(tmp_path / "tau_val.npz")
  np.testing.assert_array_equal(tau["tau"], preds["tau"])
  np.testing.assert_array_equal(tau["segment"], cols[B.SEGMENT])
  assert int(tau["step"]) == 10

  text = bar.getvalue()
  assert "10/20" in text and "loss=0.5000" in text and "ex/s=" in text
  assert "<" in text  # tqdm's elapsed<remaining: the ETA


def test_reliability_curves_go_to_tensorboard_as_one_image_not_scalars(tmp_path):
  from pico_jax import metrics
  rng = np.random.default_rng(0)
  probs = rng.uniform(0, 1, 500)
  labels = (rng.uniform(0, 1, 500) < probs).astype(np.float64)
  evaluation = {"ctr_auc": 0.7, **metrics.calibration_metrics("ctr", labels, probs),
                **metrics.calibration_metrics("cvr", labels, probs)}
  rep = reporting.Reporter(str(tmp_path), total_steps=20, batch_size=32,
                           progress_file=io.StringIO())
  rep.eval(10, "val", evaluation)
  rep.close()
  tags = {(tag, kind) for tag, kind, _ in _events(tmp_path / "tensorboard")}
  assert ("val/reliability", "image") in tags and ("val/ctr_pcoc", "simple_value") in tags
  assert not [tag for tag, _ in tags if "_reliability_" in tag]
  (record,) = reporting.read_metrics(str(tmp_path))  # the metrics file keeps every point.
  assert record["ctr_reliability_observed_9"] == evaluation["ctr_reliability_observed_9"]


def test_a_constant_tau_gets_no_histograms(tmp_path):
  rep = reporting.Reporter(str(tmp_path), total_steps=20, batch_size=32,
                           progress_file=io.StringIO())
  rep.eval(10, "val", {"ctr_auc": 0.7}, {"tau": np.full(4, 0.2, np.float32)},
           {B.SEGMENT: np.array([0, 0, 1, 1])})
  rep.close()
  assert [kind for _, kind, _ in _events(tmp_path / "tensorboard")] == ["simple_value"]
  assert np.load(tmp_path / "tau_val.npz")["tau"].tolist() == pytest.approx([0.2] * 4)


def test_summary_table_shows_the_tasks_and_metrics_a_result_has():
  result = {"step": 500, "split": "test", "checkpoint": "best", "num_rows": 12345.0,
            "num_clicks": 1000.0, "num_conversions": 50.0, "ctr_auc": 0.71234,
            "ctr_logloss": 0.3, "ctr_pcoc": 1.01, "cvr_auc": 0.6, "cvr_logloss": 0.2,
            "cvr_auc_all_rows": 0.65, "cvr_logloss_all_rows": 0.1, "cvr_all_rows_pcoc": 0.9,
            "ctcvr_auc": 0.7}
  assert reporting.summary_table(result).splitlines() == [
      "test split, step 500 (checkpoint best): 12,345 rows, 1,000 clicks, 50 conversions",
      "task                auc   logloss      pcoc",
      "ctr              0.7123    0.3000    1.0100",
      "cvr              0.6000    0.2000         -",
      "cvr_all_rows     0.6500    0.1000    0.9000",
      "ctcvr            0.7000         -         -"]


def test_read_metrics_keeps_last_record_per_step_and_names_bad_lines(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "split": "val", "a": 1}\n'
                  '{"step": 2, "split": "val", "a": 2}\n'
                  '{"step": 2, "split": "val", "a": 3}\n'
                  '\n'
                  '{"step": 2, "split": "train", "a": 4}\n')
  records = reporting.read_metrics(str(tmp_path))
  assert [(r["split"], r["step"], r["a"]) for r in records] == [
      ("val", 1, 1), ("val", 2, 3), ("train", 2, 4)]
  with open(path, "a") as f:
    f.write('{"step": 3, "split"\n')
  with pytest.raises(DataError, match=r"metrics.jsonl:6: malformed"):
    reporting.read_metrics(str(tmp_path))


def test_training_run_reports(tmp_path, config):
  """A real run leaves train and eval records, event files and tau of both splits."""
  from pico_jax.train.loop import train_and_evaluate
  train_and_evaluate(config, str(tmp_path))
  records = reporting.read_metrics(str(tmp_path))
  assert [(r["split"], r["step"]) for r in records] == [("val", 10), ("val", 20),
                                                        ("test", 20)]
  train = reporting.read_metrics(str(tmp_path), reporting.TRAIN_METRICS_FILE)
  assert [r["step"] for r in train] == [10, 20]
  assert all("examples_per_sec" in r and "loss_contrast" in r for r in train)
  assert os.listdir(tmp_path / "tensorboard")
  assert os.path.exists(tmp_path / "tau_val.npz") and os.path.exists(tmp_path / "tau_test.npz")


def test_non_finite_scalars_are_left_out_of_tensorboard_with_one_warning(tmp_path, caplog):
  rep = reporting.Reporter(str(tmp_path), total_steps=20, batch_size=32,
                           progress_file=io.StringIO())
  metrics = {"ctr_auc": float("nan"), "cvr_auc": float("inf"), "ctcvr_auc": 0.5}
  preds = {"tau": np.array([0.1, np.nan, 0.3], np.float32)}
  with caplog.at_level(logging.WARNING):
    for step in (10, 20):
      rep.eval(step, "val", metrics, preds)
    rep.close()
  warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1, [r.getMessage() for r in warnings]
  assert "val/ctr_auc, val/cvr_auc" in warnings[0].getMessage()
  events = _events(tmp_path / "tensorboard")
  assert {(tag, step) for tag, kind, step in events if kind == "simple_value"} == {
      ("val/ctcvr_auc", 10), ("val/ctcvr_auc", 20)}
  # The metrics file keeps every value.
  records = reporting.read_metrics(str(tmp_path))
  assert [np.isnan(r["ctr_auc"]) for r in records] == [True, True]


def _records(steps):
  return "".join(json.dumps({"step": s, "split": "val", "a": s}) + "\n" for s in steps)


def test_truncate_after_keeps_the_steps_up_to_the_resumed_one(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(_records([1, 2, 3]) + "\n" + _records([4]))
  reporting.MetricsWriter(str(tmp_path)).truncate_after(2)
  assert path.read_text() == _records([1, 2])


def test_truncate_after_drops_a_last_line_cut_short_with_a_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text(_records([1, 2]) + _records([3])[:9])  # killed mid-write.
  with caplog.at_level(logging.WARNING, "pico_jax"):
    reporting.MetricsWriter(str(tmp_path)).truncate_after(5)
  assert path.read_text() == _records([1, 2])
  assert [r.getMessage() for r in caplog.records] == [
      f"{path}:3: dropped the last line, cut short (the run was killed while writing it)"]


@pytest.mark.parametrize("damaged, line", [
    (_records([1]) + "garbage\n" + _records([2, 3]), 2),  # in the middle.
    (_records([1, 2]) + '{"split": "val"}\n', 3),  # a whole last line without a step.
    (_records([1]) + "\x00" * 8 + "\n" + _records([2])[:9], 2)],  # damage, then a cut.
    ids=["middle", "whole_last_line", "damage_before_a_cut"])
def test_truncate_after_stops_at_a_damaged_line_and_keeps_the_file(tmp_path, damaged, line):
  path = tmp_path / "metrics.jsonl"
  path.write_text(damaged)
  with pytest.raises(DataError, match=rf"^{path}:{line}: malformed metrics record .*"
                     "left as it was: mend or delete the line, then resume$"):
    reporting.MetricsWriter(str(tmp_path)).truncate_after(1)
  assert path.read_text() == damaged
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]  # no temporary file left.
