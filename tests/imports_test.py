"""The package's import graph: no cycles, and imports point downward.

Data flows corpus -> score/embed -> density/cluster -> select ->
materialize/SeqIO -> report, and imports follow it: io/ imports nothing
above it, no module imports the CLI, and a stage never imports a sibling
stage. Function-level imports count too (they are still dependencies).
"""

import ast
import pathlib

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1] / "data_efficient"
# Layers, lowest first: a module may import its own layer and those below.
_LAYERS = (
  ("data_efficient.io",),
  ("data_efficient.sharding", "data_efficient.models"),
  ("data_efficient.runs",),
  ("data_efficient.stages.configs", "data_efficient.stages.engine"),
  ("data_efficient.stages", "data_efficient.pretraining"),
  ("data_efficient.report",),
  ("data_efficient.demo",),
  ("data_efficient.cli",),
)


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(_ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
  """module -> the package modules it imports (anywhere in its body)."""
  modules = {_module_name(p): p for p in _ROOT.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        found.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module:
        # `from pkg import mod` imports pkg.mod (pkg's __init__ runs first,
        # but what the module uses is mod); `from mod import name`, mod.
        for alias in node.names:
          sub = f"{node.module}.{alias.name}"
          found.add(sub if sub in modules else node.module)
    graph[name] = {m for m in found if m in modules and m != name}
  return graph


def _layer(module: str) -> int:
  best, level = -1, None
  for i, prefixes in enumerate(_LAYERS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(
        prefix
      ) > best:
        best, level = len(prefix), i
  return level


def _stage(module: str) -> str | None:
  """The stage a module belongs to (`askllm`, `density`, ...), if any."""
  parts = module.split(".")
  if parts[1] != "stages" or len(parts) < 3:
    return None
  shared = ("configs", "engine", "sampling", "ranking")  # not stages
  return None if parts[2] in shared else parts[2]


def test_the_import_graph_has_no_cycle():
  graph, done, path = _imports(), set(), []

  def visit(module):
    if module in path:
      cycle = path[path.index(module) :] + [module]
      pytest.fail("import cycle: " + " -> ".join(cycle))
    if module in done:
      return
    path.append(module)
    for dep in sorted(graph[module]):
      visit(dep)
    path.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)


def test_imports_point_downward():
  wrong = []
  for module, deps in _imports().items():
    for dep in deps:
      if module.startswith(dep + "."):
        continue  # a package's own __init__
      if _layer(dep) > _layer(module):
        wrong.append(f"{module} imports {dep}")
      stage, other = _stage(module), _stage(dep)
      if stage and other and stage != other:
        wrong.append(f"stage {module} imports stage {dep}")
  assert not wrong, "\n".join(sorted(wrong))
