"""The dependency direction of docs/design.md, checked on the source: every import points
down (workflows -> pipeline -> {detector, model}), pipeline/stages/ is the top floor of
pipeline/, and the packages inside pipeline/ import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOOR = {"workflows": 3, "pipeline": 2, "detector": 1, "model": 1}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts), path


def test_every_import_points_down():
    upward = [f"{name} imports {target}"
              for package in FLOOR for name, path in _modules(package)
              for target in _imports(path)
              if target.split(".")[0] in FLOOR and target.split(".")[0] != package
              and FLOOR[target.split(".")[0]] > FLOOR[package]]
    assert upward == []


def test_model_never_imports_the_detector():
    """detector/ may use model/'s ground-floor pieces (errors.py); the way back would be a cycle."""
    assert [name for name, path in _modules("model") if any(t.startswith("detector") for t in _imports(path))] == []


def test_nothing_below_the_stage_layer_imports_it():
    upward = [f"{name} imports {target}" for name, path in _modules("pipeline")
              if not name.startswith("pipeline.stages")
              for target in _imports(path) if target.startswith("pipeline.stages")]
    assert upward == []


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in _modules("pipeline"):
        parts = name.split(".")
        if len(parts) < 3:          # pipeline/__init__.py, pipeline/errors.py, ...: the ground floor
            continue
        edges = graph.setdefault(parts[1], set())
        for target in _imports(path):
            t = target.split(".")
            if t[0] == "pipeline" and len(t) > 1 and t[1] != parts[1] and (ROOT / "pipeline" / t[1]).is_dir():
                edges.add(t[1])
    return graph


def test_the_packages_of_pipeline_form_no_cycle():
    graph = _package_graph()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [node, nxt])
                            if nxt in trail else f"import cycle through {node} -> {nxt}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_checks_see_an_upward_import(tmp_path, monkeypatch):
    """The walk finds imports inside functions, where this project puts its heavy ones."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from workflows.cli import main\n    import pipeline.stages.extract\n")
    assert {"workflows.cli", "pipeline.stages.extract"} <= _imports(source)
