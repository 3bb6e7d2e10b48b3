"""Orbax checkpoints of the train state, the data iterator position and the config.

A checkpoint is ``workdir/checkpoints/<step>/`` (layout in ``pico_jax/workdir.py``) with
the items ``state`` (params, optimizer state, step and rng, each array saved with its
sharding, one shard per device), ``data`` (the Grain iterator state of every process),
``config`` (JSON) and, with early stopping on, ``best`` (the best params so far).
Saves are asynchronous: the step loop continues while the previous state is written.

Resuming is strict. Orbax writes a step into a temporary directory and renames it when
complete, so a save cut short leaves ``<step>.orbax-checkpoint-tmp-*``, which is never
taken for a checkpoint: that is the only checkpoint a resume skips (with a warning).
Any other failure to resume the latest checkpoint raises ``CheckpointRestoreError``
naming the step, the item and the cause; a resume never silently starts over.

A changed process count is refused at start: the data position is saved per process
(``data/process_<i>-of-<n>.json``), so the error says to resume with the saved count.
A changed device count or mesh shape with the same process count restores (orbax
reshards the arrays onto the new mesh; the global batch, and so the data order, does
not depend on the mesh).

Which checkpoints are kept, and which is best, is decided here too. The best checkpoint
is defined once, by ``best_criterion``: retention and ``--checkpoint best``
(``launch/evaluate.py``, ``launch/export.py``) rank by it, and unless
``config.checkpoint.best_metric`` says otherwise it is the early-stopping metric, so the
best checkpoint holds the params the run's final test scored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from pico_jax import workdir as workdir_lib
from pico_jax.train import checkpoint_compat as compat
from pico_jax.train import checkpoint_failures as failures
from pico_jax.train import checkpoint_integrity as integrity
from pico_jax.train.early_stopping import metric_mode

log = logging.getLogger("pico_jax")

_PROCESS_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model of the current config; the message names why."""


class CheckpointRestoreError(RuntimeError):
  """A complete checkpoint cannot be resumed; the message names the step, item and cause."""


class CheckpointIntegrityError(CheckpointRestoreError):
  """What a checkpoint holds is not what was saved (a checksum differs) or is not finite;
  the message names the step, the item and the leaf, and the earlier checkpoints."""


class CheckpointExistsError(FileExistsError):
  """A save at a step that already has a checkpoint (without ``overwrite=True``)."""


@dataclasses.dataclass(frozen=True)
class BestCriterion:
  """The evaluation that ranks checkpoints: ``metric`` of ``split``, ``mode`` max|min."""
  split: str
  metric: str
  mode: str

  @property
  def key(self) -> str:
    """The name of the ranked value among a checkpoint's metrics: ``split/metric``."""
    return f"{self.split}/{self.metric}"

  def score(self, metrics: dict | None) -> float:
    """Higher is better; a checkpoint without the metric, or with NaN, ranks last."""
    value = (metrics or {}).get(self.key, math.nan)
    if value is None or math.isnan(value):
      return -math.inf
    return value if self.mode == "max" else -value


def best_criterion(config) -> BestCriterion:
  """What "best" means for ``config``.

  ``config.checkpoint.best_metric`` ("<split>/<metric>") when set; else the early-stopping
  metric (``config.train.early_stopping_metric``) of ``config.data.eval_split``, so the
  best checkpoint is the one early stopping scores on test; else that split's
  ``mean_auc``. Losses (names ending in ``loss``) are minimised, the rest maximised.
  """
  if config.checkpoint.best_metric:
    split, _, metric = config.checkpoint.best_metric.partition("/")
  else:
    split, metric = config.data.eval_split, config.train.early_stopping_metric or "mean_auc"
  return BestCriterion(split, metric, metric_mode(metric))


def checkpoint_manager(workdir: str, *, read_only: bool = False, keep: int = 1,
                       keep_best: int = 0,
                       best: BestCriterion | None = None):
  """The ``orbax.checkpoint.CheckpointManager`` of ``workdir/checkpoints`` (the only
  place one is constructed).

  Args:
    read_only: for evaluation and export: nothing is created, saved or deleted.
    keep: how many of the latest checkpoints to keep.
    keep_best: how many of the best checkpoints (by ``best``) to keep besides them.
    best: ranks checkpoints by the ``metrics`` given to ``save``; orbax also writes
      them beside each step, so a restarted run still knows which one is best.
  """
  handlers = dict(state=ocp.StandardCheckpointHandler(),
                  data=grain.checkpoint.CheckpointHandler(),
                  config=ocp.JsonCheckpointHandler(),
                  best=ocp.StandardCheckpointHandler(),
                  integrity=ocp.JsonCheckpointHandler(),
                  loop=ocp.JsonCheckpointHandler())
  directory = workdir_lib.checkpoint_dir(workdir)
  if read_only:
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"{directory}: no checkpoints (was the run trained with "
                              "config.checkpoint.enabled=True?)")
    return ocp.CheckpointManager(directory, item_handlers=handlers,
                                 options=ocp.CheckpointManagerOptions(
                                     read_only=True, create=False, save_interval_steps=0))
  keep_policies = [policies.preservation_policy.LatestN(n=keep)]
  score = None
  if best is not None and keep_best:
    score = best.score
    keep_policies.append(policies.preservation_policy.BestN(
        get_metric_fn=score, reverse=False, n=keep_best,
        keep_checkpoints_without_metrics=False))
  return ocp.CheckpointManager(
      directory, item_handlers=handlers,
      options=ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True,
          best_fn=score, best_mode="max",
          preservation_policy=policies.AnyPreservationPolicy(keep_policies)))


def best_step(steps, metrics_of, best: BestCriterion) -> int | None:
  """The step of ``steps`` (kept checkpoints) whose evaluation ``metrics_of(step)``
  (``{"<split>/<metric>": value}``, as saved with the checkpoint) ranks best by
  ``best``; None when none of them was evaluated on it."""
  scored = [(best.score(metrics_of(s)), s) for s in steps]
  scored = [(v, s) for v, s in scored if v > -math.inf]
  return max(scored)[1] if scored else None


class Checkpointer:
  """Saves and restores {state, data iterator, config, best params} under
  ``workdir/checkpoints``. Saves are asynchronous; ``wait()`` blocks until the last one
  is on disk.

  Args:
    workdir: the run's directory.
    keep: how many of the latest checkpoints to keep.
    keep_best: how many of the best checkpoints (by ``best``) to keep besides them.
    best: what ranks checkpoints (``best_criterion``).
    read_only: for evaluation and export.
  """

  def __init__(self, workdir: str, *, keep: int = 1, keep_best: int = 0,
               best: BestCriterion | None = None, read_only: bool = False):
    self.directory = workdir_lib.checkpoint_dir(workdir)
    self.best = best
    self._unverified = set()  # steps without checksums already warned about.
    if not read_only:
      self._warn_half_written()
    self.manager = checkpoint_manager(workdir, read_only=read_only, keep=keep,
                                      keep_best=keep_best, best=best)

  @classmethod
  def from_config(cls, workdir: str, config: ml_collections.ConfigDict) -> "Checkpointer":
    """The checkpointer of ``config.checkpoint``, ranking by ``best_criterion(config)``."""
    c = config.checkpoint
    return cls(workdir, keep=c.keep, keep_best=c.keep_best,
               best=best_criterion(config))

  def _warn_half_written(self):
    if not os.path.isdir(self.directory):
      return
    partial = sorted(n for n in os.listdir(self.directory) if workdir_lib.TMP_MARKER in n)
    if partial:
      log.warning("ignoring %d half-written checkpoint(s) in %s (a save was cut short): "
                  "%s", len(partial), self.directory, ", ".join(partial))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step whose saved evaluation ranks best by ``best``, or None."""
    return best_step(self.all_steps(), self.manager.metrics, self.best)

  def save(self, step: int, state, data_iterator, config: ml_collections.ConfigDict, *,
           metrics: dict[str, float] | None = None, best_params=None,
           loop: dict | None = None, overwrite: bool = False):
    """Starts an asynchronous save of ``step``.

    Args:
      metrics: the evaluation of this step as ``{"<split>/<metric>": value}``; it ranks
        the checkpoint by ``best`` (None: not evaluated, ranked last).
      best_params: the early-stopping best params, saved as the ``best`` item.
      loop: the loop's host state as JSON (the logging window's sums), the ``loop`` item.
      overwrite: replace an existing checkpoint of ``step``; otherwise that raises
        ``CheckpointExistsError``.
    """
    if step in self.manager.all_steps():
      if not overwrite:
        raise CheckpointExistsError(
            f"checkpoint {step} already exists in {self.directory}; pass overwrite=True "
            "to replace it")
      self.wait()
      self.manager.delete(step)
      log.warning("overwriting checkpoint %d in %s", step, self.directory)
    arrays = {"state": state} if best_params is None else {"state": state,
                                                           "best": best_params}
    items = {k: ocp.args.StandardSave(v) for k, v in arrays.items()}
    items.update(data=grain.checkpoint.CheckpointSave(data_iterator),
                 config=ocp.args.JsonSave(config.to_dict()),
                 integrity=ocp.args.JsonSave(integrity.record(
                     arrays, data_iterator, config.to_dict(), loop)))
    if loop is not None:
      items["loop"] = ocp.args.JsonSave(loop)
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def saved_config(self, step: int) -> dict:
    """The config ``step`` was saved with (checked against its recorded checksum)."""
    with self._reading(step, "config"):
      config = self.manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore())).config
    recorded = self._recorded(step)
    if recorded is not None and integrity.config_crc(config) != recorded["config"]:
      self._damaged(step, "config", "it does not match the checksum recorded when it was "
                    "saved")
    return config

  def restore_loop(self, step: int) -> dict | None:
    """The loop's host state saved with ``step`` (checked), or None if it has none."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "loop")):
      return None
    with self._reading(step, "loop"):
      loop = self.manager.restore(step, args=ocp.args.Composite(
          loop=ocp.args.JsonRestore())).loop
    recorded = self._recorded(step)
    if recorded is not None and integrity.config_crc(loop) != recorded.get("loop"):
      self._damaged(step, "loop", "it does not match the checksum recorded when it was "
                    "saved")
    return loop

  def _recorded(self, step: int) -> dict | None:
    """The ``integrity`` item of ``step``; None (with a warning) for a checkpoint saved
    before checksums were recorded."""
    if not os.path.isdir(os.path.join(self.directory, str(step), integrity.ITEM)):
      if step not in self._unverified:
        self._unverified.add(step)
        log.warning("checkpoint %d in %s has no checksums (saved by an older version): "
                    "its arrays are checked finite but not verified", step, self.directory)
      return None
    with self._reading(step, integrity.ITEM):
      return self.manager.restore(step, args=ocp.args.Composite(
          integrity=ocp.args.JsonRestore())).integrity

  def _verify(self, step: int, item: str, tree):
    recorded = self._recorded(step)
    problems = integrity.array_problems(recorded or {"items": {}}, item, tree)
    if problems:
      self._damaged(step, item, "; ".join(problems[:3]) + (
          f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
    return tree

  def earlier_steps(self, step: int) -> list[int]:
    """The complete checkpoints before ``step`` (each item's files and its checksums
    present; the checksums themselves are checked when one is restored)."""
    def complete(s):
      d = os.path.join(self.directory, str(s))
      return all(os.path.exists(os.path.join(d, *p)) for p in (
          ("state", "_METADATA"), ("data",), ("config",), (integrity.ITEM,)))
    return [s for s in self.all_steps() if s < step and complete(s)]

  def what_to_do(self, step: int) -> str:
    """Which checkpoint a resume can use instead of the damaged ``step``."""
    path = os.path.join(self.directory, str(step))
    earlier = self.earlier_steps(step)
    if not earlier:
      return (f"no earlier complete checkpoint is kept in {self.directory}: restore {path} "
              "from a copy, or start a new --workdir")
    return (f"remove {path} to resume from step {earlier[-1]} (earlier complete "
            f"checkpoints: {', '.join(map(str, earlier))})")

  def _damaged(self, step: int, item: str, what: str):
    raise CheckpointIntegrityError(
        f"checkpoint {step} in {self.directory} is damaged: its {item!r} item: {what}. "
        f"Do not resume it: {self.what_to_do(step)}.")

  @contextlib.contextmanager
  def _reading(self, step: int, item: str):
    """Turns any failure to read ``item`` of ``step`` into one CheckpointRestoreError."""
    with failures.quiet_orbax():
      try:
        yield
      except (CheckpointMismatchError, CheckpointRestoreError):
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointRestoreError(
            f"checkpoint {step} in {self.directory}: cannot read its {item!r} item: "
            f"{failures.cause(e)}. The checkpoint is complete but damaged or unreadable: fix "
            f"its files (permissions, storage), or {self.what_to_do(step)}.") from None

  def check_process_count(self, step: int):
    """Raises CheckpointRestoreError when ``step``'s data position was saved by another
    number of processes than this job has."""
    data = os.path.join(self.directory, str(step), "data")
    counts = {int(m.group(2)) for m in map(_PROCESS_FILE.search, _listdir(data)) if m}
    if counts and counts != {jax.process_count()}:
      raise CheckpointRestoreError(
          f"checkpoint {step} in {self.directory} was written by {sorted(counts)[0]} "
          f"process(es); this job has {jax.process_count()}. Its data-iterator position "
          "is saved per process, so it resumes only with the same process count: rerun "
          f"with {sorted(counts)[0]} process(es) (--num_processes), or start a new "
          "--workdir.")

  def check_compatible(self, step: int, abstract_state, config: ml_collections.ConfigDict):
    """Raises ``CheckpointMismatchError`` naming every param whose saved shape or dtype
    differs from ``abstract_state`` and the config keys that differ."""
    with self._reading(step, "state"):
      saved = self.manager.item_metadata(step).state
    problems = compat.state_problems(saved, abstract_state)
    if problems:
      diffs = compat.model_differences(self.saved_config(step), config.to_dict())
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
    saved = self.saved_config(step)
    order = compat.data_order_differences(saved, config.to_dict())
    if order:
      raise CheckpointMismatchError(
          f"checkpoint {os.path.join(self.directory, str(step))} was written with a "
          f"different data order: {'; '.join(order)}. Its data-iterator position would "
          "point at other rows. Use a new --workdir, or the checkpoint's values.")
    changed = compat.model_differences(saved, config.to_dict())
    if changed:
      log.warning("resuming checkpoint %d with a changed config: %s", step,
                  "; ".join(changed))

  def restore_state(self, step: int, abstract_state):
    """The state of ``step``, restored into ``abstract_state``'s shapes and shardings,
    verified against its checksums and checked finite (else CheckpointIntegrityError)."""
    with self._reading(step, "state"):
      state = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state))).state
    return self._verify(step, "state", state)

  def restore_best(self, step: int, abstract_params):
    """The early-stopping best params saved with ``step`` (its ``best`` item)."""
    with self._reading(step, "best"):
      best = self.manager.restore(step, args=ocp.args.Composite(
          best=ocp.args.StandardRestore(abstract_params))).best
    return self._verify(step, "best", best)

  def restore_latest(self, abstract_state, data_iterator, config: ml_collections.ConfigDict):
    """(state, step) of the latest complete checkpoint, the iterator set to its
    position; None when there is no complete checkpoint.

    Raises ``CheckpointMismatchError`` for a checkpoint of another model or data order,
    and ``CheckpointRestoreError`` naming the step, item and cause for any other
    failure (damaged or unreadable files, another process count).
    """
    step = self.latest_step()
    if step is None:
      return None
    self.check_process_count(step)
    self.check_compatible(step, abstract_state, config)
    self.check_same_run(step, config)
    state = self.restore_state(step, abstract_state)
    recorded = self._recorded(step)
    if recorded is not None:
      with self._reading(step, "data"):
        problem = integrity.data_problem(recorded, os.path.join(self.directory, str(step),
                                                                "data"))
      if problem:
        self._damaged(step, "data", problem)
    with self._reading(step, "data"):
      self.manager.restore(step, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return state, step

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a live state, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
