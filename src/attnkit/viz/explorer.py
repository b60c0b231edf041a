"""The attention explorer: one self-contained, offline HTML file (inline JS/CSS, no CDN).

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
from collections.abc import Sequence
from dataclasses import dataclass
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


def _render_page(data: dict[str, Any]) -> str:
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    payload = payload.replace("</", "<\\/").replace("<!--", "<\\!--")
    title = html.escape(data["title"])
    return (
        _PAGE.replace("__TITLE__", title)
        .replace("__CSS__", _CSS)
        .replace("__JS__", _JS)
        .replace("__DATA__", payload)
    )


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__CSS__</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <p id="summary" class="sub"></p>
</header>
<section id="head-section">
  <h2>Head view</h2>
  <p class="help">Each token on the left attends to the tokens on the right: a line's opacity is
  the attention weight, its colour the head. Hover a token to see only its lines; click a head's
  square to switch it on or off.</p>
  <div class="controls">
    <label>Layer <select id="layer"></select></label>
    <span id="heads" aria-label="heads"></span>
    <button id="all-heads" type="button">all heads</button>
    <button id="no-heads" type="button">none</button>
    <label>min weight <input id="threshold" type="range" min="0" max="1" step="0.005">
      <output id="threshold-value"></output></label>
    <span id="line-count"></span>
  </div>
  <div id="head-view"><svg id="head-svg" xmlns="http://www.w3.org/2000/svg">
    <g id="lines"></g><g id="left-tokens"></g><g id="right-tokens"></g>
  </svg></div>
</section>
<section id="model-section">
  <h2>Model view</h2>
  <p class="help">Every head of every layer at once (rows: layers, columns: heads; brighter =
  more attention; row = attending token, column = attended token). Click a square to enlarge it.</p>
  <div id="model-grid"></div>
</section>
<div id="zoom" hidden>
  <div class="zoom-box">
    <div class="zoom-head"><span id="zoom-title"></span>
      <button id="zoom-close" type="button">close</button></div>
    <canvas id="zoom-canvas"></canvas>
    <div id="zoom-info">&nbsp;</div>
  </div>
</div>
<script type="application/json" id="attn-data">__DATA__</script>
<script>__JS__</script>
</body>
</html>
"""

_CSS = """
:root { --fg: #1d2330; --muted: #5b6476; --bg: #fbfbfd; --line: #d9dde5; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 24px 48px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
  "Noto Sans", "DejaVu Sans", sans-serif; color: var(--fg); background: var(--bg); }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 24px 0 4px; }
.sub, .help { color: var(--muted); margin: 2px 0 8px; max-width: 70em; }
.controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 8px 0; }
select, button { font: inherit; padding: 2px 8px; }
#heads { display: inline-flex; flex-wrap: wrap; gap: 3px; }
.head-toggle { width: 22px; height: 22px; border: 2px solid transparent; border-radius: 4px;
  cursor: pointer; padding: 0; font-size: 10px; color: #fff; }
.head-toggle.off { opacity: 0.18; }
#line-count { color: var(--muted); }
#line-count.warn { color: #b3261e; }
#head-view { overflow: auto; max-height: 80vh; border: 1px solid var(--line); background: #fff;
  border-radius: 6px; }
#head-svg text { font-size: 13px; dominant-baseline: middle; fill: var(--fg); }
.tok { cursor: default; }
.tok rect { fill: transparent; }
.tok.hl rect { fill: #ffe9a8; }
#model-grid { display: grid; gap: 4px; align-items: center; }
#model-grid .lab { font-size: 11px; color: var(--muted); text-align: center; }
canvas.thumb { width: 72px; height: 72px; image-rendering: pixelated; cursor: zoom-in;
  border: 1px solid var(--line); background: #fff; }
#zoom { position: fixed; inset: 0; background: rgba(20, 24, 32, 0.55); display: flex;
  align-items: center; justify-content: center; }
#zoom[hidden] { display: none; }
.zoom-box { background: #fff; padding: 12px; border-radius: 8px; max-width: 95vw;
  max-height: 95vh; overflow: auto; }
.zoom-head { display: flex; justify-content: space-between; gap: 16px; margin-bottom: 6px; }
#zoom-canvas { image-rendering: pixelated; }
#zoom-info { color: var(--muted); min-height: 1.4em; }
"""

_JS = r"""
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("attn-data").textContent);
  const L = D.layers, H = D.heads, NQ = D.nq, NK = D.nk;
  const MAX_LINES = 100000;

  function b64bytes(s) {
    const bin = atob(s), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  // Dense uint8 weights (L, H, NQ, NK) and float32 row maxima (L, H, NQ): w = q * rowmax / 255.
  const rowmax = new Float32Array(b64bytes(D.rowmax).buffer);
  let Q;
  if (D.encoding === "dense") {
    Q = b64bytes(D.q);
  } else {
    const k = D.k, vals = b64bytes(D.q), idx = new Uint16Array(b64bytes(D.idx).buffer);
    Q = new Uint8Array(L * H * NQ * NK);
    for (let r = 0; r < L * H * NQ; r++) {
      const base = r * NK;
      for (let t = 0; t < k; t++) Q[base + idx[r * k + t]] = vals[r * k + t];
    }
  }

  const state = { layer: 0, heads: new Array(H).fill(true), threshold: D.threshold,
                  hoverSide: null, hoverIndex: -1, lastRenderMs: 0, lines: 0 };
  const headColor = (h) => "hsl(" + Math.round((h * 360) / Math.max(H, 1) + 200) % 360 + ",72%,45%)";

  // ---------------------------------------------------------------- summary and controls
  const summary = document.getElementById("summary");
  let text = (D.cross ? "Cross-attention: " + NQ + " output tokens attending to " + NK + " inputs"
                      : "Self-attention over " + NQ + " tokens") +
             ", " + L + " layer" + (L === 1 ? "" : "s") + " x " + H + " head" + (H === 1 ? "" : "s") + ".";
  if (D.encoding === "topk")
    text += " Long input: each row keeps its " + D.k + " largest weights (" +
            (100 * D.keptMass).toFixed(1) + "% of the attention mass).";
  if (NQ === 0 || NK === 0) text += " There are no tokens to show.";
  summary.textContent = text;

  const layerSel = document.getElementById("layer");
  D.layerNames.forEach((name, i) => {
    const o = document.createElement("option"); o.value = String(i); o.textContent = name;
    layerSel.appendChild(o);
  });
  layerSel.addEventListener("change", () => { state.layer = Number(layerSel.value); render(); });

  const headsBox = document.getElementById("heads");
  for (let h = 0; h < H; h++) {
    const b = document.createElement("button");
    b.type = "button"; b.className = "head-toggle"; b.dataset.head = String(h);
    b.title = "head " + (h + 1); b.textContent = String(h + 1);
    b.style.background = headColor(h);
    b.addEventListener("click", () => { state.heads[h] = !state.heads[h]; syncHeads(); render(); });
    headsBox.appendChild(b);
  }
  function syncHeads() {
    headsBox.querySelectorAll(".head-toggle").forEach((b) =>
      b.classList.toggle("off", !state.heads[Number(b.dataset.head)]));
  }
  document.getElementById("all-heads").addEventListener("click", () => {
    state.heads.fill(true); syncHeads(); render(); });
  document.getElementById("no-heads").addEventListener("click", () => {
    state.heads.fill(false); syncHeads(); render(); });

  const thr = document.getElementById("threshold"), thrOut = document.getElementById("threshold-value");
  thr.value = String(state.threshold); thrOut.textContent = state.threshold.toFixed(3);
  thr.addEventListener("input", () => {
    state.threshold = parseFloat(thr.value); thrOut.textContent = state.threshold.toFixed(3); render();
  });

  // ---------------------------------------------------------------- head view (SVG)
  const SVGNS = "http://www.w3.org/2000/svg";
  const svg = document.getElementById("head-svg");
  const gLines = document.getElementById("lines");
  const ROW = 20, TOP = 24;
  const maxChars = Math.max(4, ...D.left.map((t) => t.length), ...D.right.map((t) => t.length));
  const COLW = Math.min(220, Math.max(110, 14 + 8 * maxChars)), GAP = 260;
  const X1 = COLW + 6, X2 = COLW + GAP - 6;
  svg.setAttribute("width", String(2 * COLW + GAP + 10));
  svg.setAttribute("height", String(TOP + ROW * Math.max(NQ, NK, 1) + 10));
  const yOf = (i) => TOP + ROW * i + ROW / 2;

  function header(x, anchor, label) {
    const t = document.createElementNS(SVGNS, "text");
    t.setAttribute("x", String(x)); t.setAttribute("y", "10");
    t.setAttribute("text-anchor", anchor); t.setAttribute("fill", "#5b6476");
    t.textContent = label; svg.appendChild(t);
  }
  header(4, "start", D.cross ? "output (attending)" : "attending");
  header(COLW + GAP, "start", D.cross ? "input (attended to)" : "attended to");

  function tokenGroup(parent, tokens, side) {
    tokens.forEach((tok, i) => {
      const g = document.createElementNS(SVGNS, "g");
      g.setAttribute("class", "tok " + side); g.dataset.index = String(i); g.dataset.side = side;
      const r = document.createElementNS(SVGNS, "rect");
      r.setAttribute("x", String(side === "left" ? 0 : COLW + GAP)); r.setAttribute("width", String(COLW));
      r.setAttribute("y", String(TOP + ROW * i)); r.setAttribute("height", String(ROW));
      r.setAttribute("pointer-events", "all");
      const t = document.createElementNS(SVGNS, "text");
      t.setAttribute("x", String(side === "left" ? COLW - 2 : COLW + GAP + 2));
      t.setAttribute("y", String(yOf(i)));
      t.setAttribute("text-anchor", side === "left" ? "end" : "start");
      t.textContent = tok === "" ? "\u2205" : tok.trim() === "" ? "\u2423".repeat(tok.length) : tok;
      g.appendChild(r); g.appendChild(t);
      g.addEventListener("mouseenter", () => { state.hoverSide = side; state.hoverIndex = i;
        g.classList.add("hl"); render(); });
      g.addEventListener("mouseleave", () => { state.hoverSide = null; state.hoverIndex = -1;
        g.classList.remove("hl"); render(); });
      parent.appendChild(g);
    });
  }
  tokenGroup(document.getElementById("left-tokens"), D.left, "left");
  tokenGroup(document.getElementById("right-tokens"), D.right, "right");

  function render() {
    const t0 = performance.now();
    const l = state.layer, th = state.threshold, parts = [];
    let count = 0, over = false;
    const i0 = state.hoverSide === "left" ? state.hoverIndex : 0;
    const i1 = state.hoverSide === "left" ? state.hoverIndex + 1 : NQ;
    const j0 = state.hoverSide === "right" ? state.hoverIndex : 0;
    const j1 = state.hoverSide === "right" ? state.hoverIndex + 1 : NK;
    for (let h = 0; h < H && !over; h++) {
      if (!state.heads[h]) continue;
      const color = headColor(h), rbase = (l * H + h) * NQ;
      for (let i = i0; i < i1 && !over; i++) {
        const rm = rowmax[rbase + i];
        if (rm <= 0 || rm < th * 0.999) continue;   // no weight of this row reaches the threshold
        const base = (rbase + i) * NK, y1 = yOf(i);
        for (let j = j0; j < j1; j++) {
          const q = Q[base + j];
          if (q === 0) continue;
          const w = q * rm / 255;
          if (w < th) continue;
          if (++count > MAX_LINES) { over = true; break; }
          parts.push('<line x1="' + X1 + '" y1="' + y1 + '" x2="' + X2 + '" y2="' + yOf(j) +
                     '" stroke="' + color + '" stroke-opacity="' + Math.min(1, 0.08 + w).toFixed(3) +
                     '" stroke-width="2" class="attn" data-head="' + h + '"/>');
        }
      }
    }
    gLines.innerHTML = parts.join("");
    state.lines = parts.length;
    const lc = document.getElementById("line-count");
    lc.textContent = over ? "more than " + MAX_LINES + " lines: raise the min weight"
                          : parts.length + " lines";
    lc.classList.toggle("warn", over);
    state.lastRenderMs = performance.now() - t0;
    document.body.dataset.renderMs = state.lastRenderMs.toFixed(1);
    document.body.dataset.layer = String(state.layer);
  }

  // ---------------------------------------------------------------- model view (canvas)
  // viridis, 9 anchors, interpolated to 256 entries
  const VIR = [[68,1,84],[71,44,122],[59,81,139],[44,113,142],[33,144,141],[39,173,129],
               [92,200,99],[170,220,50],[253,231,37]];
  const LUT = new Uint8Array(256 * 3);
  for (let v = 0; v < 256; v++) {
    const x = (v / 255) * (VIR.length - 1), a = Math.floor(x), b = Math.min(a + 1, VIR.length - 1), f = x - a;
    for (let c = 0; c < 3; c++) LUT[v * 3 + c] = Math.round(VIR[a][c] * (1 - f) + VIR[b][c] * f);
  }
  function weightAt(l, h, i, j) {
    const r = (l * H + h) * NQ + i;
    return Q[r * NK + j] * rowmax[r] / 255;
  }
  // Block-max downsampling of one (NQ, NK) matrix onto a (rows, cols) canvas, scaled to its max.
  function drawMatrix(canvas, l, h, rows, cols) {
    canvas.width = Math.max(cols, 1); canvas.height = Math.max(rows, 1);
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(canvas.width, canvas.height);
    const cell = new Float32Array(rows * cols);
    let mx = 0;
    for (let i = 0; i < NQ; i++) {
      const bi = Math.floor((i * rows) / NQ), r = (l * H + h) * NQ + i, rm = rowmax[r] / 255;
      if (rm <= 0) continue;
      for (let j = 0; j < NK; j++) {
        const q = Q[r * NK + j];
        if (q === 0) continue;
        const w = q * rm, c = bi * cols + Math.floor((j * cols) / NK);
        if (w > cell[c]) cell[c] = w;
        if (w > mx) mx = w;
      }
    }
    for (let p = 0; p < rows * cols; p++) {
      const v = mx > 0 ? Math.round((255 * cell[p]) / mx) : 0;
      img.data[4 * p] = LUT[3 * v]; img.data[4 * p + 1] = LUT[3 * v + 1];
      img.data[4 * p + 2] = LUT[3 * v + 2]; img.data[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  const grid = document.getElementById("model-grid");
  grid.style.gridTemplateColumns = "64px repeat(" + H + ", 74px)";
  grid.appendChild(document.createElement("div"));
  for (let h = 0; h < H; h++) {
    const d = document.createElement("div"); d.className = "lab"; d.textContent = "head " + (h + 1);
    grid.appendChild(d);
  }
  const THUMB = 96;
  const thumbs = [];
  for (let l = 0; l < L; l++) {
    const d = document.createElement("div"); d.className = "lab"; d.textContent = D.layerNames[l];
    grid.appendChild(d);
    for (let h = 0; h < H; h++) {
      const c = document.createElement("canvas");
      c.className = "thumb"; c.dataset.layer = String(l); c.dataset.head = String(h);
      c.title = D.layerNames[l] + ", head " + (h + 1);
      c.addEventListener("click", () => openZoom(l, h));
      grid.appendChild(c); thumbs.push(c);
    }
  }
  function drawThumbs() {
    for (const c of thumbs)
      drawMatrix(c, Number(c.dataset.layer), Number(c.dataset.head), Math.min(NQ, THUMB), Math.min(NK, THUMB));
    document.body.dataset.thumbs = "done";
  }

  // ---------------------------------------------------------------- zoom
  const zoom = document.getElementById("zoom"), zc = document.getElementById("zoom-canvas");
  const zinfo = document.getElementById("zoom-info");
  let zl = 0, zh = 0, zcell = 1;
  function openZoom(l, h) {
    zl = l; zh = h;
    document.getElementById("zoom-title").textContent = D.layerNames[l] + ", head " + (h + 1);
    const rows = Math.min(NQ, 640), cols = Math.min(NK, 640);
    drawMatrix(zc, l, h, rows, cols);
    zcell = Math.max(1, Math.floor(Math.min(640 / Math.max(cols, 1), 640 / Math.max(rows, 1))));
    zc.style.width = cols * zcell + "px"; zc.style.height = rows * zcell + "px";
    zinfo.textContent = "\u00a0";
    zoom.hidden = false;
  }
  zc.addEventListener("mousemove", (e) => {
    const rect = zc.getBoundingClientRect();
    const i = Math.floor(((e.clientY - rect.top) / rect.height) * NQ);
    const j = Math.floor(((e.clientX - rect.left) / rect.width) * NK);
    if (i < 0 || j < 0 || i >= NQ || j >= NK) return;
    zinfo.textContent = JSON.stringify(D.left[i]) + " \u2192 " + JSON.stringify(D.right[j]) +
                        ": " + weightAt(zl, zh, i, j).toFixed(3);
  });
  const closeZoom = () => { zoom.hidden = true; };
  document.getElementById("zoom-close").addEventListener("click", closeZoom);
  zoom.addEventListener("click", (e) => { if (e.target === zoom) closeZoom(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeZoom(); });

  syncHeads();
  render();
  drawThumbs();
  window.attnExplorer = { state, render, openZoom, data: D };
})();
"""
