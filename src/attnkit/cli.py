"""The ``attnkit`` command (Typer).

Every command turns a ``ValueError``/``FileNotFoundError`` into one red line on stderr and
exit code 2, with no traceback. Heavy imports (matplotlib, tokenizers, training) happen
inside the commands, so ``attnkit --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(
    name="attnkit",
    help="Attention you can trust, run fast, train and see.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """attnkit: attention you can trust, run fast, train and see."""


def fail(message: str) -> None:
    """Print one red line and exit with code 2."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code=2)


# --------------------------------------------------------------------------- commands
# Each issue adds its commands below: demo, train, translate, evaluate, embed, show, bench.


@app.command()
def bench(
    names: list[str] = typer.Argument(None, help="benchmark scripts to run (e.g. attention embedding); default all"),
    quick: bool = typer.Option(False, "--quick", help="small sizes, few repeats (smoke run; results not saved)"),
) -> None:
    """Run the peer-vs-attnkit benchmarks of a source checkout and regenerate benchmarks/RESULTS.md."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
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


# ---- embed (BERT engineer) --------------------------------------------------------------


@app.command()
def embed(
    input_file: str = typer.Argument(..., metavar="INPUT.txt", help="UTF-8 text file, one text per line"),
    out: str = typer.Option(..., "--out", help="output: .npy (float32 matrix) or .jsonl ({text, embedding} per line)"),
    model: str = typer.Option("all-MiniLM-L6-v2", "--model", help="sentence-transformers BERT folder or known name"),
    batch_size: int = typer.Option(32, "--batch-size", help="texts per batch on the padded path"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Embed each line of INPUT.txt with a pretrained sentence encoder (packed: no compute on padding)."""
    try:
        from attnkit.models.bert import embed_file

        n, cut, dim = embed_file(input_file, out, model=model, batch_size=batch_size, progress=not quiet)
    except (ValueError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
    note = f", {cut} truncated to the model's max_seq_length" if cut else ""
    console.print(f"embedded {n} lines ({dim} dims{note}) -> {out}", highlight=False)


def main() -> None:
    """Entry point: run the app, mapping user errors to one red line and exit code 2."""
    try:
        app()
    except (ValueError, FileNotFoundError, NotADirectoryError, UnicodeDecodeError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
