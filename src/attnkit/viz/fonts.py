"""Fonts for labels in any script: the packaged Noto fonts and the fallback list for a text.

matplotlib (>= 3.6) falls back glyph by glyph through the ``font.family`` list, and since 3.11
it shapes each run with libraqm (Arabic joining, Indic conjuncts, bidi order). What it cannot
do is draw a script that no font on the machine has: it then draws the "Last Resort" font's
boxes and warns ``Glyph ... missing from font(s)``. So the fonts come with attnkit, as PyPI
packages of unmodified Noto fonts (OFL-1.1):

* ``manimgx-fonts``: Noto Sans and Noto Sans for Arabic, Armenian, Bengali, Devanagari,
  Ethiopic, Georgian, Gujarati, Gurmukhi, Hebrew, Kannada, Khmer, Lao, Malayalam, Myanmar,
  Oriya, Sinhala, Tamil, Telugu and Thai, plus Noto Sans Symbols and Noto Emoji;
* ``noto-cjk-sans-jp-regular``: Noto Sans CJK JP (Han, kana and Hangul); the all-languages
  collection of ``noto-cjk[sans]`` is used instead where that is what is installed.

matplotlib's own DejaVu Sans comes first: it covers Latin, Cyrillic, Greek, Armenian, Georgian,
Hebrew and most of the Arabic script. :func:`register_fonts` adds the packaged files to
matplotlib's font manager once, on first use (a package that is not installed is skipped);
:func:`fonts_for` then picks the shortest fallback list that covers a set of strings and
:func:`uncovered` names the characters that no font has (they will draw as boxes, with
matplotlib's warning).
"""

from __future__ import annotations

import importlib.util
import threading
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

#: Import names of the packages whose font files are registered with matplotlib.
FONT_PACKAGES: tuple[str, ...] = (
    "manimgx_fonts",  # pip: manimgx-fonts
    "noto_cjk_sans_jp_regular",  # pip: noto-cjk-sans-jp-regular
    "noto_cjk_sans_otc",  # pip: noto-cjk[sans] (the same glyphs, all four CJK languages)
)
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc")

# Families tried in order for each glyph; only the installed (or registered) ones are used.
_FONT_PREFERENCE = (
    "DejaVu Sans",
    "Noto Sans",
    "Noto Sans Arabic",
    "Noto Sans Hebrew",
    "Noto Sans Armenian",
    "Noto Sans Georgian",
    "Noto Sans Devanagari",
    "Noto Sans Bengali",
    "Noto Sans Gujarati",
    "Noto Sans Gurmukhi",
    "Noto Sans Oriya",
    "Noto Sans Tamil",
    "Noto Sans Telugu",
    "Noto Sans Kannada",
    "Noto Sans Malayalam",
    "Noto Sans Sinhala",
    "Noto Sans Thai",
    "Noto Sans Lao",
    "Noto Sans Khmer",
    "Noto Sans Myanmar",
    "Noto Sans Ethiopic",
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK KR",
    "Noto Sans Symbols",
    "Noto Sans Symbols 2",
    "Noto Sans Math",
    "Noto Emoji",
)
# matplotlib >= 3.10 ends every fallback list with this font: it draws a box for any code
# point, so it never counts as covering one.
_LAST_RESORT = "Last Resort"

_lock = threading.Lock()
_registered: tuple[Path, ...] | None = None


def packaged_font_files(packages: Iterable[str] = FONT_PACKAGES) -> list[Path]:
    """The font files shipped by those of ``packages`` that are installed (none imported)."""
    files: list[Path] = []
    for name in packages:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            files += sorted(p for p in Path(folder).rglob("*")
                            if p.suffix.lower() in _FONT_SUFFIXES and p.is_file())
    return files


def register_fonts() -> tuple[Path, ...]:
    """Add the packaged font files to matplotlib's font manager (once; later calls are free).

    Returns the files that are registered. A file matplotlib cannot read is skipped: its
    characters then count as uncovered and draw with matplotlib's missing-glyph warning.
    """
    global _registered
    if _registered is not None:
        return _registered
    with _lock:
        if _registered is None:
            from matplotlib import font_manager

            known = {Path(f.fname) for f in font_manager.fontManager.ttflist}
            added = []
            for path in packaged_font_files():
                if path not in known:
                    try:
                        font_manager.fontManager.addfont(path)
                    except (OSError, RuntimeError, ValueError):
                        continue
                added.append(path)
            _registered = tuple(added)
    return _registered


@cache
def font_fallback_list() -> list[str]:
    """The installed font families, in fallback order, for labels in any script."""
    from matplotlib import font_manager

    register_fonts()
    installed = {f.name for f in font_manager.fontManager.ttflist}
    families = [name for name in _FONT_PREFERENCE if name in installed]
    return families or ["sans-serif"]


@cache
def _charmap(family: str) -> frozenset[int]:
    """The code points of the font matplotlib draws ``family`` with (empty if none can be read,
    and for the Last Resort font)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    if family.startswith(_LAST_RESORT):
        return frozenset()
    try:
        path = font_manager.findfont(font_manager.FontProperties(family=family),
                                     fallback_to_default=False)
        font = FT2Font(path, face_index=getattr(path, "face_index", 0))
    except (ValueError, OSError, RuntimeError):
        return frozenset()
    if font.family_name.startswith(_LAST_RESORT):
        return frozenset()
    return frozenset(font.get_charmap())


def _needs_glyph(char: str) -> bool:
    """False for what matplotlib draws without a glyph: line breaks, and the invisible format
    characters (directional marks and isolates, zero-width joiners) that HarfBuzz hides."""
    return char != "\n" and unicodedata.category(char) not in ("Cf", "Zl", "Zp")


def _choose(texts: Iterable[str], families: Sequence[str]) -> tuple[list[str], str]:
    """(the shortest prefix-ordered subset of ``families`` covering ``texts``, the characters
    none of them covers)."""
    missing = {ord(c) for text in texts for c in text if _needs_glyph(c)}
    chosen = [families[0]]
    missing -= _charmap(families[0])
    for family in families[1:]:
        if not missing:
            break
        covered = missing & _charmap(family)
        if covered:
            chosen.append(family)
            missing -= covered
    return chosen, "".join(chr(c) for c in sorted(missing))


def fonts_for(texts: Sequence[str]) -> list[str]:
    """The shortest fallback list (in preference order) that covers the characters of ``texts``.

    Searching a long fallback list costs matplotlib time for every label, so a plain ASCII
    plot gets one family and a multilingual one only the families its characters need.
    """
    return _choose(texts, font_fallback_list())[0]


def uncovered(texts: Sequence[str]) -> str:
    """The characters of ``texts`` (sorted, each once) that no installed font has: matplotlib
    draws them as boxes and warns ``Glyph ... missing from font(s)``."""
    return _choose(texts, font_fallback_list())[1]


# ----------------------------------------------------------------------------- web pages
#
# A browser draws a character no installed font has as a box, and a stock Debian machine has no
# font for Devanagari or Japanese. So every HTML page attnkit writes carries the glyphs it shows:
# for each character of the page's text outside printable ASCII, the first packaged Noto font
# (in the order of ``_FONT_PREFERENCE``, CJK last) that has it; each such font is cut down with fontTools
# to exactly those characters (plus the glyphs their shaping needs), pinned to the regular
# weight, and embedded as a WOFF ``data:`` URL in an ``@font-face`` rule of the family
# ``WEB_FAMILY`` with the characters' ``unicode-range``. Printable ASCII is left to the page's
# own font list: every browser's sans-serif has it, and embedding it would add ~15 KB to every
# page (a Latin-only page grows by a few hundred bytes at most instead).

#: The font family of the embedded subsets; page styles name it first.
WEB_FAMILY = "attnkit-text"
_WEB_WEIGHT = 400


def _needs_web_glyph(char: str) -> bool:
    """True for the characters a page embeds a glyph for: not printable ASCII, not whitespace
    and not an invisible format character."""
    return not (" " <= char <= "~") and not char.isspace() and _needs_glyph(char)


def web_characters(texts: Iterable[str]) -> str:
    """The characters of ``texts`` (sorted, each once) that a page embeds glyphs for."""
    # Printable ASCII needs no glyph: such a text (a page's base64 weights, tens of MB) is skipped
    # by two C-speed checks instead of a Python loop over its characters.
    return "".join(sorted({c for text in texts if not (text.isascii() and text.isprintable())
                           for c in text if _needs_web_glyph(c)}))


@cache
def _web_font_files() -> tuple[tuple[Path, frozenset[int]], ...]:
    """The packaged upright font files with their code points, in fallback order."""
    from fontTools.ttLib import TTFont

    found: dict[str, tuple[Path, frozenset[int]]] = {}
    for path in packaged_font_files():
        try:
            font = TTFont(path, lazy=True, fontNumber=0)
            names = font["name"]
            family = str(names.getBestFamilyName())
            style = str(names.getBestSubFamilyName() or "")
            cmap = frozenset(font.getBestCmap() or {})
            font.close()
        except Exception:  # an unreadable file: its characters fall to the next font  # noqa: BLE001
            continue
        if "italic" in style.lower() or family in found:
            continue
        found[family] = (path, cmap)
    # CJK last: its 16 MB file is slow to cut (~1 s) and its arrows and math symbols are the
    # full-width ones; the Symbols fonts draw those to match the Latin text
    order = {name: i for i, name in enumerate(_FONT_PREFERENCE)}
    ranked = sorted(found, key=lambda name: ("CJK" in name, order.get(name, len(order)), name))
    return tuple(found[name] for name in ranked)


@cache
def _subset_woff(path: Path, chars: str) -> bytes:
    """``path`` cut down to ``chars`` (and the glyphs their shaping reaches), regular weight, WOFF."""
    import io

    from fontTools import subset
    from fontTools.ttLib import TTFont

    options = subset.Options()
    # fontTools' default features: shaping (Indic conjuncts, Arabic joining, marks, kerning), not
    # the stylistic extras (small caps, old-style figures, ...) that "*" keeps
    options.name_IDs = [1, 2]
    options.hinting = False
    options.notdef_outline = False
    options.drop_tables += ["STAT", "BASE", "VORG", "vhea", "vmtx", "gasp", "DSIG", "meta"]
    font = TTFont(path, fontNumber=0)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=chars)
    subsetter.subset(font)
    if "fvar" in font and any(a.axisTag == "wght" for a in font["fvar"].axes):
        from fontTools.varLib import instancer

        font = instancer.instantiateVariableFont(font, {"wght": _WEB_WEIGHT})
    font.flavor = "woff"
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


def _unicode_range(chars: str) -> str:
    return ",".join(f"U+{ord(c):X}" for c in chars)


def web_font_css(texts: Iterable[str]) -> str:
    """``@font-face`` rules (family :data:`WEB_FAMILY`) embedding the glyphs of ``texts``.

    Each character outside printable ASCII goes to the first packaged Noto font that has it;
    characters no packaged font has are left out, with a ``UserWarning`` naming them (the
    browser draws them with its own fonts where it has one, else as boxes). An ASCII-only text
    gives ``""``. Needs ``fontTools`` (a dependency of attnkit and matplotlib).
    """
    import base64

    missing = set(web_characters(texts))
    rules = []
    for path, cmap in _web_font_files():
        if not missing:
            break
        chars = "".join(sorted(c for c in missing if ord(c) in cmap))
        if not chars:
            continue
        missing -= set(chars)
        data = base64.b64encode(_subset_woff(path, chars)).decode("ascii")
        rules.append(f'@font-face{{font-family:"{WEB_FAMILY}";'
                     f'src:url(data:font/woff;base64,{data}) format("woff");'
                     f"unicode-range:{_unicode_range(chars)}}}")
    if missing:
        shown = ", ".join(f"{c!r} U+{ord(c):04X}" for c in sorted(missing)[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        warnings.warn(f"no font packaged with attnkit has {len(missing)} character(s) of this page: {shown}{more}; "
                      f"the browser draws them with its own fonts, or as boxes where it has none", stacklevel=2)
    return "\n".join(rules)
