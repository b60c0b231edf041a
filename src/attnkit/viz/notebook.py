"""Attention inline in a notebook (Jupyter, VS Code, Colab): every result that draws shows itself.

Each view is the offline page itself inside an ``<iframe srcdoc>`` (``assets/inline.html``): the
same HTML, CSS, JS and embedded fonts as the file :func:`attnkit.viz.explore` writes, so it is as
interactive as the page (kinds, views, layers, heads, hover, neuron view, SVG/PNG export). The
iframe is sandboxed (scripts and downloads only), so several views in one notebook never share
ids, styles or scripts, and nothing is loaded from the network: no CDN, no requirejs, no
Jupyter extension. Plain ``_repr_html_``/``_repr_png_`` methods are all it takes, so no package
beyond Jupyter itself is needed to see them (``pip install 'attnkit[notebook]'`` brings JupyterLab
for the tutorial).

Size: a view is stored in the saved notebook. The explorer's weights are quantised to uint8 per
row and switch to each row's top-k weights past a budget (:mod:`attnkit.viz.explorer`), so
512 tokens x 12 layers x 12 heads stays under :data:`INLINE_MAX_BYTES` (25 MB); a view that
would still pass it leaves out the neuron view, then keeps fewer weights per row, and says so
above the view.

What displays itself: the record :func:`~attnkit.viz.explore` returns, the page
:func:`~attnkit.viz.explorer` writes (a :class:`Page`), an :class:`~attnkit.viz.alignment.Alignment`
(its heatmap), a :class:`~attnkit.viz.contextual.ContextualSimilarity` (table and plot), the
:class:`~attnkit.Explanation` that :func:`attnkit.explain` returns (the relevance view above the
explorer, :func:`attnkit.relevance.page.explanation_html`), and the matplotlib figures attnkit
returns (:func:`enable_figures`).

This module is the bottom of ``viz/`` (it imports only :mod:`attnkit.viz.fonts`): the records
call it from their ``_repr_*`` methods with what they drew.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import string
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from attnkit.viz.fonts import web_font_css

#: Most bytes one inline view adds to the saved notebook.
INLINE_MAX_BYTES = 25_000_000
#: Initial height of an inline view in pixels (drag its lower edge to resize).
INLINE_HEIGHT = 760
_DATA = re.compile(r'<script type="application/json" id="attn-data">(.*?)</script>', re.S)


def _asset(name: str) -> str:
    return (resources.files("attnkit.viz") / "assets" / name).read_text(encoding="utf-8")


def page_note(page: str) -> str:
    """The line shown above an explorer page's inline view: how its weights are stored."""
    found = _DATA.search(page)
    if not found:
        return ""
    data = json.loads(found.group(1).replace("<\\/", "</").replace("<\\!--", "<!--"))
    views = [data, *data.get("more", [])]
    topk = [v for v in views if v.get("encoding") == "topk"]
    if not topk:
        return ""
    ks = sorted({v["k"] for v in topk})
    kept = min(v["keptMass"] for v in topk)
    return (f"Too large to embed every weight inline: each row keeps its top {', '.join(map(str, ks))} "
            f"weights ({100 * kept:.1f}% of the attention mass or more), as the page does.")


def inline_html(page: str, *, title: str = "attnkit view", note: str = "",
                height: int = INLINE_HEIGHT) -> str:
    """``page`` (a whole HTML document) as one isolated inline view: a sandboxed iframe srcdoc."""
    parts = {"NOTE": html.escape(note), "HEIGHT": str(int(height)), "TITLE": html.escape(title),
             "SRCDOC": html.escape(page, quote=True)}
    return re.sub(r"__(NOTE|HEIGHT|TITLE|SRCDOC)__", lambda m: parts[m.group(1)], _asset("inline.html"))


def explorer_inline(page: str, *, note: str = "") -> str:
    """An explorer page's inline view, with :func:`page_note`'s line (and ``note``) above it."""
    line = " ".join(s for s in (note, page_note(page)) if s)
    return inline_html(page, title="attention explorer", note=line)


def exploration_html(path: str | Path | None, render: Callable[[bool | None, int], str],
                     max_bytes: int) -> str:
    """The inline view of :func:`attnkit.viz.explore`'s record: the page it wrote at ``path``, or
    without one, ``render(neuron, max_bytes)`` (the same page in memory), within
    :data:`INLINE_MAX_BYTES`: past it, without the neuron view, then with half the weight budget
    (fewer weights per row) until it fits, saying so above the view."""
    if path is not None and Path(path).is_file():
        page = Path(path).read_text(encoding="utf-8")
        if len(inline_html(page)) <= INLINE_MAX_BYTES:
            return explorer_inline(page)
    note = ""
    budget = max_bytes
    while budget >= 1:
        page = render(None if not note else False, budget)
        if len(inline_html(page)) <= INLINE_MAX_BYTES:
            return explorer_inline(page, note=note)
        note = (f"The inline view leaves out the neuron view and keeps fewer weights per row to stay "
                f"under {INLINE_MAX_BYTES // 1_000_000} MB.")
        budget //= 2
    raise ValueError(f"no inline view fits {INLINE_MAX_BYTES} bytes")


def page_html(path: str | Path) -> str:
    """The inline view of an explorer page file."""
    return explorer_inline(Path(path).read_text(encoding="utf-8"))


class Page(type(Path())):  # type: ignore[misc]  # PosixPath/WindowsPath: subclassable on 3.10+
    """The path of a page attnkit wrote; in a notebook it shows the page inline (a short note
    naming the path where the file is gone or cannot be read, instead of a traceback)."""

    def _repr_html_(self) -> str:
        try:
            return page_html(self)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            return f"<p>attnkit page {html.escape(str(self))}: cannot show it ({html.escape(reason)})</p>"


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes."""
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def similarity_html(res: Any, png: bytes) -> str:
    """The inline view of a :class:`~attnkit.viz.contextual.ContextualSimilarity` ``res``: its
    table and line plot (``png``), as one isolated page (with the fonts of its sentences)."""
    e = html.escape
    rows = "".join(f"<tr><td>{e(name)}</td><td>{a:.3f}</td><td>{b:.3f}</td><td>{c:.3f}</td></tr>"
                   for name, a, b, c in res.rows())
    png = base64.b64encode(png).decode("ascii")
    fields = dict(word=e(res.word), s1=e(res.sentences[0]), s2=e(res.sentences[1]), rows=rows, png=png)
    template = string.Template(_asset("similarity.html"))
    shown = html.unescape(template.substitute(fields, fonts="", png=""))
    page = template.substitute(fields, fonts=web_font_css([shown]))
    return inline_html(page, title=f"{res.word} in context", height=40 * len(res.layers) + 640)


def enable_figures() -> None:
    """In an IPython kernel, show matplotlib figures as PNG (what ``%matplotlib inline`` does;
    attnkit's figures are made without pyplot, so nothing else registers it). Else nothing."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    from matplotlib.figure import Figure

    formatter = shell.display_formatter.formatters["image/png"]
    if not _has_type(formatter, Figure):  # keep matplotlib-inline's own when it is there
        formatter.for_type(Figure, figure_png)


def _has_type(formatter: Any, cls: type) -> bool:
    try:
        formatter.lookup_by_type(cls)
    except KeyError:
        return False
    return True
