// Relevance view (attnkit.explain): input tokens shaded by relevance, per output token, per method.
// Reads data.relevance = {tokens, targets | null, query | null, methods: {name: {values: [[...]],
// zeroRows: [...], signed: bool, note: str}}, order: [names]}. Self-contained (its own IIFE) so it
// can sit beside the explorer's script; draws one SVG that the save buttons export as SVG or PNG.
(function () {
  'use strict';
  const raw = document.getElementById('attn-data');
  if (!raw) return;
  const data = JSON.parse(raw.textContent);
  const rel = data.relevance;
  if (!rel) return;
  const state = { method: rel.order[0], out: 0 };
  const NS = 'http://www.w3.org/2000/svg';

  const section = document.createElement('section');
  section.id = 'relevance-section';
  section.innerHTML =
    '<h2>Relevance view</h2>' +
    '<p class="help">How much each input token contributed to the chosen output, by the chosen method ' +
    '(red: for the output, blue: against it; the strongest token of the row is the darkest). ' +
    'AttnLRP and the gradient methods explain the model\u2019s computation; attention and rollout ' +
    'only show where it looked.</p>' +
    '<div class="controls"><span id="rel-methods" class="choice" role="group" aria-label="method"></span>' +
    '<span class="export">save <button id="export-rel-svg" type="button">SVG</button>' +
    '<button id="export-rel-png" type="button">PNG</button></span></div>' +
    '<div class="controls"><span id="rel-outputs" class="rel-outputs" role="group" aria-label="output token"></span></div>' +
    '<p id="rel-label" class="help"></p>' +
    '<div id="rel-view"><svg id="rel-svg" xmlns="' + NS + '"></svg></div>';
  const header = document.querySelector('header');
  if (header && header.nextSibling) header.parentNode.insertBefore(section, header.nextSibling);
  else document.body.appendChild(section);

  function button(box, label, on, onClick, cls) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    if (cls) b.className = cls;
    b.classList.toggle('on', on);
    b.addEventListener('click', onClick);
    box.appendChild(b);
    return b;
  }

  function shown(t) { return t.replace(/\n/g, '\u21b5').replace(/^ /, '\u00b7'); }

  function buildSelectors() {
    const methods = document.getElementById('rel-methods');
    methods.textContent = '';
    for (const name of rel.order) {
      button(methods, name, name === state.method, () => { state.method = name; buildSelectors(); draw(); });
    }
    const outs = document.getElementById('rel-outputs');
    outs.textContent = '';
    const targets = rel.targets || [rel.query !== null && rel.query !== undefined ? 'similarity to: ' + rel.query : 'output'];
    targets.forEach((t, i) => {
      button(outs, shown(t), i === state.out, () => { state.out = i; buildSelectors(); draw(); }, 'rel-out');
    });
  }

  function color(x) {  // x in [-1, 1]: red for, blue against
    const a = Math.min(1, Math.abs(x));
    return x >= 0 ? 'rgba(214, 39, 40, ' + a.toFixed(3) + ')' : 'rgba(31, 119, 180, ' + a.toFixed(3) + ')';
  }

  function draw() {
    const m = rel.methods[state.method];
    const row = m.values[state.out] || [];
    let peak = 0;
    for (const v of row) peak = Math.max(peak, Math.abs(v));
    const zero = peak === 0;
    const label = document.getElementById('rel-label');
    const target = rel.targets ? shown(rel.targets[state.out]) : 'the output';
    label.textContent = zero
      ? 'zero relevance: ' + state.method + ' gives no input token any relevance for ' + target + ' (drawn blank).'
      : state.method + ' for ' + target + (m.note ? ' \u2014 ' + m.note : '');
    label.classList.toggle('zero', zero);
    const svg = document.getElementById('rel-svg');
    svg.textContent = '';
    const width = Math.max(320, Math.min(1100, (document.getElementById('rel-view').clientWidth || 900) - 8));
    const probe = document.createElementNS(NS, 'text');
    probe.setAttribute('class', 'rel-tok');
    svg.appendChild(probe);
    let x = 4, y = 6;
    const h = 24, gap = 3;
    const items = [];
    rel.tokens.forEach((t, j) => {
      probe.textContent = shown(t);
      const w = Math.max(10, (probe.getComputedTextLength ? probe.getComputedTextLength() : 8 * t.length) + 10);
      if (x + w > width && x > 4) { x = 4; y += h + gap; }
      items.push({ t: shown(t), j, x, y, w });
      x += w + gap;
    });
    svg.removeChild(probe);
    for (const it of items) {
      const v = zero ? 0 : row[it.j] / peak;
      const g = document.createElementNS(NS, 'g');
      g.setAttribute('class', 'rel-item');
      const r = document.createElementNS(NS, 'rect');
      r.setAttribute('x', it.x); r.setAttribute('y', it.y); r.setAttribute('width', it.w); r.setAttribute('height', h);
      r.setAttribute('rx', 3); r.setAttribute('fill', color(v)); r.setAttribute('stroke', '#d9dde5');
      r.setAttribute('data-value', String(row[it.j] === undefined ? 0 : row[it.j]));
      const tx = document.createElementNS(NS, 'text');
      tx.setAttribute('x', it.x + 5); tx.setAttribute('y', it.y + h / 2); tx.setAttribute('class', 'rel-tok');
      tx.setAttribute('fill', Math.abs(v) > 0.6 ? '#fff' : '#1d2330');
      tx.textContent = it.t;
      const title = document.createElementNS(NS, 'title');
      title.textContent = it.t + ': ' + (row[it.j] === undefined ? 0 : row[it.j]).toPrecision(3);
      g.appendChild(r); g.appendChild(tx); g.appendChild(title);
      svg.appendChild(g);
    }
    svg.setAttribute('width', width);
    svg.setAttribute('height', y + h + 8);
  }

  function svgText() {
    const svg = document.getElementById('rel-svg').cloneNode(true);
    svg.setAttribute('xmlns', NS);
    const style = document.createElementNS(NS, 'style');
    // the page's embedded glyph subsets travel with the picture (an SVG drawn as an image, and the
    // PNG made from it, see no font of the page): tokens in any script, as in the explorer's exports
    const fonts = (document.getElementById('page-fonts') || { textContent: '' }).textContent;
    style.textContent = fonts + 'text{font:13px "attnkit-text",system-ui,"DejaVu Sans",sans-serif;' +
      'dominant-baseline:middle;white-space:pre}';
    svg.insertBefore(style, svg.firstChild);
    return new XMLSerializer().serializeToString(svg);
  }

  function save(blob, name) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 0);
  }

  function stem() { return 'relevance-' + state.method + '-' + state.out; }

  document.getElementById('export-rel-svg').addEventListener('click', () => {
    save(new Blob([svgText()], { type: 'image/svg+xml' }), stem() + '.svg');
  });
  document.getElementById('export-rel-png').addEventListener('click', () => {
    const svg = document.getElementById('rel-svg');
    const w = Number(svg.getAttribute('width')), h = Number(svg.getAttribute('height'));
    const img = new Image();
    img.onload = () => {
      const c = document.createElement('canvas');
      c.width = w * 2; c.height = h * 2;
      const ctx = c.getContext('2d');
      ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, c.width, c.height);
      ctx.scale(2, 2); ctx.drawImage(img, 0, 0);
      c.toBlob((b) => save(b, stem() + '.png'), 'image/png');
    };
    img.src = 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(svgText());
  });

  buildSelectors();
  draw();
  window.attnkitRelevance = { rel, state, draw, select(method, out) {
    if (method !== undefined) state.method = method;
    if (out !== undefined) state.out = out;
    buildSelectors(); draw();
  } };
})();
