"""``attnkit show``: the attention explorer of any model for one text, and its pictures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from attnkit.cli.console import (
    USER_ERRORS,
    check_file_path,
    check_folder_path,
    console,
    user_errors,
    write_failed,
)

__all__ = ["check_paths", "show", "show_command", "write_errors"]


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


def check_paths(out: str | Path, *, svg: str | Path | None = None, png: str | Path | None = None) -> None:
    """ValueError naming the option unless ``out`` can be written as a file and ``svg``/``png``
    as folders (an existing folder, or a path whose existing ancestors are folders; not empty;
    in a folder that can be written)."""
    check_file_path("--out", out, what=".html file")
    check_folder_path("--svg", svg)
    check_folder_path("--png", png)


def write_errors(run: Any, *, out: str | Path, svg: str | Path | None, png: str | Path | None) -> Any:
    """``run()``, with an OSError met while writing (a folder that cannot be written, a full disk)
    as one ValueError naming the option whose path failed."""
    try:
        return run()
    except OSError as exc:
        if not exc.filename:
            if isinstance(exc, USER_ERRORS):
                raise
            raise ValueError(str(exc)) from None
        where = Path(os.path.abspath(exc.filename))
        for option, folder in (("--svg", svg), ("--png", png)):
            if folder is not None and where.is_relative_to(os.path.abspath(folder)):
                raise ValueError(write_failed(exc, option, folder)) from None
        if where.parent == Path(os.path.abspath(out)).parent:  # the page or its temp file beside it
            raise ValueError(write_failed(exc, "--out", out)) from None
        raise ValueError(f"{exc.strerror or exc}: {exc.filename}") from None


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
    att, pictures = write_errors(lambda: show_command(text, model=model, target=target, out=out, svg=svg, png=png),
                                 out=out, svg=svg, png=png)
    kinds = ", ".join(f"{k} {tuple(att.weights[k].shape[:2])}" for k in att.kinds)
    console.print(f"wrote {att.path} ({kinds}: layers, heads)"
                  + (f" and {len(pictures)} pictures" if pictures else ""), highlight=False)
