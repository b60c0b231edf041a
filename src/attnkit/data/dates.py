"""Multilingual date normalisation from real CLDR data (via babel) -> ISO ``YYYY-MM-DD``.

A random date in the year window (default 1950-2049) is rendered with babel in one of the
CLDR ``short/medium/long/full`` date formats of one of :data:`DEFAULT_LOCALES` (48 locales,
18 scripts), and the target is the ISO date::

    <de_DE> 24. November 2026            -> 2026-11-24
    <en_US> 3/4/26                       -> 2026-03-04
    <en_GB> 03/04/2026                   -> 2026-04-03
    <ar_EG> ٢٤ نوفمبر ٢٠٢٦              -> 2026-11-24   (Arabic-Indic digits)
    <mr_IN> २४ नोव्हेंबर, २०२६              -> 2026-11-24   (Devanagari digits)
    24. November 2026                    -> 2026-11-24   (untagged, see below)

Rules that make every input have exactly one right answer:

* The input starts with the locale tag ``<xx_YY>`` and a space (one token for
  :class:`~attnkit.data.tokenizers.CharVocab`): numeric formats differ between locales
  (``03/04/26`` is March in en_US, April in en_GB).
* Years come from a window of at most 100 years (``years=(1950, 2049)`` by default), so a
  two-digit year ``yy`` means the one year of the window ending in ``yy`` (26 -> 2026,
  51 -> 1951).
* Digits are written in the locale's CLDR default numbering system (``arab`` for ar_EG,
  ``arabext`` for fa_IR/ps_AF, ``beng`` for bn_BD, ``deva`` for mr_IN/ne_NP, ``mymr`` for
  my_MM); the native digits come from :mod:`unicodedata`.
* A fraction ``untagged`` (default 0.2) of examples drop the tag, but only where that
  cannot be ambiguous: the format spells the month as a word, the year has four digits and
  the month word means the same month in every locale of the task (Croatian ``listopad`` is
  October, Polish/Czech ``listopad`` is November, so those never go untagged). This lets a
  trained model read plain ``"24. November 2026"``.

Splits: a date belongs to the held-out test split iff a fixed hash of it falls in 10% of
the hash range, so the train and test splits share no date (in any locale or format), for
every seed. ``generate(n, seed=s, split="train")`` is deterministic for ``s``.

Alignment: every :class:`DateExample` carries the character spans of its year, month and
day fields in ``source`` (tag included in the offsets): :func:`month_span` is the span of
the month word/number (e.g. ``"November"`` in a German long date); target spans are fixed
(:data:`TARGET_SPANS`, the month is ``target[5:7]``).

Speed: patterns, numbering systems and every rendered field are cached per locale, so
200k examples take about a second.

API::

    examples = generate(10_000, seed=0, split="train")      # list[DateExample]
    task = make_task(n_train=100_000, n_test=2_000, seed=0)  # Task(train, test, tokenizer)
    ex = render(datetime.date(2026, 11, 24), "de_DE", "long")
    ex.source, ex.target, month_span(ex)                     # '<de_DE> 24. November 2026', ...
"""

from __future__ import annotations

import datetime
import random
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from babel import Locale, UnknownLocaleError
from babel.dates import DateTimeFormat, get_date_format, tokenize_pattern

from attnkit.data.base import Pair, Task
from attnkit.data.tokenizers import CharVocab

STYLES: tuple[str, ...] = ("short", "medium", "long", "full")
YEAR_WINDOW: tuple[int, int] = (1950, 2049)
TEST_FRACTION = 0.1
#: Character spans of the fields in the ISO target ``YYYY-MM-DD``.
TARGET_SPANS: dict[str, tuple[int, int]] = {"year": (0, 4), "month": (5, 7), "day": (8, 10)}

#: 48 locales in 18 scripts (grouped by the script of their month names).
DEFAULT_LOCALES: tuple[str, ...] = (
    # Latin
    "en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "pt_BR", "nl_NL", "pl_PL", "cs_CZ",
    "hr_HR", "tr_TR", "sv_SE", "fi_FI", "hu_HU", "vi_VN", "id_ID", "sw_KE", "ro_RO", "lt_LT",
    # Cyrillic
    "ru_RU", "uk_UA", "bg_BG", "sr_RS", "kk_KZ", "mn_MN",
    # Greek, Armenian, Georgian, Hebrew
    "el_GR", "hy_AM", "ka_GE", "he_IL",
    # Arabic script (native digits: ar_EG arab, fa_IR/ps_AF arabext)
    "ar_EG", "fa_IR", "ur_PK", "ps_AF",
    # Indic (native digits: bn_BD beng, mr_IN/ne_NP deva)
    "hi_IN", "mr_IN", "ne_NP", "bn_BD", "ta_IN", "te_IN", "gu_IN",
    # South-East Asian, Ethiopic
    "th_TH", "km_KH", "my_MM", "am_ET",
    # CJK, Hangul
    "zh_CN", "ja_JP", "ko_KR",
)

# CLDR numbering system -> the Unicode name prefix of its digits ("<PREFIX> DIGIT ZERO" ...)
_DIGIT_NAMES = {
    "arab": "ARABIC-INDIC", "arabext": "EXTENDED ARABIC-INDIC", "beng": "BENGALI",
    "deva": "DEVANAGARI", "gujr": "GUJARATI", "guru": "GURMUKHI", "knda": "KANNADA",
    "khmr": "KHMER", "laoo": "LAO", "mlym": "MALAYALAM", "mymr": "MYANMAR", "orya": "ORIYA",
    "taml": "TAMIL", "telu": "TELUGU", "thai": "THAI", "tibt": "TIBETAN", "mong": "MONGOLIAN",
}
_DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")

# which pattern letters carry which part of the date (CLDR date field symbols)
_FIELD_PART = {"y": "year", "u": "year", "M": "month", "L": "month", "d": "day"}


@cache
def native_digits(numbering_system: str) -> str:
    """The ten digits 0..9 of a CLDR numbering system (``"latn"`` -> ``"0123456789"``)."""
    if numbering_system == "latn":
        return "0123456789"
    prefix = _DIGIT_NAMES.get(numbering_system)
    if prefix is None:
        raise ValueError(f"numbering system {numbering_system!r} is not supported "
                         f"(known: latn, {', '.join(sorted(_DIGIT_NAMES))})")
    digits = "".join(unicodedata.lookup(f"{prefix} DIGIT {w}") for w in _DIGIT_WORDS)
    assert [unicodedata.digit(c) for c in digits] == list(range(10)), numbering_system
    return digits


def window_year(two_digits: int, years: tuple[int, int] = YEAR_WINDOW) -> int:
    """The one year of the window ending in ``two_digits`` (26 -> 2026, 51 -> 1951)."""
    lo, hi = years
    for y in range(lo, hi + 1):
        if y % 100 == two_digits:
            return y
    raise ValueError(f"no year ending in {two_digits:02d} in the window {lo}-{hi}")


@dataclass(frozen=True)
class DateExample(Pair):
    """A date example: ``source`` (tagged or not) -> ``target`` ISO date, plus provenance.

    ``year_span``/``month_span``/``day_span`` are ``(start, end)`` character spans of the
    fields in ``source``.
    """

    locale: str = ""
    style: str = ""
    date: datetime.date = datetime.date(2000, 1, 1)
    tagged: bool = True
    year_span: tuple[int, int] = (0, 0)
    month_span: tuple[int, int] = (0, 0)
    day_span: tuple[int, int] = (0, 0)


def month_span(example: DateExample) -> tuple[int, int]:
    """Character span ``(start, end)`` of the month word/number in ``example.source``."""
    return example.month_span


def field_spans(example: DateExample) -> dict[str, tuple[int, int]]:
    """Character spans of ``year``, ``month`` and ``day`` in ``example.source``."""
    return {"year": example.year_span, "month": example.month_span, "day": example.day_span}


def tag(locale: str) -> str:
    """The source prefix of a locale, ``"<de_DE> "`` (tag and one space)."""
    return f"<{locale}> "


class _LocaleRenderer:
    """Cached CLDR date rendering for one locale: each style's pattern is compiled once
    into literal pieces and lookup tables of rendered field values (native digits)."""

    def __init__(self, locale: str) -> None:
        try:
            self.locale = Locale.parse(locale)
        except (UnknownLocaleError, ValueError) as exc:
            raise ValueError(f"unknown locale {locale!r}: {exc}") from exc
        self.name = locale
        self.numbering = self.locale.default_numbering_system
        self.digits = native_digits(self.numbering)
        self._translate = str.maketrans("0123456789", self.digits)
        self.patterns: dict[str, list[tuple[str, object]]] = {}
        self._fields: dict[tuple, str] = {}
        # style -> steps: (part, table) with part in _PARTS; table maps the part's value to text
        self._compiled: dict[str, list[tuple[str, object]]] = {}
        for style in STYLES:
            pattern = get_date_format(style, self.locale).pattern
            tokens = tokenize_pattern(pattern)
            steps: list[tuple[str, object]] = []
            for kind, value in tokens:
                if kind == "chars":
                    steps.append(("text", value.translate(self._translate)))  # type: ignore[union-attr]
                    continue
                char, count = value  # type: ignore[misc]
                if char in "yu":
                    steps.append(("year", (char, count)))  # rendered lazily, cached in _years
                elif char in "ML":
                    steps.append(("month", [""] + [self.field(char, count, datetime.date(2001, m, 1))
                                                   for m in range(1, 13)]))
                elif char == "d":
                    steps.append(("day", [""] + [self.field(char, count, datetime.date(2001, 1, d))
                                                 for d in range(1, 32)]))
                elif char in "Eec":  # 2001-01-01 is a Monday: weekday() 0..6
                    steps.append(("weekday", [self.field(char, count, datetime.date(2001, 1, 1 + w))
                                              for w in range(7)]))
                elif char == "G":
                    steps.append(("text", self.field(char, count, datetime.date(2001, 1, 1))))
                else:
                    raise ValueError(f"{locale} {style} pattern {pattern!r} uses the unsupported "
                                     f"field {char * count!r}")
            self.patterns[style] = tokens
            self._compiled[style] = steps
        self._years: dict[tuple[str, int, int], str] = {}

    def field(self, char: str, count: int, date: datetime.date) -> str:
        """One rendered field of ``date`` (pattern letter ``char`` repeated ``count``), native digits."""
        key = (char, count, date)
        text = self._fields.get(key)
        if text is None:
            text = DateTimeFormat(date, self.locale)[char * count].translate(self._translate)
            self._fields[key] = text
        return text

    def render(self, date: datetime.date, style: str,
               offset: int = 0) -> tuple[str, dict[str, tuple[int, int]]]:
        """Text of ``date`` in ``style`` and the spans of year/month/day in it (+ ``offset``)."""
        parts: list[str] = []
        spans: dict[str, tuple[int, int]] = {}
        pos = offset
        for part, table in self._compiled[style]:
            if part == "text":
                parts.append(table)  # type: ignore[arg-type]
                pos += len(table)  # type: ignore[arg-type]
                continue
            if part == "month":
                text = table[date.month]  # type: ignore[index]
            elif part == "day":
                text = table[date.day]  # type: ignore[index]
            elif part == "weekday":
                text = table[date.weekday()]  # type: ignore[index]
            else:  # year
                key = (*table, date.year)  # type: ignore[misc]
                text = self._years.get(key)
                if text is None:
                    text = self._years[key] = self.field(table[0], table[1], date)  # type: ignore[index]
            end = pos + len(text)
            spans[part] = (pos, end)
            parts.append(text)
            pos = end
        return "".join(parts), spans

    def month_field(self, style: str) -> tuple[str, int] | None:
        """``(char, count)`` of the month field of ``style`` (None if there is none)."""
        for kind, value in self.patterns[style]:
            if kind == "field" and value[0] in "ML":  # type: ignore[index]
                return value  # type: ignore[return-value]
        return None

    def spells_month(self, style: str) -> bool:
        """True if ``style`` writes the month as a word and the year in full (not ``yy``)."""
        month = self.month_field(style)
        years = [v for k, v in self.patterns[style] if k == "field" and v[0] in "yu"]  # type: ignore[index]
        return (month is not None and month[1] >= 3 and len(years) == 1 and years[0][1] != 2)


@lru_cache(maxsize=256)
def _renderer(locale: str) -> _LocaleRenderer:
    return _LocaleRenderer(locale)


class DateTask:
    """The date task over a set of locales: rendering, untagged eligibility, sampling.

    ``DateTask(locales, years)`` validates its arguments (ValueError naming the values).
    """

    def __init__(self, locales: Sequence[str] = DEFAULT_LOCALES, styles: Sequence[str] = STYLES,
                 years: tuple[int, int] = YEAR_WINDOW) -> None:
        lo, hi = years
        if not (1 <= lo <= hi <= 9999):
            raise ValueError(f"years must be (first, last) with 1 <= first <= last <= 9999, got {years}")
        if hi - lo >= 100:
            raise ValueError(f"the year window {lo}-{hi} spans {hi - lo + 1} years; at most 100 "
                             "keep two-digit years unambiguous")
        if not locales:
            raise ValueError("locales must not be empty")
        if len(set(locales)) != len(locales):
            raise ValueError(f"duplicate locales in {list(locales)}")
        bad = [s for s in styles if s not in STYLES]
        if bad or not styles:
            raise ValueError(f"styles must be a non-empty subset of {STYLES}, got {list(styles)}")
        self.locales = tuple(locales)
        self.styles = tuple(styles)
        self.years = (lo, hi)
        self.renderers = {loc: _renderer(loc) for loc in self.locales}
        self._first = datetime.date(lo, 1, 1).toordinal()
        self._last = datetime.date(hi, 12, 31).toordinal()
        self.untaggable = self._untaggable()
        self._dates: dict[str, list[datetime.date]] = {}

    def _untaggable(self) -> frozenset[tuple[str, str]]:
        """(locale, style) pairs whose rendering stays unambiguous without the locale tag."""
        meanings: dict[str, set[int]] = {}
        month_words: dict[tuple[str, str], list[str]] = {}
        for loc, r in self.renderers.items():
            for style in self.styles:
                field = r.month_field(style)
                if field is None:
                    continue
                words = [r.field(field[0], field[1], datetime.date(2001, m, 1)) for m in range(1, 13)]
                month_words[(loc, style)] = words
                for m, w in enumerate(words, start=1):
                    meanings.setdefault(w, set()).add(m)
        ok = set()
        for (loc, style), words in month_words.items():
            if not self.renderers[loc].spells_month(style):
                continue
            if all(len(meanings[w]) == 1 for w in words) and len(set(words)) == 12:
                ok.add((loc, style))
        return frozenset(ok)

    @staticmethod
    def is_test_date(date: datetime.date) -> bool:
        """True if ``date`` belongs to the held-out split (fixed hash: the same for every seed)."""
        x = (date.toordinal() * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
        return x % 1000 < TEST_FRACTION * 1000

    def render(self, date: datetime.date, locale: str, style: str, *, tagged: bool = True) -> DateExample:
        """The example for one date/locale/style (ValueError for a year outside the window)."""
        if not self.years[0] <= date.year <= self.years[1]:
            raise ValueError(f"year {date.year} is outside the window {self.years[0]}-{self.years[1]}")
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        return self._render(date, locale, style, tagged)

    def _render(self, date: datetime.date, locale: str, style: str, tagged: bool) -> DateExample:
        r = self.renderers.get(locale) or _renderer(locale)
        prefix = tag(locale) if tagged else ""
        text, s = r.render(date, style, len(prefix))
        return DateExample(prefix + text, date.isoformat(), locale, style, date, tagged,
                           s["year"], s["month"], s["day"])

    def generate(self, n: int, *, seed: int = 0, split: str = "train",
                 untagged: float = 0.2) -> list[DateExample]:
        """``n`` random examples of ``split`` ("train" or "test"), deterministic for ``seed``."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if not 0.0 <= untagged <= 1.0:
            raise ValueError(f"untagged must be in [0, 1], got {untagged}")
        rng = random.Random(f"attnkit.dates:{seed}:{split}")
        rand = rng.random
        dates = self._split_dates(split)
        nd, nl, ns = len(dates), len(self.locales), len(self.styles)
        out: list[DateExample] = []
        for _ in range(n):
            date = dates[int(rand() * nd)]
            locale = self.locales[int(rand() * nl)]
            style = self.styles[int(rand() * ns)]
            drop = rand() < untagged and (locale, style) in self.untaggable
            out.append(self._render(date, locale, style, not drop))
        return out

    def _split_dates(self, split: str) -> list[datetime.date]:
        """Every date of the window that belongs to ``split`` (cached)."""
        if split not in self._dates:
            want_test = split == "test"
            self._dates[split] = [
                d for d in map(datetime.date.fromordinal, range(self._first, self._last + 1))
                if self.is_test_date(d) == want_test
            ]
        return self._dates[split]

    def alphabet(self) -> list[str]:
        """Every source/target string needed to cover the task's characters and tags."""
        texts = [tag(loc) for loc in self.locales] + ["0123456789-"]
        # 1..12 of each month covers every month name and weekday; years cover the digits
        for r in self.renderers.values():
            for m in range(1, 13):
                for d in range(1, 13):
                    date = datetime.date(self.years[0] + (m * 12 + d) % (self.years[1] - self.years[0] + 1), m, d)
                    for style in self.styles:
                        texts.append(r.render(date, style)[0])
            texts.append(r.digits)
        return texts

    def build_vocab(self) -> CharVocab:
        """A character vocabulary with every character and locale tag the task can produce."""
        return CharVocab.build(self.alphabet(), tags=True)


def generate(n: int, *, seed: int = 0, split: str = "train", locales: Sequence[str] = DEFAULT_LOCALES,
             styles: Sequence[str] = STYLES, years: tuple[int, int] = YEAR_WINDOW,
             untagged: float = 0.2) -> list[DateExample]:
    """``n`` date examples of ``split`` ("train"/"test"); see the module docstring."""
    return DateTask(locales, styles, years).generate(n, seed=seed, split=split, untagged=untagged)


def render(date: datetime.date, locale: str, style: str = "long", *, tagged: bool = True,
           years: tuple[int, int] = YEAR_WINDOW) -> DateExample:
    """One example: ``render(date(2026, 11, 24), "de_DE", "long").source == "<de_DE> 24. November 2026"``."""
    return DateTask((locale,), STYLES, years).render(date, locale, style, tagged=tagged)


def make_task(n_train: int = 100_000, n_test: int = 2_000, *, seed: int = 0,
              locales: Sequence[str] = DEFAULT_LOCALES, styles: Sequence[str] = STYLES,
              years: tuple[int, int] = YEAR_WINDOW, untagged: float = 0.2) -> Task:
    """Train/test examples and a :class:`CharVocab` covering every character of the task."""
    dt = DateTask(locales, styles, years)
    train = dt.generate(n_train, seed=seed, split="train", untagged=untagged)
    test = dt.generate(n_test, seed=seed, split="test", untagged=untagged)
    info = {"locales": list(dt.locales), "styles": list(dt.styles), "years": list(dt.years),
            "untagged": untagged, "seed": seed}
    return Task("dates", train, test, dt.build_vocab(), info)
