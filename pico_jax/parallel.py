"""Device mesh, shardings and multi-process set-up: where arrays live.

The mesh has a ``data`` axis (batch rows) and a ``model`` axis. Parameters carry
logical axis names (``vocab``, ``embed``, ``mlp_in``, ...; see
``pico_jax.models.layers``) and the config's ``axis_rules`` map them to mesh axes.
With ``mesh.fsdp`` every parameter the rules leave replicated is split over ``data``
along its largest axis that divides evenly (fully sharded data parallelism).

Multi-process (several hosts, or several processes on one host): call
``initialize_distributed`` before anything touches a device; every process then runs
the same program on its own Grain shard, and ``shard_batch`` joins the per-process
rows into global arrays.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from typing import Callable, ContextManager, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"
DISTRIBUTED_MODES = ("auto", "on", "off")

log = logging.getLogger("pico_jax")
_watch: PeerWatch | None = None  # this process's, started by initialize_distributed.


def _cluster_detected() -> str | None:
  """The name of a multi-process launcher found in the environment, else None.

  SLURM (``srun`` with more than one task), Open MPI (``mpirun``) and Cloud TPU on
  GKE/Megascale set these; a Cloud TPU VM pod slice is found by jax itself through
  the TPU metadata server, which ``--distributed=on`` consults.
  """
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" in env:
    return "JAX_COORDINATOR_ADDRESS"
  if int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1) > 1:
    return "SLURM"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "Open MPI"
  if "MEGASCALE_COORDINATOR_ADDRESS" in env or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "Cloud TPU"
  return None


def initialize_distributed(mode: str = "auto", *, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None,
                           initialization_timeout: int = 60, peer_timeout: float = 10.0,
                           heartbeat_timeout: int = 60) -> bool:
  """Joins this process to a multi-process JAX job; returns whether it did.

  Timeouts (seconds): ``initialization_timeout``, how long a process waits for all the
  others to join (a process that never starts ends the job after it); ``peer_timeout``,
  after how long without a sign of life from another process this one reports it lost
  and exits (``PeerWatch``); ``heartbeat_timeout``, jax's own heartbeat
  (``heartbeat_timeout_seconds``), a backstop that aborts with thread dumps, so it is
  kept above ``peer_timeout``.

  ``mode``: ``on`` always calls ``jax.distributed.initialize`` (missing values are
  detected by jax on TPU pods, SLURM, Open MPI and Kubernetes); ``off`` never does;
  ``auto`` does when a coordinator address is given or a multi-process launcher is
  found in the environment (see ``_cluster_detected``). Unset arguments fall back to
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` and then to
  jax's detection.
  """
  if mode not in DISTRIBUTED_MODES:
    raise ValueError(f"--distributed={mode!r}: expected one of {list(DISTRIBUTED_MODES)}")
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if mode == "off" or (mode == "auto" and coordinator_address is None
                       and _cluster_detected() is None):
    return False
  if jax.distributed.is_initialized():
    return True
  # Collectives between processes on CPU (tests, CPU clusters) go through gloo.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # jax aborts a join that times out with a C++ stack dump: say it in one line first.
  timer = threading.Timer(max(initialization_timeout - 1, 1), _join_timed_out,
                          (process_id, num_processes, coordinator_address,
                           initialization_timeout))
  timer.daemon = True
  timer.start()
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout)
  finally:
    timer.cancel()
  global _watch
  _watch = PeerWatch(peer_timeout)
  _watch.start()
  log.info("process %d of %d joined the job (coordinator %s); %d local, %d global devices",
           jax.process_index(), jax.process_count(), coordinator_address or "auto-detected",
           jax.local_device_count(), jax.device_count())
  return True


def _join_timed_out(process_id, num_processes, coordinator_address, timeout):
  print(f"error: process {process_id} of {num_processes}: not every process joined the "
        f"job at {coordinator_address or 'the detected coordinator'} within {timeout} s "
        "(one was stopped or never started); start all of them with the same "
        "--coordinator_address and --num_processes", file=sys.stderr, flush=True)
  os._exit(1)


class PeerWatch(threading.Thread):
  """Ends this process with one line when another process of the job is lost.

  Every ``interval`` seconds a daemon thread raises this process's counter in jax's
  coordination key-value store and reads the others'. A counter that has not moved for
  ``timeout`` seconds (SIGKILL, a crash, a lost host), or a coordinator that no longer
  answers (process 0 lost), prints ``error: process <k> of <n> was lost ...`` (``line``)
  and exits with status 1 at once: the collectives of the survivors would otherwise wait
  for jax's heartbeat timeout and abort with pages of thread dumps. A process that
  finishes normally marks itself done and stops its watch (atexit, before jax's own exit
  hook shuts the coordination client down), so the others never take it for lost and
  its own watch never takes that shutdown for a lost coordinator.
  """

  def __init__(self, timeout: float = 10.0, interval: float = 1.0):
    super().__init__(daemon=True, name="pico_jax-peer-watch")
    from jax._src import distributed
    self.client = distributed.global_state.client
    self.index, self.count = jax.process_index(), jax.process_count()
    self.timeout, self.interval = timeout, interval
    self.lost = threading.Event()
    self._stopping = threading.Event()
    self._notes: list[Callable[[], str]] = []  # those of the open ``exit_note`` blocks.
    atexit.register(self._done)

  @contextlib.contextmanager
  def exit_note(self, note: Callable[[], str]):
    """Within the block, ``line`` ends with ``note()`` (e.g. which checkpoint is intact)."""
    self._notes.append(note)
    try:
      yield
    finally:
      self._notes.remove(note)

  def line(self, process: int, why: str) -> str:
    """The one line this process ends with when ``process`` is lost."""
    notes = ""
    for note in list(self._notes):
      try:
        notes += " " + note()
      except Exception:  # pylint: disable=broad-except (the line goes out without it)
        pass
    return (f"error: process {process} of {self.count} was lost ({why}); process "
            f"{self.index} stops too.{notes}")

  def _key(self, kind: str, process: int) -> str:
    return f"pico_jax/{kind}/{process}"

  def _done(self):
    try:
      self.client.key_value_set(self._key("done", self.index), "1", allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except (the job is ending anyway)
      pass
    # atexit runs this before jax's clean_up (registered at import, so later in LIFO
    # order), which shuts the client down: no call of the watch may be in flight then.
    self._stopping.set()
    if self.is_alive() and threading.current_thread() is not self:
      self.join(timeout=10 * self.interval)

  def run(self):
    beat, now = 0, time.monotonic()
    last = {p: (None, now) for p in range(self.count) if p != self.index}
    while not self._stopping.is_set():
      beat += 1
      try:
        self.client.key_value_set(self._key("alive", self.index), str(beat),
                                  allow_overwrite=True)
        for p, (value, seen) in last.items():
          current = _try_get(self.client, self._key("alive", p))
          now = time.monotonic()
          if current != value:
            last[p] = (current, now)
          elif (now - seen > self.timeout
                and _try_get(self.client, self._key("done", p)) is None):
            self._exit(p, f"no sign of life for {self.timeout:.0f} s")
      except Exception:  # pylint: disable=broad-except (the coordinator is gone)
        self._exit(0, "the coordinator (process 0) does not answer")
      self._stopping.wait(self.interval)

  def _exit(self, process: int, why: str):
    if self._stopping.is_set():  # this process is ending normally: nothing to report.
      return
    self.lost.set()
    print(self.line(process, why), file=sys.stderr, flush=True)
    os._exit(1)


def exit_note(note: Callable[[], str]) -> ContextManager:
  """Within the block, the line that ends this process when another one is lost says
  ``note()`` too (``PeerWatch.exit_note``); nothing without a watch (single process)."""
  return _watch.exit_note(note) if _watch is not None else contextlib.nullcontext()


def wait_if_peer_lost(seconds: float) -> None:
  """After a collective failed: gives the watch ``seconds`` to find a lost process (it
  then ends this process with its one line); returns if it finds none, or at once
  without a watch."""
  if _watch is not None:
    _watch.lost.wait(seconds)


def _try_get(client, key: str) -> str | None:
  try:
    return client.key_value_try_get(key)
  except Exception as e:  # pylint: disable=broad-except
    if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
      return None
    raise


def first_failing_process(failed: bool) -> int | None:
  """The lowest index of a process that reports ``failed``, or None. Collective in a
  multi-process job: every process calls it, so all of them stop together."""
  if jax.process_count() == 1:
    return 0 if failed else None
  from jax.experimental import multihost_utils
  flags = np.asarray(multihost_utils.process_allgather(np.asarray(failed))).ravel()
  return int(np.argmax(flags)) if flags.any() else None


def is_main_process() -> bool:
  """Whether this process writes logs, metrics and other single-writer files."""
  return jax.process_index() == 0


def make_mesh(data: int = -1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, model) mesh over ``devices`` (default: all); -1 takes what is left."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and model == -1:
    raise ValueError("config.mesh: at most one of data/model may be -1")
  if data == -1:
    data = n // model
  if model == -1:
    model = n // data
  if data * model != n:
    raise ValueError(f"config.mesh: data={data} x model={model} does not match the {n} "
                     "devices")
  return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def mesh_from_config(config, devices=None) -> Mesh:
  return make_mesh(config.mesh.data, config.mesh.model, devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``, the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _rules(rules) -> tuple:
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
               for name, axes in rules)


def _fsdp_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """``spec`` with ``data`` added on the largest free axis it divides (or unchanged)."""
  used = {a for entry in spec for a in ((entry,) if isinstance(entry, str) else entry or ())}
  n = mesh.shape[DATA]
  if DATA in used or n == 1:
    return spec
  entries = list(spec) + [None] * (len(shape) - len(spec))
  free = [i for i, e in enumerate(entries) if e is None and shape[i] % n == 0]
  if not free:
    return spec
  entries[max(free, key=lambda i: shape[i])] = DATA
  return P(*entries)


def logical_shardings(boxed_tree, mesh: Mesh, rules, *, fsdp: bool = False) -> object:
  """NamedShardings for a tree whose leaves may be ``nn.LogicallyPartitioned``.

  Unannotated leaves (optimizer counts, the step, the rng) are replicated. With
  ``fsdp``, annotated leaves that the rules leave unsplit over ``data`` are split
  over it along their largest axis that divides evenly (small ones stay replicated).
  Rows of vocab-sharded leaves must divide evenly: a clear error says which key to
  change when they do not.
  """
  rules = _rules(rules)

  def sharding(leaf):
    if not isinstance(leaf, nn.Partitioned):
      return NamedSharding(mesh, P())
    names = tuple(leaf.names)
    spec = nn.logical_to_mesh_axes(names, rules)
    shape = tuple(leaf.value.shape)
    for dim, entry in zip(shape, spec):
      axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
      size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
      if dim % size:
        raise ValueError(
            f"a parameter axis of size {dim} (logical axes {names}) cannot be split over "
            f"mesh axes {axes} of {size} devices; change config.axis_rules, config.mesh "
            "or (for the embedding table) config.model.vocab_pad_multiple")
    if fsdp:
      spec = _fsdp_spec(spec, shape, mesh)
    return NamedSharding(mesh, spec)

  return jax.tree.map(sharding, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def shard_batch(batch, mesh: Mesh):
  """Places a host-local batch dict onto the mesh as global arrays split over ``data``.

  Single-process: the local batch is the global batch. Multi-process: each process
  passes its own rows and the result is the global batch of all processes.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
