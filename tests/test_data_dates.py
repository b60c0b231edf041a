"""The multilingual CLDR date task and the synthetic reverse/copy tasks.

Peers: babel's own ``format_date`` and month names (the CLDR data the task is built from)
and :mod:`unicodedata` (scripts of the letters, numeric values of the native digits).
"""

from __future__ import annotations

import datetime
import unicodedata
from collections import defaultdict

import pytest
from babel import Locale
from babel.dates import format_date

from attnkit.data import dates as D
from attnkit.data import load_task, synthetic

NATIVE = {"ar_EG": "arab", "fa_IR": "arabext", "bn_BD": "beng", "mr_IN": "deva"}
REQUIRED_SCRIPTS = {"LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "DEVANAGARI", "BENGALI",
                    "THAI", "CJK", "HANGUL", "GEORGIAN"}


@pytest.fixture(scope="module")
def task() -> D.DateTask:
    return D.DateTask()


@pytest.fixture(scope="module")
def sample(task: D.DateTask) -> list[D.DateExample]:
    return task.generate(30_000, seed=3, split="train") + task.generate(5_000, seed=3, split="test")


def script(ch: str) -> str:
    """First word of the character's Unicode name: LATIN, CYRILLIC, CJK, HANGUL, ...
    (MODIFIER LETTER ... is no script: counted as UNKNOWN)."""
    word = unicodedata.name(ch, "UNKNOWN").split()[0]
    return "UNKNOWN" if word == "MODIFIER" else word


def iso_of_digits(text: str) -> list[int]:
    """Numbers written in ``text`` in any script (unicodedata decimal values)."""
    out, cur = [], ""
    for ch in text + " ":
        if unicodedata.decimal(ch, None) is not None:
            cur += str(unicodedata.decimal(ch))
        elif cur:
            out.append(int(cur))
            cur = ""
    return out


def test_deterministic_for_a_seed(task: D.DateTask) -> None:
    a = task.generate(500, seed=7)
    assert a == D.generate(500, seed=7)
    assert a != task.generate(500, seed=8)
    assert task.generate(200, seed=7, split="test") == D.generate(200, seed=7, split="test")


def test_splits_share_no_date(sample: list[D.DateExample], task: D.DateTask) -> None:
    train = {e.date for e in sample[:30_000]}
    test = {e.date for e in sample[30_000:]}
    assert train and test and not train & test
    assert all(D.DateTask.is_test_date(d) for d in test)
    # a different seed draws other dates but from the same partition
    other = task.generate(3000, seed=99, split="train")
    assert not {e.date for e in other} & test


def test_rendering_matches_babel(sample: list[D.DateExample]) -> None:
    for e in sample[:3000]:
        digits = D.native_digits(Locale.parse(e.locale).default_numbering_system)
        ref = format_date(e.date, e.style, locale=e.locale).translate(str.maketrans("0123456789", digits))
        assert e.source == (D.tag(e.locale) if e.tagged else "") + ref
        assert e.target == e.date.isoformat()
        lo, hi = D.YEAR_WINDOW
        assert lo <= e.date.year <= hi


def test_at_least_40_locales_in_at_least_10_scripts(sample: list[D.DateExample]) -> None:
    locales = {e.locale for e in sample}
    assert len(locales) >= 40
    scripts_by_locale: dict[str, set[str]] = defaultdict(set)
    for e in sample:
        body = e.source[len(D.tag(e.locale)):] if e.tagged else e.source
        scripts_by_locale[e.locale] |= {script(c) for c in body if c.isalpha()}
    scripts = set().union(*scripts_by_locale.values()) - {"UNKNOWN"}
    assert len(scripts) >= 10, scripts
    assert REQUIRED_SCRIPTS <= scripts, REQUIRED_SCRIPTS - scripts
    assert "CYRILLIC" in scripts_by_locale["ru_RU"] and "GEORGIAN" in scripts_by_locale["ka_GE"]


@pytest.mark.parametrize("locale", sorted(NATIVE))
def test_native_digits(locale: str) -> None:
    assert Locale.parse(locale).default_numbering_system == NATIVE[locale]
    task = D.DateTask((locale,))
    for e in task.generate(300, seed=1, untagged=0.5):
        body = e.source[len(D.tag(locale)):] if e.tagged else e.source
        assert not any(c in "0123456789" for c in body), e.source
        digits = [c for c in body if unicodedata.decimal(c, None) is not None]
        assert digits and all(c in D.native_digits(NATIVE[locale]) for c in digits)
        # the numbers in the text are the date's day and year (and month when numeric)
        nums = iso_of_digits(body)
        assert e.date.day in nums and (e.date.year in nums or e.date.year % 100 in nums)


def test_every_input_has_exactly_one_answer(sample: list[D.DateExample]) -> None:
    answers: dict[str, set[str]] = defaultdict(set)
    for e in sample:
        answers[e.source].add(e.target)
    clash = {s: t for s, t in answers.items() if len(t) > 1}
    assert not clash
    assert any(not e.tagged for e in sample)  # untagged examples exist ...
    assert all(e.tagged for e in sample if e.style == "short")  # ... never for numeric formats


def test_untagged_only_where_unambiguous(task: D.DateTask) -> None:
    # Croatian "listopad" is October, Polish/Czech "listopad" is November: always tagged
    assert ("hr_HR", "long") not in task.untaggable and ("pl_PL", "long") not in task.untaggable
    assert ("de_DE", "long") in task.untaggable
    assert ("en_US", "short") not in task.untaggable
    ex = D.render(datetime.date(2026, 11, 24), "de_DE", "long", tagged=False)
    assert (ex.source, ex.target) == ("24. November 2026", "2026-11-24")


def test_two_digit_years_and_numeric_order() -> None:
    assert D.window_year(26) == 2026 and D.window_year(51) == 1951 and D.window_year(49) == 2049
    us = D.render(datetime.date(2026, 3, 4), "en_US", "short")
    gb = D.render(datetime.date(2026, 4, 3), "en_GB", "short")
    assert us.source == "<en_US> 3/4/26" and us.target == "2026-03-04"
    assert gb.source == "<en_GB> 03/04/2026" and gb.target == "2026-04-03"
    with pytest.raises(ValueError, match="1900-2049"):
        D.DateTask(years=(1900, 2049))
    with pytest.raises(ValueError, match="2050"):
        D.render(datetime.date(2050, 1, 1), "de_DE")
    with pytest.raises(ValueError, match="xx_YY"):
        D.DateTask(("xx_YY",))


def test_month_spans(sample: list[D.DateExample]) -> None:
    for e in sample[:5000]:
        loc = Locale.parse(e.locale)
        month = e.source[slice(*D.month_span(e))]
        day = e.source[slice(*e.day_span)]
        year = e.source[slice(*e.year_span)]
        names = {w[e.date.month] for ctx in ("format", "stand-alone")
                 for w in (loc.months[ctx]["wide"], loc.months[ctx]["abbreviated"])}
        assert month in names or iso_of_digits(month) == [e.date.month], (e.source, month)
        assert iso_of_digits(day) == [e.date.day]
        assert iso_of_digits(year)[0] in (e.date.year, e.date.year % 100)
        assert D.field_spans(e)["month"] == e.month_span
    ex = D.render(datetime.date(2026, 11, 24), "de_DE", "long")
    assert ex.source[slice(*D.month_span(ex))] == "November"
    assert ex.target[slice(*D.TARGET_SPANS["month"])] == "11"


def test_vocab_covers_the_task_and_tags_are_one_token() -> None:
    task = load_task("dates", n_train=2000, n_test=300, seed=0)
    tok = task.tokenizer
    for e in task.train + task.test:
        ids = tok.encode(e.source)
        assert tok.unk_id not in ids and tok.decode(ids) == e.source
        assert tok.decode(tok.encode(e.target, add_eos=True)) == e.target
    ex = D.render(datetime.date(2026, 11, 24), "de_DE", "long")
    toks = tok.tokenize(ex.source)
    assert toks[0] == "<de_DE> " and len(toks) == len(ex.source) - len("<de_DE> ") + 1
    t0, t1 = tok.token_span(ex.source, D.month_span(ex))
    assert "".join(toks[t0:t1]) == "November"


@pytest.mark.parametrize("name", ["reverse", "copy"])
def test_synthetic_tasks(name: str) -> None:
    task = load_task(name, n_train=2000, n_test=300, seed=5, lengths=(10, 80))
    assert task.train == synthetic.generate(name, 2000, seed=5)
    lengths = [len(p.source) for p in task.train]
    assert min(lengths) >= 10 and max(lengths) <= 80 and max(lengths) - min(lengths) > 50
    for p in task.train[:200]:
        assert p.target == (p.source[::-1] if name == "reverse" else p.source)
    assert not {p.source for p in task.train} & {p.source for p in task.test}
    assert all(synthetic.is_test_sequence(p.source) for p in task.test)
    assert len(task.tokenizer) == 4 + 26
    with pytest.raises(ValueError, match="lengths"):
        synthetic.generate(name, 3, lengths=(5, 2))
