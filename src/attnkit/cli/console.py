"""What every ``attnkit`` command shares: the consoles and the one way a user error ends a
command (one red line on stderr, exit code 2, no traceback)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["USER_ERRORS", "console", "err_console", "fail", "user_errors"]

console = Console()
err_console = Console(stderr=True)

#: What a command reports as one line: bad values, missing/unreadable files, text that is not UTF-8.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                  UnicodeDecodeError)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> None:
    """Print one red line and exit with code 2."""
    err_console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def user_errors(command: F) -> F:
    """Wrap a command so that a :data:`USER_ERRORS` exception (or a lost torchrun peer) becomes
    :func:`fail`'s one line; typer sees the original signature."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        from attnkit.distributed import PeerLostError

        try:
            return command(*args, **kwargs)
        except PeerLostError as exc:  # under torchrun: another rank died
            hint = (f"; continue it with `attnkit train --resume --out {exc.checkpoint}`"
                    if exc.checkpoint is not None else "")
            fail(f"{exc}{hint}")
        except USER_ERRORS as exc:
            fail(str(exc))

    return run  # type: ignore[return-value]
