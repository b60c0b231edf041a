"""``attnkit explain``: which input tokens made each output, on one offline page (+ pictures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from attnkit.cli.console import console, user_errors
from attnkit.cli.show import check_paths, write_errors

__all__ = ["explain", "explain_command", "PAGE_METHODS"]

# the page's method selector: the chosen method first, then these (all cheap: one pass each)
PAGE_METHODS = ("attnlrp", "grad_rollout", "rollout", "attention", "input_x_gradient")


def explain_command(text: str, *, model: str, target: str | None = None, query: str | None = None,
                    method: str = "attnlrp", out: str | Path = "explain.html", svg: str | Path | None = None,
                    png: str | Path | None = None) -> tuple[dict[str, Any], Path, list[Path]]:
    """Explain ``model`` on ``text`` by ``method`` (and the page's comparison methods), write the
    page to ``out`` and the relevance map and attention views as SVG / PNG into ``svg`` / ``png``. Returns the
    explanations (method -> :class:`~attnkit.Explanation`), the page and the picture paths."""
    from attnkit.relevance import METHODS, explain
    from attnkit.relevance.page import explore_explained, write_page

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    check_paths(out, svg=svg, png=png)  # before the model runs: a bad path is one line, nothing written
    first = explain(model, text, target=target, query=query, method=method)
    explanations = {method: first}
    for other in PAGE_METHODS:
        if other != method:
            try:
                explanations[other] = explain(model, text, target=target, query=query, method=other)
            except ValueError:  # a method this model cannot support (no attention): left off the page
                continue
    page = write_page(explanations, out, source=model, text=text, target=target)
    pictures: list[Path] = []
    if svg or png:
        pictures = explore_explained(explanations, model, text, target).save(svg=svg, png=png)
        pictures += _relevance_pictures(first, svg, png)
    return explanations, page, pictures


def _relevance_pictures(e: Any, svg: str | Path | None, png: str | Path | None) -> list[Path]:
    """The explanation's map as a heatmap (rows: output tokens, columns: input tokens) on a signed
    scale symmetric around zero: red for relevance for the output, blue against it."""
    from attnkit.viz import heatmap

    rows = e.target_tokens or ["similarity" if e.query is not None else "output"]
    out = []
    for folder, suffix in ((svg, "svg"), (png, "png")):
        if folder:
            path = Path(folder) / f"relevance-{e.method}.{suffix}"
            heatmap(e.relevance, e.tokens, rows, path, title=f"{e.method} relevance", x_label="input token",
                    y_label="explained output", value_label="relevance (red: for the output, blue: against)",
                    signed=True)
            out.append(path)
    return out


@user_errors
def explain(
    text: str = typer.Argument(..., help="the input text (the source of an encoder-decoder, the document for --query)"),
    model: str = typer.Option(..., "--model", help="a Hugging Face folder, an `attnkit train` checkpoint, or a "
                                                  "sentence-transformers folder / known name"),
    target: str = typer.Option(None, "--target", help="the output to explain (default: the model's greedy output)"),
    query: str = typer.Option(None, "--query", help="for a sentence encoder: explain TEXT's cosine similarity to this"),
    method: str = typer.Option("attnlrp", "--method", help="attnlrp, grad_rollout, flow, rollout, attention, "
                                                          "input_x_gradient or integrated_gradients"),
    out: str = typer.Option("explain.html", "--out", help="the page to write (one offline HTML file)"),
    svg: str = typer.Option(None, "--svg", help="also write the relevance map and the attention views as SVG to this folder"),
    png: str = typer.Option(None, "--png", help="also write the relevance map and the attention views as PNG to this folder"),
) -> None:
    """Explain which input tokens of TEXT made each output token (relevance view + attention explorer)."""
    explanations, page, pictures = write_errors(
        lambda: explain_command(text, model=model, target=target, query=query, method=method, out=out, svg=svg,
                                png=png), out=out, svg=svg, png=png)
    e = explanations[method]
    zero = f", {len(e.zero_rows)} all-zero rows" if e.zero_rows else ""
    console.print(f"wrote {page} ({method}: {tuple(e.relevance.shape)} outputs x input tokens{zero}; "
                  f"page methods: {', '.join(explanations)})" + (f" and {len(pictures)} pictures" if pictures else ""),
                  highlight=False)
