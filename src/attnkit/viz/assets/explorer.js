"use strict";
(function () {
  const D = JSON.parse(document.getElementById("attn-data").textContent);
  // The data object is the first view; D.more holds the others (other attention kinds, rollout,
  // value-norm). Each view: kind, view, causal, cross, left, right, layers, heads, nq, nk,
  // layerNames, headNames, threshold, keptMass and the quantised weights (encoding, q, rowmax, ...).
  const VIEWS = [D].concat(D.more || []);
  const MAX_LINES = 100000;
  const SVGNS = "http://www.w3.org/2000/svg";
  const KIND_NAMES = { encoder: "encoder", decoder: "decoder", cross: "cross" };
  const VIEW_NAMES = { raw: "raw weights", rollout: "rollout", "value-norm": "value norm" };
  const VIEW_HELP = {
    raw: "",
    rollout: "Attention rollout (Abnar & Zuidema 2020): each layer's heads averaged, the " +
      "residual added as an identity (0.5\u00b7W + 0.5\u00b7I, rows renormalised) and the layers " +
      "multiplied up to the chosen one: how much of each token's state comes from each input token.",
    "value-norm": "Value-norm-weighted attention (Kobayashi et al. 2020): \u2016\u03b1\u1d62\u2c7c " +
      "f(x\u2c7c)\u2016 with f(x) = (xW\u1d65 + b\u1d65)W\u2092 per head, the size of what each head " +
      "moves from a token rather than only its weight; each row is rescaled to sum to 1.",
  };

  function b64bytes(s) {
    const bin = atob(s), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function b64half(s) {  // little-endian float16 -> Float32Array
    const u = new Uint16Array(b64bytes(s).buffer), out = new Float32Array(u.length);
    for (let i = 0; i < u.length; i++) {
      const h = u[i], sign = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
      out[i] = e === 0 ? sign * m * Math.pow(2, -24)
             : e === 31 ? (m ? NaN : sign * Infinity)
             : sign * (1 + m / 1024) * Math.pow(2, e - 15);
    }
    return out;
  }
  // Dense uint8 weights (L, H, NQ, NK) and float32 row maxima (L, H, NQ): w = q * rowmax / 255.
  // Decoded when a view is first shown.
  function decode(v) {
    if (v._Q) return;
    v._rowmax = new Float32Array(b64bytes(v.rowmax).buffer);
    if (v.encoding === "dense") {
      v._Q = b64bytes(v.q);
    } else {
      const k = v.k, vals = b64bytes(v.q), idx = new Uint16Array(b64bytes(v.idx).buffer);
      const Q = new Uint8Array(v.layers * v.heads * v.nq * v.nk), NK = v.nk;
      for (let r = 0; r < v.layers * v.heads * v.nq; r++) {
        const base = r * NK;
        for (let t = 0; t < k; t++) Q[base + idx[r * k + t]] = vals[r * k + t];
      }
      v._Q = Q;
    }
  }

  let V = VIEWS[0], L = 0, H = 0, NQ = 0, NK = 0, Q = null, rowmax = null;
  const state = { view: 0, layer: 0, heads: [], threshold: 0,
                  hoverSide: null, hoverIndex: -1, lastRenderMs: 0, lines: 0,
                  neuronHead: 0, neuronToken: 0 };
  const headColor = (h) => "hsl(" + Math.round((h * 360) / Math.max(H, 1) + 200) % 360 + ",72%,45%)";
  const headName = (h) => (V.headNames ? V.headNames[h] : "head " + (h + 1));
  const tokenText = (tok) => tok === "" ? "\u2205" : tok.trim() === "" ? "\u2423".repeat(tok.length) : tok;
  const viewKey = (v) => (v.kind || "") + ":" + (v.view || "raw");
  // Causal views: query i may attend to keys 0 .. i + NK - NQ only.
  const lastKey = (i) => (V.causal ? i + NK - NQ : NK - 1);

  // ---------------------------------------------------------------- summary and selectors
  function summarise() {
    const kind = V.kind ? KIND_NAMES[V.kind] + " " : "";
    let text = (V.cross ? "Cross-attention: " + NQ + " output tokens attending to " + NK + " inputs"
                        : (V.causal ? "Causal " + kind + "self-attention over " : "Self-attention over ") +
                          NQ + " tokens") +
               ", " + L + " layer" + (L === 1 ? "" : "s") + " x " + H + " head" + (H === 1 ? "" : "s") + ".";
    if (V.causal) text += " Each token attends only to itself and the tokens before it.";
    if (V.encoding === "topk")
      text += " Long input: each row keeps its " + V.k + " largest weights (" +
              (100 * V.keptMass).toFixed(1) + "% of the attention mass).";
    if (NQ === 0 || NK === 0) text += " There are no tokens to show.";
    document.getElementById("summary").textContent = text;
    document.getElementById("view-help").textContent = VIEW_HELP[V.view || "raw"] || "";
  }

  const kindsBox = document.getElementById("kinds"), viewsBox = document.getElementById("views");
  const kinds = [];
  VIEWS.forEach((v) => { if (v.kind && kinds.indexOf(v.kind) < 0) kinds.push(v.kind); });
  function choiceButton(box, cls, key, label, onClick) {
    const b = document.createElement("button");
    b.type = "button"; b.className = cls; b.dataset[cls] = key; b.textContent = label;
    b.addEventListener("click", onClick); box.appendChild(b);
  }
  kinds.forEach((k) => choiceButton(kindsBox, "kind", k, KIND_NAMES[k] || k, () => {
    let i = VIEWS.findIndex((v) => v.kind === k && v.view === V.view);
    if (i < 0) i = VIEWS.findIndex((v) => v.kind === k);
    setView(i);
  }));
  kindsBox.hidden = kinds.length === 0;
  function syncSelectors() {
    kindsBox.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b.dataset.kind === V.kind));
    viewsBox.innerHTML = "";
    const here = VIEWS.map((v, i) => [v, i]).filter(([v]) => v.kind === V.kind);
    here.forEach(([v, i]) => choiceButton(viewsBox, "view", v.view || "raw",
                                          VIEW_NAMES[v.view || "raw"] || v.view, () => setView(i)));
    viewsBox.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b.dataset.view === (V.view || "raw")));
    viewsBox.hidden = here.length < 2;
  }

  // ---------------------------------------------------------------- head view controls
  const layerSel = document.getElementById("layer");
  layerSel.addEventListener("change", () => {
    state.layer = Number(layerSel.value); render(); renderNeuron(); });
  const headsBox = document.getElementById("heads");
  function buildHeadControls() {
    layerSel.innerHTML = "";
    V.layerNames.forEach((name, i) => {
      const o = document.createElement("option"); o.value = String(i); o.textContent = name;
      layerSel.appendChild(o);
    });
    layerSel.value = String(state.layer);
    headsBox.innerHTML = "";
    for (let h = 0; h < H; h++) {
      const b = document.createElement("button");
      b.type = "button"; b.className = "head-toggle"; b.dataset.head = String(h);
      b.title = headName(h); b.textContent = String(h + 1);
      b.style.background = headColor(h);
      b.addEventListener("click", () => { state.heads[h] = !state.heads[h]; syncHeads(); render(); });
      headsBox.appendChild(b);
    }
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
  function syncThreshold() { thr.value = String(state.threshold); thrOut.textContent = state.threshold.toFixed(3); }
  thr.addEventListener("input", () => {
    state.threshold = parseFloat(thr.value); thrOut.textContent = state.threshold.toFixed(3); render();
  });

  // ---------------------------------------------------------------- head view (SVG)
  const svg = document.getElementById("head-svg");
  const gHeaders = document.getElementById("headers"), gLines = document.getElementById("lines");
  const gLeft = document.getElementById("left-tokens"), gRight = document.getElementById("right-tokens");
  const ROW = 20, TOP = 24, GAP = 260;
  let COLW = 110, X1 = 0, X2 = 0;
  const yOf = (i) => TOP + ROW * i + ROW / 2;

  function svgEl(name, attrs, text) {
    const e = document.createElementNS(SVGNS, name);
    for (const a in attrs) e.setAttribute(a, String(attrs[a]));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function header(x, anchor, label) {
    gHeaders.appendChild(svgEl("text", { x: x, y: 10, "text-anchor": anchor, class: "hdr" }, label));
  }
  // A token's text; a leading space (a word start, see attnkit.viz.tokens) is drawn as a faint dot.
  function tokenLabel(t, tok) {
    const shown = tokenText(tok);
    if (shown.length > 1 && shown[0] === " " && shown.trim() !== "") {
      t.appendChild(svgEl("tspan", { class: "sp" }, "\u00b7"));
      t.appendChild(document.createTextNode(shown.slice(1)));
    } else {
      t.textContent = shown;
    }
  }
  function tokenGroup(parent, tokens, side) {
    parent.innerHTML = "";
    tokens.forEach((tok, i) => {
      const g = svgEl("g", { class: "tok " + side });
      g.dataset.index = String(i); g.dataset.side = side;
      const r = svgEl("rect", { x: side === "left" ? 0 : COLW + GAP, width: COLW, y: TOP + ROW * i,
                                height: ROW, "pointer-events": "all" });
      const t = svgEl("text", { x: side === "left" ? COLW - 2 : COLW + GAP + 2, y: yOf(i),
                                "text-anchor": side === "left" ? "end" : "start" });
      tokenLabel(t, tok);
      g.appendChild(r); g.appendChild(t);
      g.addEventListener("mouseenter", () => {
        state.hoverSide = side; state.hoverIndex = i; g.classList.add("hl");
        if (side === "left") { state.neuronToken = i; renderNeuron(); }
        markFuture(); render(); });
      g.addEventListener("mouseleave", () => {
        state.hoverSide = null; state.hoverIndex = -1; g.classList.remove("hl"); markFuture(); render(); });
      parent.appendChild(g);
    });
  }
  // The causal cue: while a query token is hovered, the keys it cannot see are greyed out.
  function markFuture() {
    const i = V.causal && state.hoverSide === "left" ? state.hoverIndex : -1;
    gRight.querySelectorAll(".tok").forEach((g) =>
      g.classList.toggle("future", i >= 0 && Number(g.dataset.index) > lastKey(i)));
  }
  function buildHeadView() {
    const maxChars = Math.max(4, ...V.left.map((t) => t.length), ...V.right.map((t) => t.length));
    COLW = Math.min(220, Math.max(110, 14 + 8 * maxChars));
    X1 = COLW + 6; X2 = COLW + GAP - 6;
    svg.setAttribute("width", String(2 * COLW + GAP + 10));
    svg.setAttribute("height", String(TOP + ROW * Math.max(NQ, NK, 1) + 10));
    gHeaders.innerHTML = "";
    header(4, "start", V.cross ? "output (attending)" : "attending");
    header(COLW + GAP, "start", V.cross ? "input (attended to)"
                                       : V.causal ? "attended to (causal)" : "attended to");
    tokenGroup(gLeft, V.left, "left");
    tokenGroup(gRight, V.right, "right");
  }

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
        const base = (rbase + i) * NK, y1 = yOf(i), jEnd = Math.min(j1, lastKey(i) + 1);
        for (let j = j0; j < jEnd; j++) {
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
  // Causal views paint the cells no query can see (above the diagonal) light grey.
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
      let rgb = [LUT[3 * v], LUT[3 * v + 1], LUT[3 * v + 2]];
      if (V.causal) {  // the block's first key after its last query's last visible key
        const bi = Math.floor(p / cols), bj = p % cols;
        const lastQuery = Math.ceil(((bi + 1) * NQ) / rows) - 1, firstKey = Math.ceil((bj * NK) / cols);
        if (firstKey > lastKey(lastQuery)) rgb = [236, 238, 242];
      }
      img.data[4 * p] = rgb[0]; img.data[4 * p + 1] = rgb[1];
      img.data[4 * p + 2] = rgb[2]; img.data[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  const grid = document.getElementById("model-grid");
  const THUMB = 96;
  let thumbs = [];
  function buildGrid() {
    grid.innerHTML = "";
    grid.style.gridTemplateColumns = "64px repeat(" + H + ", 74px)";
    grid.appendChild(document.createElement("div"));
    for (let h = 0; h < H; h++) {
      const d = document.createElement("div"); d.className = "lab"; d.textContent = headName(h);
      grid.appendChild(d);
    }
    thumbs = [];
    for (let l = 0; l < L; l++) {
      const d = document.createElement("div"); d.className = "lab"; d.textContent = V.layerNames[l];
      grid.appendChild(d);
      for (let h = 0; h < H; h++) {
        const c = document.createElement("canvas");
        c.className = "thumb"; c.dataset.layer = String(l); c.dataset.head = String(h);
        c.title = V.layerNames[l] + ", " + headName(h);
        c.addEventListener("click", () => openZoom(l, h));
        grid.appendChild(c); thumbs.push(c);
      }
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
    document.getElementById("zoom-title").textContent = V.layerNames[l] + ", " + headName(h);
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
    zinfo.textContent = JSON.stringify(V.left[i]) + " \u2192 " + JSON.stringify(V.right[j]) +
                        ": " + weightAt(zl, zh, i, j).toFixed(3);
  });
  const closeZoom = () => { zoom.hidden = true; };
  document.getElementById("zoom-close").addEventListener("click", closeZoom);
  zoom.addEventListener("click", (e) => { if (e.target === zoom) closeZoom(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeZoom(); });

  // ---------------------------------------------------------------- neuron view
  // D.neuron[kind]: float16 q (L, H, NQ, d) and k (L, H, NK, d), scale per layer, optional bias
  // (biasLayers x H x NQ x NK) added to the scores (T5's relative position bias).
  const neuronSection = document.getElementById("neuron-section");
  const neuronSvg = document.getElementById("neuron-svg"), neuronNote = document.getElementById("neuron-note");
  const neuronHead = document.getElementById("neuron-head"), neuronToken = document.getElementById("neuron-token");
  neuronSection.hidden = !D.neuron && !D.neuronNote;
  neuronHead.addEventListener("change", () => { state.neuronHead = Number(neuronHead.value); renderNeuron(); });
  neuronToken.addEventListener("change", () => { state.neuronToken = Number(neuronToken.value); renderNeuron(); });
  function neuronData() {
    const N = D.neuron && V.kind ? D.neuron[V.kind] : null;
    if (N && !N._q) {
      N._q = b64half(N.q); N._k = b64half(N.k);
      N._bias = N.bias ? b64half(N.bias) : null;
    }
    return N;
  }
  function buildNeuronControls() {
    const N = neuronData();
    neuronHead.innerHTML = ""; neuronToken.innerHTML = "";
    if (!N) return;
    for (let h = 0; h < N.heads; h++) {
      const o = document.createElement("option"); o.value = String(h); o.textContent = "head " + (h + 1);
      neuronHead.appendChild(o);
    }
    V.left.forEach((tok, i) => {
      const o = document.createElement("option"); o.value = String(i); o.textContent = i + ": " + tokenText(tok);
      neuronToken.appendChild(o);
    });
    state.neuronHead = Math.min(state.neuronHead, N.heads - 1);
    state.neuronToken = Math.min(state.neuronToken, Math.max(N.nq - 1, 0));
  }
  function cellColor(x) {  // blue for positive, orange for negative; x in [-1, 1]
    const a = Math.min(1, Math.abs(x));
    return x >= 0 ? "rgba(37,99,235," + a.toFixed(3) + ")" : "rgba(234,88,12," + a.toFixed(3) + ")";
  }
  function renderNeuron() {
    const N = neuronData();
    let note = D.neuronNote || "";
    if (N && N.note) note = N.note + (note ? " " + note : "");
    if (N && V.view && V.view !== "raw") note = "(These are the raw weights of the layer; the view above shows " +
      VIEW_NAMES[V.view] + ".) " + note;
    neuronNote.textContent = N ? note : (note || "No neuron view for this attention.");
    document.getElementById("neuron-view").hidden = !N;
    if (!N || N.nq === 0 || N.nk === 0) { neuronSvg.innerHTML = ""; return; }
    const l = Math.min(state.layer, N.layers - 1), h = state.neuronHead, i = state.neuronToken, d = N.d;
    neuronHead.value = String(h); neuronToken.value = String(i);
    const qo = ((l * N.heads + h) * N.nq + i) * d, kb = (l * N.heads + h) * N.nk * d;
    const q = N._q.subarray(qo, qo + d), scale = N.scale[l];
    let qmax = 1e-12, kmax = 1e-12, pmax = 1e-12;
    for (let c = 0; c < d; c++) qmax = Math.max(qmax, Math.abs(q[c]));
    const prods = new Float32Array(N.nk * d), scores = new Float64Array(N.nk);
    const biasBase = N._bias ? ((N.biasLayers > 1 ? l : 0) * N.heads + h) * N.nq * N.nk + i * N.nk : 0;
    const last = N.causal ? i + N.nk - N.nq : N.nk - 1;
    let best = -Infinity;
    for (let j = 0; j < N.nk; j++) {
      let s = 0;
      for (let c = 0; c < d; c++) {
        const kv = N._k[kb + j * d + c], p = q[c] * kv;
        prods[j * d + c] = p; s += p;
        kmax = Math.max(kmax, Math.abs(kv)); pmax = Math.max(pmax, Math.abs(p));
      }
      s = s * scale + (N._bias ? N._bias[biasBase + j] : 0);
      scores[j] = j > last ? -Infinity : s;
      if (scores[j] > best) best = scores[j];
    }
    let total = 0;
    const probs = new Float64Array(N.nk);
    for (let j = 0; j < N.nk; j++) { probs[j] = scores[j] === -Infinity ? 0 : Math.exp(scores[j] - best); total += probs[j]; }
    for (let j = 0; j < N.nk; j++) probs[j] /= total;

    const ROWH = 16, CW = Math.max(2, Math.min(10, Math.floor(320 / d))), LABW = COLW;
    const XK = LABW + 8, XP = XK + CW * d + 24, XS = XP + CW * d + 24, XB = XS + 70;
    const TOPN = 2 * ROWH + 14, parts = [];
    const cells = (x0, y, vec, off, mx) => {
      for (let c = 0; c < d; c++)
        parts.push('<rect x="' + (x0 + c * CW) + '" y="' + (y + 2) + '" width="' + CW + '" height="' + (ROWH - 4) +
                   '" fill="' + cellColor(vec[off + c] / mx) + '"/>');
    };
    const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    const txt = (x, y, s, anchor, cls) => parts.push('<text x="' + x + '" y="' + (y + ROWH / 2) + '" text-anchor="' +
      (anchor || "start") + '"' + (cls ? ' class="' + cls + '"' : "") + ">" + esc(s) + "</text>");
    txt(LABW, 0, "query", "end", "hdr"); cells(XK, 0, q, 0, qmax);
    txt(XK + CW * d + 6, 0, tokenText(V.left[i]), "start");
    txt(LABW, ROWH + 10, "key", "end", "hdr"); txt(XK, ROWH + 10, "k", "start", "hdr");
    txt(XP, ROWH + 10, "q \u2299 k", "start", "hdr");
    txt(XS + 60, ROWH + 10, N.scoreLabel || "q\u00b7k/\u221ad", "end", "hdr");
    txt(XB, ROWH + 10, "softmax", "start", "hdr");
    for (let j = 0; j < N.nk; j++) {
      const y = TOPN + j * ROWH, masked = j > last;
      parts.push('<g class="nrow' + (masked ? " masked" : "") + '" data-key="' + j + '" data-p="' +
                 probs[j].toPrecision(6) + '" data-score="' + (masked ? "-inf" : scores[j].toPrecision(6)) + '">');
      txt(LABW, y, tokenText(V.right[j]), "end");
      cells(XK, y, N._k, kb + j * d, kmax);
      cells(XP, y, prods, j * d, pmax);
      txt(XS + 60, y, masked ? "masked" : scores[j].toFixed(2), "end");
      parts.push('<rect x="' + XB + '" y="' + (y + 3) + '" width="' + (100 * probs[j]).toFixed(1) + '" height="' +
                 (ROWH - 6) + '" fill="' + headColor(h) + '"/>');
      txt(XB + 104, y, probs[j].toFixed(3), "start");
      parts.push("</g>");
    }
    neuronSvg.setAttribute("width", String(XB + 160));
    neuronSvg.setAttribute("height", String(TOPN + N.nk * ROWH + 6));
    neuronSvg.innerHTML = parts.join("");
    document.body.dataset.neuron = l + ":" + h + ":" + i;
  }

  // ---------------------------------------------------------------- export (SVG and PNG)
  // fonts: the page's embedded glyph subsets travel with the exported SVG (any script reads)
  const PAGE_FONTS = (document.getElementById("page-fonts") || { textContent: "" }).textContent;
  // end fonts
  const INLINE_STYLE = PAGE_FONTS + "text{font:13px 'attnkit-text',system-ui,'Noto Sans','DejaVu Sans',sans-serif;fill:#1d2330;" +
    "dominant-baseline:middle;white-space:pre}.hdr{fill:#5b6476;font-size:12px}.sp{fill:#b8bfcc}" +
    ".tok.future text{fill:#b8bfcc}";
  function fileStem(what) {
    return "attention-" + what + (V.kind ? "-" + V.kind : "") + (V.view && V.view !== "raw" ? "-" + V.view : "") +
           (what === "head-view" ? "-layer" + (state.layer + 1) : "");
  }
  function download(blob, name) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = name;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    document.body.dataset.exported = name;
  }
  // The head view as a standalone SVG document: the drawing plus its styles and a white background.
  function headSvgText() {
    const clone = svg.cloneNode(true);
    clone.setAttribute("xmlns", SVGNS);
    const style = document.createElementNS(SVGNS, "style");
    style.textContent = INLINE_STYLE;
    clone.insertBefore(style, clone.firstChild);
    clone.insertBefore(svgEl("rect", { width: "100%", height: "100%", fill: "#ffffff" }), style.nextSibling);
    clone.querySelectorAll("rect[pointer-events]").forEach((r) => r.setAttribute("fill", "none"));
    return new XMLSerializer().serializeToString(clone);
  }
  // The model view as SVG: labels as text, every thumbnail as an embedded PNG image.
  const CELL = 72, LABEL_W = 70, LABEL_H = 20;
  function modelSvgText() {
    const w = LABEL_W + H * (CELL + 4), h = LABEL_H + L * (CELL + 4);
    const out = ['<svg xmlns="' + SVGNS + '" width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + " " + h + '">',
                 "<style>" + INLINE_STYLE + "</style>", '<rect width="100%" height="100%" fill="#ffffff"/>'];
    const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    for (let hh = 0; hh < H; hh++)
      out.push('<text class="hdr" x="' + (LABEL_W + hh * (CELL + 4) + CELL / 2) + '" y="10" text-anchor="middle">' +
               esc(headName(hh)) + "</text>");
    thumbs.forEach((c) => {
      const l = Number(c.dataset.layer), hh = Number(c.dataset.head);
      if (hh === 0)
        out.push('<text class="hdr" x="4" y="' + (LABEL_H + l * (CELL + 4) + CELL / 2) + '">' +
                 esc(V.layerNames[l]) + "</text>");
      out.push('<image class="thumb" x="' + (LABEL_W + hh * (CELL + 4)) + '" y="' + (LABEL_H + l * (CELL + 4)) +
               '" width="' + CELL + '" height="' + CELL + '" preserveAspectRatio="none" ' +
               'style="image-rendering:pixelated" href="' + c.toDataURL("image/png") + '"/>');
    });
    out.push("</svg>");
    return out.join("");
  }
  function modelCanvas() {
    const scale = 2, c = document.createElement("canvas");
    c.width = scale * (LABEL_W + H * (CELL + 4)); c.height = scale * (LABEL_H + L * (CELL + 4));
    const ctx = c.getContext("2d");
    ctx.scale(scale, scale);
    ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, c.width, c.height);
    ctx.fillStyle = "#5b6476"; ctx.font = "12px system-ui, sans-serif"; ctx.textBaseline = "middle";
    ctx.textAlign = "center";
    for (let hh = 0; hh < H; hh++) ctx.fillText(headName(hh), LABEL_W + hh * (CELL + 4) + CELL / 2, 10);
    ctx.textAlign = "left"; ctx.imageSmoothingEnabled = false;
    thumbs.forEach((t) => {
      const l = Number(t.dataset.layer), hh = Number(t.dataset.head);
      if (hh === 0) ctx.fillText(V.layerNames[l], 4, LABEL_H + l * (CELL + 4) + CELL / 2);
      ctx.drawImage(t, LABEL_W + hh * (CELL + 4), LABEL_H + l * (CELL + 4), CELL, CELL);
    });
    return c;
  }
  function svgToPng(text, width, height, name) {
    const url = URL.createObjectURL(new Blob([text], { type: "image/svg+xml" }));
    const img = new Image();
    img.onload = () => {
      const scale = 2, c = document.createElement("canvas");
      c.width = Math.max(1, scale * width); c.height = Math.max(1, scale * height);
      const ctx = c.getContext("2d");
      ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, c.width, c.height);
      ctx.drawImage(img, 0, 0, c.width, c.height);
      URL.revokeObjectURL(url);
      c.toBlob((blob) => download(blob, name), "image/png");
    };
    img.onerror = () => { URL.revokeObjectURL(url); console.error("could not draw the head view as PNG"); };
    img.src = url;
  }
  document.getElementById("export-head-svg").addEventListener("click", () =>
    download(new Blob([headSvgText()], { type: "image/svg+xml" }), fileStem("head-view") + ".svg"));
  document.getElementById("export-head-png").addEventListener("click", () =>
    svgToPng(headSvgText(), Number(svg.getAttribute("width")), Number(svg.getAttribute("height")),
             fileStem("head-view") + ".png"));
  document.getElementById("export-model-svg").addEventListener("click", () =>
    download(new Blob([modelSvgText()], { type: "image/svg+xml" }), fileStem("model-view") + ".svg"));
  document.getElementById("export-model-png").addEventListener("click", () =>
    modelCanvas().toBlob((blob) => download(blob, fileStem("model-view") + ".png"), "image/png"));

  // ---------------------------------------------------------------- switching views
  function setView(index) {
    document.body.dataset.thumbs = "";
    state.view = index; V = VIEWS[index];
    decode(V);
    L = V.layers; H = V.heads; NQ = V.nq; NK = V.nk; Q = V._Q; rowmax = V._rowmax;
    state.layer = Math.min(state.layer, L - 1);
    state.heads = new Array(H).fill(true);
    state.threshold = V.threshold;
    state.hoverSide = null; state.hoverIndex = -1;
    summarise(); syncSelectors(); syncThreshold();
    buildHeadControls(); syncHeads(); buildHeadView(); buildGrid(); buildNeuronControls();
    render(); renderNeuron();
    document.body.dataset.view = viewKey(V);
    drawThumbs();
  }

  // A link may choose the first view: page.html#cross or page.html#decoder:rollout
  function viewFromHash() {
    let hash = location.hash.slice(1);
    try { hash = decodeURIComponent(hash); } catch (e) { /* a malformed %-escape: use it as it is */ }
    const [kind, name] = hash.split(":");
    let i = VIEWS.findIndex((v) => v.kind === kind && (v.view || "raw") === (name || "raw"));
    if (i < 0) i = VIEWS.findIndex((v) => v.kind === kind);
    return Math.max(i, 0);
  }
  window.addEventListener("hashchange", () => setView(viewFromHash()));

  setView(viewFromHash());
  window.attnExplorer = { state, render, openZoom, setView, data: D, views: VIEWS };
})();
