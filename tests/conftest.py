"""Test set-up: 8 CPU devices (set before jax is imported) and small configs.

``pico_jax`` and ``configs`` are imported as installed packages (``make test`` runs
``pip install -e .``).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

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
