"""The explanation page's relevance view in a real browser (headless chromium, no network), and
the ``attnkit explain`` command."""

from __future__ import annotations

import pytest
from viz_support import TARGET, TEXT, page_data

TAGGED = pytest.mark.browser


@pytest.fixture(scope="module")
def page_path(tiny_checkpoint, tmp_path_factory):
    from attnkit.cli.explain import explain_command

    out = tmp_path_factory.mktemp("explain") / "explain.html"
    explanations, page, _ = explain_command(TEXT, model=str(tiny_checkpoint("transformer")), target=TARGET, out=out)
    return page, explanations


def test_page_holds_every_methods_map(page_path) -> None:
    page, explanations = page_path
    data = page_data(page)["relevance"]
    assert data["order"][0] == "attnlrp" and set(data["order"]) == set(explanations)
    for name, e in explanations.items():
        values = data["methods"][name]["values"]
        assert len(values) == len(e.target_tokens) and len(values[0]) == len(e.tokens)
        assert values[3][2] == pytest.approx(float(e.relevance[3, 2]), rel=1e-3, abs=1e-6)


@TAGGED
def test_relevance_view_in_the_browser(page_path, tmp_path) -> None:
    from browser_support import Browser

    page, explanations = page_path
    browser = Browser(tmp_path / "profile")
    try:
        view = browser.open(page)
        p = view.page
        p.wait_for_selector("#rel-svg rect")
        n_tokens = len(explanations["attnlrp"].tokens)
        assert p.locator("#rel-svg rect").count() == n_tokens
        assert p.locator("#rel-methods button").count() == len(explanations)
        assert p.locator("#rel-outputs button").count() == len(explanations["attnlrp"].target_tokens)

        def fills() -> list[str]:
            return p.eval_on_selector_all("#rel-svg rect", "rs => rs.map(r => r.getAttribute('fill'))")

        first = fills()
        p.click("#rel-outputs button:nth-child(4)")  # another output token
        by_output = fills()
        assert by_output != first
        p.locator("#rel-methods").get_by_role("button", name="rollout", exact=True).click()
        by_method = fills()
        assert by_method != by_output
        assert p.locator("#rel-label").inner_text().startswith("rollout for")
        with p.expect_download() as dl:
            p.click("#export-rel-svg")
        assert dl.value.suggested_filename.endswith(".svg")
        with p.expect_download() as dl:
            p.click("#export-rel-png")
        assert dl.value.suggested_filename.endswith(".png")
        # an all-zero row is drawn blank and labelled: make one and select it
        p.evaluate("""() => { const r = window.attnkitRelevance;
            r.rel.methods.attnlrp.values[0] = r.rel.methods.attnlrp.values[0].map(() => 0);
            r.select('attnlrp', 0); }""")
        assert p.locator("#rel-label").inner_text().startswith("zero relevance")
        assert set(fills()) == {"rgba(214, 39, 40, 0.000)"}
        view.assert_clean()
    finally:
        browser.close()


@pytest.fixture(scope="module")
def inline_view(tiny_checkpoint) -> tuple[str, object]:
    from attnkit import explain

    e = explain(str(tiny_checkpoint("transformer")), TEXT, target=TARGET, method="attnlrp")
    return e._repr_html_(), e


def test_explanation_shows_itself_inline(inline_view, tmp_path) -> None:
    """explain()'s result displays in a notebook: the explanation page in one sandboxed, offline
    iframe, holding this explanation's map; one made without a model has no view."""
    import json
    import re

    from test_notebook import assert_offline, srcdoc

    from attnkit.relevance import explain_subject
    from attnkit.relevance.subjects import subject

    view, e = inline_view
    inner = srcdoc(view)
    assert_offline(inner)
    found = re.search(r'<script type="application/json" id="attn-data">(.*?)</script>', inner, re.S)
    data = json.loads(found.group(1).replace("<\\/", "</"))
    rel = data["relevance"]
    assert rel["order"] == ["attnlrp"] and rel["tokens"] == e.tokens
    assert rel["methods"]["attnlrp"]["values"][1][2] == pytest.approx(float(e.relevance[1, 2]), rel=1e-3, abs=1e-6)
    assert data["kind"] == "encoder" and {v["kind"] for v in data["more"]} >= {"decoder", "cross"}  # attention below
    bare = explain_subject(subject(e.source[0], TEXT, target=TARGET, query=None), "rollout")
    assert bare.source is None and bare._repr_html_() is None


@TAGGED
def test_inline_explanation_in_chromium(inline_view, tmp_path) -> None:
    from browser_support import Browser

    view, e = inline_view
    host = tmp_path / "notebook.html"
    host.write_text(f"<!doctype html><meta charset=utf-8><body>{view}</body>", "utf-8")
    browser = Browser(tmp_path / "profile")
    try:
        page = browser.open(host)
        frame = page.page.locator("iframe").element_handle().content_frame()
        frame.wait_for_selector("#rel-svg rect")
        assert frame.locator("#rel-svg rect").count() == len(e.tokens)
        assert frame.locator("#rel-outputs button").count() == len(e.target_tokens)
        frame.wait_for_function("document.body.dataset.thumbs === 'done'")
        assert frame.locator("#lines line.attn").count() > 0
        page.assert_clean()
    finally:
        browser.close()


def test_cli_explain_exit_codes(tiny_checkpoint, tmp_path) -> None:
    from typer.testing import CliRunner

    from attnkit.cli import app

    runner = CliRunner()
    folder = str(tiny_checkpoint("transformer"))
    ok = runner.invoke(app, ["explain", TEXT, "--model", folder, "--target", TARGET, "--out",
                             str(tmp_path / "e.html"), "--png", str(tmp_path / "png")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "e.html").is_file() and (tmp_path / "png" / "relevance-attnlrp.png").is_file()
    for args in (["explain", " ", "--model", folder], ["explain", TEXT, "--model", folder, "--method", "lime"],
                 ["explain", TEXT, "--model", folder, "--query", "q"]):
        bad = runner.invoke(app, [*args, "--out", str(tmp_path / "bad.html")])
        assert bad.exit_code == 2, bad.output
