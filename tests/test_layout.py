"""The folder tree is the architecture: the import rules of DESIGN.md, read from the source
with ``ast`` (imports inside functions count too), and no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "attnkit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The attnkit modules ``path`` imports (``from attnkit.x import y`` counts as ``attnkit.x``
    and, when ``attnkit.x.y`` is a module, as that too)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "attnkit"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "attnkit":
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return {m for m in found if m in MODULES}


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _violations(rule) -> list[str]:
    return sorted(f"{a} imports {b}" for a, deps in GRAPH.items() for b in deps if rule(a, b))


def test_the_graph_is_read() -> None:
    assert "attnkit.functional" in GRAPH["attnkit.varlen"]
    assert "attnkit.training.trainer" in GRAPH["attnkit.cli.train"] or "attnkit.training" in GRAPH["attnkit.cli.train"]


RULES = {
    "only cli/ imports attnkit.cli": lambda a, b: _in(b, "attnkit.cli") and not _in(a, "attnkit.cli"),
    "functional imports no other attnkit module": lambda a, b: a == "attnkit.functional",
    "varlen imports only functional": lambda a, b: a == "attnkit.varlen" and b != "attnkit.functional",
    "attention imports only functional, varlen and distributed": lambda a, b: a == "attnkit.attention" and b not in (
        "attnkit.functional", "attnkit.varlen", "attnkit.distributed"),
    "distributed is a kernel: functional at most": lambda a, b: a == "attnkit.distributed" and b != "attnkit.functional",
    "progress and io import nothing of attnkit": lambda a, b: a in ("attnkit.progress", "attnkit.io"),
    "models/ never imports training/, viz/ or cli/": lambda a, b: _in(a, "attnkit.models") and _in(
        b, "attnkit.training", "attnkit.viz", "attnkit.cli"),
    "viz/notebook (inline display, called by the records' _repr_ methods) imports only viz/fonts":
        lambda a, b: a == "attnkit.viz.notebook" and b != "attnkit.viz.fonts",
    "viz/ never imports training/ or cli/": lambda a, b: _in(a, "attnkit.viz") and _in(b, "attnkit.training", "attnkit.cli"),
    "training/ never imports viz/ or cli/": lambda a, b: _in(a, "attnkit.training") and _in(b, "attnkit.viz", "attnkit.cli"),
    "data/ imports nothing above it": lambda a, b: _in(a, "attnkit.data") and not _in(
        b, "attnkit.data", "attnkit.io", "attnkit.progress"),
    "the layers (functional ... rnn) import no package above them": lambda a, b: a in (
        "attnkit.functional", "attnkit.varlen", "attnkit.attention", "attnkit.transformer", "attnkit.rnn",
        "attnkit.distributed") and _in(b, "attnkit.models", "attnkit.training", "attnkit.viz", "attnkit.cli",
                                       "attnkit.data"),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_rule(rule: str) -> None:
    assert _violations(RULES[rule]) == []


def test_no_import_cycles() -> None:
    """A package's ``__init__`` re-exporting its own modules is not a cycle; anything else is."""
    edges = {a: {b for b in deps if not (a == b.rpartition(".")[0] or _is_package_of(a, b) or _is_package_of(b, a))}
             for a, deps in GRAPH.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def _is_package_of(package: str, module: str) -> bool:
    return MODULES[package].name == "__init__.py" and module.startswith(package + ".")


def test_web_pages_are_asset_files() -> None:
    """HTML/CSS/JS live in asset files, not in Python strings."""
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if any(marker in p.read_text(encoding="utf-8") for marker in ("<!doctype html", "<!DOCTYPE html"))]
    assert offenders == []
