"""The training loop: data, state, compiled steps, evaluation, logging, checkpoints.

All side effects (I/O, logging, checkpoints) live here; the steps it drives are pure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pico_jax import batch as B
from pico_jax import config as config_lib
from pico_jax import metrics as metrics_lib
from pico_jax import parallel
from pico_jax.data import load_dataset, pipeline
from pico_jax.models import build_model
from pico_jax.train import checkpoint as ckpt_lib
from pico_jax.train import reporting
from pico_jax.train.early_stopping import EarlyStopping
from pico_jax.train.optimizer import make_optimizer
from pico_jax.train.state import create_train_state, state_shardings
from pico_jax.train.step import compile_steps

log = logging.getLogger("pico_jax")


def predict_split(evaluate, params, columns, mesh, batch_size: int) -> dict[str, np.ndarray]:
  """Runs ``evaluate`` over every row of a split: dict of float32 [N] in row order."""
  num_rows = len(columns[B.CLICK])
  chunks = []
  for batch in pipeline.eval_batches(columns, global_batch_size=batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    chunks.append(evaluate(params, parallel.shard_batch(batch, mesh)))
  gathered = jax.tree.map(lambda *xs: np.concatenate([_to_host(x) for x in xs]), *chunks)
  return {k: v[:num_rows] for k, v in gathered.items()}


def _to_host(x):
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _format(metrics: dict, keys) -> str:
  return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


def _copy(params):
  return jax.tree.map(lambda x: x.copy(), params)


def _early_stopping(config, workdir: str, step: int) -> EarlyStopping | None:
  """The config's early stopping, replayed from the run's evaluations up to ``step``."""
  stopper = EarlyStopping.from_config(config)
  if stopper is None or step == 0 or not os.path.exists(
      os.path.join(workdir, reporting.METRICS_FILE)):
    return stopper
  return EarlyStopping.from_history(
      stopper.metric, stopper.patience, reporting.read_metrics(workdir),
      split=config.data.eval_split, up_to_step=step)


class PreemptionWatch:
  """Whether the job was asked to stop (SIGTERM: preemption, scancel, kubectl delete).

  Single process: a SIGTERM handler sets a flag that the loop reads between steps.
  Multi-process: jax's preemption sync service (started by
  ``jax.distributed.initialize``) catches the signal on any process and makes every
  process agree on the same step to stop at.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def requested(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self._flag.is_set()
    from jax.experimental import multihost_utils
    return multihost_utils.reached_preemption_sync_point(step)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_finite(history, state, step: int, checkpointer):
  """Raises FloatingPointError if a logged loss or the params are not finite."""
  bad = next(((s, float(m["loss"])) for s, m in history if not np.isfinite(m["loss"])), None)
  if bad is None and bool(_all_finite(state.params)):
    return
  where = (f"loss {bad[1]} at step {bad[0]}" if bad is not None
           else f"non-finite parameters after step {step}")
  last = checkpointer.latest_step() if checkpointer else None
  kept = (f"the last good checkpoint (step {last}) in {checkpointer.directory} is intact"
          if last is not None else "no checkpoint was written")
  raise FloatingPointError(
      f"training diverged: {where}; stopped without saving it, {kept}. Lower "
      "config.optimizer.learning_rate, set config.optimizer.grad_clip_norm, or check "
      "the input data for NaN/inf.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and returns
  the final test metrics.

  Returns an empty dict when the job was preempted (SIGTERM): the state was saved and
  the same command resumes it. Raises FloatingPointError on a non-finite loss (the
  last good checkpoint is kept) and ``CheckpointMismatchError`` when the workdir holds
  a checkpoint of a different model.
  """
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  dataset = load_dataset(config)
  mesh = parallel.mesh_from_config(config)
  model = build_model(config, dataset.schema)
  tx = make_optimizer(config.optimizer, config.train.steps)
  fsdp = config.mesh.fsdp
  shardings = state_shardings(model, tx, dataset.schema, mesh, config.axis_rules, fsdp=fsdp)
  state = create_train_state(model, tx, dataset.schema, config.seed, mesh, config.axis_rules,
                             fsdp=fsdp)
  train_step, eval_step = compile_steps(model, tx, config, mesh, shardings)
  t = config.train
  data_iter = pipeline.train_iterator(
      dataset.splits["train"], global_batch_size=t.batch_size, num_batches=t.steps,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), prefetch=config.data.prefetch,
      num_threads=config.data.num_threads)

  checkpointer = None
  resumed_step = None
  if config.checkpoint.enabled:
    checkpointer = ckpt_lib.Checkpointer.from_config(workdir, config.checkpoint)
    resumed = checkpointer.restore_latest(ckpt_lib.abstract_like(state), data_iter, config)
    if resumed is not None:
      state, resumed_step = resumed
      log.info("resumed from the checkpoint of step %d in %s", resumed_step,
               checkpointer.directory)
  reporter = reporting.Reporter(workdir, total_steps=t.steps, start_step=int(state.step),
                                batch_size=t.batch_size)
  if resumed_step is not None:
    reporter.truncate_after(resumed_step)
  stopper = _early_stopping(config, workdir, int(state.step))
  # The best params live beside the state (one extra copy) so the final test
  # evaluation scores the best validation step, as early stopping promises.
  best_params = (_copy(state.params) if stopper and stopper.best_step == int(state.step)
                 else None)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info("%s backbone, contrast=%s, %d params, %d devices, mesh %s, %d train rows",
           config.model.backbone, config.contrast.mode, n_params, jax.device_count(),
           dict(mesh.shape), dataset.num_rows("train"))

  def evaluate(split: str, step: int, params=None) -> dict[str, float]:
    preds = predict_split(eval_step, state.params if params is None else params,
                          dataset.splits[split], mesh, t.eval_batch_size)
    result = metrics_lib.task_metrics(preds, dataset.splits[split], dataset.info)
    reporter.eval(step, split, result, preds, dataset.splits[split])
    log.info("eval %s step %d: %s", split, step, _format(result, (
        "ctr_auc", "oracle_ctr_auc", "cvr_auc", "oracle_cvr_auc", "ctcvr_auc",
        "oracle_ctcvr_auc", "ctr_logloss", "cvr_logloss", "ctcvr_logloss")))
    taus = sorted(k for k in result if k.startswith("tau_segment_"))
    if taus and "rho" in dataset.info:
      log.info("mean tau per segment (rho = true relatedness): %s", ", ".join(
          f"seg {k.rsplit('_', 1)[1]}: tau={result[k]:.3f} rho={dataset.info['rho'][int(k.rsplit('_', 1)[1])]:.2f}"
          for k in taus))
    return result

  with contextlib.ExitStack() as stack:
    if checkpointer:
      # Runs last: a failing run still finishes the saves already started.
      stack.callback(checkpointer.close)
      stack.callback(checkpointer.wait)
    watch = stack.enter_context(PreemptionWatch())
    stack.callback(reporter.close)
    step = int(state.step)
    pending = []
    while step < t.steps and not (stopper and stopper.should_stop):
      batch = next(data_iter)
      state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
      step += 1
      reporter.step()
      pending.append((step, metrics))  # fetched at log time: no host round trip per step.
      save_now = checkpointer is not None and (checkpointer.should_save(step)
                                               or step == t.steps)
      if step % t.log_every == 0 or step == t.steps or save_now:
        host = jax.device_get(pending)
        pending = []
        # A checkpoint is only written from a state known to be finite.
        _check_finite(host, state, step, checkpointer)
        if step % t.log_every == 0 or step == t.steps:
          loss = float(np.mean([m["loss"] for _, m in host]))
          record = reporter.train(step, {k: np.mean([m[k] for _, m in host])
                                         for k in host[-1][1]})
          log.info("step %d/%d loss=%.4f %s | %.1f steps/s %.0f examples/s", step, t.steps,
                   loss, _format(host[-1][1], ("loss_ctr", "loss_ctcvr", "loss_contrast",
                                               "tau_mean")),
                   record["steps_per_sec"], record["examples_per_sec"])
      eval_result = None
      if step % t.eval_every == 0 or step == t.steps:
        eval_result = evaluate(config.data.eval_split, step)
        if stopper and stopper.update(step, eval_result):
          best_params = _copy(state.params)
        if stopper and stopper.should_stop:
          log.info("early stop at step %d: %s has not improved on %.4f (step %d) for %d "
                   "evaluations", step, stopper.metric, stopper.best_value,
                   stopper.best_step, stopper.bad_evals)
          if checkpointer is not None:  # the stopping point is saved, checked finite.
            _check_finite(jax.device_get(pending), state, step, checkpointer)
            save_now = True
      if save_now:
        checkpointer.save(step, state, data_iter, config, force=True, metrics=None if
                          eval_result is None else {f"{config.data.eval_split}/{k}": v
                                                    for k, v in eval_result.items()})
      if watch.requested(step):
        if checkpointer:
          _check_finite(jax.device_get(pending), state, step, checkpointer)
          checkpointer.save(step, state, data_iter, config, force=True)
        log.warning("preempted (SIGTERM) at step %d: %s; run the same command to resume",
                    step, "state saved" if checkpointer else "checkpoints are disabled, "
                    "nothing saved")
        return {}

    if stopper and best_params is None:
      log.warning("the best params (step %s) predate this resumed run; the test metrics "
                  "below are of the last step; `launch/evaluate.py --checkpoint best` "
                  "scores the best checkpoint", stopper.best_step)
    test_step = stopper.best_step if stopper and best_params is not None else step
    result = evaluate("test", test_step, best_params)
  return result
