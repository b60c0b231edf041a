"""Alignment heatmaps with matplotlib (Agg backend, no pyplot global state).

``heatmap(weights, x_tokens, y_tokens)`` draws one attention matrix: row ``i`` is the query
(an output token, ``y_tokens[i]``), column ``j`` the key it may attend to (an input token,
``x_tokens[j]``), and each row of a softmax attention matrix sums to 1.

Token labels in any script: :mod:`attnkit.viz.fonts` registers the packaged Noto fonts and
picks the fallback list the labels need (matplotlib falls back glyph by glyph and shapes with
libraqm). A character that no font has is not hidden: matplotlib draws a box and warns
``Glyph ... missing from font(s)``.

Right-to-left text in a left-to-right title (``<he_IL> 24 בנובמבר 2026 -> 2026-11-24``):
libraqm runs the Unicode bidi algorithm over the whole line, so the RTL run would pull the
arrow and the digits after it into itself and the line would read reversed. Each RTL run of
the title and the axis labels is therefore wrapped in directional isolates (U+2068 FSI ...
U+2069 PDI, which libraqm honours and HarfBuzz draws as nothing), and the line around the
runs stays left to right (matplotlib < 3.11 has no bidi layout: there the text is left as is).
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from attnkit.viz.fonts import fonts_for
from attnkit.viz.notebook import enable_figures

_MAX_LABELS = 80  # more tokens than this on an axis: label every k-th one


def as_numpy(weights: Any, dtype: Any = np.float64) -> np.ndarray:
    """A float numpy array (``dtype``) of a torch tensor, numpy array or nested list;
    raises ValueError on NaN/inf."""
    if hasattr(weights, "detach"):  # torch.Tensor without importing torch here
        weights = weights.detach().to("cpu").float().numpy()
    array = np.asarray(weights, dtype=dtype)
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"attention weights contain {int(np.sum(~np.isfinite(array)))} NaN/inf values"
        )
    return array


def _label_positions(n: int) -> np.ndarray:
    step = max(1, int(np.ceil(n / _MAX_LABELS)))
    return np.arange(0, n, step)


def heatmap(
    weights: Any,
    x_tokens: Sequence[str],
    y_tokens: Sequence[str],
    path: str | Path | None = None,
    title: str | None = None,
    *,
    x_label: str = "input (attended to)",
    y_label: str = "output (attending)",
    value_label: str = "attention weight",
    signed: bool = False,
    dpi: int = 120,
) -> Any:
    """Draw an attention matrix as a heatmap and optionally save it (PNG, SVG, PDF by suffix).

    Args:
        weights: ``(len(y_tokens), len(x_tokens))`` attention weights; a tensor or array.
            Row ``i`` is how much output token ``y_tokens[i]`` attended to each input token.
        x_tokens: labels of the columns (keys / inputs), drawn below, rotated 90 degrees.
        y_tokens: labels of the rows (queries / outputs).
        path: where to save the figure; the parent folder is created.
        title: figure title.
        value_label: the colour bar's label.
        signed: values of either sign (relevance): a diverging scale symmetric around zero, red
            for positive, blue for negative (the explanation page's colours); else a scale from 0
            (attention weights).

    Returns:
        the ``matplotlib.figure.Figure`` (not registered with pyplot, so no global state).

    Raises:
        ValueError: weights are not 2-D, do not match the token counts, or are not finite.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    array = as_numpy(weights)
    x_tokens, y_tokens = [str(t) for t in x_tokens], [str(t) for t in y_tokens]
    if array.ndim != 2:
        raise ValueError(
            f"heatmap expects 2-D weights (len(y_tokens), len(x_tokens)), got shape {tuple(array.shape)}"
        )
    if array.shape != (len(y_tokens), len(x_tokens)):
        raise ValueError(
            f"weights shape {tuple(array.shape)} does not match "
            f"(len(y_tokens), len(x_tokens)) = ({len(y_tokens)}, {len(x_tokens)})"
        )

    rows, cols = array.shape
    # Size grows with the token counts, within reason: ~0.22 in per token, 4..16 in wide.
    width = float(np.clip(1.8 + 0.22 * cols, 4.0, 16.0))
    height = float(np.clip(1.4 + 0.22 * rows, 3.0, 16.0))

    texts = [*x_tokens, *y_tokens, title or "", x_label, y_label, value_label]
    with _font_context(fonts_for(texts)):
        fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if rows == 0 or cols == 0:
            ax.text(0.5, 0.5, "no tokens", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            image = ax.imshow(array, aspect="auto", interpolation="nearest", **_colour_scale(array, signed))
            fig.colorbar(image, ax=ax, label=value_label, shrink=0.9)
            xs, ys = _label_positions(cols), _label_positions(rows)
            # Rotate the input labels (long tokens would overlap); single characters stay upright.
            ax.set_xticks(xs, [_visible(x_tokens[i]) for i in xs], fontsize=9)
            for label in ax.get_xticklabels():
                label.set_rotation(90 if len(label.get_text()) > 1 else 0)
            ax.set_yticks(ys, [_visible(y_tokens[i]) for i in ys], fontsize=9)
            ax.tick_params(length=0)
        bidi = isolate_rtl if _lays_out_bidi() else str
        ax.set_xlabel(bidi(x_label))
        ax.set_ylabel(bidi(y_label))
        if title:
            # Wrap each line of the title to the figure's width (about 11 characters per inch),
            # then isolate the RTL runs of each drawn line (an isolate must not span lines).
            limit = max(20, int(width * 11))
            lines = [row for line in title.split("\n") for row in textwrap.wrap(line, limit) or [""]]
            ax.set_title("\n".join(bidi(row) for row in lines))
        if path is not None:
            save_figure(fig, path)
    enable_figures()  # in a notebook, the returned figure shows itself
    return fig


def save_figure(fig: Any, path: str | Path) -> None:
    """``fig.savefig(path)`` (the format by suffix), written atomically (:mod:`attnkit.io`): a
    kill or an error leaves the previous file or none, never half a picture. The parent folder is
    created. Without a suffix, matplotlib's default format and its suffix are used, as savefig does."""
    from matplotlib import rcParams

    from attnkit.io import atomic_open

    path = Path(path)
    fmt = path.suffix[1:].lower()
    if not fmt:
        fmt = rcParams["savefig.format"]
        path = path.with_name(f"{path.name}.{fmt}")
    with atomic_open(path) as f:
        fig.savefig(f, format=fmt)


def _colour_scale(array: np.ndarray, signed: bool) -> dict[str, Any]:
    """imshow's ``cmap``/``vmin``/``vmax`` for ``array``: ``[-peak, peak]`` on red-white-blue when
    ``signed`` (zero is white), else ``[0, max]`` on viridis."""
    if signed:
        peak = max(float(np.abs(array).max()), 1e-12)
        return {"cmap": "RdBu_r", "vmin": -peak, "vmax": peak}
    return {"cmap": "viridis", "vmin": 0.0, "vmax": max(float(array.max()), 1e-12)}


def _visible(token: str) -> str:
    """Make whitespace tokens visible on an axis."""
    if token == " ":
        return "␣"
    if token.strip() == "":
        return repr(token)[1:-1] or "∅"
    return token


def _font_context(families: list[str]) -> Any:
    """A context that sets matplotlib's font fallback list (restored on exit) and draws every
    text as itself: ``text.parse_math`` off, so a token or title with two ``$`` (``$x^2$``,
    ``$5 or $6``) is not typeset as mathtext (or a ParseSyntaxException for ``$\\frac$``)."""
    import matplotlib

    return matplotlib.rc_context({"font.family": families, "axes.unicode_minus": False,
                                  "text.parse_math": False})


@cache
def _lays_out_bidi() -> bool:
    """True if matplotlib lays text out with libraqm (>= 3.11: bidi order, shaping, isolates);
    older versions draw each character left to right and would draw the isolates as boxes."""
    from matplotlib import ft2font

    return hasattr(ft2font, "__libraqm_version__")


_FSI, _PDI = "\u2068", "\u2069"  # FIRST STRONG ISOLATE ... POP DIRECTIONAL ISOLATE
_ARROW = re.compile(r"(\s*(?:->|=>|\u2192)\s*)")  # "source -> target": segments of a title
_WORDS = re.compile(r"\S+|\s+")


def _direction(word: str) -> str:
    """"rtl" if ``word`` has a right-to-left letter, "ltr" if it has a left-to-right one,
    else "weak" (digits, Arabic-Indic digits, punctuation: they take their neighbours' side)."""
    kinds = {unicodedata.bidirectional(c) for c in word}
    if kinds & {"R", "AL"}:
        return "rtl"
    return "ltr" if "L" in kinds else "weak"


def isolate_rtl(line: str) -> str:
    """``line`` with each right-to-left run wrapped in U+2068 FSI ... U+2069 PDI.

    A run is a stretch of words between arrows (``->``, ``=>``, ``→``) and left-to-right words
    that holds at least one right-to-left word; the digits and punctuation inside the stretch
    belong to it (``24 בנובמבר 2026`` is one run and reads right to left, ``-> 2026-11-24``
    after it stays left to right). Lines without RTL letters come back unchanged.
    """
    if not any(unicodedata.bidirectional(c) in ("R", "AL") for c in line):
        return line
    parts = _ARROW.split(line)  # odd items are the arrows
    return "".join(part if i % 2 else _isolate_segment(part) for i, part in enumerate(parts))


def _isolate_segment(segment: str) -> str:
    tokens = _WORDS.findall(segment)
    out: list[str] = []
    stretch: list[str] = []  # words and spaces since the last left-to-right word

    def flush() -> None:
        words = [k for k, t in enumerate(stretch) if not t.isspace()]
        if words and any(_direction(stretch[k]) == "rtl" for k in words):
            first, last = words[0], words[-1]
            stretch[first] = _FSI + stretch[first]
            stretch[last] = stretch[last] + _PDI
        out.extend(stretch)
        stretch.clear()

    for token in tokens:
        if not token.isspace() and _direction(token) == "ltr":
            flush()
            out.append(token)
        else:
            stretch.append(token)
    flush()
    return "".join(out)
