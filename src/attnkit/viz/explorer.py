"""The attention explorer: one self-contained, offline HTML file (inline JS/CSS, no CDN).

The page itself lives in ``viz/assets/`` (``explorer.html``, ``explorer.css``, ``explorer.js``);
this module inlines the three files and the data into the one file it writes.

``explorer(tokens, weights, path)`` writes a page with

* a **head view**: the tokens in two columns, a line from each token on the left (the query,
  attending) to each token on the right (the key, attended to) with opacity = weight, a layer
  selector, one toggle per head (coloured), and hover on a token to isolate its lines;
* a **model view**: a grid of small heatmaps, every layer x head; click one to enlarge it;
* buttons that save the head view and the model view as SVG and as PNG (drawn in the page,
  downloaded from a blob URL: nothing leaves the machine).

:func:`_write_panels` shows several :class:`Panel` s on one page (what
:func:`attnkit.viz.explore` writes): a selector for the attention kinds present (encoder,
decoder, cross; causal kinds are drawn without lines to future tokens and greyed out above the
diagonal), one for the views of a kind (raw weights, rollout, value norm), and the **neuron
view** (a token's query, the keys, ``q ⊙ k``, the scores and their softmax) from
:func:`neuron_payload`'s float16 queries and keys.

Weights are embedded compactly: each attention row is quantised to uint8 relative to the
row's maximum (kept as float32), so a weight is ``q * rowmax / 255`` with an error below
``rowmax / 510``. That is 1 byte per weight (base64: 4/3), so 6 layers x 12 heads x 64^2
is about 0.4 MB. When the dense tensors would exceed ``max_dense_bytes`` (at 512 tokens one
set is 19M weights; bertviz embeds them as ~100 MB of JSON), each row keeps only its ``top_k``
largest weights (uint16 column index + uint8 value), which holds the file under 25 MB and
keeps nearly all of the attention mass (the page reports how much). Several panels share the
budget in proportion to their sizes, and the page decodes a panel when it is first shown.

A line is drawn for every weight ``>= threshold`` (a slider; the default is the smallest of
0.01, 0.02, 0.05, ... that keeps every layer under ``MAX_DEFAULT_LINES`` lines).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from attnkit.io import atomic_open
from attnkit.viz.fonts import web_font_css
from attnkit.viz.heatmap import as_numpy
from attnkit.viz.notebook import Page

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


def _pick_top_k(shape: Sequence[int], top_k: int | None, max_dense_bytes: int) -> int | None:
    """The top-k of :func:`encode_weights` for weights of ``shape`` (None: dense)."""
    n_layers, n_heads, tq, tk = shape
    if top_k is None and n_layers * n_heads * tq * tk > max_dense_bytes:
        top_k = max(1, max_dense_bytes // max(1, 3 * n_layers * n_heads * tq))
    if top_k is not None and top_k >= tk:
        top_k = None
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return top_k


def _check_nonnegative(weights: np.ndarray) -> None:
    low = weights.min() if weights.size else 0
    if low < 0:
        raise ValueError(f"attention weights must be >= 0, found a minimum of {low:.4g}")


_MAX_TOPK_KEYS = 1 << 16  # a top-k page stores each kept weight's column as uint16
_CHUNK = 1 << 20  # weights quantised at a time: the float64 temporaries stay ~8 MB whatever the length


def _encode_rows(rows: np.ndarray, top_k: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                                 float, int]:
    """Quantise ``rows (n, Tk)`` (see the module docstring), a chunk of rows at a time.

    Returns ``q`` (``(n, Tk)`` dense, or ``(n, k)``: the kept weights, in ``idx``'s order),
    ``rowmax (n,)`` float32, ``idx (n, k)`` int64 or None, and the sum over the rows with
    weight of the share of their mass that is kept, with the number of those rows."""
    n, tk = rows.shape
    width = tk if top_k is None else top_k
    q = np.empty((n, width), np.uint8)
    rowmax = np.zeros(n, np.float32)
    idx = None if top_k is None else np.empty((n, top_k), np.int64)
    kept_sum, kept_rows = 0.0, 0
    step = max(1, _CHUNK // max(1, tk))
    for lo in range(0, n, step):
        w = rows[lo : lo + step]
        if tk:
            rowmax[lo : lo + len(w)] = w.max(axis=-1)
        total = w.sum(axis=-1, dtype=np.float64)
        scale = np.where(rowmax[lo : lo + len(w)] > 0, 255.0 / np.maximum(rowmax[lo : lo + len(w)], 1e-30), 0.0)
        if top_k is not None:
            i = np.argpartition(-w, top_k - 1, axis=-1)[..., :top_k]  # each row's top-k columns
            idx[lo : lo + len(w)] = i
            w = np.take_along_axis(w, i, axis=-1)  # (rows, k): everything outside the top-k is zero
        q[lo : lo + len(w)] = np.clip(np.rint(w * scale[:, None]), 0, 255)
        nonzero = total > 0
        kept_sum += float((w.sum(axis=-1, dtype=np.float64)[nonzero] / total[nonzero]).sum())
        kept_rows += int(nonzero.sum())
    return q, rowmax, idx, kept_sum, kept_rows


def encode_weights(weights: np.ndarray, *, top_k: int | None = None,
                   max_dense_bytes: int = MAX_DENSE_BYTES) -> EncodedWeights:
    """Quantise ``(layers, heads, Tq, Tk)`` weights per row to uint8 (see module docstring).

    ``top_k=None`` picks the dense encoding when it fits ``max_dense_bytes`` and otherwise the
    largest ``k`` whose top-k encoding (3 bytes per kept weight) fits.
    """
    _check_nonnegative(weights)
    n_layers, n_heads, tq, tk = weights.shape
    top_k = _pick_top_k(weights.shape, top_k, max_dense_bytes)
    q = np.zeros(weights.shape, np.uint8)
    rowmax = np.zeros(weights.shape[:3], np.float32)
    idx = None if top_k is None else np.empty((n_layers, n_heads, tq, top_k), np.int64)
    kept_sum, kept_rows = 0.0, 0
    for layer in range(n_layers):  # a layer at a time: no float64 copy of all the weights
        lq, lmax, li, s, r = _encode_rows(weights[layer].reshape(n_heads * tq, tk), top_k)
        rowmax[layer] = lmax.reshape(n_heads, tq)
        kept_sum, kept_rows = kept_sum + s, kept_rows + r
        if li is None:
            q[layer] = lq.reshape(n_heads, tq, tk)
        else:
            idx[layer] = li.reshape(n_heads, tq, top_k)
            np.put_along_axis(q[layer], idx[layer], lq.reshape(n_heads, tq, top_k), axis=-1)
    kept_mass = kept_sum / kept_rows if kept_rows else 1.0
    return EncodedWeights(q=q, rowmax=rowmax, top_k=top_k, kept_mass=kept_mass, topk_idx=idx)


def _line_counts(q: np.ndarray, rowmax: np.ndarray) -> np.ndarray:
    """How many of the quantised weights ``q (..., n)`` (with ``rowmax (...)``) are drawn at each
    threshold of :data:`THRESHOLD_LADDER` (``w > 0`` and ``w >= threshold``, as the page does)."""
    w = q.astype(np.float64) * rowmax.astype(np.float64)[..., None] / 255
    w = np.sort(w[w > 0])
    return w.size - np.searchsorted(w, np.asarray(THRESHOLD_LADDER), side="left")


def _threshold_of(busiest: np.ndarray, max_lines: int = MAX_DEFAULT_LINES) -> float:
    """The smallest threshold of the ladder at which ``busiest`` (the most lines any layer draws at
    each threshold of the ladder) is at most ``max_lines``."""
    fits = np.nonzero(busiest <= max_lines)[0]
    return float(THRESHOLD_LADDER[fits[0]]) if fits.size else THRESHOLD_LADDER[-1]


def default_threshold(encoded: EncodedWeights, max_lines: int = MAX_DEFAULT_LINES) -> float:
    """The smallest threshold of the ladder whose busiest layer draws at most ``max_lines``."""
    if encoded.q.size == 0:
        return THRESHOLD_LADDER[0]
    busiest = np.zeros(len(THRESHOLD_LADDER), dtype=np.int64)
    for layer in range(encoded.q.shape[0]):
        busiest = np.maximum(busiest, _line_counts(encoded.q[layer], encoded.rowmax[layer]))
    return _threshold_of(busiest, max_lines)


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


@dataclass(frozen=True)
class LayerSource:
    """Weights ``(layers, heads, Tq, Tk)`` made one layer at a time: ``source[i]`` calls
    ``layer(i)`` for layer ``i``'s ``(heads, Tq, Tk)`` float32. A :class:`Panel` of a derived
    view (value-norm) holds one, so the page never holds that view's float weights whole."""

    shape: tuple[int, int, int, int]
    layer: Callable[[int], np.ndarray]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, i: int) -> np.ndarray:
        return self.layer(i)


@dataclass
class Panel:
    """One set of weights the page can show: an attention kind in one view.

    ``weights (layers, heads, Tq, Tk)`` float (an array, or a :class:`LayerSource`); ``left``/``right`` the query/key tokens;
    ``kind`` ``"encoder"``/``"decoder"``/``"cross"`` (None: a page without a kind selector);
    ``view`` ``"raw"``, ``"rollout"`` or ``"value-norm"``; ``causal``: query ``i`` sees keys
    ``0 .. i + Tk - Tq`` only (drawn so); ``cross``: two token lists (outputs attending to inputs).
    """

    weights: np.ndarray | LayerSource
    left: list[str]
    right: list[str]
    kind: str | None = None
    view: str = "raw"
    causal: bool = False
    cross: bool = False
    layer_names: list[str] | None = None
    head_names: list[str] | None = None
    threshold: float | None = None


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
    left, right, is_cross = _split_tokens(tokens, w.shape[2], w.shape[3])
    panel = Panel(w, left, right, cross=is_cross, threshold=threshold,
                  layer_names=None if layer_names is None else list(layer_names))
    return _write_panels([panel], path, title=title, top_k=top_k, max_bytes=max_dense_bytes)


def _write_panels(
    panels: Sequence[Panel],
    path: str | Path,
    *,
    title: str | None = None,
    neuron: dict[str, Any] | None = None,
    neuron_note: str = "",
    top_k: int | None = None,
    max_bytes: int = MAX_DENSE_BYTES,
) -> Path:
    """Write a page showing several :class:`Panel` s (kind and view selectors) and return its path.

    The first panel is shown first. ``max_bytes`` bounds the quantised weights of all panels
    together: each gets a share proportional to its dense size, and a panel over its share keeps
    each row's top-k weights. ``neuron`` is :func:`neuron_payload`'s result (kind -> q/k data);
    ``neuron_note`` a sentence shown in the neuron section (why it is missing, or a caveat).

    Raises:
        ValueError: no panels, a panel without layers or heads, tokens that do not match the
            weights, negative weights, a threshold outside ``[0, 1]`` or wrong ``layer_names``.
    """
    return _write_data(_page_data(panels, title=title, neuron=neuron, neuron_note=neuron_note, top_k=top_k,
                                max_bytes=max_bytes), path)


def _page_data(
    panels: Sequence[Panel],
    *,
    title: str | None = None,
    neuron: dict[str, Any] | None = None,
    neuron_note: str = "",
    top_k: int | None = None,
    max_bytes: int = MAX_DENSE_BYTES,
) -> dict[str, Any]:
    """The JSON object :func:`_write_panels` embeds (same arguments): the first panel's record at
    the top level, the others under ``"more"``, the neuron data under ``"neuron"``."""
    if not panels:
        raise ValueError("_write_panels needs at least one panel")
    total = sum(p.weights.size for p in panels)
    views = []
    for p in panels:
        share = max_bytes if total <= max_bytes else max(1, int(max_bytes * p.weights.size / total))
        views.append(_view_data(p, top_k=top_k, max_dense_bytes=share))
    data: dict[str, Any] = {"title": title or "Attention explorer", **views[0]}
    if len(views) > 1:
        data["more"] = views[1:]
    if neuron:
        data["neuron"] = neuron
    if neuron_note:
        data["neuronNote"] = neuron_note
    return data


def _write_data(data: dict[str, Any], path: str | Path) -> Path:
    """Write the page for :func:`_page_data`'s ``data`` to ``path`` (atomically) and return it
    (a :class:`~attnkit.viz.notebook.Page`: a path that shows the page inline in a notebook)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for part in _page_parts(data):  # written as made: the page is never one string in memory
            f.write(part)
    return Page(Path(path))


def _view_data(p: Panel, *, top_k: int | None, max_dense_bytes: int) -> dict[str, Any]:
    """The page's record of one panel: tokens, sizes, labels and the quantised weights."""
    w = p.weights
    n_layers, n_heads, tq, tk = w.shape
    if n_layers == 0 or n_heads == 0:
        raise ValueError(f"need at least one layer and one head, got weights shape {w.shape}")
    if (len(p.left), len(p.right)) != (tq, tk):
        raise ValueError(f"weights (..., Tq={tq}, Tk={tk}) do not match the tokens: "
                         f"{len(p.left)} query tokens and {len(p.right)} key tokens")
    # Labels are text on the page (the exports call string methods on them): str() each one.
    names = ([str(n) for n in p.layer_names] if p.layer_names is not None
             else [f"Layer {i + 1}" for i in range(n_layers)])
    if len(names) != n_layers:
        raise ValueError(f"layer_names has {len(names)} entries for {n_layers} layers")
    if p.head_names is not None and len(p.head_names) != n_heads:
        raise ValueError(f"head_names has {len(p.head_names)} entries for {n_heads} heads")
    # One layer at a time (a LayerSource makes each only now), keeping only what the page stores.
    top_k = _pick_top_k(w.shape, top_k, max_dense_bytes)
    if top_k is not None and tk > _MAX_TOPK_KEYS:  # the page's column indices are uint16
        raise ValueError(f"{tk} key tokens: the page keeps each row's top-k weights with 16-bit column "
                         f"indices, so it shows at most {_MAX_TOPK_KEYS} keys (cut the text)")
    q = np.empty((n_layers, n_heads, tq, tk if top_k is None else top_k), np.uint8)
    idx = None if top_k is None else np.empty(q.shape, "<u2")
    rowmax = np.empty((n_layers, n_heads, tq), "<f4")
    busiest = np.zeros(len(THRESHOLD_LADDER), dtype=np.int64)
    kept_sum, kept_rows = 0.0, 0
    for layer in range(n_layers):
        lw = np.asarray(w[layer])  # (H, Tq, Tk)
        _check_nonnegative(lw)
        lq, lmax, li, s, r = _encode_rows(lw.reshape(n_heads * tq, tk), top_k)
        del lw
        q[layer] = lq.reshape(q.shape[1:])
        rowmax[layer] = lmax.reshape(n_heads, tq)
        if idx is not None:
            idx[layer] = li.reshape(idx.shape[1:])
        kept_sum, kept_rows = kept_sum + s, kept_rows + r
        if p.threshold is None and q.size:
            busiest = np.maximum(busiest, _line_counts(q[layer], rowmax[layer]))
    if p.threshold is not None:
        threshold = p.threshold
    else:
        threshold = _threshold_of(busiest) if q.size else THRESHOLD_LADDER[0]
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    data: dict[str, Any] = {
        "cross": p.cross,
        "left": list(p.left),
        "right": list(p.right),
        "layers": n_layers,
        "heads": n_heads,
        "nq": tq,
        "nk": tk,
        "layerNames": list(names),
        "threshold": threshold,
        "rowmax": _b64(rowmax),
        "keptMass": kept_sum / kept_rows if kept_rows else 1.0,
    }
    if p.kind is not None:
        data.update(kind=p.kind, view=p.view, causal=p.causal)
    elif p.causal:
        data["causal"] = True
    if p.head_names is not None:
        data["headNames"] = [str(n) for n in p.head_names]
    if top_k is None:
        data.update(encoding="dense", q=_b64(q))
    else:  # q: the kept weights (L, H, Tq, k), in the order of their columns idx
        data.update(encoding="topk", k=top_k, idx=_b64(idx), q=_b64(q))
    return data


def neuron_payload(projections: dict[str, Any], *, notes: dict[str, str] | None = None) -> dict[str, Any]:
    """The neuron view's data: per kind, float16 ``q (L, H, Tq, d)``, ``k (L, H, Tk, d)``, the
    scale of each layer, the bias added to the scores (stored once when every layer adds the same)
    and whether the kind is causal. ``projections``: kind -> :class:`attnkit.viz.hooks.Projections`;
    ``notes``: kind -> a sentence shown with that kind's neuron view."""
    out: dict[str, Any] = {}
    for kind, p in projections.items():
        q = p.q.detach().cpu().numpy().astype("<f2")  # (L, H, Tq, d)
        k = p.k.detach().cpu().numpy().astype("<f2")  # (L, H, Tk, d)
        n_layers, n_heads, tq, d = q.shape
        entry: dict[str, Any] = {
            "layers": n_layers, "heads": n_heads, "nq": tq, "nk": k.shape[2], "d": d,
            "q": _b64(q), "k": _b64(k), "scale": [float(s) for s in p.scale], "causal": bool(p.causal),
            "scoreLabel": "q\u00b7k/\u221ad" if all(abs(s - d**-0.5) < 1e-6 for s in p.scale) else
                          "q\u00b7k" if all(s == 1.0 for s in p.scale) else "q\u00b7k\u00d7scale",
        }
        if p.bias is not None:
            bias = p.bias.detach().cpu().float().numpy()  # (L, H, Tq, Tk)
            shared = all(np.array_equal(bias[0], b) for b in bias[1:])
            entry.update(bias=_b64(np.maximum(bias[:1] if shared else bias, -6e4).astype("<f2")),
                         biasLayers=1 if shared else n_layers)
            entry["scoreLabel"] += " + bias"
        if notes and kind in notes:
            entry["note"] = notes[kind]
        out[kind] = entry
    return out


def json_chars(obj: Any) -> int:
    """Characters ``obj`` takes in the page (compact JSON)."""
    return len(json.dumps(obj, ensure_ascii=True, separators=(",", ":")))


def _asset(name: str) -> str:
    """The text of ``viz/assets/<name>`` (shipped as package data)."""
    return (resources.files("attnkit.viz") / "assets" / name).read_text(encoding="utf-8")


_PLACEHOLDER = re.compile(r"__(TITLE|CSS|FONTS|JS|DATA)__")


def _strings(obj: Any) -> list[str]:
    """Every string in a JSON-like object (keys and values): the text a page can show."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (str(k), *_strings(v))]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return []


# The characters outside ASCII that explorer.js and explorer.html write themselves, by the part of
# the page that shows them (tests/test_page_fonts.py checks that every one in the assets is here).
UI_CHARACTERS = {
    "zoom": "\u2192",  # the model view's zoom caption: "query" → "key"
    "word-start": "\u00b7",  # a token that starts with a space: a faint dot, then the word
    "empty-token": "\u2205",
    "blank-token": "\u2423",  # one per space of a token that is only spaces
    "value-norm": "\u2016\u03b1\u1d62\u2c7c\u1d65\u2092\u00b7",  # the view's help text
    "neuron": "\u2299\u00b7\u221a",  # the neuron section's help and headers
}


def shown_characters(data: dict[str, Any]) -> list[str]:
    """The texts the page for ``data`` shows: every string of the data and the characters the
    page's own markup and script write for it (:data:`UI_CHARACTERS`)."""
    texts = _strings(data)
    panels = [data, *data.get("more", [])]
    tokens = [t for p in panels for side in ("left", "right") for t in p.get(side, [])]
    parts = ["zoom"]
    if any(len(t) > 1 and t[0] == " " and t.strip() for t in tokens):
        parts.append("word-start")
    if any(t == "" for t in tokens):
        parts.append("empty-token")
    if any(t and not t.strip() for t in tokens):
        parts.append("blank-token")
    if any(p.get("view") == "value-norm" for p in panels):
        parts.append("value-norm")
    if "neuron" in data or "neuronNote" in data:
        parts.append("neuron")
    return [*texts, *(UI_CHARACTERS[part] for part in parts)]


def _page_parts(data: dict[str, Any]) -> Iterator[str]:
    """The page for ``data`` in pieces: ``assets/explorer.html`` with its CSS, JS, the data and
    the fonts of the characters it shows (:func:`attnkit.viz.fonts.web_font_css`) inlined.

    The placeholders are filled in one pass, so text that is inserted (a title, the data) is
    never scanned for placeholders again. The data comes as JSON in the encoder's pieces, so a
    writer never holds the page (tens of MB at 1,024 tokens) as one string, nor copies of it.
    """
    extra = "relevance" in data  # attnkit.explain's relevance view: its own asset files
    parts = {
        "TITLE": lambda: [html.escape(data["title"])],
        "CSS": lambda: [_asset("explorer.css") + (_asset("relevance.css") if extra else "")],
        "FONTS": lambda: [web_font_css(shown_characters(data))],
        "JS": lambda: [_asset("explorer.js") + ("\n" + _asset("relevance.js") if extra else "")],
        "DATA": lambda: _json_pieces(data),
    }
    template = _asset("explorer.html")
    at = 0
    for m in _PLACEHOLDER.finditer(template):
        yield template[at : m.start()]
        yield from parts[m.group(1)]()
        at = m.end()
    yield template[at:]


def _json_pieces(data: dict[str, Any]) -> Iterator[str]:
    """``json.dumps(data)`` (compact, ASCII) in pieces, made safe inside a <script> element.

    Every ``<`` is written as the JSON escape ``\\u003c``, so neither ``</script`` nor ``<!--``
    (which would change how the HTML parser reads the rest of the script) can occur, and the
    text is still valid JSON (``<\\!--`` is not: ``JSON.parse`` throws on ``\\!``). ``<`` occurs
    only inside JSON strings, which the encoder yields whole."""
    encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
    for piece in encoder.iterencode(data):
        yield piece.replace("<", "\\u003c") if "<" in piece else piece


def _render_page(data: dict[str, Any]) -> str:
    """The page of :func:`_page_parts` as one string (one file: nothing is fetched)."""
    return "".join(_page_parts(data))
