"""HTML pages carry the glyphs they show: every character of a page's text outside printable
ASCII is covered by a font embedded in the page (a fontTools subset of the packaged Noto fonts,
as a ``data:`` ``@font-face``), read back here with fontTools, for the dates of all 48 locales.

Printable ASCII is left to the page's own font list (it ends in the generic ``sans-serif``,
which every browser has for ASCII); the Latin-only pages stay within 10% of their size without
embedded fonts.
"""

from __future__ import annotations

import base64
import datetime
import html
import importlib
import io
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from fontTools.ttLib import TTFont

from attnkit.data.dates import DEFAULT_LOCALES, DateTask
from attnkit.viz import fonts
from attnkit.viz.explorer import UI_CHARACTERS, explorer

explorer_module = importlib.import_module("attnkit.viz.explorer")  # the function shadows it
DAY = datetime.date(2026, 12, 7)  # a Monday in December: weekday and month names in every locale
FACE = re.compile(r"@font-face\{([^}]*)\}")
SRC = re.compile(r"url\(data:font/woff;base64,([A-Za-z0-9+/=]+)\)")
RANGE = re.compile(r"unicode-range:([^;}]*)")


def embedded_coverage(page: str) -> tuple[set[str], set[str]]:
    """(characters some embedded font draws: in its face's unicode-range and its cmap,
    every character named in a unicode-range)."""
    covered: set[str] = set()
    ranged: set[str] = set()
    for face in FACE.findall(page):
        assert 'font-family:"attnkit-text"' in face
        (data,) = SRC.findall(face)
        font = TTFont(io.BytesIO(base64.b64decode(data)))
        assert font.flavor == "woff"
        cmap = font.getBestCmap()
        glyphs = set(font.getGlyphOrder())
        (ranges,) = RANGE.findall(face)
        chars = {chr(int(u.strip()[2:], 16)) for u in ranges.split(",")}
        ranged |= chars
        covered |= {c for c in chars if ord(c) in cmap and cmap[ord(c)] in glyphs
                    and cmap[ord(c)] != ".notdef"}
    return covered, ranged


def needs_font(text: str) -> set[str]:
    return {c for c in text if not (" " <= c <= "~") and not c.isspace() and c.isprintable()}


@pytest.fixture(scope="module")
def dates() -> DateTask:
    return DateTask()


@pytest.mark.slow
def test_every_locale_date_is_covered_by_the_embedded_fonts(dates, tmp_path) -> None:
    """An explorer page of each locale's full and long date (its characters as tokens, the date in
    the title): the embedded fonts cover every character outside ASCII, and embed no other."""
    assert len(DEFAULT_LOCALES) == 48
    missing = {}
    for locale in DEFAULT_LOCALES:
        full = dates.render(DAY, locale, "full", tagged=False).source
        long = dates.render(DAY, locale, "long", tagged=False).source
        tokens = list(long)
        weights = np.full((1, 2, len(tokens), len(tokens)), 1 / len(tokens))
        page = explorer(tokens, weights, tmp_path / f"{locale}.html", title=full).read_text("utf-8")
        covered, ranged = embedded_coverage(page)
        text = full + long
        if needs_font(text) - covered:
            missing[locale] = "".join(sorted(needs_font(text) - covered))
        assert ranged <= needs_font(text) | set("".join(UI_CHARACTERS.values())), locale
    assert not missing, f"characters without an embedded glyph: {missing}"


def test_demo_index_covers_its_captions(dates, tmp_path) -> None:
    """The demo's index shows a caption per locale (source -> prediction, a mark for right or
    wrong): all 48, and both marks, are covered."""
    from attnkit.cli.demo import write_index

    pictures = []
    for locale in DEFAULT_LOCALES:
        example = dates.render(DAY, locale, "long")
        pictures.append({"path": f"alignments/rnn-{locale}.png", "model": "RNN", "locale": locale,
                         "source": example.source, "prediction": example.target,
                         "correct": locale != DEFAULT_LOCALES[0]})  # one wrong: its mark is drawn too
    flies = SimpleNamespace(sentences=("time flies like an arrow", "fruit flies like a banana"),
                            word="flies", rows=lambda: [("layer 1", 0.9, 0.8, 0.7)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no character of the page is left to the browser's fonts
        page = write_index(tmp_path, [], pictures, flies).read_text("utf-8")
    covered, _ = embedded_coverage(page)
    shown = "".join(p["source"] for p in pictures) + "\u2192\u2713\u00d7"
    assert needs_font(shown) - covered == set()
    assert '"attnkit-text", system-ui' in page


def test_ui_characters_lists_every_character_the_assets_write() -> None:
    """explorer.js/html write some characters outside ASCII themselves; each must be listed in
    UI_CHARACTERS so that a page showing it embeds its glyph."""
    text = explorer_module._asset("explorer.js") + explorer_module._asset("explorer.html")
    written = {chr(int(h, 16)) if h else chr(int(d))
               for h, d in re.findall(r"\\u([0-9a-fA-F]{4})|&#(\d+);", text)}
    written |= {html.unescape(e) for e in re.findall(r"&[a-z]+;", text)}
    written |= {c for c in text if ord(c) > 127}
    listed = set("".join(UI_CHARACTERS.values()))
    assert needs_font("".join(written)) - listed == set()


@pytest.mark.parametrize("tokens", [
    ["[CLS]", "time", "flies", "like", "an", "arrow", "[SEP]"],
    ["<s>", "The", " animal", " didn", "'t", " cross", " the", " street", "</s>"],
    ["[CLS]", "d\u00e9j\u00e0", "vu", "au", "caf\u00e9", "na\u00efve", "[SEP]"],
])
def test_latin_page_stays_within_ten_percent(tokens, tmp_path, monkeypatch) -> None:
    """A Latin-only page with its fonts vs the same page without any (its size before)."""
    weights = np.random.default_rng(0).dirichlet(np.ones(len(tokens)), size=(6, 12, len(tokens)))
    with_fonts = explorer(tokens, weights, tmp_path / "a.html").stat().st_size
    monkeypatch.setattr(explorer_module, "web_font_css", lambda texts: "")
    without = explorer(tokens, weights, tmp_path / "b.html").stat().st_size
    assert with_fonts <= 1.10 * without, (with_fonts, without)


def test_ascii_needs_no_font_and_each_character_goes_to_one_font() -> None:
    assert fonts.web_font_css(["plain ASCII text [CLS] 2026-12-07"]) == ""
    css = fonts.web_font_css(["\u0967\u0968 \u0926\u093f\u0938\u0902\u092c\u0930 2026\u5e7412\u6708"])
    ranges = [set(r.split(",")) for r in RANGE.findall(css)]
    assert len(ranges) == 2  # Devanagari and CJK: two fonts
    assert not ranges[0] & ranges[1]


@pytest.mark.slow
@pytest.mark.browser
def test_chromium_loads_every_embedded_font(dates, tmp_path) -> None:
    """Headless Debian chromium (only DejaVu installed) accepts every embedded subset (its font
    sanitizer rejects malformed fonts with a console error), and the exported SVG carries them."""
    from browser_support import Browser

    tokens = [dates.render(DAY, locale, "long", tagged=False).source for locale in DEFAULT_LOCALES]
    path = explorer(tokens, np.full((1, 1, 48, 48), 1 / 48), tmp_path / "all.html", title="48 locales")
    faces = len(FACE.findall(path.read_text("utf-8")))
    assert faces >= 15  # one per script's font
    browser = Browser(tmp_path / "profile")
    try:
        view = browser.open(path)
        view.page.wait_for_function("document.body.dataset.thumbs === 'done'")
        # the faces of text on screen load by themselves; the rest (e.g. the zoom caption's arrow,
        # shown on hover) are loaded here: a face the sanitizer rejects ends up "error"
        status = view.page.evaluate("""async () => { await document.fonts.ready;
            const faces = [...document.fonts].filter(f => f.family.includes('attnkit-text'));
            await Promise.allSettled(faces.map(f => f.load()));
            return faces.map(f => f.status); }""")
        assert status == ["loaded"] * faces
        with view.page.expect_download() as info:  # the exported head view carries the fonts too
            view.page.click("#export-head-svg")
        saved = tmp_path / "head.svg"
        info.value.save_as(saved)
        covered, _ = embedded_coverage(saved.read_text("utf-8"))
        assert needs_font("".join(tokens)) <= covered
        view.assert_clean()
    finally:
        browser.close()


def test_a_character_no_packaged_font_has_is_named_in_a_warning(tmp_path) -> None:
    """Cuneiform is in no font attnkit packages: the page is still written, and a warning names
    the character (the browser's fallback is no coverage: boxes where it has no font)."""
    from attnkit.viz.fonts import uncovered

    assert uncovered(["\U00012000"]) == "\U00012000"  # the matplotlib side agrees: no packaged font
    with pytest.warns(UserWarning, match=r"1 character\(s\) of this page: '\U00012000' U\+12000"):
        explorer(["a", "\U00012000"], np.full((1, 1, 2, 2), 0.5), tmp_path / "view.html")
    assert (tmp_path / "view.html").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explorer(["a", "\u0926\u093f"], np.full((1, 1, 2, 2), 0.5), tmp_path / "covered.html")  # Devanagari: covered
