"""The package has no import cycle, and every module imports on its own.

The static check reads each module with `ast` and follows the imports that run when the module is
imported (module level and class bodies; not function bodies, not `if TYPE_CHECKING:` blocks). The
dynamic check imports each module into an interpreter that holds no `pointllm` module yet, one
subprocess for all of them (third-party packages stay loaded between modules, so it is fast).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "pointllm"
# Running these is a program, not an import.
NOT_IMPORTED = {"pointllm.__main__"}


def package_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    modules = {}
    for file in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = file.relative_to(SRC).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_nodes(body: list[ast.stmt]):
    """Statements that run when the module is imported: the module body, nested blocks and class
    bodies, but not function bodies or `if TYPE_CHECKING:` blocks."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time_nodes(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody"):
            yield from _import_time_nodes(getattr(node, field, []))
        for handler in getattr(node, "handlers", []):
            yield from _import_time_nodes(handler.body)


def module_level_imports(
    name: str, file: Path, modules: dict[str, Path], *, deferred: bool = False
) -> set[str]:
    """The package modules that importing `name` imports directly; with `deferred`, also those
    imported inside its functions."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    is_package = file.name == "__init__.py"
    found = set()
    for node in ast.walk(tree) if deferred else _import_time_nodes(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else target)
    return {module for module in found if module in modules and module != name}


def import_graph(*, deferred: bool = False) -> dict[str, set[str]]:
    modules = package_modules()
    return {
        name: module_level_imports(name, file, modules, deferred=deferred)
        for name, file in modules.items()
    }


# Imports inside functions that may close a loop, each with its reason. `checkpoint.load` reads
# every kind of checkpoint, so it calls the reader of each (which asks checkpoint what a path
# holds), and an adapter's base is loaded by `load` again. `PointLLMForCausalLM.from_pretrained`
# (what AutoModel calls) hands an original layout to legacy, which builds that class.
ALLOWED_DEFERRED = {
    ("pointllm.model.pointllm", "pointllm.model.legacy"),
    ("pointllm.model.checkpoint", "pointllm.model.pointllm"),
    ("pointllm.model.checkpoint", "pointllm.model.legacy"),
    ("pointllm.model.checkpoint", "pointllm.model.adapters"),
}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_follows_relative_and_submodule_imports(tmp_path):
    modules = {"pointllm.model": None, "pointllm.model.a": None, "pointllm.model.b": None}
    source = tmp_path / "a.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "if TYPE_CHECKING:\n    import pointllm.config\n"
        "def f():\n    from pointllm.model import a\n"
    )
    assert module_level_imports("pointllm.model.a", source, modules) == {"pointllm.model.b"}


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_through_deferred_imports_either():
    """Imports inside functions count too (they only move a cycle to the first call), except the
    documented dispatch of `checkpoint.load`."""
    graph = import_graph(deferred=True)
    for source, target in ALLOWED_DEFERRED:
        assert target in graph[source], f"{source} no longer imports {target}: drop the exception"
        graph[source].discard(target)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (counting imports inside functions): " + " -> ".join(cycle)


def test_model_code_never_imports_training_serving_or_commands():
    graph = import_graph(deferred=True)
    for name, targets in graph.items():
        if name.startswith("pointllm.model."):
            outside = sorted(
                t for t in targets if t.startswith(("pointllm.train", "pointllm.serve"))
            )
            assert not outside, f"{name} imports {outside}"


_IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "pointllm" or m.startswith("pointllm.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failures[name] = traceback.format_exception_only(exc)[-1].strip()
print(json.dumps(failures))
"""


@pytest.mark.timeout(120)
def test_every_module_imports_on_its_own():
    names = sorted(set(package_modules()) - NOT_IMPORTED)
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
        cwd=SRC,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, failures
