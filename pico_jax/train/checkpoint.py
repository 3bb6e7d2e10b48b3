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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from pico_jax import workdir as workdir_lib

log = logging.getLogger("pico_jax")

# Config sections that may differ between a checkpoint and the run resuming it.
_RESUMABLE_SECTIONS = ("train", "checkpoint", "mesh")
_RESUMABLE_KEYS = ("data.prefetch", "data.num_threads", "data.eval_split")
# Keys that fix which rows the saved data-iterator position points at: a resume with
# any of them changed would silently train on a different data order.
_DATA_ORDER_KEYS = ("seed", "train.batch_size", "data.name", "data.path")
_PROCESS_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model of the current config; the message names why."""


class CheckpointRestoreError(RuntimeError):
  """A complete checkpoint cannot be resumed; the message names the step, item and cause."""


class CheckpointExistsError(FileExistsError):
  """A save at a step that already has a checkpoint (without ``overwrite=True``)."""


def flatten_config(tree: dict, prefix: str = "") -> dict:
  """A nested config dict as ``{"dotted.key": value}``."""
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(flatten_config(v, f"{prefix}{k}."))
  else:
    out[prefix[:-1]] = tree
  return out


def config_differences(saved: dict, current: dict) -> list[str]:
  """``key: saved -> current`` for every config key whose value differs, sorted."""
  # Through JSON, as the saved one was: tuples become lists on both sides.
  a, b = (flatten_config(json.loads(json.dumps(c))) for c in (saved, current))
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


class Checkpointer:
  """Saves and restores {state, data iterator, config, best params} under
  ``workdir/checkpoints``. Saves are asynchronous; ``wait()`` blocks until the last one
  is on disk.

  Args:
    workdir: the run's directory.
    keep: how many of the latest checkpoints to keep.
    keep_best: how many of the best checkpoints (by ``best``) to keep besides them.
    best: what ranks checkpoints (``pico_jax.workdir.best_criterion``).
    read_only: for evaluation and export.
  """

  def __init__(self, workdir: str, *, keep: int = 1, keep_best: int = 0,
               best: workdir_lib.BestCriterion | None = None, read_only: bool = False):
    self.directory = workdir_lib.checkpoint_dir(workdir)
    self.best = best
    if not read_only:
      self._warn_half_written()
    self.manager = workdir_lib.checkpoint_manager(workdir, read_only=read_only, keep=keep,
                                                  keep_best=keep_best, best=best)

  @classmethod
  def from_config(cls, workdir: str, config: ml_collections.ConfigDict) -> "Checkpointer":
    """The checkpointer of ``config.checkpoint``, ranking by ``best_criterion(config)``."""
    c = config.checkpoint
    return cls(workdir, keep=c.keep, keep_best=c.keep_best,
               best=workdir_lib.best_criterion(config))

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
    return workdir_lib.best_step(self.all_steps(), self.manager.metrics, self.best)

  def save(self, step: int, state, data_iterator, config: ml_collections.ConfigDict, *,
           metrics: dict[str, float] | None = None, best_params=None,
           overwrite: bool = False):
    """Starts an asynchronous save of ``step``.

    Args:
      metrics: the evaluation of this step as ``{"<split>/<metric>": value}``; it ranks
        the checkpoint by ``best`` (None: not evaluated, ranked last).
      best_params: the early-stopping best params, saved as the ``best`` item.
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
    items = dict(state=ocp.args.StandardSave(state),
                 data=grain.checkpoint.CheckpointSave(data_iterator),
                 config=ocp.args.JsonSave(config.to_dict()))
    if best_params is not None:
      items["best"] = ocp.args.StandardSave(best_params)
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def saved_config(self, step: int) -> dict:
    with self._reading(step, "config"):
      return self.manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore())).config

  @contextlib.contextmanager
  def _reading(self, step: int, item: str):
    """Turns any failure to read ``item`` of ``step`` into one CheckpointRestoreError."""
    with workdir_lib.quiet_orbax():
      try:
        yield
      except (CheckpointMismatchError, CheckpointRestoreError):
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointRestoreError(
            f"checkpoint {step} in {self.directory}: cannot read its {item!r} item: "
            f"{_cause(e)}. The checkpoint is complete but "
            "damaged or unreadable; fix its files (permissions, storage) or remove "
            f"{os.path.join(self.directory, str(step))} to resume from the one before "
            f"(kept: {self.all_steps()}).") from None

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
    problems += [f"{k}: in the checkpoint, not in this model" for k in sorted(set(have) - set(want))]
    if problems:
      diffs = [d for d in config_differences(self.saved_config(step), config.to_dict())
               if not _resumable(d)]
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
    order = [d for d in diffs if _key(d) in _DATA_ORDER_KEYS
             or _key(d).startswith("data.synthetic.")]
    if order:
      raise CheckpointMismatchError(
          f"checkpoint {os.path.join(self.directory, str(step))} was written with a "
          f"different data order: {'; '.join(order)}. Its data-iterator position would "
          "point at other rows. Use a new --workdir, or the checkpoint's values.")
    changed = [d for d in diffs if not _resumable(d)]
    if changed:
      log.warning("resuming checkpoint %d with a changed config: %s", step,
                  "; ".join(changed))

  def restore_state(self, step: int, abstract_state):
    """The state of ``step``, restored into ``abstract_state``'s shapes and shardings."""
    with self._reading(step, "state"):
      return self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state))).state

  def restore_best(self, step: int, abstract_params):
    """The early-stopping best params saved with ``step`` (its ``best`` item)."""
    with self._reading(step, "best"):
      return self.manager.restore(step, args=ocp.args.Composite(
          best=ocp.args.StandardRestore(abstract_params))).best

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
    with self._reading(step, "data"):
      self.manager.restore(step, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return state, step

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _key(diff: str) -> str:
  return diff.split(":")[0]


def _resumable(diff: str) -> bool:
  return diff.split(".")[0] in _RESUMABLE_SECTIONS or _key(diff) in _RESUMABLE_KEYS


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


def _cause(e: BaseException) -> str:
  """The first line of ``e``'s message, naming the damaged array when TensorStore says
  which (its spec, a page of JSON, is left out)."""
  text = str(e).strip()
  text = text.splitlines()[0] if text else "(no message)"
  text = text.split(" [tensorstore_spec=")[0]
  array = re.search(r'Error (?:reading|opening) "([^"]+?)/\.zarray"', text)
  prefix = f"array {array.group(1).replace('.', '/')!r} is damaged: " if array else ""
  return f"{prefix}{type(e).__name__}: {text[:400]}"


def load_state_arrays(workdir: str, step: int | None = None) -> dict:
  """The saved train state of ``step`` (default: the latest) as host numpy arrays.

  For inspection and comparison (notebooks, tests): a nested dict ``{"params": ...,
  "opt_state": ..., "step": ..., "rng": ...}`` read onto one device whatever mesh saved
  it, then copied to the host.
  """
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          ckpt.manager.item_metadata(step).state)
    return jax.tree.map(np.asarray, ckpt.restore_state(step, target))
  finally:
    ckpt.close()


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a live state, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
