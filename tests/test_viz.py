"""viz: heatmaps and the HTML explorer (no browser here; see test_browser.py)."""

from __future__ import annotations

import base64
import json
import re
import warnings

import numpy as np
import pytest
import torch
from viz_support import page_data, softmax_weights

from attnkit.viz.explorer import encode_weights, explorer, normalise_weights
from attnkit.viz.heatmap import heatmap

# ------------------------------------------------------------------------------ heatmap


def test_heatmap_writes_png_and_svg_with_labels(tmp_path) -> None:
    x = ["<de_DE>", "24", ".", "November", "2026"]
    y = ["2026", "-", "11", "-", "24"]
    w = torch.softmax(torch.randn(len(y), len(x)), dim=-1)
    fig = heatmap(w, x, y, path=tmp_path / "a.png", title="de_DE")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == x
    assert [t.get_text() for t in ax.get_yticklabels()] == y
    rotations = {t.get_text(): t.get_rotation() for t in ax.get_xticklabels()}
    assert rotations == {"<de_DE>": 90, "24": 90, ".": 0, "November": 90, "2026": 90}
    assert len(fig.axes) == 2  # the colour bar
    heatmap(w.numpy(), x, y, path=tmp_path / "sub" / "a.svg")
    assert (tmp_path / "sub" / "a.svg").read_text().lstrip().startswith("<?xml")


def test_heatmap_non_latin_labels_fall_back_without_warnings(tmp_path) -> None:
    tokens = list("<ar_EG> ١٥ نوفمبر ٢٠٢٦ 東京 한국 ქართ ไทย বাং हिन ") + ["🙂"]
    w = softmax_weights(3, len(tokens))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every glyph has a packaged font: nothing warns
        heatmap(w, tokens, ["a", "b", "c"], path=tmp_path / "scripts.png")
    assert (tmp_path / "scripts.png").stat().st_size > 1000
    # (a code point no font has warns instead: tests/test_fonts.py)


@pytest.mark.parametrize(
    ("shape", "nx", "ny"),
    [((3, 4), 4, 2), ((3, 4), 3, 3), ((2, 3, 4), 4, 3), ((4,), 4, 1)],
)
def test_heatmap_rejects_mismatched_shapes(shape, nx, ny) -> None:
    with pytest.raises(ValueError, match=r"shape|2-D"):
        heatmap(np.ones(shape), ["x"] * nx, ["y"] * ny)


def test_heatmap_rejects_nan() -> None:
    w = np.ones((2, 2))
    w[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        heatmap(w, ["a", "b"], ["c", "d"])


def test_heatmap_empty_and_long(tmp_path) -> None:
    heatmap(np.zeros((0, 0)), [], [], path=tmp_path / "empty.png")
    assert (tmp_path / "empty.png").exists()
    n = 512
    fig = heatmap(softmax_weights(n, n), [f"t{i}" for i in range(n)],
                  [f"t{i}" for i in range(n)], path=tmp_path / "long.png")
    assert 0 < len(fig.axes[0].get_xticklabels()) <= 80  # labels thinned, not 512 overlapping


# ------------------------------------------------------------------------------ explorer


def test_encoding_round_trip_error_is_below_half_a_step() -> None:
    w = softmax_weights(2, 3, 17, 17)
    enc = encode_weights(w)
    assert enc.top_k is None and enc.q.dtype == np.uint8
    step = enc.rowmax[..., None].astype(np.float64) / 255
    assert np.all(np.abs(enc.dequantise() - w) <= step / 2 + 1e-7)
    assert enc.kept_mass == pytest.approx(1.0, abs=1e-12)


def test_topk_keeps_the_largest_weights_per_row() -> None:
    w = softmax_weights(1, 2, 9, 40, temperature=3.0)
    enc = encode_weights(w, top_k=5)
    assert enc.top_k == 5
    assert np.all(np.count_nonzero(enc.q, axis=-1) <= 5)
    # the 5 largest of every row survive (as the row's largest quantised values)
    top = np.sort(w, axis=-1)[..., -5:].sum(-1) / w.sum(-1)
    assert enc.kept_mass == pytest.approx(top.mean(), rel=1e-6)
    deq = enc.dequantise()
    largest = np.argmax(w, axis=-1)
    assert np.array_equal(np.argmax(deq, axis=-1), largest)


def test_explorer_page_is_self_contained_and_decodes(tmp_path) -> None:
    tokens = ["[CLS]", "time", "flies", "</script>", "<b>x</b>", "[SEP]"]
    w = torch.softmax(torch.randn(2, 4, 6, 6), dim=-1)
    path = explorer(tokens, w, tmp_path / "view.html", title="A <title> & more")
    text = path.read_text(encoding="utf-8")
    assert "A &lt;title&gt; &amp; more" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # no network
    assert "<link" not in text and "@import" not in text
    data = page_data(path)
    assert data["left"] == tokens and data["right"] == tokens and not data["cross"]
    assert (data["layers"], data["heads"], data["nq"], data["nk"]) == (2, 4, 6, 6)
    q = np.frombuffer(base64.b64decode(data["q"]), np.uint8).reshape(2, 4, 6, 6)
    rowmax = np.frombuffer(base64.b64decode(data["rowmax"]), "<f4").reshape(2, 4, 6)
    deq = q * rowmax[..., None].astype(np.float64) / 255
    assert np.abs(deq - w.numpy()).max() <= 1 / 510 + 1e-7


@pytest.mark.parametrize("token", ["<!--", "<!-- <script>", "</script><script>x=1</script>", "a<\\!--b"])
def test_explorer_data_is_strict_json_whatever_the_tokens(tmp_path, token) -> None:
    """The embedded data is JSON that JSON.parse accepts (no ``\\!``, which it rejects: a token
    with ``<!--`` left the page blank) and holds neither ``<!--`` nor ``</script``."""
    tokens = ["a", token, "b"]
    path = explorer(tokens, softmax_weights(1, 1, 3, 3), tmp_path / "view.html", title=token)
    raw = re.search(r'<script type="application/json" id="attn-data">(.*?)</script>',
                    path.read_text(encoding="utf-8"), re.S).group(1)
    assert "<" not in raw
    assert json.loads(raw)["left"] == tokens  # Python's parser is as strict as JSON.parse here
    assert json.loads(raw)["title"] == token


def test_explorer_labels_are_text(tmp_path) -> None:
    """Non-string layer names become text in the page (the model-view export calls .replace on them)."""
    data = page_data(explorer(["a", "b"], softmax_weights(2, 1, 2, 2), tmp_path / "v.html", layer_names=[1, 2]))
    assert data["layerNames"] == ["1", "2"]


def test_explorer_cross_attention_list(tmp_path) -> None:
    out, src = list("2026-11-24"), list("24. November 2026")
    layers = [softmax_weights(len(out), len(src), seed=s) for s in range(3)]  # (T, S) per layer
    data = page_data(explorer((out, src), layers, tmp_path / "cross.html"))
    assert data["cross"] and data["left"] == out and data["right"] == src
    assert (data["layers"], data["heads"]) == (3, 1)


@pytest.mark.parametrize(
    ("tokens", "shape"),
    [
        (["a", "b", "c"], (2, 2, 4, 4)),  # T mismatch
        (["a", "b"], (2, 2, 2, 3)),  # not square for a self-attention token list
        ((["a"], ["b", "c"]), (1, 1, 2, 2)),  # cross pair mismatch
        (["a", "b"], (2, 2, 2, 2, 2, 2)),  # too many dims
    ],
)
def test_explorer_rejects_mismatched_shapes(tmp_path, tokens, shape) -> None:
    with pytest.raises(ValueError, match=r"match|shape"):
        explorer(tokens, np.full(shape, 0.5), tmp_path / "bad.html")
    assert not (tmp_path / "bad.html").exists()


def test_explorer_rejects_negative_and_ragged(tmp_path) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        explorer(["a", "b"], -np.ones((1, 1, 2, 2)), tmp_path / "x.html")
    with pytest.raises(ValueError, match="differ in shape"):
        normalise_weights([np.ones((2, 2)), np.ones((2, 3))])


def test_explorer_size_64_tokens_and_topk_switch(tmp_path) -> None:
    small = explorer([f"t{i}" for i in range(64)], softmax_weights(6, 12, 64, 64),
                     tmp_path / "64.html")
    assert small.stat().st_size < 3_000_000  # 6 x 12 x 64 x 64 model (512 tokens: test_browser)
    assert page_data(small)["encoding"] == "dense"
    w = softmax_weights(2, 3, 40, 40, temperature=3.0)
    data = page_data(explorer([str(i) for i in range(40)], w, tmp_path / "k.html",
                              max_dense_bytes=2 * 3 * 40 * 9))
    assert data["encoding"] == "topk" and data["k"] == 3  # 3 bytes per kept weight
    assert data["keptMass"] == pytest.approx(encode_weights(w, top_k=3).kept_mass)


def test_explorer_empty_text(tmp_path) -> None:
    path = explorer([], np.zeros((6, 12, 0, 0)), tmp_path / "empty.html")
    data = page_data(path)
    assert data["nq"] == 0 and data["left"] == []


def test_package_exports_functions_not_submodules() -> None:
    import attnkit.viz.explorer  # noqa: F401  (the submodules share the functions' names)
    import attnkit.viz.heatmap  # noqa: F401
    from attnkit.viz import explorer as explorer_fn
    from attnkit.viz import heatmap as heatmap_fn

    assert callable(heatmap_fn) and callable(explorer_fn)


def test_dollar_signs_are_drawn_as_text_not_mathtext(tmp_path) -> None:
    """Two ``$`` in a token or title made matplotlib typeset mathtext: ``$\\frac$`` raised
    ParseSyntaxException and ``$x^2$`` was drawn as x squared. Every label is the text itself."""
    from attnkit.viz.any_model import Exploration

    tokens = ["$\\frac$", "$x^2$", "b"]
    fig = heatmap(np.eye(3), tokens, tokens, path=tmp_path / "h.png", title="from $5 to $6")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert not any(t.get_parse_math() for t in [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.title])
    fig.savefig(tmp_path / "again.png")  # drawn again outside heatmap(): still plain text
    att = Exploration(tokens, None, {"encoder": torch.from_numpy(softmax_weights(1, 2, 3, 3))})
    paths = att.save(svg=tmp_path / "svg", png=tmp_path / "png")
    assert len(paths) == 4 and all(p.stat().st_size > 0 for p in paths)


def test_pictures_are_written_atomically(tmp_path, monkeypatch) -> None:
    """A picture that fails half-way (a kill, a full disk) leaves the previous file whole and no
    temp file: heatmap(path=) and Exploration.save(svg=, png=) write through attnkit.io."""
    from matplotlib.figure import Figure

    from attnkit.viz.any_model import Exploration

    att = Exploration(["a", "b"], None, {"encoder": torch.from_numpy(softmax_weights(1, 1, 2, 2))})
    paths = att.save(svg=tmp_path, png=tmp_path)
    heatmap(np.eye(2), ["a", "b"], ["c", "d"], path=tmp_path / "h.png")
    before = {p: p.read_bytes() for p in [*paths, tmp_path / "h.png"]}

    def torn(self, fname, *args, **kwargs):
        (open(fname, "wb") if isinstance(fname, (str, type(tmp_path))) else fname).write(b"torn")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", torn)
    with pytest.raises(OSError, match="No space"):
        att.save(svg=tmp_path)
    with pytest.raises(OSError, match="No space"):
        heatmap(np.eye(2), ["a", "b"], ["c", "d"], path=tmp_path / "h.png")
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in before)


def test_topk_page_refuses_more_keys_than_its_uint16_indices_hold(tmp_path) -> None:
    """Top-k columns are stored as uint16: past 65,536 keys they wrapped and the page drew each
    weight on the wrong key (silently). Now a ValueError naming the limit; 65,536 keys still work."""
    tq = 2
    for tk, ok in ((1 << 16, True), ((1 << 16) + 1, False)):
        w = np.zeros((1, 1, tq, tk), np.float32)
        w[0, 0, :, tk - 1] = 1.0  # all the weight on the last key
        tokens = ([f"q{i}" for i in range(tq)], [f"k{j}" for j in range(tk)])
        if ok:
            data = page_data(explorer(tokens, w, tmp_path / "v.html", max_dense_bytes=10_000))
            idx = np.frombuffer(base64.b64decode(data["idx"]), "<u2").reshape(tq, data["k"])
            q = np.frombuffer(base64.b64decode(data["q"]), np.uint8).reshape(tq, data["k"])
            assert data["encoding"] == "topk" and all(idx[i][q[i] == 255].tolist() == [tk - 1] for i in range(tq))
        else:
            with pytest.raises(ValueError, match="at most 65536 keys"):
                explorer(tokens, w, tmp_path / "v.html", max_dense_bytes=10_000)
