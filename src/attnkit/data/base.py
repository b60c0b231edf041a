"""Common types of every attnkit task: a :class:`Pair` of strings and a :class:`Task`.

Every task (``dates``, ``reverse``, ``copy``, ``tsv:PATH``) yields lists of ``Pair``
(``source``, ``target``) for its train and held-out test split, plus the tokenizer that
turns both sides into ids (one shared vocabulary for source and target; special ids
``pad=0, bos=1, eos=2, unk=3``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


@dataclass(frozen=True)
class Pair:
    """One example: ``source`` string and ``target`` string."""

    source: str
    target: str


@runtime_checkable
class Tokenizer(Protocol):
    """What models, the Trainer and the CLI need from a tokenizer (CharVocab, BPETokenizer)."""

    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int

    def __len__(self) -> int: ...
    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...
    def decode(self, ids: Any, *, skip_special: bool = True) -> str: ...
    def tokenize(self, text: str) -> list[str]: ...
    def offsets(self, text: str) -> list[tuple[int, int]]: ...
    def save(self, directory: Any) -> None: ...


def tokens_covering(offsets: Sequence[tuple[int, int]], span: tuple[int, int],
                    text: str = "") -> tuple[int, int]:
    """Token positions ``[t0, t1)`` whose character ``offsets`` overlap ``span = (start, end)``."""
    start, end = span
    hit = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
    if not hit:
        raise ValueError(f"character span {span} lies outside {text!r} (length {len(text)})")
    return hit[0], hit[-1] + 1


class SpecialIdsTokenizer:
    """Shared ``encode``/``decode`` of attnkit's tokenizers around the fixed special ids.

    Subclasses provide ``_ids(text) -> list[int]`` (no specials), ``_text(ids) -> str`` and
    ``__len__``; this class adds BOS/EOS on the way in and, on the way out, stops at the
    first EOS, drops pad/bos when ``skip_special`` and rejects ids outside the vocabulary.
    """

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __len__(self) -> int:
        raise NotImplementedError

    def _ids(self, text: str) -> list[int]:
        raise NotImplementedError

    def _text(self, ids: list[int]) -> str:
        raise NotImplementedError

    def offsets(self, text: str) -> list[tuple[int, int]]:
        raise NotImplementedError

    def token_span(self, text: str, span: tuple[int, int]) -> tuple[int, int]:
        """Token positions ``[t0, t1)`` covering the character span ``[start, end)`` of ``text``."""
        return tokens_covering(self.offsets(text), span, text)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text`` (unknown pieces become ``unk_id``), optionally framed by BOS/EOS."""
        ids = self._ids(text)
        if add_bos:
            ids.insert(0, BOS_ID)
        if add_eos:
            ids.append(EOS_ID)
        return ids

    def decode(self, ids: Any, *, skip_special: bool = True) -> str:
        """Text of ``ids`` (list or tensor); stops at the first EOS; pad/bos dropped when
        ``skip_special`` (unk stays)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        size = len(self)
        kept: list[int] = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID) and skip_special:
                continue
            if not 0 <= i < size:
                raise ValueError(f"id {i} is outside the vocabulary of size {size}")
            kept.append(i)
        return self._text(kept)


@dataclass
class Task:
    """A task ready to train on: ``train``/``test`` pairs and the shared ``tokenizer``.

    ``name`` is the task spec it was made from (``"dates"``, ``"reverse"``, ``"tsv:PATH"``);
    ``info`` holds task-specific facts (locales, length range, skipped TSV lines, ...).
    """

    name: str
    train: list[Pair]
    test: list[Pair]
    tokenizer: Tokenizer
    info: dict[str, Any] = field(default_factory=dict)
