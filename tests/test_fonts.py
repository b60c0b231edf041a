"""viz.fonts: every script of the date task draws with the packaged fonts (no missing glyphs),
and right-to-left titles read in order.

matplotlib warns ``Glyph N (...) missing from font(s) ...`` when it has to draw a character
with its Last Resort font (a box); these tests turn that warning into an error and save each
figure (glyphs are only looked up when the figure is drawn).
"""

from __future__ import annotations

import datetime
import io
import re
import unicodedata
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from attnkit.data.dates import DEFAULT_LOCALES, DateTask
from attnkit.viz import fonts
from attnkit.viz.fonts import (
    font_fallback_list,
    fonts_for,
    packaged_font_files,
    register_fonts,
    uncovered,
)
from attnkit.viz.heatmap import heatmap, isolate_rtl

DAY = datetime.date(2026, 11, 24)  # a Tuesday: weekday and month names in every locale
RTL_LOCALES = ("he_IL", "ar_EG", "fa_IR", "ur_PK", "ps_AF")
FSI, PDI = "\u2068", "\u2069"


@pytest.fixture(scope="module")
def task() -> DateTask:
    return DateTask()


@pytest.fixture(scope="module")
def vocab(task):
    return task.build_vocab()


@contextmanager
def no_missing_glyphs():
    """matplotlib's missing-glyph warning raises instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"Glyph .* missing from font")
        yield


def demo_heatmap(example, vocab, path: Path):
    """The demo's alignment picture of one example: source tokens x target characters, title
    as ``demo.write_alignments`` writes it."""
    x = vocab.tokenize(example.source)
    y = [*example.target, "</s>"]
    weights = np.random.default_rng(0).dirichlet(np.ones(len(x)), size=len(y))  # (T, S)
    title = f"RNN + attention ({example.locale})\n{example.source} -> {example.target} (correct)"
    return heatmap(weights, x, y, path, title=title, dpi=50)


# ------------------------------------------------------------------ registration, fallback


def test_packaged_fonts_are_registered_once() -> None:
    from matplotlib import font_manager

    files = register_fonts()
    assert files, "no font package installed: pip install manimgx-fonts noto-cjk-sans-jp-regular"
    registered = {Path(f.fname) for f in font_manager.fontManager.ttflist}
    assert set(files) <= registered
    count = len(font_manager.fontManager.ttflist)
    assert register_fonts() is files  # once: later calls add nothing
    assert len(font_manager.fontManager.ttflist) == count
    families = font_fallback_list()
    assert families[0] == "DejaVu Sans"
    assert {"Noto Sans Gujarati", "Noto Sans Myanmar", "Noto Sans Ethiopic",
            "Noto Sans CJK JP"} <= set(families)
    assert not any(name.startswith("Last Resort") for name in families)


def test_missing_font_package_is_skipped() -> None:
    assert packaged_font_files(("attnkit_no_such_font_package",)) == []
    assert packaged_font_files(("attnkit_no_such.sub_package",)) == []
    # Without the script's font the characters are reported, not raised.
    chosen, missing = fonts._choose(["abc 東京 ગુજરાતી"], ["DejaVu Sans", "No Such Family"])
    assert chosen == ["DejaVu Sans"]
    assert set(missing) == set("東京ગુજરાતી")


def test_fonts_for_picks_the_shortest_list() -> None:
    assert fonts_for(["2026-11-24", "<de_DE> 24. November 2026"]) == ["DejaVu Sans"]
    assert fonts_for(["Ноябрь", "Νοέμβριος", "נובמבר", "նոյեմբեր", "ნოემბერი"]) == ["DejaVu Sans"]
    assert fonts_for(["नवंबर", "東京", "한국"]) == ["DejaVu Sans", "Noto Sans Devanagari",
                                                   "Noto Sans CJK JP"]
    assert fonts_for(["ہفتہ"]) == ["DejaVu Sans", "Noto Sans Arabic"]  # DejaVu lacks U+06C1
    # invisible format characters (RLM, ZWNJ, isolates) need no glyph; unassigned ones do
    assert uncovered(["\u200f\u200c\u2068\u2069\n"]) == ""
    assert uncovered(["a\u0378b", "\u0378"]) == "\u0378"


def test_every_character_of_the_task_has_a_font(task) -> None:
    texts = task.alphabet() + [e.source for e in task.generate(2000, seed=0)]
    assert uncovered(texts) == ""
    # ... and draws: every word of the task (digit runs apart, so it is a few thousand
    # characters, not every date) that needs a font besides DejaVu Sans, as real text, saved
    # with warnings as errors. Real words, not loose characters: a combining mark after a
    # letter of another script would be a cluster that no font has.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pieces = sorted({p for text in texts for p in re.split(r"[\s\d]+", text) if p})
    digits = sorted({c for text in texts for c in text if c.isdecimal()})
    assert {c for p in pieces for c in p} | set(digits) == {
        c for text in texts for c in text if not c.isspace()}
    words = [p for p in [*pieces, "".join(digits)] if len(fonts_for([p])) > 1]
    assert len(words) > 200
    lines, line = [], ""
    for word in words:
        if len(line) + len(word) > 100:
            lines.append(line)
            line = ""
        line += word + " "
    lines.append(line)
    with no_missing_glyphs(), matplotlib.rc_context({"font.family": fonts_for(words)}):
        fig = Figure(figsize=(8, 0.12 * len(lines)), dpi=30)
        FigureCanvasAgg(fig)
        for k, text in enumerate(lines):
            fig.text(0.01, 1 - (k + 1) / (len(lines) + 1), text, fontsize=4)
        fig.savefig(io.BytesIO(), format="png")


# ------------------------------------------------------------------ one heatmap per locale


@pytest.mark.parametrize("locale", DEFAULT_LOCALES)
def test_locale_heatmap_has_no_missing_glyphs(task, vocab, locale, tmp_path) -> None:
    example = task.render(DAY, locale, "long")
    with no_missing_glyphs():
        fig = demo_heatmap(example, vocab, tmp_path / f"{locale}.png")
    assert (tmp_path / f"{locale}.png").stat().st_size > 1000
    assert len(fig.axes[0].get_xticklabels()) == len(vocab.tokenize(example.source))
    if locale in RTL_LOCALES:
        title = fig.axes[0].title
        assert_reads_in_order(visual(title.get_fontproperties(), title.get_text().split("\n")[1]),
                              example)


def test_unknown_character_warns_instead_of_hiding(tmp_path) -> None:
    with pytest.warns(UserWarning, match=r"Glyph 888 .* missing from font"):
        heatmap(np.ones((1, 2)) / 2, ["a", "\u0378"], ["b"], tmp_path / "box.png", dpi=50)


# ------------------------------------------------------------------ right-to-left titles


def visual(prop, line: str) -> list[tuple[str, float, str]]:
    """(character, x, font family) of each glyph of ``line`` as matplotlib lays it out with the
    font properties ``prop``, in drawing order (left to right): the fonts and the libraqm
    layout its backends use (``RendererAgg._prepare_font``, ``_text_helpers.layout``)."""
    from matplotlib import font_manager
    from matplotlib._text_helpers import layout

    font = font_manager.get_font(font_manager.fontManager._find_fonts_by_props(prop))
    font.set_size(prop.get_size_in_points(), 72)
    return [(item.char, item.x, item.ft_object.family_name) for item in layout(line, font)]


def visible_words(glyphs) -> list[str]:
    """The words of a laid-out line, left to right, as characters in drawing order: a glyph
    for several characters (an Arabic lam-alef ligature) lists them in reading order, so
    right-to-left ones are turned round; invisible format characters are dropped."""
    pieces = []
    for chars, _, _ in glyphs:
        chars = "".join(c for c in chars if unicodedata.category(c) != "Cf")
        rtl = any(unicodedata.bidirectional(c) in ("R", "AL") for c in chars)
        pieces.append(chars[::-1] if rtl else chars)
    return "".join(pieces).split()


def test_isolate_rtl_wraps_the_rtl_runs_only() -> None:
    assert isolate_rtl("<he_IL> 24 בנובמבר 2026 -> 2026-11-24 (correct)") == (
        f"<he_IL> {FSI}24 בנובמבר 2026{PDI} -> 2026-11-24 (correct)")
    assert isolate_rtl("٢٤ نوفمبر ٢٠٢٦  ->  2026-11-24") == f"{FSI}٢٤ نوفمبر ٢٠٢٦{PDI}  ->  2026-11-24"
    assert isolate_rtl("RNN (ar_EG) 24. November 2026 -> 2026-11-24") == (
        "RNN (ar_EG) 24. November 2026 -> 2026-11-24")
    assert isolate_rtl("a נוב b מרץ") == f"a {FSI}נוב{PDI} b {FSI}מרץ{PDI}"


@pytest.mark.parametrize("locale", RTL_LOCALES)
@pytest.mark.parametrize("style", ["short", "medium", "long", "full"])
def test_rtl_title_reads_in_order(task, locale, style) -> None:
    """The title line the heatmap draws (isolated RTL runs), laid out by matplotlib with the
    fonts the heatmap picks (the heatmaps themselves: the per-locale test above)."""
    from matplotlib.font_manager import FontProperties

    example = task.render(DAY, locale, style)
    line = isolate_rtl(f"{example.source} -> {example.target} (correct)")
    assert_reads_in_order(visual(FontProperties(family=fonts_for([line]), size=10), line), example)


def assert_reads_in_order(glyphs, example) -> None:
    """The laid-out title line ``<tag> <date> -> <target> (correct)`` reads as it should."""
    assert [x for _, x, _ in glyphs] == sorted(x for _, x, _ in glyphs)  # drawn left to right
    assert not any(family.startswith("Last Resort") for _, _, family in glyphs)  # no boxes
    # Left to right: the tag, the date, the arrow, the target, the mark, each in order ...
    tag, date = example.source.split(" ", 1)
    words = visible_words(glyphs)
    n = len(date.split())
    assert words[0] == tag
    assert words[n + 1:] == ["->", example.target, "(correct)"]
    # ... and a date with RTL letters reads right to left: its words in reverse order, each
    # word's letters reversed while digit runs keep their order (what the bidi algorithm does
    # with an RTL run). Numeric dates without RTL letters (he_IL 24.11.2026, fa_IR ۲۰۲۶/۱۱/۲۴)
    # stay as typed.
    if any(unicodedata.bidirectional(c) in ("R", "AL") for c in date):
        assert words[1:n + 1] == [_rtl_word(w) for w in reversed(date.split())]
    else:
        assert words[1:n + 1] == date.split()


def _rtl_word(word: str) -> str:
    """How a word of an RTL run is drawn: reversed, except that digit runs (European or
    Arabic-Indic) keep their left-to-right order; mirrored brackets are not handled (the
    dates have none). Invisible format characters are dropped."""
    runs: list[str] = []
    for c in word:
        if unicodedata.category(c) == "Cf":
            continue
        digit = unicodedata.bidirectional(c) in ("EN", "AN")
        if runs and digit and runs[-1][0].isdigit():
            runs[-1] += c
        else:
            runs.append(c)
    return "".join(reversed(runs))
