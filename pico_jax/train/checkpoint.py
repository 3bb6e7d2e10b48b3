"""Orbax checkpoints of the train state, the data iterator position and the config.

A checkpoint is ``workdir/checkpoints/<step>/`` (layout in ``pico_jax/workdir.py``) with
the items ``state`` (params, optimizer state, step and rng, each array saved with its
sharding, one shard per device), ``data`` (the Grain iterator state of every process),
``config`` (JSON), ``integrity`` (checksums and the data's identity, with a version
marker in orbax's metadata: ``checkpoint_integrity``), ``loop`` (the logging window)
and, with early stopping on, ``best`` (the best params so far).
Saves are asynchronous: the step loop continues while the previous state is written.

Resuming is strict. Orbax writes a step into a temporary directory and renames it when
complete, so a save cut short leaves ``<step>.orbax-checkpoint-tmp-*``, which is never
taken for a checkpoint: that is the only checkpoint a resume skips (with a warning).
Any other failure to resume the latest checkpoint raises ``CheckpointRestoreError``
naming the step, the item and the cause; a resume never silently starts over. A
checkpoint trained on other data (another store fingerprint) is refused unless
``config.data.allow_new_data``.

A changed process count is refused at start: the data position is saved per process
(``data/process_<i>-of-<n>.json``), so the error says to resume with the saved count.
A changed device count or mesh shape with the same process count restores (orbax
reshards the arrays onto the new mesh; the global batch, and so the data order, does
not depend on the mesh).

Which checkpoints are kept is decided here too; which is best, by the one definition of
``checkpoint_best.best_criterion``.
"""

from __future__ import annotations

import contextlib
import logging
import os

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from pico_jax import parallel
from pico_jax import workdir as workdir_lib
from pico_jax.train import checkpoint_compat as compat
from pico_jax.train import checkpoint_failures as failures
from pico_jax.train import checkpoint_integrity as integrity
from pico_jax.train.checkpoint_best import (  # noqa: F401 (re-exported)
    BestCriterion, best_criterion, best_step)
from pico_jax.train.checkpoint_failures import (  # noqa: F401 (the errors' public home)
    CheckpointExistsError, CheckpointIntegrityError, CheckpointMismatchError,
    CheckpointRestoreError, CheckpointWriteError)

log = logging.getLogger("pico_jax")


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
               best: BestCriterion | None = None, read_only: bool = False,
               dataset: dict | None = None):
    self.directory = workdir_lib.checkpoint_dir(workdir)
    self.best = best
    self.dataset = dataset  # what each save records as its data (compat.data_identity).
    self._unverified = set()  # steps without checksums already warned about.
    if not read_only:
      self._check_writable(None, 0)
      self._warn_half_written()
    try:  # orbax reads every step's saved metrics here.
      self.manager = checkpoint_manager(workdir, read_only=read_only, keep=keep,
                                        keep_best=keep_best, best=best)
    except (ValueError, OSError):
      bad = failures.unparsable_metrics([self._path(s) for s in self._step_names()])
      if bad is not None:
        self._damaged(int(os.path.basename(bad[0])), "metrics", f"its file "
                      f"metrics/metrics does not parse ({bad[1]}); orbax reads every "
                      "step's to rank them, so no checkpoint can be opened")
      raise

  @classmethod
  def from_config(cls, workdir: str, config: ml_collections.ConfigDict,
                  dataset: dict | None = None) -> "Checkpointer":
    """The checkpointer of ``config.checkpoint``, ranking by ``best_criterion(config)``;
    ``dataset``: the identity of the run's data (``compat.data_identity``)."""
    c = config.checkpoint
    return cls(workdir, keep=c.keep, keep_best=c.keep_best,
               best=best_criterion(config), dataset=dataset)

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
    self._check_writable(step, sum(x.nbytes for x in jax.tree.leaves(arrays)))
    items = {k: ocp.args.StandardSave(v) for k, v in arrays.items()}
    items.update(data=grain.checkpoint.CheckpointSave(data_iterator),
                 config=ocp.args.JsonSave(config.to_dict()),
                 integrity=ocp.args.JsonSave(integrity.record(
                     arrays, data_iterator, config.to_dict(), loop, self.dataset)))
    if loop is not None:
      items["loop"] = ocp.args.JsonSave(loop)
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    with self._writing(step):
      self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                        force=True, custom_metadata=integrity.MARKER)

  def saved_config(self, step: int) -> dict:
    """The config ``step`` was saved with (checked against its recorded checksum)."""
    return self._json_item(step, "config")

  def restore_loop(self, step: int) -> dict | None:
    """The loop's host state saved with ``step`` (checked), or None if it has none."""
    return self._json_item(step, "loop") if os.path.isdir(self._path(step) + "/loop") else None

  def _json_item(self, step: int, item: str) -> dict:
    with self._reading(step, item):
      value = getattr(self.manager.restore(step, args=ocp.args.Composite(
          **{item: ocp.args.JsonRestore()})), item)
    recorded = self._recorded(step)
    if recorded is not None and integrity.config_crc(value) != recorded.get(item):
      self._damaged(step, item, "it does not match the checksum recorded when it was saved")
    return value

  def _recorded(self, step: int) -> dict | None:
    """The ``integrity`` item of ``step``; None (with a warning) for a checkpoint saved
    before checksums were recorded (no version marker either); a checkpoint with the
    marker and without the item is damaged (CheckpointIntegrityError)."""
    if not os.path.isdir(os.path.join(self.directory, str(step), integrity.ITEM)):
      if integrity.has_marker(self._path(step)):
        self._damaged(step, integrity.ITEM, "it is missing, though the checkpoint was "
                      "written by a version that records it (its _CHECKPOINT_METADATA "
                      "says so, or is missing too); nothing in it can be verified")
      if step not in self._unverified:
        self._unverified.add(step)
        log.warning("checkpoint %d in %s is old: saved by a version before checksums (no "
                    "version marker, no integrity item); its arrays are checked finite "
                    "but not verified", step, self.directory)
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

  def _step_names(self) -> list[int]:
    names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
    return sorted(int(n) for n in names if n.isdigit())

  def complete_steps(self) -> list[int]:
    """The complete checkpoints: each item's files present, and the checksums unless
    the checkpoint is old (no version marker); the checksums themselves are checked
    when one is restored."""
    def complete(s):
      d = self._path(s)
      needed = [("state", "_METADATA"), ("data",), ("config",)]
      if integrity.has_marker(d):
        needed.append((integrity.ITEM,))
      return all(os.path.exists(os.path.join(d, *p)) for p in needed)
    return [s for s in self._step_names() if complete(s)]

  def earlier_steps(self, step: int) -> list[int]:
    """The complete checkpoints before ``step``."""
    return [s for s in self.complete_steps() if s < step]

  def _damaged(self, step: int, item: str, what: str):
    todo = failures.what_to_do(self._path(step), self.complete_steps())
    raise CheckpointIntegrityError(f"checkpoint {step} in {self.directory} is damaged: its "
                                   f"{item!r} item: {what}. Do not resume it: {todo}.")

  @contextlib.contextmanager
  def _reading(self, step: int, item: str):
    """Turns any failure to read ``item`` of ``step`` into one CheckpointRestoreError."""
    with failures.quiet_orbax():
      try:
        yield
      except (CheckpointMismatchError, CheckpointRestoreError):
        raise
      except Exception as e:  # pylint: disable=broad-except
        todo = failures.what_to_do(self._path(step), self.complete_steps())
        raise CheckpointRestoreError(
            f"checkpoint {step} in {self.directory}: cannot read its {item!r} item: "
            f"{failures.cause(e)}. The checkpoint is complete but damaged or unreadable: "
            f"fix its files (permissions, storage), or {todo}.") from None

  def check_process_count(self, step: int):
    """Raises CheckpointRestoreError when ``step``'s data position was saved by another
    number of processes than this job has."""
    compat.check_process_count(self._path(step), os.path.join(self._path(step), "data"))

  def check_compatible(self, step: int, abstract_state, config: ml_collections.ConfigDict):
    """Raises ``CheckpointMismatchError`` naming every param whose saved shape or dtype
    differs from ``abstract_state`` and the config keys that differ;
    ``CheckpointIntegrityError`` when the state's metadata is missing (a damaged
    checkpoint, not another model)."""
    if not os.path.exists(os.path.join(self._path(step), "state", "_METADATA")):
      self._damaged(step, "state", "its file state/_METADATA is missing (the arrays cannot "
                    "be located without it)")
    with self._reading(step, "state"):
      saved = self.manager.item_metadata(step).state
    compat.check_state_fits(self._path(step), saved, abstract_state,
                            lambda: self.saved_config(step), config.to_dict())

  def check_same_run(self, step: int, config: ml_collections.ConfigDict):
    """Raises ``CheckpointMismatchError`` if a key that fixes the data order differs from
    the checkpoint's; logs every other changed key (except runtime-only ones)."""
    compat.check_same_run(self._path(step), self.saved_config(step), config.to_dict())

  def check_same_data(self, step: int, dataset: dict | None, allow_new_data: bool):
    """Raises ``CheckpointMismatchError`` naming both fingerprints when ``step`` was
    trained on other data than ``dataset`` (``compat.data_identity``), unless
    ``allow_new_data`` (then a warning says so)."""
    recorded = self._recorded(step)
    saved = None if recorded is None else recorded.get("dataset", compat.NOT_RECORDED)
    compat.check_same_data(self._path(step), saved, dataset, allow_new_data)

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

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
    if self.dataset is not None:
      self.check_same_data(step, self.dataset, config.data.allow_new_data)
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

  def _check_writable(self, step: int | None, nbytes: int):
    """Raises CheckpointWriteError on every process, before anything is written, when
    any process cannot write ``step`` (of ``nbytes`` array bytes) into the directory."""
    problem = failures.write_problem(self.directory, nbytes)
    process = parallel.first_failing_process(problem is not None)
    if process is None:
      return
    what = "a checkpoint" if step is None else f"checkpoint {step}"
    cause = problem if problem else f"process {process} cannot write it (see its log)"
    self._write_failed(step, f"cannot write {what} in {self.directory}: {cause}")

  @contextlib.contextmanager
  def _writing(self, step: int | None):
    """Turns a failed write that the check before the save did not foresee (a disk
    filled meanwhile) into one CheckpointWriteError naming its cause."""
    try:
      yield
    except (CheckpointRestoreError, CheckpointExistsError):
      raise
    except Exception as e:  # pylint: disable=broad-except
      where = "a checkpoint" if step is None else f"checkpoint {step}"
      self._write_failed(step, f"writing {where} in {self.directory} failed: "
                         f"{failures.os_cause(e)}")

  def _write_failed(self, step: int | None, what: str):
    if hasattr(self, "manager"):  # the saves in flight finish first, and are listed.
      with contextlib.suppress(Exception):
        self.manager.wait_until_finished()
    raise failures.write_error(what, [s for s in self.complete_steps() if s != step]
                               ) from None

  def wait(self):
    with self._writing(None):
      self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a live state, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
