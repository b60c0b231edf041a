"""``attnkit show``: the attention explorer of any model for one text, and its pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from attnkit.cli.console import USER_ERRORS, console, fail, user_errors

__all__ = ["check_paths", "show", "show_command"]


def show_command(text: str, *, model: str = "all-MiniLM-L6-v2", target: str | None = None,
                 out: str | Path = "view.html", svg: str | Path | None = None, png: str | Path | None = None,
                 title: str | None = None) -> tuple[Any, list[Path]]:
    """Write the explorer page of ``model`` (a Hugging Face folder, an attnkit checkpoint, a
    sentence-transformers folder or known name) on ``text`` (and ``target`` for a decoder), and
    the head and model views as SVG / PNG files into ``svg`` / ``png``. Returns the
    :class:`~attnkit.viz.Exploration` and the picture paths."""
    from attnkit.viz import explore

    check_paths(out, svg=svg, png=png)  # before the model runs: a bad path is one line, nothing written
    att = explore(model, text, target=target, path=out, title=title)
    pictures = att.save(svg=svg, png=png) if (svg or png) else []
    return att, pictures


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing folder-to-be of ``path``'s parents that is not a folder, if any."""
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_paths(out: str | Path, *, svg: str | Path | None = None, png: str | Path | None = None) -> None:
    """ValueError naming the option unless ``out`` can be written as a file and ``svg``/``png``
    as folders (an existing folder, or a path whose existing ancestors are folders)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: name the .html file to write")
    if (blocker := _file_in_the_way(out)) is not None:
        raise ValueError(f"--out {out}: {blocker} is a file, not a folder")
    for option, folder in (("--svg", svg), ("--png", png)):
        if folder is None:
            continue
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{option} {folder} is a file: name a folder for the pictures")
        if (blocker := _file_in_the_way(folder)) is not None:
            raise ValueError(f"{option} {folder}: {blocker} is a file, not a folder")


@user_errors
def show(
    text: str = typer.Argument(..., help="the text whose attention to show (the source, for an encoder-decoder)"),
    model: str = typer.Option("all-MiniLM-L6-v2", "--model",
                              help="a Hugging Face model folder (encoder, decoder-only or encoder-decoder), an "
                                   "`attnkit train` checkpoint, or a sentence-transformers folder / known name"),
    target: str = typer.Option(None, "--target", help="the decoder's text (default: the model's own greedy output)"),
    out: str = typer.Option("view.html", "--out", help="the explorer page to write (one offline HTML file)"),
    svg: str = typer.Option(None, "--svg", help="also write the head and model views as SVG files to this folder"),
    png: str = typer.Option(None, "--png", help="also write the head and model views as PNG files to this folder"),
) -> None:
    """Write the attention explorer (kinds, head view, model view, neuron view) of a model for TEXT."""
    try:
        att, pictures = show_command(text, model=model, target=target, out=out, svg=svg, png=png)
    except OSError as exc:  # a folder that cannot be written (permissions, read-only, full disk)
        if isinstance(exc, USER_ERRORS):
            raise
        fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    kinds = ", ".join(f"{k} {tuple(att.weights[k].shape[:2])}" for k in att.kinds)
    console.print(f"wrote {att.path} ({kinds}: layers, heads)"
                  + (f" and {len(pictures)} pictures" if pictures else ""), highlight=False)
