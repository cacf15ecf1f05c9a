"""The tests' own layout (issue 28 §5): what several test modules use lives in one helper module.

- No module under tests/ imports from a ``tests/test_*.py`` module (at the top or inside a
  function): shared helpers live in tests/cli_helpers.py, data_paths.py, dataset_factory.py,
  method_helpers.py, report_helpers.py, reporters.py, train_helpers.py, fixtures in conftest.py.
- The real data beside the clone (``../shared/data``) is located in tests/data_paths.py only:
  no other module builds a path out of the repository (``"shared"``, ``.parents[1].parent``,
  ``ROOT.parent``, ``.parents[2]``).

The sources are read statically (``ast``); docstrings and messages do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SHARED_DATA_HOME = "data_paths.py"
THIS = Path(__file__).name  # its examples of what is refused are in a string


def imported_test_modules(tree: ast.AST) -> list[str]:
    """The ``tests.test_*`` modules ``tree`` imports from, as written."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("tests.test_")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if (module.startswith("tests.test_") or (node.level and module.startswith("test_"))
                    or (module == "tests" and any(alias.name.startswith("test_") for alias in node.names))):
                found.append("." * node.level + module)
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    """``id`` of every docstring constant in ``tree``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _parents_index(node: ast.AST) -> int | None:
    """``N`` where ``node`` is ``<something>.parents[N]``."""
    if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents"
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int)):
        return node.slice.value
    return None


def paths_out_of_the_repository(tree: ast.AST) -> list[str]:
    """Every expression of ``tree`` that builds a path outside the repository, as source text."""
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and "shared" in node.value.split("/")):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Attribute) and node.attr == "parent" and (
                _parents_index(node.value) is not None
                or (isinstance(node.value, ast.Name) and node.value.id in ("ROOT", "REPO"))):
            found.append(ast.unparse(node))
        elif (_parents_index(node) or 0) >= 2:
            found.append(ast.unparse(node))
    return found


def module_sources() -> dict[str, ast.AST]:
    return {path.name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in sorted(TESTS.glob("*.py"))}


def test_no_module_under_tests_imports_a_test_module() -> None:
    offending = {name: imported for name, tree in module_sources().items() if (imported := imported_test_modules(tree))}
    assert offending == {}, f"move what they share into a helper module (tests/*_helpers.py): {offending}"


def test_the_shared_data_is_located_in_data_paths_only() -> None:
    sources = module_sources()
    assert "SHARED_DATA" in {target.id for node in ast.walk(sources[SHARED_DATA_HOME])
                             if isinstance(node, ast.Assign) for target in node.targets
                             if isinstance(target, ast.Name)}
    offending = {name: paths for name, tree in sources.items()
                 if name not in (SHARED_DATA_HOME, THIS) and (paths := paths_out_of_the_repository(tree))}
    assert offending == {}, f"use tests.data_paths (SHARED_DATA, needs_shared_data, need_shared): {offending}"


def test_the_checks_find_what_they_look_for() -> None:
    """Both checks fail on the habits they replaced, and pass docstrings, messages and repo paths."""
    source = ast.parse('''
"""Reads ../shared/data: a docstring."""
import tests.TEST_cli
from tests.TEST_finetune import QuietReporter
from tests import TEST_predict
from .TEST_run_plan import facts
from tests.train_helpers import tiny_options
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MALF = ROOT.parent / "shared/data/malf-brain-t1"
FAR = Path(__file__).parents[2]
SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"

def test_it():
    """Needs ``../shared/data``."""
    from tests.TEST_time_budget import FakeClock
    pytest.skip(f"{SAMPLE} is absent (CI provides ../shared beside the clone)")
'''.replace("TEST_", "test_"))  # spelled TEST_ here, so that a grep for such imports finds none
    assert imported_test_modules(source) == ["tests.test_cli", "tests.test_finetune", "tests", ".test_run_plan",
                                             "tests.test_time_budget"]
    assert sorted(paths_out_of_the_repository(source)) == sorted([
        "'shared'", "Path(__file__).resolve().parents[1].parent", "'shared/data/malf-brain-t1'", "ROOT.parent",
        "Path(__file__).parents[2]"])
