"""What every ``attnkit`` command shares: the consoles and the one way a user error ends a
command (one red line on stderr, exit code 2, no traceback)."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["SIGNAL_EXIT", "USER_ERRORS", "check_file_path", "check_folder_path", "console", "err_console", "fail",
           "file_in_the_way", "stopped_by_signal", "user_errors", "write_failed"]

console = Console()
err_console = Console(stderr=True)

#: What a command reports as one line: bad values, missing/unreadable files, text that is not UTF-8.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                  UnicodeDecodeError)

F = TypeVar("F", bound=Callable[..., Any])

#: The exit code of a command stopped by a signal: 128 + the signal's number (Ctrl-C: 130).
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def fail(message: str) -> None:
    """Print one red line and exit with code 2."""
    err_console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` if it is not a folder (then ``path`` cannot be made)."""
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _probe(option: str, path: Path, *, inside: bool = False) -> None:
    """ValueError unless a file can be made in the nearest existing folder above ``path`` (or in
    ``path`` itself, ``inside``): a probe that leaves nothing behind (read-only mounts, /proc,
    permissions, a full disk)."""
    start = path if inside else path.parent
    folder = next((p for p in (start, *start.parents) if p.is_dir()), Path("."))
    try:
        with tempfile.TemporaryDirectory(prefix=".attnkit-probe-", dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc})") from None


def check_file_path(option: str, value: str | Path, *, what: str = "file") -> None:
    """ValueError naming ``option`` unless ``value`` can be written as a file: not empty, not a
    folder, not below a file, in a folder that can be written (checked before any work is done)."""
    if str(value) == "":
        raise ValueError(f"{option} is empty: name the {what} to write")
    path = Path(value)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder: name the {what} to write")
    if (blocker := file_in_the_way(path)) is not None:
        raise ValueError(f"{option} {path}: {blocker} is a file, not a folder")
    _probe(option, path)


def check_folder_path(option: str, value: str | Path | None) -> None:
    """ValueError naming ``option`` unless ``value`` (when given) is an existing folder or a
    path that can be made one (not empty, not a file, not below a file, writable)."""
    if value is None:
        return
    if str(value) == "":
        raise ValueError(f"{option} is empty: name a folder")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file: name a folder")
    if (blocker := file_in_the_way(path)) is not None:
        raise ValueError(f"{option} {path}: {blocker} is a file, not a folder")
    _probe(option, path, inside=True)


def write_failed(exc: OSError, option: str, value: str | Path) -> str:
    """One line for an OSError met while writing ``option``'s ``value`` (the user's path, not a temp file's)."""
    return f"{option} {value}: cannot write ({exc.strerror or exc})"


def stopped_by_signal(name: str, message: str | None = None) -> None:
    """End a command stopped by SIGINT (Ctrl-C) / SIGTERM: ``message`` (if any) as one line, exit 130 / 143."""
    if message:
        err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=SIGNAL_EXIT.get(name, 130))


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
