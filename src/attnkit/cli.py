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


def fail(message: str) -> None:
    """Print one red line and exit with code 2."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code=2)


# --------------------------------------------------------------------------- commands
# Each issue adds its commands below: demo, train, translate, evaluate, embed, show, bench.


def main() -> None:
    """Entry point: run the app, mapping user errors to one red line and exit code 2."""
    try:
        app()
    except (ValueError, FileNotFoundError, NotADirectoryError, UnicodeDecodeError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
