"""Train a model: python launch/train.py --config=configs/default.py --workdir=DIR.

Any config value can be overridden: --config.model.backbone=ple --config.train.steps=200.

Multi-process (several hosts, or one process per GPU): run the same command in every
process. ``--distributed=auto`` (the default) joins the processes into one job when a
coordinator is given (``--coordinator_address`` or ``JAX_COORDINATOR_ADDRESS``) or
when SLURM / Open MPI / Cloud TPU on GKE launched it; on a Cloud TPU VM pod slice pass
``--distributed=on`` (jax reads the topology from the TPU metadata). Rerunning the
same command with the same ``--workdir`` resumes from the latest checkpoint.

One run writes a work directory at a time (``WORKDIR/writer.lock``; a second run stops
with one line naming the holder). Ctrl-C saves at the next step and exits with status
130; a second Ctrl-C aborts at once.
"""

import logging

from absl import flags

from pico_jax import cli

_CONFIG = cli.define_config("configs/default.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/default", "Output directory.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Join a multi-process job with jax.distributed.initialize: auto (when a coordinator "
    "or a cluster launcher is found), on (always; jax detects TPU pods, SLURM, Open MPI, "
    "Kubernetes), off.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 (default: $JAX_COORDINATOR_ADDRESS or auto-detected).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the job (default: $JAX_NUM_PROCESSES or detected).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (default: $JAX_PROCESS_ID or detected).")
_LOCAL_DEVICES = flags.DEFINE_list(
    "local_device_ids", None, "Devices this process uses, e.g. 0 for one process per GPU.")


def main():
  from pico_jax import parallel
  from pico_jax.config import validate
  validate(_CONFIG.value)
  # Before anything touches a device: the device list depends on it.
  parallel.initialize_distributed(
      _DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
      local_device_ids=[int(i) for i in _LOCAL_DEVICES.value] if _LOCAL_DEVICES.value else None)
  # Logs from process 0 only; the others report warnings and errors.
  logging.getLogger("pico_jax").setLevel(
      logging.INFO if parallel.is_main_process() else logging.WARNING)
  from pico_jax.train.loop import train_and_evaluate
  # None when preempted: the state is saved and the exit status is 0, so a scheduler
  # that reruns the command resumes the run.
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
