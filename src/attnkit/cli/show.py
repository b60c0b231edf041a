"""``attnkit show``: the attention explorer of any model for one text, and its pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from attnkit.cli.console import console, user_errors

__all__ = ["show", "show_command"]


def show_command(text: str, *, model: str = "all-MiniLM-L6-v2", target: str | None = None,
                 out: str | Path = "view.html", svg: str | Path | None = None, png: str | Path | None = None,
                 title: str | None = None) -> tuple[Any, list[Path]]:
    """Write the explorer page of ``model`` (a Hugging Face folder, an attnkit checkpoint, a
    sentence-transformers folder or known name) on ``text`` (and ``target`` for a decoder), and
    the head and model views as SVG / PNG files into ``svg`` / ``png``. Returns the
    :class:`~attnkit.viz.Exploration` and the picture paths."""
    from attnkit.viz import explore

    att = explore(model, text, target=target, path=out, title=title)
    pictures = att.save(svg=svg, png=png) if (svg or png) else []
    return att, pictures


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
    att, pictures = show_command(text, model=model, target=target, out=out, svg=svg, png=png)
    kinds = ", ".join(f"{k} {tuple(att.weights[k].shape[:2])}" for k in att.kinds)
    console.print(f"wrote {att.path} ({kinds}: layers, heads)"
                  + (f" and {len(pictures)} pictures" if pictures else ""), highlight=False)
