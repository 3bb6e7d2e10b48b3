"""The training loop: a built run (``trainer.build``) driven step by step, with logging,
evaluation, the temperature report (``pico_jax.contrast.diagnostics``), early stopping,
checkpoints, the preemption check and the finite check as periodic actions
(``periodic.Every``).

All side effects (I/O, logging, checkpoints) live here and in the modules it calls;
the steps it drives are pure.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Iterable

import jax
import ml_collections
import numpy as np

from pico_jax import metric_names
from pico_jax import parallel, scorings
from pico_jax import workdir as workdir_lib
from pico_jax.contrast.diagnostics import TemperatureReport
from pico_jax.train import checkpoint as checkpoint_lib
from pico_jax.train import reporting
from pico_jax.train.early_stopping import EarlyStopping
from pico_jax.train.periodic import Every, Interrupted, PreemptionWatch
from pico_jax.train.state import nonfinite_leaves
from pico_jax.train.trainer import Trainer, build

log = logging.getLogger("pico_jax")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       batches: Iterable | None = None) -> dict[str, float] | None:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and returns
  the final test metrics (those of the best evaluation when early stopping is on).

  Args:
    batches: device batches to train on (default: ``Trainer.batches()``, which
      prefetches to the devices with ``config.data.device_prefetch``). Checkpoints save
      the position of ``Trainer.data``, so other batches resume only if they follow it.

  Returns None when the job was preempted (SIGTERM): the state was saved and the same
  command resumes it. Raises ``periodic.Interrupted`` after a Ctrl-C (the state saved at
  the next step boundary), ``WorkdirError`` for a URI ``workdir``, ``WorkdirBusyError``
  when another run holds it (``workdir.writer_lock``), DivergenceError on a non-finite
  loss (the last good checkpoint is kept), ``CheckpointMismatchError`` when the workdir
  holds a checkpoint of another model and ``CheckpointRestoreError`` when its latest
  checkpoint cannot be resumed.
  """
  workdir_lib.check_location(workdir)
  os.makedirs(workdir, exist_ok=True)
  t = config.train
  with contextlib.ExitStack() as stack:
    # First the lock: building reads the checkpoints and clears half-written saves.
    stack.enter_context(workdir_lib.writer_lock(workdir))
    watch = stack.enter_context(PreemptionWatch())  # a signal during build counts.
    trainer = build(config, workdir)
    if trainer.checkpointer is not None:  # a lost process's line says what resumes.
      stack.enter_context(parallel.exit_note(
          functools.partial(_checkpoint_note, trainer.checkpointer)))
    stack.callback(trainer.close)  # the saves already started finish, even on errors.
    run = stack.enter_context(Run(trainer, workdir))
    report = TemperatureReport(config.contrast, trainer.dataset.info.get("rho"))
    actions = [Every(t.log_every, run.log_train, last=t.steps),
               Every(t.eval_every, run.evaluate, last=t.steps),
               # Between an evaluation's line and early stopping's verdict on it.
               Every(t.eval_every, lambda _: report(run.evaluation[1]), last=t.steps),
               Every(t.eval_every, run.update_early_stopping, last=t.steps)]
    if trainer.checkpointer is not None:
      actions.append(Every(config.checkpoint.every_steps, run.save, last=t.steps,
                           also=lambda: run.stopped_early))
    actions.append(Every(1, lambda step: run.preempt(step, watch), last=t.steps))
    batches = iter(trainer.batches() if batches is None else batches)
    try:
      while run.step < t.steps and not (run.stopped_early or run.preempted):
        run.train(next(batches))
        for action in actions:
          action(run.step)
      if run.preempted:
        return None
      result = run.test()
      report(result)
      if watch.interrupted:  # a Ctrl-C after the last step's save: it is all on disk.
        raise Interrupted(f"interrupted (Ctrl-C) after the last step {run.step}, which "
                          "is saved; the same command reruns the final test")
      return result
    except jax.errors.JaxRuntimeError:
      # A collective that failed because a process is gone: the watch ends the job with
      # its one line.
      parallel.wait_if_peer_lost(30)
      raise


def _format(metrics: dict, keys) -> str:
  return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


def _checkpoint_note(ckpt: checkpoint_lib.Checkpointer) -> str:
  """What a lost process leaves behind (for ``parallel.PeerWatch``'s line)."""
  steps = ckpt.earlier_steps(float("inf"))
  if not steps:
    return "No complete checkpoint was written yet."
  return (f"The latest checkpoint, step {steps[-1]} in {ckpt.directory}, is intact: run "
          "the same command on every process to resume from it.")


def _copy(params):
  return jax.tree.map(lambda x: x.copy(), params)


class DivergenceError(FloatingPointError):
  """Training reached a non-finite loss, gradient, parameter or optimizer state; the
  message names the step, the leaves and the checkpoint that is kept."""


class Run:
  """What the loop's actions share: the trainer, the reporter, the step, the metrics
  not yet fetched from the devices, early stopping and the best params so far."""

  def __init__(self, trainer: Trainer, workdir: str):
    self.trainer = trainer
    self.config = c = trainer.config
    self.step = int(trainer.state.step)
    self.reporter = reporting.Reporter(workdir, total_steps=c.train.steps,
                                       start_step=self.step, batch_size=c.train.batch_size)
    if trainer.resumed_step is not None:
      log.info("resumed from the checkpoint of step %d in %s", trainer.resumed_step,
               trainer.checkpointer.directory)
    # The records after the state's step are redone (all of them when it starts over).
    self.reporter.truncate_after(self.step)
    self.stopper = self._early_stopping(workdir)
    self.best_params = self._best_params()
    self.pending = []  # (step, device metrics): fetched at log time, no sync per step.
    # The sums of the fetched, finite-checked metrics of the current logging window.
    self.window = self._saved_window()
    self.saved_step = trainer.resumed_step
    self.evaluation = None  # (step, metrics) of the latest evaluation.
    self.preempted = False
    n_params = sum(x.size for x in jax.tree.leaves(trainer.state.params))
    log.info("%s backbone, contrast=%s, %d params, %d devices, mesh %s, %d train rows",
             c.model.backbone, c.contrast.mode, n_params, jax.device_count(),
             dict(trainer.mesh.shape), trainer.dataset.num_rows("train"))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.reporter.close()

  @property
  def stopped_early(self) -> bool:
    return self.stopper is not None and self.stopper.should_stop

  def _early_stopping(self, workdir: str) -> EarlyStopping | None:
    """The config's early stopping, replayed from the run's evaluations up to the step
    it resumes from (the metrics after it were dropped with ``truncate_after``)."""
    stopper = EarlyStopping.from_config(self.config)
    if stopper is None or self.step == 0 or not os.path.exists(
        os.path.join(workdir, workdir_lib.METRICS_FILE)):
      return stopper
    return EarlyStopping.from_history(
        stopper.metric, stopper.patience, reporting.read_metrics(workdir),
        split=self.config.data.eval_split, up_to_step=self.step)

  def _saved_window(self) -> reporting.MetricsWindow:
    """The logging window's sums saved with the resumed checkpoint (a run resumed inside
    a window logs the averages of a run that never stopped), else an empty window."""
    step, ckpt = self.trainer.resumed_step, self.trainer.checkpointer
    loop = ckpt.restore_loop(step) if step is not None else None
    if loop is None:
      return reporting.MetricsWindow()
    return reporting.MetricsWindow.from_json(loop["window"])

  def _best_params(self):
    """The params of the early-stopping best step (one extra copy beside the state), so
    the final test scores them; a resumed run reads them from its checkpoint."""
    stopper, trainer = self.stopper, self.trainer
    if stopper is None or stopper.best_step is None:
      return None
    if stopper.best_step == self.step:
      return _copy(trainer.state.params)
    step = trainer.resumed_step
    if os.path.isdir(os.path.join(trainer.checkpointer.directory, str(step), "best")):
      return trainer.checkpointer.restore_best(step, checkpoint_lib.abstract_like(
          trainer.state.params))
    log.warning("checkpoint %d holds no best params (early stopping was off when it was "
                "saved); the test metrics will be those of the last step", step)
    return None

  def train(self, batch):
    self.trainer.state, metrics = self.trainer.train_step(self.trainer.state, batch)
    self.step += 1
    self.reporter.step()
    self.pending.append((self.step, metrics))

  def check_finite(self, step: int):
    """Fetches the pending metrics; raises DivergenceError at the first step whose
    ``finite`` flag (computed in the step over its loss terms, gradient norm, params and
    optimizer state) is false. Runs at every logging step and before every save, so a
    non-finite state is never saved."""
    host, self.pending = jax.device_get(self.pending), []
    bad = next((s for s, m in host if not m.pop("finite")), None)
    for _, m in host:
      self.window.add(m)
    if bad is None:
      return
    metrics = dict(host)[bad]
    values = ", ".join(f"{k}={float(metrics[k]):.4g}" for k in ("loss", "grad_norm")
                       if k in metrics)
    leaves = nonfinite_leaves({"params": self.trainer.state.params,
                               "opt_state": self.trainer.state.opt_state})
    where = (f"non-finite {', '.join(leaves[:3])}" + (f" and {len(leaves) - 3} more leaves"
                                                       if len(leaves) > 3 else "")
             if leaves else "non-finite metrics")
    ckpt = self.trainer.checkpointer
    last = ckpt.latest_step() if ckpt else None
    kept = (f"the latest checkpoint (step {last}, checked finite before it was saved) in "
            f"{ckpt.directory} is kept" if last is not None else "no checkpoint was written")
    raise DivergenceError(
        f"training diverged at step {bad} ({values}; {where} after step {step}); stopped "
        f"without saving it, {kept}. Lower config.optimizer.learning_rate, set "
        "config.optimizer.grad_clip_norm, or check the input data for NaN/inf.")

  def log_train(self, step: int):
    self.check_finite(step)
    window, self.window = self.window, reporting.MetricsWindow()
    if not window.count:
      return
    # Every term is the window's mean, as train_metrics.jsonl records it.
    record = self.reporter.train(step, window.mean())
    log.info("step %d/%d loss=%.4f %s | %.1f steps/s %.0f examples/s", step,
             self.config.train.steps, record["loss"],
             _format(record, metric_names.TRAIN_LOG),
             record["steps_per_sec"], record["examples_per_sec"])

  def evaluate(self, step: int):
    """Evaluates the eval split (the latest evaluation: ``self.evaluation``)."""
    self.evaluation = (step, self._evaluate(self.config.data.eval_split, step)[0])

  def update_early_stopping(self, step: int):
    """Updates early stopping and the best params with the evaluation of ``step``."""
    if self.stopper is None:
      return
    if self.stopper.update(step, self.evaluation[1]):
      self.best_params = _copy(self.trainer.state.params)
    if self.stopper.should_stop:
      s = self.stopper
      log.info("early stop at step %d: %s has not improved on %.4f (step %d) for %d "
               "evaluations", step, s.metric, s.best_value, s.best_step, s.bad_evals)

  def _evaluate(self, split: str, step: int, params=None
                ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics, predictions) of ``split``, reported and logged."""
    trainer = self.trainer
    result, predictions = trainer.evaluate(split, params)
    self.reporter.eval(step, split, result, predictions, trainer.dataset.splits[split])
    log.info("eval %s step %d: %s", split, step, _format(result, metric_names.EVAL_LOG))
    return result, predictions

  def save(self, step: int):
    """Saves ``step`` (once; checked finite first) with its evaluation, if any."""
    if self.saved_step == step:
      return
    self.check_finite(step)
    metrics = None
    if self.evaluation is not None and self.evaluation[0] == step:
      split = self.config.data.eval_split
      metrics = {f"{split}/{k}": v for k, v in self.evaluation[1].items()}
    trainer = self.trainer
    trainer.checkpointer.save(step, trainer.state, trainer.data, self.config,
                              metrics=metrics, best_params=self.best_params,
                              loop={"window": self.window.to_json()})
    self.saved_step = step

  def preempt(self, step: int, watch: PreemptionWatch):
    """On SIGTERM or Ctrl-C: saves this step and ends the run (every process at the same
    step); a Ctrl-C raises ``Interrupted`` once the save is on disk."""
    if not watch.requested(step):
      return
    ckpt = self.trainer.checkpointer
    if ckpt is not None:
      self.save(step)
      ckpt.wait()
    self.preempted = True
    saved = (f"state saved in {ckpt.directory}/{step}" if ckpt is not None else
             "checkpoints are disabled, nothing saved")
    if watch.interrupted:
      raise Interrupted(f"interrupted (Ctrl-C) at step {step}: {saved}; run the same "
                        "command to resume")
    log.warning("preempted (SIGTERM) at step %d: %s; run the same command to resume",
                step, saved)

  def test(self) -> dict[str, float]:
    """The test metrics of the best params under early stopping, else of the last step."""
    stopper = self.stopper
    if stopper is not None and self.best_params is None:
      log.warning("the best params (step %s) are not available; the test metrics below "
                  "are of the last step; `launch/evaluate.py --checkpoint best` scores the "
                  "best checkpoint", stopper.best_step)
    params = self.best_params if stopper is not None else None
    step = stopper.best_step if params is not None else self.step
    result, predictions = self._evaluate("test", step, params)
    if self.config.train.baseline_scorings:  # the pCTR baselines of these params.
      trainer, fit_split = self.trainer, self.config.data.eval_split
      result.update(scorings.scoring_metrics(
          trainer.predict(fit_split, params), trainer.dataset.splits[fit_split],
          predictions, trainer.dataset.splits["test"],
          trainer.dataset.info))
      log.info("test step %d, CVR scored by pCTR: cvr_auc=%.4f; blended (w=%.3f fitted on "
               "%s): cvr_auc=%.4f", step, result["ctr_as_cvr/cvr_auc"],
               result[scorings.BLEND_WEIGHT], fit_split, result["blend/cvr_auc"])
    return result

