"""Orbax checkpoints of the train state, the data iterator position and the config.

A checkpoint is ``workdir/checkpoints/<step>/`` with three items: ``state`` (params,
optimizer state, step and rng, each array saved with its sharding, one shard per
device), ``data`` (the Grain iterator state of every process) and ``config`` (JSON).
Saves are asynchronous: the step loop continues while the previous state is written.
Orbax writes a step into a temporary directory and renames it when complete, so a
process killed mid-save leaves a ``<step>.orbax-checkpoint-tmp-*`` directory that is
never mistaken for a checkpoint; ``Checkpointer`` warns about it and resumes from the
previous step.

Kept: the last ``keep`` checkpoints, plus the ``keep_best`` best by ``best_metric``
(``"<split>/<metric>"`` of an evaluation run at the checkpoint's step).
"""

from __future__ import annotations

import json
import logging
import math
import os

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger("pico_jax")

_TMP_MARKER = ".orbax-checkpoint-tmp"
# Config sections that may differ between a checkpoint and the run resuming it.
_RESUMABLE_SECTIONS = ("train", "checkpoint", "mesh")
_RESUMABLE_KEYS = ("data.prefetch", "data.num_threads", "data.eval_split")
# Keys that fix which rows the saved data-iterator position points at: a resume with
# any of them changed would silently train on a different data order.
_DATA_ORDER_KEYS = ("seed", "train.batch_size", "data.name", "data.path")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model of the current config; the message names why."""


def _flatten(tree, prefix=""):
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
  else:
    out[prefix[:-1]] = tree
  return out


def config_differences(saved: dict, current: dict) -> list[str]:
  """``key: saved -> current`` for every config key whose value differs, sorted."""
  # Through JSON, as the saved one was: tuples become lists on both sides.
  a, b = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(current)))
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _leaves_by_path(tree) -> dict:
  """Leaves keyed ``opt_state/0/mu/embedding/table``: the same for a live state and
  the saved metadata tree (where dataclasses and named tuples became dicts)."""
  return {"/".join(_key_name(e) for e in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _metric_key(best_metric: str):
  if best_metric and best_metric.count("/") != 1:
    raise ValueError(f"config.checkpoint.best_metric={best_metric!r}: expected "
                     "'<split>/<metric>', e.g. 'val/ctr_auc', or '' for none")
  return best_metric


class Checkpointer:
  """Saves and restores {state, data iterator, config} under ``workdir/checkpoints``.

  Saves are asynchronous; ``wait()`` blocks until the last one is on disk.

  Args:
    workdir: the run's directory.
    keep: how many of the latest checkpoints to keep.
    every_steps: ``save`` writes at multiples of this (and when forced).
    best_metric: ``"<split>/<metric>"`` ranking checkpoints, or ``""``.
    best_mode: ``max`` or ``min``: which end of ``best_metric`` is best.
    keep_best: how many of the best checkpoints to keep besides the latest ones.
  """

  def __init__(self, workdir: str, *, keep: int, every_steps: int, best_metric: str = "",
               best_mode: str = "max", keep_best: int = 1):
    if best_mode not in ("max", "min"):
      raise ValueError(f"config.checkpoint.best_mode={best_mode!r}: expected 'max' or 'min'")
    if keep < 1:
      raise ValueError(f"config.checkpoint.keep={keep}: must be >= 1")
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.every_steps = every_steps
    self.best_metric = _metric_key(best_metric)
    self.best_mode = best_mode
    self._warn_half_written()
    keep_policies = [policies.preservation_policy.LatestN(n=keep)]
    rank = None
    if self.best_metric:
      worst = -math.inf if best_mode == "max" else math.inf
      # Unevaluated (metrics {}) and NaN-scored checkpoints rank last.
      rank = lambda m: worst if math.isnan(m.get(self.best_metric, math.nan)) else (
          m[self.best_metric])
      keep_policies.append(policies.preservation_policy.BestN(
          get_metric_fn=rank, reverse=best_mode == "min", n=keep_best,
          keep_checkpoints_without_metrics=False))
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                           data=grain.checkpoint.CheckpointHandler(),
                           config=ocp.JsonCheckpointHandler()),
        options=ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True,
            # With a best_fn orbax also writes each step's metrics to disk, so a
            # restarted run still knows which checkpoint is the best.
            best_fn=rank, best_mode=best_mode,
            preservation_policy=policies.AnyPreservationPolicy(keep_policies)))

  @classmethod
  def from_config(cls, workdir: str, c: ml_collections.ConfigDict) -> "Checkpointer":
    """The checkpointer of ``config.checkpoint``."""
    return cls(workdir, keep=c.keep, every_steps=c.every_steps, best_metric=c.best_metric,
               best_mode=c.best_mode, keep_best=c.keep_best)

  def _warn_half_written(self):
    if not os.path.isdir(self.directory):
      return
    partial = sorted(n for n in os.listdir(self.directory) if _TMP_MARKER in n)
    if partial:
      log.warning("ignoring %d half-written checkpoint(s) in %s (a save was interrupted): "
                  "%s", len(partial), self.directory, ", ".join(partial))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the best ``best_metric``, or None."""
    if not self.best_metric:
      return None
    ranked = []
    for step in self.all_steps():
      value = (self.manager.metrics(step) or {}).get(self.best_metric)
      if value is not None and not math.isnan(value):
        ranked.append((value if self.best_mode == "max" else -value, step))
    return max(ranked)[1] if ranked else None

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def save(self, step: int, state, data_iterator, config: ml_collections.ConfigDict, *,
           metrics: dict[str, float] | None = None, force: bool = False) -> bool:
    """Starts an asynchronous save of ``step`` (at multiples of ``every_steps`` or when
    ``force``); returns whether it did.

    Args:
      metrics: the evaluation results of this step as ``{"<split>/<metric>": value}``;
        they rank the checkpoint for ``best_metric`` (None: ranked by recency only).
    """
    if not force and not self.should_save(step):
      return False
    if step in self.manager.all_steps():
      return False
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config.to_dict())),
        metrics=metrics if self.best_metric else None, force=True)

  def saved_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config

  def check_compatible(self, step: int, abstract_state, config: ml_collections.ConfigDict):
    """Raises ``CheckpointMismatchError`` naming every param whose saved shape or dtype
    differs from ``abstract_state`` and the config keys that differ."""
    have = _leaves_by_path(self.manager.item_metadata(step).state)
    want = _leaves_by_path(abstract_state)
    problems = []
    for key, leaf in want.items():
      if key not in have:
        problems.append(f"{key}: not in the checkpoint")
      elif tuple(have[key].shape) != tuple(leaf.shape):
        problems.append(f"{key}: saved shape {tuple(have[key].shape)}, this config "
                        f"needs {tuple(leaf.shape)}")
      elif np.dtype(have[key].dtype) != np.dtype(leaf.dtype):
        problems.append(f"{key}: saved dtype {have[key].dtype}, this config needs "
                        f"{leaf.dtype}")
    extra = set(have) - set(want)
    problems += [f"{k}: in the checkpoint, not in this model" for k in sorted(extra)]
    if problems:
      diffs = [d for d in config_differences(self.saved_config(step), config.to_dict())
               if d.split(".")[0] not in _RESUMABLE_SECTIONS
               and d.split(":")[0] not in _RESUMABLE_KEYS]
      raise CheckpointMismatchError(
          f"checkpoint {os.path.join(self.directory, str(step))} does not fit this "
          f"config:\n  " + "\n  ".join(problems[:20])
          + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
          + "\nconfig keys that differ from the checkpoint's: "
          + ("; ".join(diffs) if diffs else "none (the dataset schema changed?)")
          + "\nUse a new --workdir, or the checkpoint's config.")

  def check_same_run(self, step: int, config: ml_collections.ConfigDict):
    """Raises ``CheckpointMismatchError`` if a key that fixes the data order differs from
    the checkpoint's; logs every other changed key (except runtime-only ones)."""
    diffs = config_differences(self.saved_config(step), config.to_dict())
    key_of = lambda d: d.split(":")[0]
    order = [d for d in diffs if key_of(d) in _DATA_ORDER_KEYS
             or key_of(d).startswith("data.synthetic.")]
    if order:
      raise CheckpointMismatchError(
          f"checkpoint {os.path.join(self.directory, str(step))} was written with a "
          f"different data order: {'; '.join(order)}. Its data-iterator position would "
          "point at other rows. Use a new --workdir, or the checkpoint's values.")
    changed = [d for d in diffs if d.split(".")[0] not in _RESUMABLE_SECTIONS
               and key_of(d) not in _RESUMABLE_KEYS]
    if changed:
      log.warning("resuming checkpoint %d with a changed config: %s", step,
                  "; ".join(changed))

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores ``step`` into ``abstract_state``'s shapes/shardings and the iterator."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator),
        config=ocp.args.JsonRestore()))
    return restored.state, restored.config

  def restore_latest(self, abstract_state, data_iterator, config: ml_collections.ConfigDict):
    """(state, step) of the newest checkpoint that restores, or None if there is none.

    A checkpoint that fails to read (damaged after it was written) is skipped with a
    warning and the one before it is used. A checkpoint of a different model raises
    ``CheckpointMismatchError`` instead: resuming it would not be the same run.
    """
    for step in reversed(self.all_steps()):
      try:
        self.manager.item_metadata(step).state  # noqa: B018 (reads the metadata)
      except Exception as e:  # pylint: disable=broad-except
        log.warning("ignoring unreadable checkpoint %d in %s: %s", step, self.directory, e)
        continue
      self.check_compatible(step, abstract_state, config)
      self.check_same_run(step, config)
      try:
        state, _ = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except
        log.warning("ignoring checkpoint %d in %s, which does not restore (%s: %s); "
                    "trying the one before", step, self.directory, type(e).__name__, e)
        continue
      return state, step
    return None

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def load_state_arrays(workdir: str, step: int | None = None) -> dict:
  """The saved train state of ``step`` (default: the latest) as host numpy arrays.

  For inspection and comparison (notebooks, tests): a nested dict ``{"params": ...,
  "opt_state": ..., "step": ..., "rng": ...}`` read onto one device whatever mesh saved
  it, then copied to the host.
  """
  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                         data=grain.checkpoint.CheckpointHandler(),
                         config=ocp.JsonCheckpointHandler()),
      options=ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0,
                                           create=False))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step).state)
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target))).state
  manager.close()
  return jax.tree.map(np.asarray, state)


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a live state, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
