"""Test set-up: 8 CPU devices (set before jax is imported), small configs, and local
S3 and Google Cloud Storage servers (``s3``, ``gcs``) for stores in object storage.

``pico_jax`` and ``configs`` are imported as installed packages (``make test`` runs
``pip install -e .``).
"""

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache for the session: the many runs of the same small models (each
# build() traces new functions, which jax's in-memory cache does not share) compile once.
_CACHE = tempfile.mkdtemp(prefix="pico_jax_tests_xla_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from configs import default as default_config  # noqa: E402
from pico_jax.config_keys import set_value  # noqa: E402


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  """``python launch/<name>.py ARGS`` in a child process (CPU, one device); its result,
  stdout and stderr as text. Tests call the package's functions, and the scripts only
  this way: a script is flag parsing and one call."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", f"{name}.py"), *args],
                        env=env, capture_output=True, text=True, timeout=timeout)


def kill_preprocess_once(directory, prefix: str, *args: str, timeout: float = 240) -> None:
  """Starts ``launch/preprocess.py ARGS`` and SIGKILLs it as soon as a name in
  ``directory`` starts with ``prefix`` (its temporary store or spill exists)."""
  import signal
  child = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", "preprocess.py"),
                            *args], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while not any(n.startswith(prefix) for n in os.listdir(directory)):
    assert child.poll() is None and time.time() < deadline, "the build ended first"
    time.sleep(0.01)
  child.send_signal(signal.SIGKILL)
  child.wait()


def small_config(**overrides):
  """The default recipe shrunk to run in seconds on CPU."""
  c = default_config.get_config()
  # The tests were written for PICO's personalised path at lambda 0.1 from tau 0.2 (the
  # recipe's defaults until RESULTS.md section 4); they name other modes where they test
  # them.
  c.contrast.mode, c.contrast.weight, c.contrast.tau_init = "personalized", 0.1, 0.2
  c.data.synthetic.num_rows = 8_000
  c.data.synthetic.num_users = 200
  c.data.synthetic.num_items = 100
  c.model.embed_dim = 8
  c.model.dense_dim = 8
  c.model.mmoe.num_experts = 4
  c.model.mmoe.expert_hidden = (16,)
  c.model.shared_bottom.hidden = (16,)
  c.model.ple.expert_hidden = (16,)
  c.model.ple.num_shared_experts = 2
  c.model.ple.num_task_experts = 2
  c.model.tower_hidden = (8,)
  c.contrast.proj_dim = 8
  c.contrast.proj_hidden = (8,)
  c.contrast.relatedness_hidden = (8,)
  c.train.batch_size = 64
  c.train.steps = 20
  c.train.log_every = 10
  c.train.eval_every = 10
  c.train.eval_batch_size = 512
  c.checkpoint.enabled = False
  c.data.num_threads = 1
  for key, value in overrides.items():
    set_value(c, key, value)
  return c


@pytest.fixture
def config():
  return small_config()


@pytest.fixture(scope="module")
def tiny_data():
  """A 500-row synthetic dataset, for tests of one model on one batch."""
  from pico_jax.data import synthetic
  return synthetic.generate(seed=0, num_rows=500, num_users=50, num_items=40)


def small_model(data, **overrides):
  """(model, params, 64-row batch of ``data``, pico_objective kwargs) of small_config."""
  import jax
  import numpy as np
  from pico_jax import batch as B
  from pico_jax.models import build_model
  from pico_jax.train.step import objective_kwargs
  config = small_config(**overrides)
  model = build_model(config, data.schema)
  batch = {k: v[:64] for k, v in data.splits["train"].items()}
  batch[B.MASK] = np.ones(64, np.float32)
  params = model.init(jax.random.PRNGKey(0), B.features(batch))["params"]
  return model, params, batch, objective_kwargs(config, mesh=None)


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


@contextlib.contextmanager
def _server(command: list[str], port: int, log_dir, env: dict[str, str]):
  """Runs ``command`` (a server listening on ``port`` of 127.0.0.1) until the block
  ends, with ``env`` set in this process meanwhile; its output goes to a file in
  ``log_dir``."""
  log = open(log_dir / "server.log", "w")
  server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    deadline = time.monotonic() + 60
    while True:
      try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
      except OSError:
        assert time.monotonic() < deadline and server.poll() is None, (
            f"{command[2]} did not start: {open(log_dir / 'server.log').read()}")
        time.sleep(0.2)
    yield
  finally:
    server.terminate()
    server.wait(timeout=30)
    log.close()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


# Credentials moto accepts; set while the server runs so that no real ones are used.
_S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
  """A moto S3 server on a free port of 127.0.0.1 with bucket "pico": a function of a
  key giving its s3:// URI (the endpoint in the query string)."""
  pytest.importorskip("moto", reason="moto[server] (requirements.txt) is not installed")
  import pyarrow.fs as pafs
  port = _free_port()
  with _server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
               port, tmp_path_factory.mktemp("moto"), _S3_ENV):
    endpoint = f"127.0.0.1:{port}"
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http",
                      allow_bucket_creation=True).create_dir("pico")
    yield lambda key, bucket="pico": (f"s3://{bucket}/{key}?endpoint_override={endpoint}"
                                      "&scheme=http")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A Google Cloud Storage emulator (gcp-storage-emulator, in memory) on a free port
  of 127.0.0.1 with bucket "pico": a function of a key giving its gs:// URI. The URI's
  user "anonymous" is pyarrow's way to send no credentials (none are looked for)."""
  pytest.importorskip("gcp_storage_emulator",
                      reason="gcp-storage-emulator (requirements.txt) is not installed")
  port = _free_port()
  with _server([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                f"--port={port}", "--in-memory", "--default-bucket=pico"],
               port, tmp_path_factory.mktemp("gcs"), {}):
    yield lambda key, bucket="pico": (
        f"gs://anonymous@{bucket}/{key}?endpoint_override=127.0.0.1:{port}&scheme=http"
        "&retry_limit_seconds=10")
