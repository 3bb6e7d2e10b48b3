"""pico_jax logs its progress with no set-up by the program, and configures nothing but
its own logger on import (a child interpreter per case: logging is process state)."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

HELLO = "import logging; logging.getLogger('pico_jax').info('hello %d', 7)"


def _stderr(code: str) -> str:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  return proc.stderr


def test_a_plain_script_sees_the_progress_and_nothing_is_configured_on_import():
  stderr = _stderr("import logging, pico_jax\n"
                   "assert not logging.getLogger().handlers, 'configured on import'\n"
                   + HELLO)
  assert stderr.count("hello 7") == 1, stderr


@pytest.mark.parametrize("setup", [
    # The program configures logging after the import: its format, once.
    "import pico_jax, logging; logging.basicConfig(format='APP %(message)s')",
    # ... or before it.
    "import logging; logging.basicConfig(format='APP %(message)s'); import pico_jax",
])
def test_a_program_that_configures_logging_gets_each_line_once_in_its_format(setup):
  assert _stderr(f"{setup}\n{HELLO}").splitlines() == ["APP hello 7"]


def test_a_level_the_program_set_before_the_import_is_kept():
  stderr = _stderr("import logging; logging.getLogger('pico_jax').setLevel(logging.WARNING)"
                   f"\nimport pico_jax\n{HELLO}")
  assert "hello" not in stderr
