"""The training loop's actions: the names it logs (pico_jax.metric_names), the
temperature report between an evaluation and early stopping, and the note of
parallel's peer watch, scoped to one run."""

import contextlib
import logging

import pytest

from conftest import small_config
from pico_jax import metric_names
from pico_jax import parallel
from pico_jax.train import loop
from pico_jax.train import reporting
from pico_jax.workdir import TRAIN_METRICS_FILE

BARE = "error: process 1 of 1 was lost (test); process 0 stops too."


class _Lines(logging.Handler):
  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


@contextlib.contextmanager
def _logged():
  """The messages of the ``pico_jax`` logger (INFO and up) while the block runs."""
  lines, logger = _Lines(), logging.getLogger("pico_jax")
  logger.addHandler(lines)
  level, logger.level = logger.level, logging.INFO
  try:
    yield lines.lines
  finally:
    logger.removeHandler(lines)
    logger.level = level


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Three runs in one process with a peer watch installed (not started: only the line
  it would print is read): an early-stopped run with checkpoints and the logged names
  replaced, the same command again (it resumes, already stopped, and tests), and a run
  that fails at its first step."""
  root = tmp_path_factory.mktemp("loop_actions")
  watch = parallel.PeerWatch()
  notes = []  # per run: (its note, the watch's line inside the run, the line after it).
  real_note = watch.exit_note

  @contextlib.contextmanager
  def recording(note):
    with real_note(note):
      notes.append([note, watch.line(1, "test")])
      yield

  with _logged() as lines, pytest.MonkeyPatch.context() as mp:
    mp.setattr(parallel, "_watch", watch)
    mp.setattr(watch, "exit_note", recording)
    mp.setattr(metric_names, "TRAIN_LOG", ("tau_mean",))
    mp.setattr(metric_names, "EVAL_LOG", ("cvr_auc", "ctr_pcoc"))
    checkpoints = {"checkpoint.enabled": True, "checkpoint.every_steps": 2}
    # oracle_ctr_auc is the same at every evaluation: the second one stops the run.
    config = small_config(**checkpoints, **{
        "train.steps": 6, "train.log_every": 2, "train.eval_every": 2,
        "train.early_stopping_metric": "oracle_ctr_auc", "train.patience": 1})
    for _ in range(2):
      loop.train_and_evaluate(config, str(root / "early"))
      notes[-1].append(watch.line(1, "test"))
    mp.setattr(loop.Run, "train", lambda *_: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
      loop.train_and_evaluate(small_config(**checkpoints), str(root / "failed"))
    notes[-1].append(watch.line(1, "test"))
  return root, lines, notes


def test_the_loop_logs_the_names_metric_names_lists(runs):
  _, lines, _ = runs
  train = [line for line in lines if line.startswith("step 2/6 ")]
  assert len(train) == 1 and " tau_mean=" in train[0] and "loss_ctr" not in train[0]
  evals = [line for line in lines if line.startswith("eval ")]
  assert evals and all(line.split(": ", 1)[1].split(" ")[0].startswith("cvr_auc=")
                       for line in evals)
  assert all([kv.split("=")[0] for kv in line.split(": ", 1)[1].split(" ")]
             == ["cvr_auc", "ctr_pcoc"] for line in evals)


def test_the_temperature_report_comes_between_an_evaluation_and_early_stopping(runs):
  _, lines, _ = runs
  first = lines.index(next(line for line in lines if line.startswith("eval val step 4:")))
  assert lines[first + 1].startswith("mean tau per segment (rho = true relatedness): ")
  assert lines[first + 2].startswith("early stop at step 4: oracle_ctr_auc has not")
  test = lines.index(next(line for line in lines if line.startswith("eval test step 2:")))
  assert lines[test + 1].startswith("mean tau per segment")  # the test's, too.


def test_the_lost_process_note_lasts_one_run(runs):
  root, _, notes = runs
  assert len(notes) == 3  # one note per run, taken back when the run ends:
  assert [after for _, _, after in notes] == [BARE] * 3
  none_yet = "No complete checkpoint was written yet."
  resumable = (f"The latest checkpoint, step 4 in {root / 'early' / 'checkpoints'}, is "
               "intact: run the same command on every process to resume from it.")
  assert [inside for _, inside, _ in notes] == [f"{BARE} {none_yet}", f"{BARE} {resumable}",
                                                f"{BARE} {none_yet}"]
  # Each run's note reads its own checkpoints (the failed run wrote none).
  assert [note() for note, _, _ in notes] == [resumable, resumable, none_yet]


def test_the_train_line_shows_window_means_and_the_eval_line_gauc(tmp_path):
  """Every loss term of the train line is the logging window's mean (train_metrics.jsonl),
  not the last step's; the synthetic data have groups, so the eval line shows GAUC."""
  config = small_config(**{"train.steps": 10, "train.log_every": 10,
                           "train.eval_every": 10})
  with _logged() as lines:
    loop.train_and_evaluate(config, str(tmp_path))
  (record,) = reporting.read_metrics(str(tmp_path), TRAIN_METRICS_FILE)
  (train,) = [line for line in lines if line.startswith("step 10/10 ")]
  shown = [k for k in metric_names.TRAIN_LOG if k in record]
  assert "loss_ctr" in shown and "loss_contrast" in shown
  for key in shown:
    assert f" {key}={record[key]:.4f} " in train
  evals = [line for line in lines if line.startswith("eval ")]
  assert evals and all(" ctr_gauc=" in line and " ctcvr_gauc=" in line for line in evals)
