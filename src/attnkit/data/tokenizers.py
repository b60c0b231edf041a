"""attnkit's tokenizers: characters (:class:`CharVocab`) and byte-level BPE (:class:`BPETokenizer`).

Special ids are fixed for every attnkit tokenizer: ``pad=0, bos=1, eos=2, unk=3``; both
share ``encode``/``decode``/``token_span`` (:class:`~attnkit.data.base.SpecialIdsTokenizer`).

>>> v = CharVocab.build(["<de_DE> 24. November 2026", "2026-11-24"])
>>> v.tokenize("<de_DE> 24. Nov")       # a leading locale tag is ONE token
['<de_DE> ', '2', '4', '.', ' ', 'N', 'o', 'v']
>>> v.decode(v.encode("<de_DE> 24. Nov", add_eos=True))
'<de_DE> 24. Nov'

A leading tag ``<name>`` followed by one space (the date task's locale prefix) is a single
token when ``tags=True``; the space after it is part of the tag token. ``offsets(text)``
gives each token's ``(start, end)`` character span in ``text`` so character spans (e.g.
:func:`attnkit.data.dates.month_span`) map onto token positions with ``token_span``.

:class:`BPETokenizer` is a byte-level BPE trained with the ``tokenizers`` library (imported
when one is trained or loaded), lossless for any text.

Save/load: ``tokenizer.save(dir)`` writes ``vocab.json`` (char) or ``tokenizer.json`` (BPE),
atomically; :func:`load_tokenizer` reads whichever the directory holds.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from attnkit.data.base import SPECIAL_TOKENS, UNK, UNK_ID, SpecialIdsTokenizer, Tokenizer
from attnkit.io import atomic_write, json_text

__all__ = ["BPE_FILE", "VOCAB_FILE", "BPETokenizer", "CharVocab", "load_tokenizer"]

VOCAB_FILE = "vocab.json"
BPE_FILE = "tokenizer.json"

_TAG = re.compile(r"<[A-Za-z][A-Za-z0-9_]*> ")


def _existing_file(path: str | os.PathLike, filename: str, what: str) -> Path:
    """``path`` itself, or ``path/filename`` when it is a directory; FileNotFoundError naming
    ``what`` when nothing is there."""
    path = Path(path)
    if path.is_dir():
        path = path / filename
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    return path


class CharVocab(SpecialIdsTokenizer):
    """One id per character (plus one per leading ``<tag>``); ids 0..3 are pad/bos/eos/unk."""

    def __init__(self, tokens: Sequence[str], *, tags: bool = True) -> None:
        tokens = list(tokens)
        if tuple(tokens[:4]) != SPECIAL_TOKENS:
            raise ValueError(f"the first four tokens must be {SPECIAL_TOKENS}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            dup = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(f"duplicate tokens in vocabulary: {dup[:10]}")
        self.tokens = tokens
        self.tags = tags
        self.index = {t: i for i, t in enumerate(tokens)}

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, texts: Iterable[str], *, tags: bool = True, min_freq: int = 1) -> CharVocab:
        """Vocabulary of every character (and leading tag) in ``texts``, sorted (deterministic)."""
        counts: dict[str, int] = {}
        probe = cls(list(SPECIAL_TOKENS), tags=tags)
        for text in texts:
            for tok in probe._split(text, known_tags_only=False)[0]:
                counts[tok] = counts.get(tok, 0) + 1
        kept = sorted(t for t, c in counts.items() if c >= min_freq and t not in SPECIAL_TOKENS)
        return cls([*SPECIAL_TOKENS, *kept], tags=tags)

    # ------------------------------------------------------------------ tokenizing
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def _split(self, text: str, known_tags_only: bool = True) -> tuple[list[str], list[tuple[int, int]]]:
        """Tokens and spans. A leading tag the vocabulary does not know is spelled out in
        characters (so text that merely looks like a tag round-trips)."""
        toks: list[str] = []
        offs: list[tuple[int, int]] = []
        start = 0
        if self.tags:
            m = _TAG.match(text)
            if m and (m.group(0) in self.index or not known_tags_only):
                toks.append(m.group(0))
                offs.append((0, m.end()))
                start = m.end()
        for i in range(start, len(text)):
            toks.append(text[i])
            offs.append((i, i + 1))
        return toks, offs

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text``: a leading ``"<tag> "`` (with its space), then characters."""
        return self._split(text)[0]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` character span of each token of ``text``."""
        return self._split(text)[1]

    def _ids(self, text: str) -> list[int]:
        get = self.index.get
        return [get(t, UNK_ID) for t in self.tokenize(text)]

    def _text(self, ids: list[int]) -> str:
        return "".join(self.tokens[i] for i in ids)

    # ------------------------------------------------------------------ save / load
    def to_dict(self) -> dict:
        return {"type": "char", "tags": self.tags, "tokens": self.tokens}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/vocab.json`` atomically; returns its path."""
        path = Path(directory) / VOCAB_FILE
        atomic_write(path, json_text(self.to_dict(), indent=0))  # a lone surrogate: \udcxx escapes
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharVocab:
        """Read a ``vocab.json`` (or a directory holding one)."""
        path = _existing_file(path, VOCAB_FILE, "character vocabulary")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a valid vocab.json: {exc}") from exc
        if not isinstance(data, dict) or data.get("type") != "char" or not isinstance(data.get("tokens"), list):
            raise ValueError(f"{path} is not an attnkit character vocabulary (need type 'char' and tokens)")
        return cls(data["tokens"], tags=bool(data.get("tags", True)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and self.tokens == other.tokens and self.tags == other.tags

    def __repr__(self) -> str:
        return f"CharVocab(size={len(self.tokens)}, tags={self.tags})"


class BPETokenizer(SpecialIdsTokenizer):
    """Byte-level BPE (``tokenizers``) with attnkit's special ids ``pad=0, bos=1, eos=2, unk=3``.

    Same interface as :class:`CharVocab`: ``encode``, ``decode``,
    ``tokenize``, ``offsets``, ``token_span``, ``save``/``load``, ``len()``.
    """

    def __init__(self, tokenizer: Any) -> None:
        for i, tok in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(tok) != i:
                raise ValueError(f"not an attnkit BPE tokenizer: {tok!r} must have id {i}, "
                                 f"has {tokenizer.token_to_id(tok)}")
        # "<s>", "</s>", "<pad>", "<unk>" written in the text are text, not special ids: otherwise
        # "a </s> b" encodes an EOS in the middle and decodes to "a " (not saved in tokenizer.json,
        # so set on every load)
        tokenizer.encode_special_tokens = True
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], *, vocab_size: int = 4000, min_frequency: int = 2) -> BPETokenizer:
        """Learn merges on ``texts`` (both sides of the train split) up to ``vocab_size`` entries."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size {vocab_size} is too small for byte-level BPE "
                             f"(need >= {len(alphabet) + len(SPECIAL_TOKENS)})")
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet,
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def vocab_size(self) -> int:
        return len(self)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` (the text each token covers, not byte-level symbols)."""
        return [text[s:e] for s, e in self.offsets(text)]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` character span of each token of ``text``."""
        return [tuple(o) for o in self.tokenizer.encode(text, add_special_tokens=False).offsets]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/tokenizer.json`` atomically; returns its path."""
        path = Path(directory) / BPE_FILE
        atomic_write(path, self.tokenizer.to_str())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a ``tokenizer.json`` (or a directory holding one)."""
        from tokenizers import Tokenizer

        path = _existing_file(path, BPE_FILE, "BPE tokenizer")
        try:
            tok = Tokenizer.from_str(path.read_text(encoding="utf-8"))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise ValueError(f"{path} is not a valid tokenizer.json: {exc}") from exc
        return cls(tok)

    def __repr__(self) -> str:
        return f"BPETokenizer(size={len(self)})"


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load the tokenizer saved in ``directory`` (``vocab.json`` = char, ``tokenizer.json`` = BPE)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
    if (directory / VOCAB_FILE).exists():
        return CharVocab.load(directory / VOCAB_FILE)
    if (directory / BPE_FILE).exists():
        return BPETokenizer.load(directory)
    raise FileNotFoundError(f"no {VOCAB_FILE} or {BPE_FILE} in {directory}")
