"""The training loop: data, state, compiled steps, evaluation, logging, checkpoints.

All side effects (I/O, logging, checkpoints) live here; the steps it drives are pure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time

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


class MetricsWriter:
  """Appends one JSON object per evaluation to ``workdir/metrics.jsonl`` (process 0)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def truncate_after(self, step: int):
    """Drops records of steps after ``step``: a resumed run redoes those steps, and
    the file then reads as if the run had never stopped."""
    if jax.process_index() != 0 or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    # A line cut short by a kill mid-write is dropped with the rest.
    kept = []
    for line in lines:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if record["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    with open(self.path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, split: str, metrics: dict):
    if jax.process_index() != 0:
      return
    record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


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
  tx = make_optimizer(config.optimizer)
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

  writer = MetricsWriter(workdir)
  checkpointer = None
  if config.checkpoint.enabled:
    checkpointer = ckpt_lib.Checkpointer.from_config(workdir, config.checkpoint)
    resumed = checkpointer.restore_latest(ckpt_lib.abstract_like(state), data_iter, config)
    if resumed is not None:
      state, resumed_step = resumed
      writer.truncate_after(resumed_step)
      log.info("resumed from the checkpoint of step %d in %s", resumed_step,
               checkpointer.directory)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info("%s backbone, contrast=%s, %d params, %d devices, mesh %s, %d train rows",
           config.model.backbone, config.contrast.mode, n_params, jax.device_count(),
           dict(mesh.shape), dataset.num_rows("train"))

  def evaluate(split: str, step: int) -> dict[str, float]:
    preds = predict_split(eval_step, state.params, dataset.splits[split], mesh,
                          t.eval_batch_size)
    result = metrics_lib.task_metrics(preds, dataset.splits[split])
    writer.write(step, split, result)
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
    step = int(state.step)
    window_start, window_steps = time.perf_counter(), 0
    pending = []
    while step < t.steps:
      batch = next(data_iter)
      state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
      step += 1
      window_steps += 1
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
          elapsed = time.perf_counter() - window_start
          log.info("step %d/%d loss=%.4f %s | %.1f steps/s %.0f examples/s", step, t.steps,
                   loss, _format(host[-1][1], ("loss_ctr", "loss_ctcvr", "loss_contrast",
                                               "tau_mean")),
                   window_steps / elapsed, window_steps * t.batch_size / elapsed)
          window_start, window_steps = time.perf_counter(), 0
      eval_result = None
      if step % t.eval_every == 0 or step == t.steps:
        eval_result = evaluate(config.data.eval_split, step)
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

    result = evaluate("test", step)
  return result
