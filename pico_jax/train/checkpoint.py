"""Orbax checkpoints of the train state, the data iterator position and the config."""

from __future__ import annotations

import os

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores {state, data iterator, config} under ``workdir/checkpoints``.

  Saves are asynchronous; ``wait()`` blocks until the last one is on disk.
  """

  def __init__(self, workdir: str, *, keep: int, every_steps: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, config: ml_collections.ConfigDict,
           *, force: bool = False) -> bool:
    if not force and step % self.every_steps:
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config.to_dict())), force=force)

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores ``step`` into ``abstract_state``'s shapes/shardings and the iterator."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator),
        config=ocp.args.JsonRestore()))
    return restored.state, restored.config

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a live state, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
