"""The attention explorer: one self-contained, offline HTML file (inline JS/CSS, no CDN).

The page itself lives in ``viz/assets/`` (``explorer.html``, ``explorer.css``, ``explorer.js``);
this module inlines the three files and the data into the one file it writes.

``explorer(tokens, weights, path)`` writes a page with

* a **head view**: the tokens in two columns, a line from each token on the left (the query,
  attending) to each token on the right (the key, attended to) with opacity = weight, a layer
  selector, one toggle per head (coloured), and hover on a token to isolate its lines;
* a **model view**: a grid of small heatmaps, every layer x head; click one to enlarge it.

Weights are embedded compactly: each attention row is quantised to uint8 relative to the
row's maximum (kept as float32), so a weight is ``q * rowmax / 255`` with an error below
``rowmax / 510``. That is 1 byte per weight (base64: 4/3), so 6 layers x 12 heads x 64^2
is about 0.4 MB. When the dense tensor would exceed ``max_dense_bytes`` (at 512 tokens it is
19M weights; bertviz embeds them as ~100 MB of JSON), each row keeps only its ``top_k``
largest weights (uint16 column index + uint8 value), which holds the file under 25 MB and
keeps nearly all of the attention mass (the page reports how much).

A line is drawn for every weight ``>= threshold`` (a slider; the default is the smallest of
0.01, 0.02, 0.05, ... that keeps every layer under ``MAX_DEFAULT_LINES`` lines).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from attnkit.viz.heatmap import as_numpy

MAX_DENSE_BYTES = 12_000_000  # raw uint8 bytes embedded densely before switching to top-k
MAX_DEFAULT_LINES = 4_000  # the default threshold keeps each layer's head view below this
THRESHOLD_LADDER = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


@dataclass
class EncodedWeights:
    """Quantised attention weights as the page stores them.

    ``q``: uint8 ``(layers, heads, Tq, Tk)`` (dense, zeros outside the top-k in top-k mode);
    ``rowmax``: float32 ``(layers, heads, Tq)``; weight = ``q * rowmax / 255``.
    """

    q: np.ndarray
    rowmax: np.ndarray
    top_k: int | None  # None: dense encoding
    kept_mass: float  # mean fraction of each row's attention mass that is kept
    topk_idx: np.ndarray | None = None  # (L, H, Tq, k) column of each kept weight

    def dequantise(self) -> np.ndarray:
        """Weights as the page sees them, float64 ``(layers, heads, Tq, Tk)``."""
        return self.q.astype(np.float64) * self.rowmax.astype(np.float64)[..., None] / 255

    def line_count(self, layer: int, heads: Sequence[int], threshold: float,
                   row: int | None = None, col: int | None = None) -> int:
        """How many head-view lines the page draws (same arithmetic as the page's JS)."""
        heads = list(heads)
        q = self.q[layer, heads].astype(np.float64)  # (h, Tq, Tk)
        w = q * self.rowmax[layer, heads].astype(np.float64)[..., None] / 255
        if row is not None:
            w = w[:, row : row + 1, :]
        if col is not None:
            w = w[:, :, col : col + 1]
        return int(np.count_nonzero((w > 0) & (w >= threshold)))


def normalise_weights(weights: Any) -> np.ndarray:
    """Bring attention weights to ``(layers, heads, Tq, Tk)`` float32.

    Accepts a 4-D array/tensor ``(layers, heads, Tq, Tk)``, a 5-D one with a batch of one
    ``(layers, 1, heads, Tq, Tk)`` or ``(1, layers, heads, Tq, Tk)``, a 3-D ``(heads, Tq, Tk)``
    (one layer), a 2-D ``(Tq, Tk)`` (one layer, one head), or a list of per-layer matrices,
    each ``(heads, Tq, Tk)`` or ``(Tq, Tk)`` (e.g. a decoder's cross-attention per layer).
    """
    if isinstance(weights, (list, tuple)):
        if not weights:
            raise ValueError("weights is an empty list: need at least one layer")
        layers = []
        for i, layer in enumerate(weights):
            a = as_numpy(layer, np.float32)
            if a.ndim == 4 and a.shape[0] == 1:
                a = a[0]  # (1, H, Tq, Tk): a batch of one
            if a.ndim == 2:
                a = a[None]  # (1, Tq, Tk): one head
            if a.ndim != 3:
                raise ValueError(
                    f"layer {i} of the weights list has shape {tuple(a.shape)}; "
                    "expected (heads, Tq, Tk) or (Tq, Tk)"
                )
            layers.append(a)
        shapes = {a.shape for a in layers}
        if len(shapes) != 1:
            raise ValueError(f"the layers of the weights list differ in shape: {sorted(shapes)}")
        return np.stack(layers)  # (L, H, Tq, Tk)
    a = as_numpy(weights, np.float32)
    if a.ndim == 5 and 1 in a.shape[:2]:
        a = a[:, 0] if a.shape[1] == 1 else a[0]  # drop the batch of one
    if a.ndim == 3:
        a = a[None]
    elif a.ndim == 2:
        a = a[None, None]
    if a.ndim != 4:
        raise ValueError(
            f"weights must be (layers, heads, Tq, Tk) (or a list of per-layer matrices), "
            f"got shape {tuple(a.shape)}"
        )
    return a


def encode_weights(weights: np.ndarray, *, top_k: int | None = None,
                   max_dense_bytes: int = MAX_DENSE_BYTES) -> EncodedWeights:
    """Quantise ``(layers, heads, Tq, Tk)`` weights per row to uint8 (see module docstring).

    ``top_k=None`` picks the dense encoding when it fits ``max_dense_bytes`` and otherwise the
    largest ``k`` whose top-k encoding (3 bytes per kept weight) fits.
    """
    if np.any(weights < 0):
        raise ValueError(f"attention weights must be >= 0, found a minimum of {weights.min():.4g}")
    n_layers, n_heads, tq, tk = weights.shape
    if top_k is None and weights.size > max_dense_bytes:
        top_k = max(1, max_dense_bytes // max(1, 3 * n_layers * n_heads * tq))
    if top_k is not None and top_k >= tk:
        top_k = None
    rowmax = weights.max(axis=-1) if tk else np.zeros(weights.shape[:3])  # (L, H, Tq)
    rowmax = rowmax.astype(np.float32)
    total = weights.sum(axis=-1, dtype=np.float64)  # (L, H, Tq)
    idx = None
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        # Zero everything outside each row's top-k before quantising.
        idx = np.argpartition(-weights, top_k - 1, axis=-1)[..., :top_k]  # (L, H, Tq, k)
        kept = np.zeros_like(weights)
        np.put_along_axis(kept, idx, np.take_along_axis(weights, idx, axis=-1), axis=-1)
        weights = kept
    scale = np.where(rowmax > 0, 255.0 / np.maximum(rowmax, 1e-30), 0.0)[..., None]
    q = np.clip(np.rint(weights * scale), 0, 255).astype(np.uint8)  # (L, H, Tq, Tk)
    nonzero = total > 0
    kept = weights.sum(axis=-1, dtype=np.float64)[nonzero] / total[nonzero]
    kept_mass = float(kept.mean()) if nonzero.any() else 1.0
    return EncodedWeights(q=q, rowmax=rowmax, top_k=top_k, kept_mass=kept_mass,
                          topk_idx=idx)


def default_threshold(encoded: EncodedWeights, max_lines: int = MAX_DEFAULT_LINES) -> float:
    """The smallest threshold of the ladder whose busiest layer draws at most ``max_lines``."""
    if encoded.q.size == 0:
        return THRESHOLD_LADDER[0]
    ladder = np.asarray(THRESHOLD_LADDER)
    busiest = np.zeros(len(ladder), dtype=np.int64)
    for layer in range(encoded.q.shape[0]):
        w = EncodedWeights(encoded.q[layer : layer + 1], encoded.rowmax[layer : layer + 1],
                           encoded.top_k, 1.0).dequantise()
        w = np.sort(w[w > 0])
        counts = w.size - np.searchsorted(w, ladder, side="left")  # lines with w >= threshold
        busiest = np.maximum(busiest, counts)
    fits = np.nonzero(busiest <= max_lines)[0]
    return float(ladder[fits[0]]) if fits.size else THRESHOLD_LADDER[-1]


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _split_tokens(tokens: Any, tq: int, tk: int) -> tuple[list[str], list[str], bool]:
    """(query tokens, key tokens, is_cross) from a token list or a (queries, keys) pair."""
    is_pair = (
        isinstance(tokens, (tuple, list))
        and len(tokens) == 2
        and all(isinstance(t, (list, tuple)) for t in tokens)
    )
    if is_pair:
        left, right = [str(t) for t in tokens[0]], [str(t) for t in tokens[1]]
    else:
        left = right = [str(t) for t in tokens]
    if (len(left), len(right)) != (tq, tk):
        raise ValueError(
            f"weights (..., Tq={tq}, Tk={tk}) do not match the tokens: "
            f"{len(left)} query tokens and {len(right)} key tokens"
        )
    return left, right, is_pair


def explorer(
    tokens: Sequence[str] | tuple[Sequence[str], Sequence[str]],
    weights: Any,
    path: str | Path,
    *,
    title: str | None = None,
    threshold: float | None = None,
    top_k: int | None = None,
    max_dense_bytes: int = MAX_DENSE_BYTES,
    layer_names: Sequence[str] | None = None,
) -> Path:
    """Write the self-contained HTML attention explorer and return its path.

    Args:
        tokens: the ``T`` tokens of a self-attention model, or a pair
            ``(query_tokens, key_tokens)`` for cross-attention (outputs attending to inputs).
        weights: ``(layers, heads, Tq, Tk)`` attention weights (rows sum to 1), or any shape
            :func:`normalise_weights` accepts (a list of per-layer cross-attention matrices).
        path: the ``.html`` file to write (parent folders are created).
        title: page title.
        threshold: the head view's initial minimum weight for a line (default: automatic).
        top_k: keep only each row's ``top_k`` weights (default: dense when it fits).
        max_dense_bytes: the dense/top-k switch (1 byte per weight).
        layer_names: labels for the layer selector (default ``Layer 1..L``).

    Raises:
        ValueError: the weights' shape does not match the tokens, weights are negative or
            not finite, or ``layer_names`` has the wrong length.
    """
    w = normalise_weights(weights)  # (L, H, Tq, Tk)
    n_layers, n_heads, tq, tk = w.shape
    left, right, is_cross = _split_tokens(tokens, tq, tk)
    if n_layers == 0 or n_heads == 0:
        raise ValueError(f"need at least one layer and one head, got weights shape {w.shape}")
    names = list(layer_names) if layer_names is not None else [
        f"Layer {i + 1}" for i in range(n_layers)
    ]
    if len(names) != n_layers:
        raise ValueError(f"layer_names has {len(names)} entries for {n_layers} layers")
    encoded = encode_weights(w, top_k=top_k, max_dense_bytes=max_dense_bytes)
    if threshold is None:
        threshold = default_threshold(encoded)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")

    data: dict[str, Any] = {
        "title": title or "Attention explorer",
        "cross": is_cross,
        "left": left,
        "right": right,
        "layers": n_layers,
        "heads": n_heads,
        "nq": tq,
        "nk": tk,
        "layerNames": names,
        "threshold": threshold,
        "rowmax": _b64(encoded.rowmax.astype("<f4")),
        "keptMass": encoded.kept_mass,
    }
    if encoded.top_k is None:
        data.update(encoding="dense", q=_b64(encoded.q))
    else:
        k = encoded.top_k
        idx = encoded.topk_idx  # (L, H, Tq, k)
        vals = np.take_along_axis(encoded.q, idx, axis=-1)
        data.update(encoding="topk", k=k, idx=_b64(idx.astype("<u2")), q=_b64(vals))

    page = _render_page(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _asset(name: str) -> str:
    """The text of ``viz/assets/<name>`` (shipped as package data)."""
    return (resources.files("attnkit.viz") / "assets" / name).read_text(encoding="utf-8")


_PLACEHOLDER = re.compile(r"__(TITLE|CSS|JS|DATA)__")


def _render_page(data: dict[str, Any]) -> str:
    """The page: ``assets/explorer.html`` with its CSS, JS and the data inlined (one file).

    The placeholders are filled in one pass, so text that is inserted (a title, the data) is
    never scanned for placeholders again.
    """
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    payload = payload.replace("</", "<\\/").replace("<!--", "<\\!--")
    parts = {
        "TITLE": html.escape(data["title"]),
        "CSS": _asset("explorer.css"),
        "JS": _asset("explorer.js"),
        "DATA": payload,
    }
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], _asset("explorer.html"))
