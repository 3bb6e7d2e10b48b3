"""The layering of the source tree, read from the files (``ast``; nothing is imported).

``pico_jax/config.py`` (every key's rule and ``validate``) and ``launch/`` sit at the
top: no module below them imports them. Below means every module of a subpackage
(``train``, ``models``, ``data``, ``ingest``, ``contrast``) and every module that
``pico_jax.config`` itself imports, directly or not. Module sizes: no module of
``pico_jax`` over 400 lines, no ``launch/`` script over 150. No dead constants: every
module-level constant of ``pico_jax`` is read somewhere.
"""

import ast
import os

import pytest

from conftest import ROOT

CONFIG = "pico_jax.config"
MAX_MODULE_LINES, MAX_SCRIPT_LINES = 400, 150


def _module_files() -> dict[str, str]:
  """Module name -> path, of every module under pico_jax/ and launch/."""
  files = {}
  for top in ("pico_jax", "launch"):
    for folder, _, names in os.walk(os.path.join(ROOT, top)):
      for name in names:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
          if parts[-1] == "__init__":
            parts = parts[:-1]
          files[".".join(parts)] = path
  return files


def imports(module: str, source: str, known) -> set[str]:
  """The project modules that ``source`` (module ``module``) imports, at any depth of
  the file (imports inside functions count): ``from pkg import name`` is the module
  ``pkg.name`` when that is a module, else ``pkg``; relative imports are resolved."""
  package = module if module in known and known[module].endswith("__init__.py") else (
      module.rpartition(".")[0])
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      for alias in node.names:
        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
  return {name for name in found if name.split(".")[0] in ("pico_jax", "launch")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
  files = _module_files()
  graph = {}
  for module, path in files.items():
    with open(path) as f:
      graph[module] = imports(module, f.read(), files)
  return graph


def below_config(graph) -> set[str]:
  """The modules of a subpackage of pico_jax, and those pico_jax.config reaches."""
  reached, todo = set(), [CONFIG]
  while todo:
    for name in graph.get(todo.pop(), ()):
      if name not in reached:
        reached.add(name)
        todo.append(name)
  files = _module_files()
  in_subpackage = {m for m, path in files.items() if m.startswith("pico_jax.")
                   and os.path.dirname(path) != os.path.join(ROOT, "pico_jax")}
  return (reached | in_subpackage) - {CONFIG}


def upward(graph) -> list[str]:
  """Every import that runs from below config.py up to it, or from pico_jax to launch."""
  lower = below_config(graph)
  bad = [f"{m} imports {CONFIG}" for m in sorted(lower) if CONFIG in graph[m]]
  bad += [f"{m} imports {n}" for m in sorted(graph) if m.startswith("pico_jax")
          for n in sorted(graph[m]) if n == "launch" or n.startswith("launch.")]
  return bad


def test_no_import_runs_up_to_config_or_launch(graph):
  assert upward(graph) == []


def test_the_layering_check_sees_what_it_checks(graph):
  """The graph holds the edges it must (lazy imports included), and an import up is
  reported: the check above cannot pass by seeing nothing."""
  assert CONFIG in graph["launch.train"]  # inside main().
  assert "pico_jax.train.config_checks" in graph["pico_jax.train.trainer"]
  assert {"pico_jax.train.trainer", "pico_jax.models.backbones",
          "pico_jax.config_keys"} <= below_config(graph)
  files = _module_files()
  for source in ("from pico_jax import config as config_lib",
                 "def f():\n  from pico_jax.config import validate",
                 "import pico_jax.config", "from .. import config"):
    bad = dict(graph, **{"pico_jax.train.trainer": imports("pico_jax.train.trainer",
                                                          source, files)})
    assert upward(bad) == [f"pico_jax.train.trainer imports {CONFIG}"], source
  bad = dict(graph, **{"pico_jax.plots": imports("pico_jax.plots", "import launch.train",
                                                 files)})
  assert upward(bad) == ["pico_jax.plots imports launch.train"]


def _lines(path: str) -> int:
  with open(path) as f:
    return sum(1 for _ in f)


def test_module_sizes():
  files = _module_files()
  long = {m: _lines(p) for m, p in files.items()
          if _lines(p) > (MAX_SCRIPT_LINES if m.startswith("launch.") else MAX_MODULE_LINES)}
  assert long == {}


def test_every_constant_is_read_somewhere():
  """A module-level UPPER_CASE name of pico_jax that no source of the project reads
  (pico_jax, launch, configs, benchmarks, tests) is dead."""
  defined, read = [], set()
  for top in ("pico_jax", "launch", "configs", "benchmarks", "tests"):
    for folder, _, names in os.walk(os.path.join(ROOT, top)):
      for path in (os.path.join(folder, n) for n in names if n.endswith(".py")):
        with open(path) as f:
          tree = ast.parse(f.read())
        if top == "pico_jax":
          defined += [(os.path.relpath(path, ROOT), n.id) for node in tree.body
                      if isinstance(node, (ast.Assign, ast.AnnAssign))
                      for n in ast.walk(node) if isinstance(n, ast.Name)
                      and isinstance(n.ctx, ast.Store) and n.id.isupper()]
        for n in ast.walk(tree):
          if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            read.add(n.id)
          elif isinstance(n, ast.Attribute):
            read.add(n.attr)
          elif isinstance(n, ast.alias):
            read.add(n.name.rpartition(".")[2])
  assert [f"{path}: {name}" for path, name in defined if name not in read] == []
