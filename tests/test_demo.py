"""`attnkit demo --quick` end to end, `attnkit show`, and the contextual-embedding comparison.

The demo runs once (module fixture) into a temp folder; its index.html and the MiniLM
explorer are then opened in headless chromium with networking disabled.
"""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from browser_support import Browser
from typer.testing import CliRunner
from viz_support import page_data, page_views

from attnkit.cli import app
from attnkit.viz.explorer import EncodedWeights

runner = CliRunner()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def links_of(path: Path) -> list[str]:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.links


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "attnkit-demo"
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.mark.slow
def test_demo_quick_prints_table_and_index(demo_dir) -> None:
    out, output = demo_dir
    flat = " ".join(output.split())
    assert "exact match" in flat and "char accuracy" in flat
    for label in ("additive", "no attention", "Transformer"):
        assert label in flat
    assert "index.html" in flat.replace(" ", "") or "index.html" in output
    assert (out / "index.html").is_file()


@pytest.mark.slow
def test_demo_quick_writes_every_linked_file(demo_dir) -> None:
    out, _ = demo_dir
    links = links_of(out / "index.html")
    local = [link.split("#")[0] for link in links if not link.startswith("#")]
    assert local and all("://" not in link for link in local)  # nothing from the network
    missing = [link for link in local if not (out / link).is_file()]
    assert missing == []
    expected = {"minilm-explorer.html", "transformer-explorer.html", "transformer-decoder.html", "flies.png"}
    assert expected <= set(local)
    alignments = [link for link in local if link.startswith("alignments/")]
    assert len(set(alignments)) == 3 * 2  # 3 locales x the 2 attention models
    for name in ("rnn-attention", "rnn-no-attention", "transformer"):
        assert (out / "models" / name / "model.safetensors").is_file()
        assert (out / "models" / name / "config.json").is_file()
    for html_file in ("minilm-explorer.html", "transformer-explorer.html", "transformer-decoder.html"):
        assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", (out / html_file).read_text())
    # the demo's own Transformer: encoder-decoder page with all three kinds, decoder-only page
    assert {kind for kind, _ in page_views(out / "transformer-explorer.html")} == {"encoder", "decoder", "cross"}
    assert {kind for kind, _ in page_views(out / "transformer-decoder.html")} == {"decoder"}


@pytest.mark.slow
@pytest.mark.browser
def test_demo_index_in_browser(demo_dir, browser, tmp_path) -> None:
    out, _ = demo_dir
    view = browser.open(out / "index.html")
    page = view.page
    page.wait_for_load_state("load")
    images = page.eval_on_selector_all("img", "xs => xs.map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert len(images) == 3 * 2 + 1
    assert all(width > 0 for _, width in images), images  # every picture decoded
    page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    page.click("a[href='minilm-explorer.html']")
    page.wait_for_function("document.body.dataset.thumbs === 'done'")
    assert page.url.endswith("minilm-explorer.html")
    view.assert_clean()


def _page_weights(path: Path) -> EncodedWeights:
    data = page_data(path)
    shape = (data["layers"], data["heads"], data["nq"], data["nk"])
    assert data["encoding"] == "dense"
    q = np.frombuffer(base64.b64decode(data["q"]), np.uint8).reshape(shape)
    rowmax = np.frombuffer(base64.b64decode(data["rowmax"]), "<f4").reshape(shape[:3])
    return EncodedWeights(q, rowmax, None, 1.0)


@pytest.mark.slow
@pytest.mark.browser
def test_demo_minilm_explorer_in_browser(demo_dir, browser, tmp_path) -> None:
    out, _ = demo_dir
    path = out / "minilm-explorer.html"
    data = page_data(path)
    assert data["left"][0] == "[CLS]" and data["left"][-1] == "[SEP]" and " animal" in data["left"]
    assert (data["layers"], data["heads"]) == (6, 12)
    enc, th = _page_weights(path), data["threshold"]
    view = browser.open(path)
    page = view.page
    page.wait_for_function("document.body.dataset.thumbs === 'done'")

    def lines() -> int:
        return page.locator("#lines line.attn").count()

    heads = list(range(12))
    assert lines() == enc.line_count(0, heads, th)
    page.select_option("#layer", "4")
    page.wait_for_function("document.body.dataset.layer === '4'")
    assert lines() == enc.line_count(4, heads, th)
    page.click(".head-toggle[data-head='0']")
    page.click(".head-toggle[data-head='5']")
    on = [h for h in heads if h not in (0, 5)]
    assert lines() == enc.line_count(4, on, th)
    it = data["left"].index(" it")
    page.hover(f".tok.left[data-index='{it}']")
    assert lines() == enc.line_count(4, on, th, row=it) < enc.line_count(4, on, th)
    page.screenshot(path=str(tmp_path / "minilm.png"))
    view.assert_clean()


# ------------------------------------------------------------------------------ attnkit show


def test_show_writes_explorer_and_pictures(tmp_path) -> None:
    """`attnkit show` on MiniLM: the page's tokens are the tokenizer's (a leading space marks a
    word start) and its weights are MiniLM's own; --svg/--png write the model view and one
    head view per layer."""
    from attnkit.models.sentence_encoder import SentenceEncoder

    out = tmp_path / "view.html"
    result = runner.invoke(app, ["show", "time flies like an arrow", "--out", str(out),
                                 "--png", str(tmp_path / "png"), "--svg", str(tmp_path / "svg")])
    assert result.exit_code == 0, result.output
    assert "encoder (6, 12)" in result.output
    data = page_data(out)
    assert data["left"] == ["[CLS]", " time", " flies", " like", " an", " arrow", "[SEP]"]
    _, weights = SentenceEncoder.from_pretrained().attentions("time flies like an arrow")
    enc = _page_weights(out)
    assert np.abs(enc.dequantise() - weights.numpy()).max() <= 1 / 255 + 1e-6
    for folder, suffix in (("png", ".png"), ("svg", ".svg")):
        files = sorted(p.name for p in (tmp_path / folder).iterdir())
        assert files == sorted([f"encoder-model-view{suffix}"] + [f"encoder-head-view-layer-{n}{suffix}"
                                                                   for n in range(1, 7)])
        assert all((tmp_path / folder / f).stat().st_size > 1000 for f in files)


def test_show_bad_model_is_one_red_line(tmp_path) -> None:
    result = runner.invoke(app, ["show", "hello", "--model", str(tmp_path / "nope"),
                                 "--out", str(tmp_path / "v.html")])
    assert result.exit_code == 2
    assert "error" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "v.html").exists()


# ------------------------------------------------------------------------------ contextual


@pytest.fixture(scope="module")
def minilm():
    from attnkit.models.sentence_encoder import SentenceEncoder

    return SentenceEncoder.from_pretrained()


def test_hidden_states_match_transformers(minilm) -> None:
    from transformers import BertModel

    from attnkit.models.sentence_encoder import resolve_model_folder
    from attnkit.viz.contextual import hidden_states

    hf = BertModel.from_pretrained(str(resolve_model_folder("all-MiniLM-L6-v2")),
                                   attn_implementation="eager").eval()
    ids, _, _ = minilm.tokenize(["fruit flies like a banana", "time flies"])
    mask = torch.tensor([[1] * len(ids[0]), [1] * len(ids[1]) + [0] * (len(ids[0]) - len(ids[1]))])
    input_ids = torch.tensor([ids[0], ids[1] + [0] * (len(ids[0]) - len(ids[1]))])  # (2, T)
    ours = hidden_states(minilm.encoder, input_ids, key_mask=mask.bool())
    with torch.no_grad():
        theirs = hf(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs) == 7
    real = mask.bool()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a[real], b[real], atol=1e-4, rtol=1e-4)


def test_flies_become_contextual(minilm, tmp_path) -> None:
    from rich.console import Console

    from attnkit.viz.contextual import similarity_table

    console = Console(record=True, width=100)
    res = similarity_table(minilm, path=tmp_path / "flies.png", console=console)
    text = console.export_text()
    assert "layer 6" in text and "A vs B" in text
    assert res.layers[0] == "embeddings" and len(res.layers) == 7
    # same token at the same position: identical before any attention
    assert res.between[0] == pytest.approx(1.0, abs=1e-6)
    assert res.between[-1] < 0.9  # ... and clearly apart after six layers of it
    for series in res.to_static:
        assert series[-1] < series[0] - 0.2  # drifts away from the static embedding
    assert (tmp_path / "flies.png").stat().st_size > 10_000


def test_similarity_rejects_missing_word(minilm) -> None:
    from attnkit.viz.contextual import contextual_similarity

    with pytest.raises(ValueError, match="banana"):
        contextual_similarity(minilm, "banana", ("time flies like an arrow", "fruit flies"))
