"""``attnkit bench``: the peer-vs-attnkit benchmarks of a source checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from attnkit.cli.console import fail

__all__ = ["bench"]


def bench(
    names: list[str] = typer.Argument(None, help="benchmark scripts to run (e.g. attention embedding); default all"),
    quick: bool = typer.Option(False, "--quick", help="small sizes, few repeats (smoke run; results not saved)"),
) -> None:
    """Run the peer-vs-attnkit benchmarks of a source checkout and regenerate benchmarks/RESULTS.md."""
    root = Path(__file__).resolve().parents[3] / "benchmarks"  # src/attnkit/cli/bench.py -> the checkout
    if not (root / "run_all.py").is_file():
        fail(f"no benchmarks/ folder next to the package ({root}); run from a source checkout (pip install -e .)")
    args = ["--quick", "--no-save"] if quick else []
    if names:
        scripts = [root / f"{n.removesuffix('.py')}.py" for n in names]
        missing = [s.name for s in scripts if not s.is_file()]
        if missing:
            known = sorted(p.stem for p in root.glob("*.py") if p.stem not in ("harness", "run_all"))
            fail(f"unknown benchmark(s) {', '.join(missing)}; available: {', '.join(known)}")
        rc = max(subprocess.call([sys.executable, str(s), *args]) for s in scripts)
        if not quick:
            subprocess.call([sys.executable, "-c", "import run_all; print('wrote', run_all.write_results())"], cwd=root)
    else:
        rc = subprocess.call([sys.executable, str(root / "run_all.py"), *args])
    raise typer.Exit(code=rc)
