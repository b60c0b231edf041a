"""The HTML explorer in a real browser (headless Debian chromium, networking disabled)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from browser_support import Browser
from viz_support import page_data, page_views, softmax_weights

from attnkit.viz.explorer import encode_weights, explorer, normalise_weights

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def line_count(page) -> int:
    return page.locator("#lines line.attn").count()


def open_explorer(browser, path):
    view = browser.open(path)
    view.page.wait_for_function("document.body.dataset.thumbs === 'done'")
    return view


def switch_layer(page, layer: int) -> float:
    """Select a layer and return how long the page took to redraw (seconds, not asserted)."""
    start = time.perf_counter()
    page.select_option("#layer", str(layer))
    page.wait_for_function(f"document.body.dataset.layer === '{layer}'")
    return time.perf_counter() - start


def test_explorer_head_and_model_view(browser, tmp_path, record_property) -> None:
    tokens = ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "Straße", "東京", "[SEP]"]
    w = softmax_weights(3, 4, len(tokens), len(tokens), temperature=2.5, seed=3)
    path = explorer(tokens, w, tmp_path / "view.html", title="three layers")
    enc = encode_weights(normalise_weights(w))
    threshold = page_data(path)["threshold"]
    view = open_explorer(browser, path)
    page = view.page

    assert page.locator(".tok.left").count() == len(tokens)
    assert page.locator("canvas.thumb").count() == 3 * 4
    all_heads = range(4)
    assert line_count(page) == enc.line_count(0, all_heads, threshold) > 0

    record_property("layer_switch_s", switch_layer(page, 2))
    assert line_count(page) == enc.line_count(2, all_heads, threshold)

    page.click(".head-toggle[data-head='1']")  # head 2 off
    on = [0, 2, 3]
    assert line_count(page) == enc.line_count(2, on, threshold)
    assert set(page.eval_on_selector_all("#lines line", "ls => ls.map(l => l.dataset.head)")) \
        <= {"0", "2", "3"}

    page.hover(".tok.left[data-index='2']")  # isolate "cat"
    isolated = line_count(page)
    assert isolated == enc.line_count(2, on, threshold, row=2)
    assert isolated < enc.line_count(2, on, threshold)
    page.screenshot(path=str(tmp_path / "hover.png"))
    page.hover(".tok.right[data-index='0']")  # lines into [CLS] only
    assert line_count(page) == enc.line_count(2, on, threshold, col=0)
    page.mouse.move(1, 1)
    assert line_count(page) == enc.line_count(2, on, threshold)

    page.click("#no-heads")
    assert line_count(page) == 0
    page.click("#all-heads")
    assert line_count(page) == enc.line_count(2, all_heads, threshold)

    assert page.locator("#zoom").is_hidden()
    page.click("canvas.thumb[data-layer='1'][data-head='3']")
    assert page.locator("#zoom").is_visible()
    assert page.inner_text("#zoom-title") == "Layer 2, head 4"
    page.screenshot(path=str(tmp_path / "zoom.png"))
    page.keyboard.press("Escape")
    assert page.locator("#zoom").is_hidden()
    assert (tmp_path / "hover.png").stat().st_size > 10_000
    view.assert_clean()


def test_explorer_cross_attention(browser, tmp_path) -> None:
    out, src = list("2026-11-24"), list("<de_DE> 24. November 2026")
    w = softmax_weights(len(out), len(src), temperature=4.0)
    path = explorer((out, src), w, tmp_path / "cross.html", threshold=0.05)
    view = open_explorer(browser, path)
    enc = encode_weights(normalise_weights(w))
    assert view.page.locator(".tok.left").count() == len(out)
    assert view.page.locator(".tok.right").count() == len(src)
    assert line_count(view.page) == enc.line_count(0, [0], 0.05)
    view.assert_clean()


@pytest.mark.slow
def test_explorer_512_tokens(browser, tmp_path, record_property) -> None:
    n = 512
    w = softmax_weights(6, 12, n, n, temperature=3.0, seed=5).astype(np.float32)
    path = explorer([f"w{i}" for i in range(n)], w, tmp_path / "long.html")
    assert path.stat().st_size < 25_000_000
    data = page_data(path)
    enc = encode_weights(normalise_weights(w))
    view = open_explorer(browser, path)
    page = view.page
    assert line_count(page) == enc.line_count(0, range(12), data["threshold"])
    seconds = switch_layer(page, 4)
    record_property("layer_switch_512_s", seconds)
    record_property("render_ms_512", page.evaluate("document.body.dataset.renderMs"))
    assert line_count(page) == enc.line_count(4, range(12), data["threshold"])
    page.hover(".tok.left[data-index='100']")
    assert line_count(page) == enc.line_count(4, range(12), data["threshold"], row=100)
    view.assert_clean()


def test_explorer_empty_text(browser, tmp_path) -> None:
    path = explorer([], np.zeros((2, 3, 0, 0)), tmp_path / "empty.html")
    view = open_explorer(browser, path)
    assert line_count(view.page) == 0
    assert "no tokens" in view.page.inner_text("#summary")
    view.assert_clean()


# ------------------------------------------------------------------------------ any model


@pytest.fixture(scope="module")
def explored(tiny_model, tiny_checkpoint, tmp_path_factory):
    """``explored(name) -> (Exploration, page)``: a tiny model's explorer, written once per module.
    ``name`` is a Hugging Face family, ``"attnkit"`` (the Transformer checkpoint) or ``"sbert"``."""
    import json
    import shutil

    from viz_support import TARGET, TEXT

    from attnkit.viz import explore

    root = tmp_path_factory.mktemp("explored")
    pages: dict[str, tuple] = {}

    def get(name: str):
        if name not in pages:
            if name == "attnkit":
                source, target = tiny_checkpoint("transformer"), "fruit flies"
            elif name == "sbert":
                source, target = root / "sbert", None
                shutil.copytree(tiny_model("bert"), source)
                (source / "modules.json").write_text(json.dumps([]))
            else:
                source, target = tiny_model(name), TARGET if name in ("bart", "marian", "t5") else None
            att = explore(source, TEXT, target=target, path=root / f"{name}.html")
            pages[name] = (att, att.path)
        return pages[name]

    return get


def choose(page, kind: str | None = None, view: str | None = None) -> None:
    if kind is not None:
        page.click(f"#kinds button[data-kind='{kind}']")
    if view is not None:
        page.click(f"#views button[data-view='{view}']")
    page.wait_for_function("document.body.dataset.thumbs === 'done'")


@pytest.mark.parametrize("family", ["bert", "gpt2", "bart", "t5"])
def test_any_model_kinds_layers_heads_views(browser, explored, family) -> None:
    att, path = explored(family)
    views = page_views(path)
    view = open_explorer(browser, path)
    page = view.page
    kinds = page.eval_on_selector_all("#kinds button", "bs => bs.map(b => b.dataset.kind)")
    assert kinds == att.kinds
    counts = {}
    for kind in att.kinds:
        choose(page, kind)
        assert page.evaluate("document.body.dataset.view") == f"{kind}:raw"
        record, enc = views[(kind, "raw")]
        thr, heads = record["threshold"], range(record["heads"])
        left, right = att.token_pair(kind)
        assert page.locator(".tok.left").count() == len(left) and page.locator(".tok.right").count() == len(right)
        assert page.locator("canvas.thumb").count() == 2 * 4
        counts[kind] = line_count(page)
        assert counts[kind] == enc.line_count(0, heads, thr) > 0
        switch_layer(page, 1)
        assert line_count(page) == enc.line_count(1, heads, thr)
        page.click(".head-toggle[data-head='1']")
        assert line_count(page) == enc.line_count(1, [0, 2, 3], thr)
        if kind == "decoder":  # causal: token 2 sees tokens 0..2, the later ones are greyed out
            page.hover(".tok.left[data-index='2']")
            assert line_count(page) == enc.line_count(1, [0, 2, 3], thr, row=2) <= 3 * 3
            assert page.locator(".tok.right.future").count() == len(right) - 3
            assert "causal" in page.inner_text("#summary").lower()
            page.mouse.move(1, 1)
        others = [v for k, v in views if k == kind and v != "raw"]
        buttons = page.eval_on_selector_all("#views button", "bs => bs.map(b => b.dataset.view)")
        assert buttons == ["raw", *others]
        for name in others:  # rollout (self-attention) and value norm
            choose(page, view=name)
            record, other = views[(kind, name)]
            assert line_count(page) == other.line_count(1, range(record["heads"]), record["threshold"])
            assert page.locator("canvas.thumb").count() == 2 * record["heads"]
        choose(page, view="raw")
        switch_layer(page, 0)
    if len(att.kinds) > 1:
        assert len(set(counts.values())) > 1 or att.target_tokens != att.tokens  # the switch redraws
    view.assert_clean()


@pytest.mark.parametrize("name", ["bert", "roberta", "distilbert", "gpt2", "bart", "marian", "t5",
                                  "attnkit", "sbert"])
def test_neuron_view_opens(browser, explored, name) -> None:
    att, path = explored(name)
    view = open_explorer(browser, path)
    page = view.page
    assert page.locator("#neuron-section").is_visible()
    for kind in att.kinds:
        if len(att.kinds) > 1:
            choose(page, kind)
        switch_layer(page, 1)
        page.select_option("#neuron-head", "1")
        page.hover(".tok.left[data-index='2']")
        page.wait_for_function("document.body.dataset.neuron === '1:1:2'")
        rows = page.locator("#neuron-svg .nrow")
        assert rows.count() == att.weights[kind].shape[-1]
        shown = np.array([float(p) for p in rows.evaluate_all("rs => rs.map(r => r.dataset.p)")])
        assert np.allclose(shown, att.weights[kind][1, 1, 2].numpy(), atol=5e-3)  # float16 q and k
        masked = page.locator("#neuron-svg .nrow.masked").count()
        assert masked == (rows.count() - 3 if kind == "decoder" else 0)
        note = page.inner_text("#neuron-note")
        assert ("position bias" in note) == (name == "t5" and kind != "cross")
        page.mouse.move(1, 1)
        switch_layer(page, 0)
    view.assert_clean()


def test_export_buttons_download_svg_and_png(browser, explored, tmp_path) -> None:
    import xml.etree.ElementTree as ET

    att, path = explored("bart")
    view = open_explorer(browser, path)
    page = view.page
    choose(page, "decoder")
    lines = line_count(page)
    files = {}
    for button in ("head-svg", "head-png", "model-svg", "model-png"):
        with page.expect_download() as info:
            page.click(f"#export-{button}")
        download = info.value
        files[button] = tmp_path / download.suggested_filename
        download.save_as(files[button])
    assert files["head-svg"].name == "attention-head-view-decoder-layer1.svg"
    assert files["model-png"].name == "attention-model-view-decoder.png"
    svg_ns = "{http://www.w3.org/2000/svg}"
    head = ET.parse(files["head-svg"]).getroot()
    assert head.tag == f"{svg_ns}svg"
    assert len(list(head.iter(f"{svg_ns}line"))) == lines
    texts = [t.itertext() for t in head.iter(f"{svg_ns}text")]
    assert len(texts) == 2 + 2 * len(att.target_tokens)  # two headers, the tokens on both sides
    model = ET.parse(files["model-svg"]).getroot()
    images = list(model.iter(f"{svg_ns}image"))
    assert len(images) == 2 * 4 and all(i.get("href").startswith("data:image/png;base64,") for i in images)
    for name in ("head-png", "model-png"):
        data = files[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 200 and height > 100 and len(data) > 2000
    view.assert_clean()


@pytest.mark.slow
def test_any_model_512_tokens_12_layers_12_heads(browser, tmp_path, record_property) -> None:
    import transformers
    from viz_support import CORPUS, wordpiece_tokenizer

    from attnkit.viz import explore

    tok, special = wordpiece_tokenizer()
    folder = tmp_path / "bert-12x12"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=48, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=96, max_position_embeddings=512)).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **special).save_pretrained(folder)
    words = " ".join(CORPUS).split()
    text = " ".join(words[i % len(words)] for i in range(600))
    att = explore(folder, text, path=tmp_path / "long.html")
    assert att.weights["encoder"].shape == (12, 12, 512, 512)
    size = att.path.stat().st_size
    record_property("page_bytes_512", size)
    assert size < 25_000_000
    views = page_views(att.path)
    view = open_explorer(browser, att.path)
    page = view.page
    record, enc = views[("encoder", "raw")]
    assert line_count(page) == enc.line_count(0, range(12), record["threshold"])
    record_property("layer_switch_512_any_model_s", switch_layer(page, 7))
    assert line_count(page) == enc.line_count(7, range(12), record["threshold"])
    choose(page, view="value-norm")
    record, vn = views[("encoder", "value-norm")]
    assert line_count(page) == vn.line_count(7, range(12), record["threshold"])
    view.assert_clean()


def test_link_opens_a_kind_and_view(browser, explored, tmp_path) -> None:
    att, path = explored("bart")
    view = browser.open(path)
    page = view.page
    page.goto(path.resolve().as_uri() + "#decoder:rollout")  # a hash change on the open page
    page.wait_for_function("document.body.dataset.view === 'decoder:rollout'")
    assert page.locator(".head-toggle").count() == 1  # rollout: one map per layer
    [only_cross] = att.save(tmp_path / "cross.html", kinds=["cross"])
    page.goto(only_cross.resolve().as_uri())
    page.wait_for_function("document.body.dataset.view === 'cross:raw'")
    assert page.locator("#kinds button").count() == 1
    assert page.inner_text("#summary").startswith("Cross-attention")
    view.assert_clean()


def test_tokens_with_markup_load_and_show_as_themselves(browser, tmp_path) -> None:
    """Tokens with ``<!--``, ``</script>``, quotes, backticks, RTL and emoji: the page loads (a
    ``<!--`` token made JSON.parse throw and the page stayed blank), runs none of the text, and
    shows every token as itself; the model-view export works with non-string layer names."""
    tokens = ["<!--", "<!-- <script>", "</script><script>window.pwned=1</script>", '"&amp;',
              "`${window.pwned=2}`", "\u05e9\u05dc\u05d5\u05dd", "\U0001f600"]
    T = len(tokens)
    path = explorer(tokens, softmax_weights(2, 2, T, T), tmp_path / "markup.html", title="<!-- x",
                    layer_names=[1, 2])
    view = open_explorer(browser, path)
    page = view.page
    assert page.eval_on_selector_all(".tok.left text", "ts => ts.map(t => t.textContent)") == tokens
    assert page.evaluate("window.pwned === undefined")
    with page.expect_download() as info:
        page.click("#export-model-svg")
    assert info.value.suggested_filename == "attention-model-view.svg"
    view.assert_clean()


def test_malformed_link_hash_opens_the_first_view(browser, tmp_path) -> None:
    """``view.html#100%`` (not a valid %-escape) made decodeURIComponent throw: a blank page."""
    path = explorer(["a", "b"], softmax_weights(1, 1, 2, 2), tmp_path / "hash.html")
    view = browser.open(path)
    view.page.goto(path.resolve().as_uri() + "#100%")
    view.page.wait_for_function("document.body.dataset.thumbs === 'done'")
    assert view.page.locator(".tok.left").count() == 2
    view.assert_clean()


def test_relevance_export_carries_the_page_fonts(browser, tmp_path) -> None:
    """The relevance view's SVG (and the PNG drawn from it) embeds the page's glyph subsets, as the
    explorer's exports do: Devanagari tokens were boxes on a machine whose only font is DejaVu."""
    from attnkit.viz.explorer import Panel, _page_data, _render_page

    tokens = ["[CLS]", " \u0926\u093f\u0938\u0902\u092c\u0930", "[SEP]"]
    data = _page_data([Panel(softmax_weights(1, 1, 3, 3), tokens, tokens)])
    data["relevance"] = {"tokens": tokens, "targets": None, "query": None, "order": ["attention"],
                         "methods": {"attention": {"values": [[0.2, 0.7, 0.1]], "zeroRows": [],
                                                   "signed": False, "note": ""}}}
    path = tmp_path / "relevance.html"
    path.write_text(_render_page(data), "utf-8")
    view = browser.open(path)
    page = view.page
    page.wait_for_selector("#rel-svg rect")
    with page.expect_download() as info:
        page.click("#export-rel-svg")
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    svg = saved.read_text("utf-8")
    assert "@font-face" in svg and '"attnkit-text"' in svg
    assert "\u0926\u093f\u0938\u0902\u092c\u0930" in svg
    view.assert_clean()
