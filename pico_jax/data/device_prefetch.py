"""Device prefetch: the next global batches are placed on the devices while a step runs.

``DevicePrefetcher(iterator, put)`` wraps the Grain training iterator. A background
thread takes host batches from it, calls ``put`` (``parallel.shard_batch``: the
host-to-device copies of the next global batch) and keeps up to ``buffer_size``
placed batches ready, so the loop's own thread only dispatches steps: host work
(Grain's hand-over, the copies) is off the step's critical path. With the default
buffer of 2 this is double buffering: one batch in use, the next one or two already
on the device.

Order and resume are those of the wrapped iterator. ``get_state()`` is the wrapped
iterator's state after the last batch *handed to the caller*, never after the ones
read ahead, so a checkpoint written between steps resumes exactly at the next unseen
batch; batches prefetched but not consumed are read again after a restore, not lost.
``set_state`` stops the thread, drops what was read ahead and rewinds the wrapped
iterator. The class is a ``grain.DatasetIterator``, so ``grain.checkpoint``'s
``CheckpointSave`` / ``CheckpointRestore`` (and ``pico_jax.train.checkpoint``) save
and restore it as they do the plain iterator (its state has the same format).
"""

from __future__ import annotations

import copy
import queue
import threading
from typing import Any, Callable

import grain

_BATCH, _END, _ERROR = "batch", "end", "error"
# How often a producer blocked on a full buffer checks whether it should stop.
_POLL_S = 0.05


class DevicePrefetcher(grain.DatasetIterator):
  """An iterator of placed batches, read ``buffer_size`` ahead by a background thread.

  Args:
    iterator: the host-batch iterator with ``get_state`` / ``set_state`` (the Grain
      iterator of ``pipeline.train_iterator``).
    put: host batch -> placed batch (e.g. ``lambda b: parallel.shard_batch(b, mesh)``);
      it runs on the background thread.
    buffer_size: placed batches kept ready (>= 1); each costs one batch of device memory.
  """

  def __init__(self, iterator, put: Callable[[Any], Any], *, buffer_size: int = 2):
    super().__init__(iterator if isinstance(iterator, grain.DatasetIterator) else ())
    self._thread: threading.Thread | None = None
    if buffer_size < 1:
      raise ValueError(f"buffer_size={buffer_size}: must be >= 1")
    self._inner = iterator
    self._put = put
    self._buffer_size = buffer_size
    self._state = iterator.get_state()
    self._queue: queue.Queue | None = None
    self._stop: threading.Event | None = None
    self._ended = False

  def _produce(self, buffer: queue.Queue, stop: threading.Event):
    """Producer thread: (kind, placed batch or error, inner state after it) items."""

    def offer(item) -> bool:
      while not stop.is_set():
        try:
          buffer.put(item, timeout=_POLL_S)
          return True
        except queue.Full:
          continue
      return False

    try:
      while not stop.is_set():
        try:
          host = next(self._inner)
        except StopIteration:
          offer((_END, None, None))
          return
        # The state is read right after the batch, on this thread: the only one that
        # touches the wrapped iterator while the producer runs.
        if not offer((_BATCH, self._put(host), self._inner.get_state())):
          return
    except BaseException as e:  # noqa: BLE001  (re-raised on the consumer's thread)
      offer((_ERROR, e, None))

  def start_prefetch(self) -> None:
    """Starts reading ahead now (Grain's restore calls this after ``set_state``)."""
    if self._thread is None and not self._ended:
      self._queue = queue.Queue(maxsize=self._buffer_size)
      self._stop = threading.Event()
      self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop),
                                      name="device-prefetch", daemon=True)
      self._thread.start()

  def _shutdown(self):
    """Stops the producer and drops every batch it read ahead."""
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = self._queue = self._stop = None

  def __next__(self):
    if self._ended:
      raise StopIteration
    self.start_prefetch()
    kind, value, state = self._queue.get()
    if kind == _END:
      self._ended = True
      self._shutdown()
      raise StopIteration
    if kind == _ERROR:
      self._shutdown()
      raise value
    self._state = state
    return value

  def get_state(self) -> dict[str, Any]:
    """The wrapped iterator's state after the last batch returned by ``next``."""
    return copy.deepcopy(self._state)

  def set_state(self, state: dict[str, Any]) -> None:
    """Drops the batches read ahead and resumes the wrapped iterator at ``state``."""
    self._shutdown()
    self._inner.set_state(state)
    self._state = state
    self._ended = False

  def close(self) -> None:
    self._shutdown()
    super().close()
