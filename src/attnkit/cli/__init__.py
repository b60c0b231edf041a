"""The ``attnkit`` command (Typer): train, translate, evaluate, embed, show, explain, demo, bench.

Each command lives in the module of its job (``cli/train.py``, ``embed.py``, ``show.py``,
``explain.py``, ``demo.py``, ``bench.py``) and turns a user error into one red line on stderr and exit code
2, with no traceback (:func:`attnkit.cli.console.user_errors`). Heavy imports (matplotlib,
tokenizers, the models) happen inside the commands, so ``attnkit --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from attnkit.cli import bench, demo, embed, explain, show, train
from attnkit.cli.console import USER_ERRORS, err_console

__all__ = ["app", "main"]

app = typer.Typer(
    name="attnkit",
    help="Attention you can trust, run fast, train and see.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """attnkit: attention you can trust, run fast, train and see."""


for command in (train.train, train.translate, train.evaluate, embed.embed, show.show, explain.explain, demo.demo,
                bench.bench):
    app.command()(command)


def main() -> None:
    """Entry point: run the app, mapping user errors to one red line and exit code 2."""
    from rich.markup import escape

    try:
        app()
    except USER_ERRORS as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
