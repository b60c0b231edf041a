"""The explorer's head and model views as SVG and PNG files, drawn with matplotlib (no browser).

:func:`write_views` writes, for each attention kind of an :class:`~attnkit.viz.Exploration` (what :meth:`Exploration.save` calls):

- ``{kind}-model-view.{svg,png}``: every layer (rows) x head (columns) as a small heatmap, each
  scaled to its own maximum and block-max downsampled to at most 96 x 96 cells, as on the page
  (causal kinds grey out the cells no query can see);
- ``{kind}-head-view-layer-{l}.{svg,png}``: the head view of each layer, a line from every
  query token (left) to every key token (right) whose weight reaches the threshold, opacity =
  weight, colour = head (the page's colours and default threshold).

A view other than the raw weights (``"rollout"``, ``"value-norm"``) adds its name to the files.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnkit.viz.explorer import default_threshold, encode_weights
from attnkit.viz.fonts import fonts_for

THUMB = 96  # model-view cells per side at most
FORMATS = ("svg", "png")


def head_color(h: int, heads: int) -> tuple[float, float, float]:
    """The page's colour of head ``h`` of ``heads``: ``hsl(h*360/heads + 200, 72%, 45%)`` as RGB."""
    hue = (round(h * 360 / max(heads, 1) + 200) % 360) / 360
    return colorsys.hls_to_rgb(hue, 0.45, 0.72)


def label(token: str) -> str:
    """A token as the page draws it: a word-start space as ``·``, blank tokens as ``␣``, empty as ``∅``."""
    if token == "":
        return "\u2205"
    if token.strip() == "":
        return "\u2423" * len(token)
    return "\u00b7" + token[1:] if token[0] == " " else token


def _downsample(w: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Block maximum of ``w (Tq, Tk)`` onto ``(rows, cols)`` cells (the page's thumbnails)."""
    tq, tk = w.shape
    bi = (np.arange(tq) * rows) // tq
    bj = (np.arange(tk) * cols) // tk
    out = np.zeros((rows, cols))
    np.maximum.at(out, (bi[:, None], bj[None, :]), w)
    return out


def model_view_image(weights: np.ndarray, *, causal: bool = False, gap: int = 2) -> np.ndarray:
    """RGB mosaic ``(L*(c+gap), H*(c+gap), 3)`` of every layer/head of ``weights (L, H, Tq, Tk)``."""
    from matplotlib import colormaps

    n_layers, n_heads, tq, tk = weights.shape
    rows, cols = max(1, min(tq, THUMB)), max(1, min(tk, THUMB))
    cmap = colormaps["viridis"]
    img = np.ones((n_layers * (rows + gap), n_heads * (cols + gap), 3))
    hidden = None
    if causal and tq and tk:  # a cell is hidden when its first key is after its last query's last key
        last_query = -(-(np.arange(1, rows + 1) * tq) // rows) - 1
        first_key = -(-(np.arange(cols) * tk) // cols)
        hidden = first_key[None, :] > (last_query + tk - tq)[:, None]
    for layer in range(n_layers):
        for head in range(n_heads):
            w = weights[layer, head]
            cell = _downsample(w, rows, cols) if tq and tk else np.zeros((rows, cols))
            top = cell.max()
            rgb = cmap(cell / top if top > 0 else cell)[..., :3]
            if hidden is not None:
                rgb[hidden] = (236 / 255, 238 / 255, 242 / 255)
            y, x = layer * (rows + gap), head * (cols + gap)
            img[y : y + rows, x : x + cols] = rgb
    return img


def draw_model_view(weights: np.ndarray, *, causal: bool = False, title: str = "",
                    layer_names: Sequence[str] | None = None, head_names: Sequence[str] | None = None) -> Any:
    """The model view of ``weights (L, H, Tq, Tk)`` as a matplotlib Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_layers, n_heads = weights.shape[:2]
    gap = 2
    img = model_view_image(weights, causal=causal, gap=gap)
    cell_h, cell_w = img.shape[0] / n_layers, img.shape[1] / n_heads
    fig = Figure(figsize=(1.2 + 0.95 * n_heads, 0.8 + 0.95 * n_layers), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(img, interpolation="nearest", aspect="auto")
    ax.set_xticks([(h + 0.5) * cell_w - gap / 2 for h in range(n_heads)],
                  list(head_names or [f"head {h + 1}" for h in range(n_heads)]), fontsize=8)
    ax.set_yticks([(i + 0.5) * cell_h - gap / 2 for i in range(n_layers)],
                  list(layer_names or [f"layer {i + 1}" for i in range(n_layers)]), fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def draw_head_view(weights: np.ndarray, left: Sequence[str], right: Sequence[str], *,
                   threshold: float, heads: Sequence[int] | None = None, causal: bool = False,
                   title: str = "") -> Any:
    """The head view of one layer, ``weights (H, Tq, Tk)``, as a matplotlib Figure of lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    n_heads, tq, tk = weights.shape
    heads = range(n_heads) if heads is None else heads
    n = max(tq, tk, 1)
    fontsize = 9 if n <= 80 else max(2.0, 9 * 80 / n)
    fig = Figure(figsize=(6.0, min(0.6 + 0.22 * n, 120.0)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.96 if title else 1.0))
    ax.set_xlim(0, 1)
    ax.set_ylim(n, -1)
    ax.axis("off")
    x1, x2 = 0.3, 0.7
    segments, colors = [], []
    for h in heads:
        rgb = head_color(h, n_heads)
        rows, cols = np.nonzero(weights[h] >= max(threshold, 1e-12))
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
            if causal and j > i + tk - tq:
                continue
            segments.append(((x1, i), (x2, j)))
            colors.append((*rgb, min(1.0, 0.08 + float(weights[h, i, j]))))
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=1.5))
    for i, tok in enumerate(left):
        ax.text(x1 - 0.01, i, label(tok), ha="right", va="center", fontsize=fontsize)
    for j, tok in enumerate(right):
        ax.text(x2 + 0.01, j, label(tok), ha="left", va="center", fontsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def write_views(att: Any, svg_dir: str | os.PathLike | None = None, png_dir: str | os.PathLike | None = None,
                *, kinds: Sequence[str] | None = None, view: str = "raw", threshold: float | None = None,
                ) -> list[Path]:
    """Write the head view (one file per layer) and the model view of each kind of ``att``.

    Args:
        att: what :func:`attnkit.viz.explore` returned.
        svg_dir: folder for the ``.svg`` files (created); None writes none.
        png_dir: folder for the ``.png`` files (created); None writes none.
        kinds: which kinds (default: all of ``att.kinds``).
        view: ``"raw"``, ``"rollout"`` or ``"value-norm"`` (see ``Exploration.views``).
        threshold: the head view's minimum weight for a line (default: the page's default).

    Returns:
        the paths written, model views first.

    Raises:
        ValueError: an unknown kind or view, or a threshold outside ``[0, 1]``.
    """
    from attnkit.viz.heatmap import _font_context, save_figure

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    kinds = list(att.kinds if kinds is None else kinds)
    bad = [k for k in kinds if k not in att.weights]
    if bad:
        raise ValueError(f"unknown kinds {bad}: this model has {att.kinds}")
    folders = {ext: Path(d) for ext, d in zip(FORMATS, (svg_dir, png_dir), strict=True) if d is not None}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, stem: str) -> None:
        for ext, folder in folders.items():
            save_figure(fig, folder / f"{stem}.{ext}")  # atomic: the whole picture or the previous one
            written.append(folder / f"{stem}.{ext}")

    for kind in kinds:
        views = att.views(kind)
        if view not in views:
            raise ValueError(f"the {kind} attention has no {view!r} view; it has {sorted(views)}")
        w = views[view].detach().float().cpu().numpy()  # (L, H, Tq, Tk)
        left, right = att.token_pair(kind)
        causal = kind == "decoder"
        suffix = "" if view == "raw" else f"-{view}"
        head_names = ["all heads"] if view == "rollout" else None
        with _font_context(fonts_for([*left, *right])):  # a token with two "$" is drawn as itself
            save(draw_model_view(w, causal=causal, head_names=head_names,
                                 title=f"{kind} attention{suffix.replace('-', ' ')}: every layer and head"),
                 f"{kind}{suffix}-model-view")
            th = default_threshold(encode_weights(w)) if threshold is None else threshold
            for layer in range(w.shape[0]):
                save(draw_head_view(w[layer], left, right, threshold=th, causal=causal,
                                    title=f"{kind} attention{suffix.replace('-', ' ')}, layer {layer + 1} "
                                          f"(lines for weights >= {th:g})"),
                     f"{kind}{suffix}-head-view-layer-{layer + 1}")
    return sorted(written, key=lambda p: ("head-view" in p.name, str(p)))
