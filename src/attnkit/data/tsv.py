"""A user's own parallel corpus from a TSV file, with character or BPE tokenisation.

File format (Tatoeba/Anki exports, e.g. manythings.org ``fra.txt``): one example per line,
``source<TAB>target``; columns after the second are ignored (Anki adds attribution), a
UTF-8 BOM and ``\\r\\n`` line ends are accepted, blank lines are ignored.

Bad lines are reported with their 1-based line number: no tab, an empty source or target
side, invalid UTF-8. By default they are skipped and counted (:attr:`TsvCorpus.bad_lines`,
:meth:`TsvCorpus.report`); ``strict=True`` raises ``ValueError`` naming the first one.
A missing path -> ``FileNotFoundError``; a directory, an empty file, a file with no valid
line or one that is not UTF-8 at all (e.g. UTF-16) -> ``ValueError`` saying so.

Held-out split: the last 10% of the valid pairs (``holdout=0.1``), so it is the same for
every run and a user can put their test sentences at the end.

Tokenisation: :class:`~attnkit.data.tokenizers.CharVocab` (``tokenizer="char"``) or
:class:`BPETokenizer` (``tokenizer="bpe"``), a byte-level BPE trained with the
``tokenizers`` library on the train split (both sides, one shared vocabulary), lossless
for any text, with ``pad=0, bos=1, eos=2, unk=3``. ``tok.save(dir)`` writes
``dir/tokenizer.json``; :func:`attnkit.data.load_tokenizer` reads it back::

    corpus = read_tsv("fra.txt")                 # TsvCorpus(pairs, bad_lines, n_lines)
    print(corpus.report())                       # "skipped 2 bad lines: 17 (no tab), ..."
    train, test = split_holdout(corpus.pairs)    # last 10% held out
    tok = BPETokenizer.train([p.source for p in train] + [p.target for p in train], vocab_size=4000)
    task = make_task("fra.txt", tokenizer="bpe")  # all of the above in one call
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from attnkit.data.base import Pair, Task
from attnkit.data.tokenizers import BPETokenizer, CharVocab

TOKENIZERS = ("char", "bpe")  # what make_task fits on a TSV: a CharVocab or a byte-level BPE


@dataclass(frozen=True)
class BadLine:
    """A skipped line: 1-based ``line`` number and the ``reason``."""

    line: int
    reason: str


@dataclass
class TsvCorpus:
    """The valid ``pairs`` of a TSV file, the ``bad_lines`` skipped, the ``n_lines`` read and
    the ``sha256`` of the file's bytes (what a resumed training run checks it trains on)."""

    path: str
    pairs: list[Pair]
    bad_lines: list[BadLine] = field(default_factory=list)
    n_lines: int = 0
    sha256: str = ""

    @property
    def skipped(self) -> int:
        return len(self.bad_lines)

    def report(self, limit: int = 10) -> str:
        """One line: how many lines were skipped and which (first ``limit``), or ``""``."""
        if not self.bad_lines:
            return ""
        shown = ", ".join(f"{b.line} ({b.reason})" for b in self.bad_lines[:limit])
        more = f", ... {len(self.bad_lines) - limit} more" if len(self.bad_lines) > limit else ""
        s = "s" if len(self.bad_lines) != 1 else ""
        return f"{self.path}: skipped {len(self.bad_lines)} bad line{s}: {shown}{more}"


def _check_line(raw: bytes, columns: tuple[int, int]) -> Pair | str:
    """The pair on one raw line, or the reason it is bad."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}"
    if "\t" not in text:
        return "no tab"
    cols = text.split("\t")
    if len(cols) <= max(columns):
        return f"{len(cols)} columns, need {max(columns) + 1}"
    source, target = cols[columns[0]].strip(), cols[columns[1]].strip()
    if not source:
        return "empty source"
    if not target:
        return "empty target"
    return Pair(source, target)


def read_tsv(path: str | os.PathLike, *, strict: bool = False,
             columns: tuple[int, int] = (0, 1)) -> TsvCorpus:
    """Read ``source<TAB>target`` lines; see the module docstring for the error rules."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"TSV file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, expected a TSV file")
    if columns[0] == columns[1] or min(columns) < 0:
        raise ValueError(f"columns must be two different column indices >= 0, got {columns}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data.strip():
        raise ValueError(f"TSV file {path} is empty")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:
        raise ValueError(f"TSV file {path} is not UTF-8 (it looks like UTF-16); re-save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline
    pairs: list[Pair] = []
    bad: list[BadLine] = []
    for number, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue  # blank line
        got = _check_line(raw, columns)
        if isinstance(got, Pair):
            pairs.append(got)
            continue
        if strict:
            raise ValueError(f"{path}:{number}: bad line ({got}); fix it or run without --strict")
        bad.append(BadLine(number, got))
    if not pairs:
        if bad and all(b.reason.startswith("invalid UTF-8") for b in bad):
            raise ValueError(f"TSV file {path} is not UTF-8 text (no line decodes)")
        first = f"; first bad line {bad[0].line} ({bad[0].reason})" if bad else ""
        raise ValueError(f"TSV file {path} has no valid source<TAB>target line{first}")
    return TsvCorpus(str(path), pairs, bad, len(lines), digest)


def split_holdout(pairs: list[Pair], holdout: float = 0.1) -> tuple[list[Pair], list[Pair]]:
    """``(train, test)``: the test split is the last ``holdout`` fraction (at least one pair)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 pairs to hold some out, got {len(pairs)}")
    k = min(len(pairs) - 1, max(1, round(len(pairs) * holdout)))
    return pairs[: len(pairs) - k], pairs[len(pairs) - k:]


def make_task(path: str | os.PathLike, *, tokenizer: str = "char", vocab_size: int = 4000,
              strict: bool = False, holdout: float = 0.1, columns: tuple[int, int] = (0, 1)) -> Task:
    """Read ``path``, hold out its last ``holdout`` fraction and fit the tokenizer on the rest.

    ``task.info`` holds ``path``, ``sha256`` (of the file's bytes), ``n_lines``, ``skipped``,
    ``bad_lines`` (``[(line, reason)]``) and ``report`` (the one-line summary of skipped lines,
    ``""`` if none).
    """
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be 'char' or 'bpe', got {tokenizer!r}")
    corpus = read_tsv(path, strict=strict, columns=columns)
    try:
        train, test = split_holdout(corpus.pairs, holdout)
    except ValueError as exc:
        raise ValueError(f"TSV file {path}: {exc}") from None
    texts = [p.source for p in train] + [p.target for p in train]
    tok: CharVocab | BPETokenizer
    if tokenizer == "char":
        tok = CharVocab.build(texts, tags=False)
    else:
        tok = BPETokenizer.train(texts, vocab_size=vocab_size)
    info = {"path": str(path), "sha256": corpus.sha256, "n_lines": corpus.n_lines, "skipped": corpus.skipped,
            "bad_lines": [(b.line, b.reason) for b in corpus.bad_lines], "report": corpus.report(),
            "tokenizer": tokenizer, "holdout": holdout}
    return Task(f"tsv:{path}", train, test, tok, info)
