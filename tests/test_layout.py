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


# The layers of DESIGN.md, lowest first: a module imports only from layers below its own (or
# from its own package). The package ``attnkit`` itself sits on top: it re-exports.
LAYERS = [
    ("attnkit.runtime", "attnkit.io", "attnkit.progress"),
    ("attnkit.functional", "attnkit.data"),
    ("attnkit.varlen", "attnkit.distributed"),
    ("attnkit.attention", "attnkit.positions"),
    ("attnkit.transformer", "attnkit.rnn"),
    ("attnkit.models",),
    ("attnkit.hf", "attnkit.embedding", "attnkit.training", "attnkit.relevance", "attnkit.viz"),
    ("attnkit.cli",),
]
RANK = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _room(module: str) -> str:
    """The room (top-level module or package) ``module`` lives in."""
    return ".".join(module.split(".")[:2])


def _same_layer_allowed(a: str, b: str) -> bool:
    """Rooms of one layer may import each other only where these rules say so (the packages
    of the application layer use one another, acyclically)."""
    ra, rb = _room(a), _room(b)
    return RANK[ra] == RANK[rb] == RANK["attnkit.viz"] and not (
        (ra != "attnkit.training" and rb == "attnkit.training") or (ra == "attnkit.training" and rb == "attnkit.viz"))


def _below(a: str, b: str) -> bool:
    if a == "attnkit" or _room(a) == _room(b):
        return True
    if _room(a) not in RANK or _room(b) not in RANK:
        return False
    return RANK[_room(b)] < RANK[_room(a)] or _same_layer_allowed(a, b)


def test_every_room_has_a_layer() -> None:
    assert sorted({_room(m) for m in MODULES if m != "attnkit"} - set(RANK)) == []


RULES = {
    "a module imports only the layers below it": lambda a, b: not _below(a, b),
    "only cli/ imports attnkit.cli": lambda a, b: _in(b, "attnkit.cli") and not _in(a, "attnkit.cli"),
    "runtime, progress and io import nothing of attnkit": lambda a, b: a in (
        "attnkit.runtime", "attnkit.progress", "attnkit.io"),
    "functional imports only runtime": lambda a, b: a == "attnkit.functional" and b != "attnkit.runtime",
    "embedding imports nothing from training/": lambda a, b: _in(a, "attnkit.embedding") and _in(b, "attnkit.training"),
    "models/ never imports training/, viz/ or cli/": lambda a, b: _in(a, "attnkit.models") and _in(
        b, "attnkit.training", "attnkit.viz", "attnkit.cli"),
    "viz/notebook (inline display, called by the records' _repr_ methods) imports only viz/fonts":
        lambda a, b: a == "attnkit.viz.notebook" and b != "attnkit.viz.fonts",
    "viz/ never imports training/ or cli/": lambda a, b: _in(a, "attnkit.viz") and _in(b, "attnkit.training", "attnkit.cli"),
    "training/ never imports viz/ or cli/": lambda a, b: _in(a, "attnkit.training") and _in(b, "attnkit.viz", "attnkit.cli"),
    "relevance/ never imports training/ or cli/": lambda a, b: _in(a, "attnkit.relevance") and _in(
        b, "attnkit.training", "attnkit.cli"),
    "viz/ and models/ never import relevance/ (relevance reads them)": lambda a, b: _in(
        a, "attnkit.viz", "attnkit.models") and _in(b, "attnkit.relevance"),
    "models/ never imports hf (data flows models <- hf)": lambda a, b: _in(a, "attnkit.models") and _in(b, "attnkit.hf"),
    "hf imports nothing beside or above it (models <- hf)": lambda a, b: _in(a, "attnkit.hf") and _in(
        b, "attnkit.training", "attnkit.viz", "attnkit.cli", "attnkit.embedding", "attnkit.relevance"),
    "data/ imports nothing above it": lambda a, b: _in(a, "attnkit.data") and not _in(
        b, "attnkit.data", "attnkit.io", "attnkit.progress"),
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


def _python_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _top_imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (any package), from ``ast``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_only_the_runtime_uses_ctypes() -> None:
    users = [str(p.relative_to(SRC)) for p in _python_files(SRC)
             if any(n == "ctypes" or n.startswith("ctypes.") for n in _top_imports(p))]
    assert users == ["runtime.py"]


def test_benchmarks_import_nothing_from_cli() -> None:
    bench = SRC.parents[1] / "benchmarks"
    offenders = [str(p.name) for p in _python_files(bench) if any(_in(n, "attnkit.cli") for n in _top_imports(p))]
    assert offenders == []
