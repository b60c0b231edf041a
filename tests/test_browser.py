"""The HTML explorer in a real browser (headless Debian chromium, networking disabled)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from browser_support import Browser
from viz_support import page_data, softmax_weights

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
