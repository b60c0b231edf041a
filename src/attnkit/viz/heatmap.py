"""Alignment heatmaps with matplotlib (Agg backend, no pyplot global state).

``heatmap(weights, x_tokens, y_tokens)`` draws one attention matrix: row ``i`` is the query
(an output token, ``y_tokens[i]``), column ``j`` the key it may attend to (an input token,
``x_tokens[j]``), and each row of a softmax attention matrix sums to 1.

Token labels in any script: matplotlib (>= 3.6) falls back glyph by glyph through the
``font.family`` list, so we list every Noto/DejaVu family installed on the machine
(Debian: ``fonts-noto-core``, ``fonts-noto-cjk``). Characters that no installed font has are
drawn as boxes instead of raising or spamming "Glyph missing" warnings.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

# Families tried in order for each glyph; only the installed ones are used.
_FONT_PREFERENCE = (
    "DejaVu Sans",
    "Noto Sans",
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans Arabic",
    "Noto Sans Hebrew",
    "Noto Sans Devanagari",
    "Noto Sans Bengali",
    "Noto Sans Thai",
    "Noto Sans Georgian",
    "Noto Sans Armenian",
    "Noto Sans Ethiopic",
    "Noto Sans Tamil",
    "Noto Sans Telugu",
    "Noto Sans Kannada",
    "Noto Sans Malayalam",
    "Noto Sans Gujarati",
    "Noto Sans Gurmukhi",
    "Noto Sans Sinhala",
    "Noto Sans Khmer",
    "Noto Sans Lao",
    "Noto Sans Myanmar",
    "Noto Sans Symbols",
    "Noto Sans Symbols 2",
    "Noto Sans Math",
)

_MAX_LABELS = 80  # more tokens than this on an axis: label every k-th one


@lru_cache(maxsize=1)
def font_fallback_list() -> list[str]:
    """The installed font families, in fallback order, for labels in any script."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    families = [name for name in _FONT_PREFERENCE if name in installed]
    return families or ["sans-serif"]


@cache
def _charmap(family: str) -> frozenset[int]:
    """The code points a font family covers (empty if it cannot be read)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    try:
        path = font_manager.findfont(font_manager.FontProperties(family=family),
                                     fallback_to_default=False)
        return frozenset(FT2Font(path).get_charmap())
    except (ValueError, OSError, RuntimeError):
        return frozenset()


def fonts_for(texts: Sequence[str]) -> list[str]:
    """The shortest fallback list (in preference order) that covers the characters of ``texts``.

    Searching a long fallback list costs matplotlib time for every label, so a plain ASCII
    plot gets one family and a multilingual one only the families its characters need.
    """
    families = font_fallback_list()
    missing = {ord(c) for text in texts for c in text if not c.isspace()}
    chosen = [families[0]]
    missing -= _charmap(families[0])
    for family in families[1:]:
        if not missing:
            break
        covered = missing & _charmap(family)
        if covered:
            chosen.append(family)
            missing -= covered
    return chosen


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

    texts = [*x_tokens, *y_tokens, title or "", x_label, y_label]
    with warnings.catch_warnings(), _font_context(fonts_for(texts)):
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font")
        warnings.filterwarnings("ignore", message=r".*findfont.*")
        fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if rows == 0 or cols == 0:
            ax.text(0.5, 0.5, "no tokens", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            image = ax.imshow(array, cmap="viridis", aspect="auto", vmin=0.0,
                              vmax=max(float(array.max()), 1e-12), interpolation="nearest")
            fig.colorbar(image, ax=ax, label="attention weight", shrink=0.9)
            xs, ys = _label_positions(cols), _label_positions(rows)
            # Rotate the input labels (long tokens would overlap); single characters stay upright.
            ax.set_xticks(xs, [_visible(x_tokens[i]) for i in xs], fontsize=9)
            for label in ax.get_xticklabels():
                label.set_rotation(90 if len(label.get_text()) > 1 else 0)
            ax.set_yticks(ys, [_visible(y_tokens[i]) for i in ys], fontsize=9)
            ax.tick_params(length=0)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        if title:
            # Wrap each line of the title to the figure's width (about 11 characters per inch).
            limit = max(20, int(width * 11))
            ax.set_title("\n".join(textwrap.fill(line, limit) for line in title.split("\n")))
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path)
    return fig


def _visible(token: str) -> str:
    """Make whitespace tokens visible on an axis."""
    if token == " ":
        return "␣"
    if token.strip() == "":
        return repr(token)[1:-1] or "∅"
    return token


def _font_context(families: list[str]) -> Any:
    """A context that sets matplotlib's font fallback list (restored on exit)."""
    import matplotlib

    return matplotlib.rc_context({"font.family": families, "axes.unicode_minus": False})
