"""The Bazel BUILD file is the project's import graph, checked: every module is a target whose deps
are exactly the project modules it imports, the graph has no cycle, and its arrows point down the
layers of ARCHITECTURE.md. A new import that BUILD does not declare, a cycle, or an upward arrow
fails here.

After adding, moving or re-importing modules, regenerate BUILD from the imports and read the diff:

    python tests/test_build.py --write
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("data_pipelines", "videogen", "experiments", "tests")

# Arrows that point up the layers: (importer prefix, imported prefix) pairs that must never be
# edges, each with the rule of ARCHITECTURE.md it breaks. A prefix matches a module and its
# submodules.
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("data_pipelines", "videogen", "data_pipelines/ imports nothing from videogen/"),
    ("data_pipelines", "experiments", "data_pipelines/ imports no experiment"),
    ("videogen", "experiments", "the package imports no experiment file"),
    ("videogen", "tests", "the package imports nothing from tests/"),
    ("data_pipelines", "tests", "the package imports nothing from tests/"),
    *((low, high, f"{low} sits below {high}")
      for low in ("videogen.models", "videogen.diffusion", "videogen.parallel", "videogen.config")
      for high in ("videogen.train", "videogen.generate", "videogen.evaluate", "videogen.export",
                   "videogen.provenance", "videogen.experiment", "videogen.workdir",
                   "videogen.main", "videogen.main_job")),
    ("videogen.generate", "videogen.train", "generation reads trained workdirs through "
     "videogen.workdir, never the trainer (the dit stage calls the Generator, not the reverse)"),
    ("videogen.generate", "videogen.evaluate", "evaluation calls generation, not the reverse"),
)
# Only the entry points reach the commands' top: the command line, and the accelerator run's
# driver (a command line of its own that sets up logging and the compilation cache the same way).
ENTRY_POINTS = {"videogen.main_job": ("videogen.main",), "videogen.main": (),
                "videogen.cli": ("videogen.main", "experiments.accelerator.run")}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_files() -> dict[str, pathlib.Path]:
  """Module name -> file, for every .py file of the project's packages."""
  files = {}
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      files[_module_name(path)] = path
  return files


def _is_test(path: pathlib.Path) -> bool:
  return path.name.startswith("test_")


def _imports(path: pathlib.Path, files: dict[str, pathlib.Path]) -> dict[str, bool]:
  """Project modules `path` imports -> whether some import of it sits inside a function."""
  tree = ast.parse(path.read_text(), filename=str(path))
  parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
  found: dict[str, bool] = {}
  this = _module_name(path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [f"{node.module}.{alias.name}" for alias in node.names]
    else:
      continue
    parent, in_function = parents.get(node), False
    while parent is not None:
      if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
        in_function = True
      parent = parents.get(parent)
    for name in names:
      while name and name not in files:  # `from pkg.mod import Name` -> pkg.mod
        name = name.rpartition(".")[0]
      if name and name != this and name.split(".")[0] in PACKAGES:
        found[name] = found.get(name, False) or in_function
  return found


def _conftests(path: pathlib.Path) -> list[str]:
  """The conftest modules pytest loads for a test file: its folder's and every parent's."""
  names = []
  folder = path.parent
  while folder != ROOT.parent and ROOT in (folder, *folder.parents):
    if (folder / "conftest.py").exists():
      names.append(_module_name(folder / "conftest.py"))
    if folder == ROOT:
      break
    folder = folder.parent
  return names


def expected_targets() -> dict[str, dict]:
  """Target name (the module's dotted name) -> rule kind, srcs and deps, from the imports."""
  files = _project_files()
  targets = {}
  for name, path in files.items():
    deps = set(_imports(path, files))
    if _is_test(path):
      deps |= set(_conftests(path))
    targets[name] = {"kind": "py_test" if _is_test(path) else "py_library",
                     "srcs": [str(path.relative_to(ROOT))], "deps": sorted(deps)}
  return targets


def _string_list(node: ast.AST) -> list[str]:
  return [element.value for element in node.elts]


def declared_targets() -> dict[str, dict]:
  """Target name -> rule kind, srcs and deps, as BUILD declares them."""
  tree = ast.parse((ROOT / "BUILD").read_text(), filename="BUILD")
  targets = {}
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("py_library", "py_test")):
      continue
    keywords = {k.arg: k.value for k in node.keywords}
    name = keywords["name"].value
    deps = [dep.lstrip(":") for dep in _string_list(keywords["deps"])] if "deps" in keywords else []
    targets[name] = {"kind": node.func.id, "srcs": _string_list(keywords["srcs"]),
                     "deps": sorted(deps)}
  return targets


def render(targets: dict[str, dict]) -> str:
  """BUILD's text for `targets`."""
  lines = [
      "# Bazel targets for videogen: one per module, named by its import path; deps are exactly",
      "# the project modules it imports (third-party packages come from setup.cfg).",
      "# Generated from the imports by `python tests/test_build.py --write`; tests/test_build.py",
      "# fails when a module imports something its target does not declare, on a cycle, and on",
      "# an arrow up the layers of ARCHITECTURE.md.",
      "",
      'load("@rules_python//python:defs.bzl", "py_library", "py_test")',
      "",
      'package(default_visibility = ["//visibility:public"])',
  ]
  for name, target in sorted(targets.items()):
    lines += ["", f"{target['kind']}(", f'    name = "{name}",',
              f'    srcs = ["{target["srcs"][0]}"],']
    if target["kind"] == "py_test":
      lines.append(f'    main = "{target["srcs"][0]}",')
    if target["deps"]:
      lines.append("    deps = [")
      lines += [f'        ":{dep}",' for dep in target["deps"]]
      lines.append("    ],")
    lines.append(")")
  return "\n".join(lines) + "\n"


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
  """One cycle of `graph` (a list of nodes, the first repeated at the end), or None."""
  state: dict[str, int] = {}  # 1 = on the current path, 2 = done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for dep in graph.get(node, ()):
      if state.get(dep) == 1:
        return path[path.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def _matches(module: str, prefix: str) -> bool:
  return module == prefix or module.startswith(prefix + ".")


def upward_arrows(targets: dict[str, dict]) -> list[str]:
  """The deps that break a layering rule, each with the rule."""
  broken = []
  for name, target in sorted(targets.items()):
    for dep in target["deps"]:
      for importer, imported, rule in FORBIDDEN:
        if _matches(name, importer) and _matches(dep, imported):
          broken.append(f"{name} -> {dep}: {rule}")
      if dep in ENTRY_POINTS and not _is_tests(name) and name not in ENTRY_POINTS[dep]:
        broken.append(f"{name} -> {dep}: only {ENTRY_POINTS[dep] or 'nothing'} may import {dep}")
  return broken


def _is_tests(name: str) -> bool:
  return _matches(name, "tests")


def test_build_declares_every_module_with_its_imports():
  expected, declared = expected_targets(), declared_targets()
  problems = []
  for name in sorted(expected.keys() - declared.keys()):
    problems.append(f"{expected[name]['srcs'][0]} has no target {name!r}")
  for name in sorted(declared.keys() - expected.keys()):
    problems.append(f"target {name!r} names no module of the project "
                    f"(srcs {declared[name]['srcs']})")
  for name in sorted(expected.keys() & declared.keys()):
    want, have = expected[name], declared[name]
    if (want["kind"], want["srcs"]) != (have["kind"], have["srcs"]):
      problems.append(f"{name}: declared {have['kind']}{have['srcs']}, "
                      f"expected {want['kind']}{want['srcs']}")
    missing = sorted(set(want["deps"]) - set(have["deps"]))
    extra = sorted(set(have["deps"]) - set(want["deps"]))
    if missing:
      problems.append(f"{name} imports {missing} but its target does not declare them")
    if extra:
      problems.append(f"{name} declares {extra} but does not import them")
  assert not problems, ("BUILD does not match the imports; check that each new import points down "
                        "the layers, then run `python tests/test_build.py --write`:\n  "
                        + "\n  ".join(problems))


def test_the_import_graph_has_no_cycle():
  targets = expected_targets()
  cycle = _cycle({name: target["deps"] for name, target in targets.items()})
  assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_arrow_points_up_the_layers():
  broken = upward_arrows(expected_targets())
  assert not broken, "imports against ARCHITECTURE.md's layers:\n  " + "\n  ".join(broken)


def test_package_modules_import_project_modules_at_their_top():
  files = _project_files()
  local = [f"{name} imports {sorted(m for m, inside in _imports(path, files).items() if inside)} "
           f"inside a function" for name, path in sorted(files.items())
           if not _matches(name, "tests")
           and any(_imports(path, files).values())]
  assert not local, ("import project modules at the top of the module (a module-level import "
                     "that would close a cycle means a piece sits in the wrong layer):\n  "
                     + "\n  ".join(local))


@pytest.mark.parametrize("deps, expected", [
    ({"a": ["b"], "b": ["c"], "c": []}, None),
    ({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]),
    ({"a": ["a"]}, ["a", "a"]),
])
def test_cycle_finder(deps, expected):
  assert _cycle(deps) == expected


def test_an_upward_arrow_is_reported():
  targets = {"videogen.models.dit": {"kind": "py_library", "srcs": [], "deps":
                                     ["videogen.train.trainer", "videogen.models.layers"]},
             "data_pipelines.loader": {"kind": "py_library", "srcs": [], "deps":
                                       ["videogen.config"]},
             "videogen.train.trainer": {"kind": "py_library", "srcs": [], "deps":
                                        ["videogen.main"]}}
  broken = upward_arrows(targets)
  assert any(b.startswith("videogen.models.dit -> videogen.train.trainer") for b in broken)
  assert any(b.startswith("data_pipelines.loader -> videogen.config") for b in broken)
  assert any(b.startswith("videogen.train.trainer -> videogen.main") for b in broken)
  assert not any("videogen.models.layers" in b for b in broken)


if __name__ == "__main__":
  if sys.argv[1:] != ["--write"]:
    sys.exit("usage: python tests/test_build.py --write  (regenerates BUILD from the imports)")
  (ROOT / "BUILD").write_text(render(expected_targets()))
  print(f"wrote {ROOT / 'BUILD'}")
