"""The Bazel BUILD file lists every module and every test file, so it cannot rot."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("videogen", "data_pipelines", "experiments")


def _build_targets():
  """Returns {rule kind: [(target name, [srcs])]} from the top-level BUILD file."""
  tree = ast.parse((ROOT / "BUILD").read_text(), filename="BUILD")
  targets: dict[str, list[tuple[str, list[str]]]] = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      keywords = {k.arg: k.value for k in node.keywords}
      if "srcs" not in keywords:
        continue
      srcs = [e.value for e in keywords["srcs"].elts]
      targets.setdefault(node.func.id, []).append((keywords["name"].value, srcs))
  return targets


def _listed(kind):
  return {src for _, srcs in _build_targets().get(kind, []) for src in srcs}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_in_a_py_library(package):
  modules = {str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py")}
  missing = sorted(modules - _listed("py_library"))
  assert not missing, f"add these to a py_library in BUILD: {missing}"


def test_every_test_file_has_a_py_test():
  tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")}
  missing = sorted(tests - _listed("py_test"))
  assert not missing, f"add a py_test for each of these in BUILD: {missing}"


def test_every_listed_file_exists():
  listed = _listed("py_library") | _listed("py_test")
  absent = sorted(src for src in listed if not (ROOT / src).exists())
  assert not absent, f"BUILD lists files that do not exist: {absent}"
