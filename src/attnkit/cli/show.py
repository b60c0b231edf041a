"""``attnkit show``: the attention explorer of a pretrained encoder for one text."""

from __future__ import annotations

from pathlib import Path

import typer

from attnkit.cli.console import console, user_errors

__all__ = ["show", "show_command"]


def show_command(text: str, *, model: str = "all-MiniLM-L6-v2", out: str | Path = "view.html",
                 png: str | Path | None = None, title: str | None = None) -> tuple[Path, list[Path]]:
    """The explorer of a pretrained encoder's self-attention over ``text`` and, with ``png``,
    one heatmap per layer (the mean over its heads) in that folder."""
    from attnkit.models.sentence_encoder import SentenceEncoder
    from attnkit.viz.explorer import explorer
    from attnkit.viz.heatmap import heatmap

    encoder = SentenceEncoder.from_pretrained(model)
    tokens, weights = encoder.attentions(text)  # (layers, heads, T, T)
    path = explorer(tokens, weights, out, title=title or f"{Path(str(model)).name}: {text}")
    pngs: list[Path] = []
    if png is not None:
        folder = Path(png)
        n_layers, n_heads = weights.shape[:2]
        for layer in range(n_layers):
            target = folder / f"layer-{layer + 1}.png"
            heatmap(weights[layer].mean(0), tokens, tokens, target,
                    title=f"layer {layer + 1}: mean of {n_heads} heads",
                    x_label="attended to", y_label="attending")
            pngs.append(target)
    return path, pngs


@user_errors
def show(
    text: str = typer.Argument(..., help="the text whose self-attention to show"),
    model: str = typer.Option("all-MiniLM-L6-v2", "--model", help="sentence-transformers BERT folder or known name"),
    out: str = typer.Option("view.html", "--out", help="the explorer page to write (one offline HTML file)"),
    png: str = typer.Option(None, "--png", help="also write one heatmap per layer (mean over heads) to this folder"),
) -> None:
    """Write the attention explorer (head view + model view) of a pretrained encoder for TEXT."""
    path, pngs = show_command(text, model=model, out=out, png=png)
    console.print(f"wrote {path}" + (f" and {len(pngs)} heatmaps in {png}" if pngs else ""), highlight=False)
