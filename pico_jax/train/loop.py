"""The training loop: data, state, compiled steps, evaluation, logging, checkpoints.

All side effects (I/O, logging, checkpoints) live here; the steps it drives are pure.
"""

from __future__ import annotations

import logging
import os

import jax
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and returns
  the final test metrics."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  dataset = load_dataset(config)
  mesh = parallel.mesh_from_config(config)
  model = build_model(config, dataset.schema)
  tx = make_optimizer(config.optimizer)
  shardings = state_shardings(model, tx, dataset.schema, mesh, config.axis_rules)
  state = create_train_state(model, tx, dataset.schema, config.seed, mesh, config.axis_rules)
  train_step, eval_step = compile_steps(model, tx, config, mesh, shardings)
  t = config.train
  data_iter = pipeline.train_iterator(
      dataset.splits["train"], global_batch_size=t.batch_size, num_batches=t.steps,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), prefetch=config.data.prefetch,
      num_threads=config.data.num_threads)

  checkpointer = None
  if config.checkpoint.enabled:
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.checkpoint.keep,
                                         every_steps=config.checkpoint.every_steps)
    if checkpointer.latest_step() is not None:
      state, _ = checkpointer.restore(checkpointer.latest_step(),
                                      ckpt_lib.abstract_like(state), data_iter)
      log.info("resumed from step %d", int(state.step))

  reporter = reporting.Reporter(workdir, total_steps=t.steps, start_step=int(state.step),
                                batch_size=t.batch_size)
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

  step = int(state.step)
  pending = []
  while step < t.steps and not (stopper and stopper.should_stop):
    batch = next(data_iter)
    state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
    step += 1
    reporter.step()
    pending.append(metrics)  # fetched at log time: no host round trip per step.
    if step % t.log_every == 0 or step == t.steps:
      host = jax.device_get(pending)
      pending = []
      loss = float(np.mean([m["loss"] for m in host]))
      if not np.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss} at step {step}; the last "
                                 "checkpoint is kept as it was")
      record = reporter.train(step, {k: np.mean([m[k] for m in host]) for k in host[-1]})
      log.info("step %d/%d loss=%.4f %s | %.1f steps/s %.0f examples/s", step, t.steps, loss,
               _format(host[-1], ("loss_ctr", "loss_ctcvr", "loss_contrast", "tau_mean")),
               record["steps_per_sec"], record["examples_per_sec"])
    if step % t.eval_every == 0 and step != t.steps:
      result = evaluate(config.data.eval_split, step)
      if stopper and stopper.update(step, result):
        best_params = _copy(state.params)
      if stopper and stopper.should_stop:
        log.info("early stop at step %d: %s has not improved on %.4f (step %d) for %d "
                 "evaluations", step, stopper.metric, stopper.best_value, stopper.best_step,
                 stopper.bad_evals)
        if checkpointer:
          checkpointer.save(step, state, data_iter, config, force=True)
        break
    if checkpointer:
      checkpointer.save(step, state, data_iter, config, force=step == t.steps)

  if not (stopper and stopper.should_stop):
    result = evaluate(config.data.eval_split, step)
    if stopper and stopper.update(step, result):
      best_params = _copy(state.params)
  if stopper and best_params is None:
    log.warning("the best params (step %s) predate this resumed run; the test metrics "
                "below are of the last step; `launch/evaluate.py --checkpoint best` "
                "scores the best checkpoint", stopper.best_step)
  test_step = stopper.best_step if stopper and best_params is not None else step
  result = evaluate("test", test_step, best_params)
  reporter.close()
  if checkpointer:
    checkpointer.wait()
    checkpointer.close()
  return result
