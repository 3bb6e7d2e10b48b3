"""README's commands run as written after ``make train``: each calls the venv's python,
names a script that exists, flags that script defines and config keys that exist; the
formats it lists are those preprocess knows; it names no path outside the repository."""

import functools
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from configs import default
from pico_jax import config_keys

README = open(os.path.join(ROOT, "README.md")).read()
# Commands run the venv's python (or, after an activate step, "python"; never assumed).
VENV_PYTHON = ".venv/bin/python"
COMMAND = re.compile(r"(\S*python3?)\s+launch/(\w+)\.py((?:\s+-[^\s\"]+)*)")


def _commands() -> list[tuple[str, str, list[str]]]:
  """(python, script, args) of every ``python launch/X.py ...`` of README, continuation
  lines joined."""
  text = README.replace("\\\n", " ")
  return [(python, script, args.split()) for python, script, args in COMMAND.findall(text)]


@functools.lru_cache(maxsize=None)
def _flags(script: str) -> set[str]:
  """The flags ``launch/<script>.py --helpfull`` lists."""
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", f"{script}.py"),
                         "--helpfull"], capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return set(re.findall(r"^\s+--(?:\[no\])?([\w.]+)", proc.stdout, flags=re.M))


def test_the_readme_has_commands_and_each_calls_the_venv_python():
  commands = _commands()
  assert len(commands) >= 10
  assert {python for python, _, _ in commands} == {VENV_PYTHON}
  assert not re.search(r"(^|[\s\"'$])python3? launch/", README, flags=re.M)


@pytest.mark.parametrize("script", sorted({s for _, s, _ in _commands()}))
def test_each_command_names_flags_and_config_keys_that_exist(script):
  assert os.path.exists(os.path.join(ROOT, "launch", f"{script}.py"))
  config = default.get_config()
  for _, name, args in _commands():
    if name != script:
      continue
    for arg in args:
      flag = arg.lstrip("-").split("=", 1)[0]
      if flag.startswith("config."):
        config_keys.get(config, flag.removeprefix("config."))  # KeyError if not a key.
      else:
        assert flag in _flags(script), f"launch/{script}.py has no flag {arg}"


def test_the_formats_listed_are_those_preprocess_reads():
  from pico_jax.ingest import formats
  listed = re.search(r"^#\s+formats: (.*\n(?:#\s{3,}.*\n)*)", README, flags=re.M).group(1)
  for name in formats.FORMATS:
    assert re.search(rf"\b{name}\b", listed), f"README's formats omit {name}"


def test_the_readme_names_no_path_outside_the_repository():
  assert "../" not in README
  assert "UCI" in README and "Census-Income (KDD)" in README


def test_the_python_api_example_is_15_lines_of_python():
  """Store from a table in memory, train, export and score raw rows: 15 lines at most,
  each name it calls defined where it says."""
  import importlib
  (block,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
  lines = [line for line in block.splitlines() if line.strip()]
  assert len(lines) <= 15, len(lines)
  compile(block, "README.md", "exec")
  for module, name in re.findall(r"\b(ingest|export)\.(\w+)\(", block):
    assert hasattr(importlib.import_module(f"pico_jax.{module}"), name), (module, name)
