"""Data flows one way: training -> export -> models -> stream. Evaluation is its own step, through the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("training", "export", "stream")


def _imports(package: str) -> dict[str, set[str]]:
    """{module of ``package``: every module it imports, at any depth of its code (function-level too)}."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        out[module] = names
    return out


def _package_graph() -> dict[str, set[str]]:
    graph = {p: set() for p in PACKAGES}
    for package in PACKAGES:
        for names in _imports(package).values():
            graph[package] |= {n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES} - {package}
    return graph


def test_the_packages_import_each_other_without_a_cycle():
    graph = _package_graph()

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    cycles = [p for p in PACKAGES if reaches(p, p)]
    assert cycles == [], graph
    assert graph["stream"] == set()  # the runtime needs neither training nor export
    assert "export" not in graph["training"]


def test_export_imports_nothing_from_evaluation():
    evaluation = ("training.evaluate", "training.gate_report", "training.metrics", "training.band_error")
    used = {m: sorted(n for n in names if n.startswith(evaluation)) for m, names in _imports("export").items()}
    assert {m: n for m, n in used.items() if n} == {}
