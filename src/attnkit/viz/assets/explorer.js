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
