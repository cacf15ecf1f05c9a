"""No import cycle between medsaga's packages (issue 28): the import graph, read statically.

Every module of the ``medsaga`` package is parsed (``ast``), and every ``import medsaga...`` and
``from medsaga... import ...`` in it counts, at the top of the file or inside a function (a lazy
import is still a dependency), relative imports resolved. A module imports a module, and a unit
(``medsaga.train``, ``medsaga.io``; a top-level module such as ``medsaga.device`` is a unit of its
own) imports a unit when any of its modules does. The tests then assert:

- the edges issue 28 broke stay broken (``train`` never imports ``plan``; ``io.read`` and
  ``io.dicom_seg`` do not import each other both ways; ``select`` imports neither
  ``train.finetune`` nor ``benchmark``; ``predict`` does not import ``train.finetune``);
- every cycle left, between units and between modules, is one of the known ones listed here:
  a new cycle fails, a known one broken up does not (shrink the list then).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medsaga"

# Cycles between units still there, each a set of units (a cycle found must lie inside one): none.
# (evaluate <-> report was the last: evaluate's PNG overlays now live in report.overlay_pngs.)
KNOWN_UNIT_CYCLES: list[frozenset[str]] = []
# Cycles between modules of one package still there: the model registry and the modules it names
# (build, backbone, checkpoint signatures, packaged weights) import each other lazily.
KNOWN_MODULE_CYCLES: list[frozenset[str]] = [
    frozenset({"medsaga.model.backbone", "medsaga.model.build", "medsaga.model.checkpoint",
               "medsaga.model.packaged_weights", "medsaga.model.registry", "medsaga.model.weights"}),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@lru_cache(maxsize=1)
def module_graph() -> dict[str, frozenset[str]]:
    """``{module: the medsaga modules it imports}``, every import statement counted."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # ``from medsaga.io import read`` imports the module medsaga.io.read; ``from
                # medsaga.io.read import read_volume`` the module medsaga.io.read.
                for alias in node.names:
                    imported.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = frozenset(target for target in imported if target in modules and target != name)
    return graph


def unit(module: str) -> str:
    """``medsaga.train.loop`` → ``medsaga.train``; ``medsaga.device`` stays itself."""
    return ".".join(module.split(".")[:2])


def unit_graph() -> dict[str, frozenset[str]]:
    edges: dict[str, set[str]] = {}
    for source, targets in module_graph().items():
        edges.setdefault(unit(source), set()).update(unit(target) for target in targets if unit(target) != unit(source))
    return {source: frozenset(targets) for source, targets in edges.items()}


def cycles(graph: dict[str, Iterable[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def imports_of(prefix: str) -> dict[str, set[str]]:
    """``{module under prefix: the modules it imports}``."""
    return {source: set(targets) for source, targets in module_graph().items()
            if source == prefix or source.startswith(prefix + ".")}


def offending(source: str, target: str) -> list[str]:
    """``a -> b`` for every module under ``source`` importing a module under ``target``."""
    return sorted(f"{module} -> {imported}" for module, targets in imports_of(source).items() for imported in targets
                  if imported == target or imported.startswith(target + "."))


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    graph = module_graph()
    assert "medsaga.train.loop" in graph and "medsaga.io.read" in graph
    assert "medsaga.train.loop" in graph["medsaga.train.finetune"]  # a top-level import
    assert "medsaga.io.dicom_seg" in graph["medsaga.io.read"]  # one inside a function
    assert "medsaga.plan.run" in graph["medsaga.plan.own_run"]  # idem
    assert unit("medsaga.train.loop") == "medsaga.train" and unit("medsaga.device") == "medsaga.device"


def test_train_does_not_import_plan() -> None:
    """The memory plan is injected (medsaga.train.memory_plan): plan imports train, not back."""
    assert offending("medsaga.train", "medsaga.plan") == []


def test_io_read_and_dicom_seg_do_not_import_each_other() -> None:
    """The dispatch they share is medsaga.io.read_image."""
    graph = module_graph()
    assert not ("medsaga.io.dicom_seg" in graph["medsaga.io.read"] and "medsaga.io.read" in graph["medsaga.io.dicom_seg"])
    assert "medsaga.io.read" not in graph["medsaga.io.dicom_seg"]


def test_select_and_predict_take_the_device_from_medsaga_device() -> None:
    assert offending("medsaga.select", "medsaga.train.finetune") == []
    assert offending("medsaga.predict", "medsaga.train.finetune") == []
    assert offending("medsaga.select", "medsaga.benchmark") == []


# The packages in layers, lowest first: a unit imports only units of lower layers (no upward and no
# sideways import). Adding a package means placing it here.
LAYERS: list[set[str]] = [
    {"medsaga", "medsaga.__main__", "medsaga.errors", "medsaga.distributed", "medsaga.optim"},  # foundations
    {"medsaga.option_checks", "medsaga.device",                      # checks and devices (raise InputError),
     "medsaga.io", "medsaga.model", "medsaga.losses"},               # volumes on disk, networks, the loss
    {"medsaga.data", "medsaga.methods"},                             # slices from volumes; tuning methods
    {"medsaga.evaluate", "medsaga.predict"},                         # scoring; inference
    {"medsaga.report", "medsaga.runs"},                              # pages; run folders
    {"medsaga.train"},                                               # fine-tuning (writes its report)
    {"medsaga.plan", "medsaga.select", "medsaga.benchmark"},         # built on training
]


def test_every_package_imports_only_lower_layers() -> None:
    layer_of = {name: index for index, layer in enumerate(LAYERS) for name in layer}
    graph = unit_graph()
    assert set(graph) <= set(layer_of), f"place these packages in LAYERS: {sorted(set(graph) - set(layer_of))}"
    upward = sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                    if target != source and layer_of[target] >= layer_of[source])
    assert upward == [], f"imports of a package in the same or a higher layer: {upward}"


def test_evaluate_does_not_import_the_report() -> None:
    """The report presents evaluations: it imports medsaga.evaluate, never the other way round."""
    assert offending("medsaga.evaluate", "medsaga.report") == []


def test_no_new_cycle_between_packages() -> None:
    found = cycles(unit_graph())
    new = [sorted(cycle) for cycle in found if not any(cycle <= known for known in KNOWN_UNIT_CYCLES)]
    assert new == [], f"new import cycles between packages: {new}"


def test_no_new_cycle_between_modules() -> None:
    """Within a package too; a cycle across packages already listed in KNOWN_UNIT_CYCLES passes here."""

    def known(cycle: frozenset[str]) -> bool:
        units = {unit(module) for module in cycle}
        return (any(cycle <= listed for listed in KNOWN_MODULE_CYCLES)
                or (len(units) > 1 and any(units <= listed for listed in KNOWN_UNIT_CYCLES)))

    new = [sorted(cycle) for cycle in cycles(dict(module_graph())) if not known(cycle)]
    assert new == [], f"new import cycles between modules: {new}"


def test_the_cycles_found_are_the_ones_listed() -> None:
    """The cycle finder itself, on a graph with one cycle of three and a tail."""
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": []}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
