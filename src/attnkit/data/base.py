"""Common types of every attnkit task: a :class:`Pair` of strings and a :class:`Task`.

Every task (``dates``, ``reverse``, ``copy``, ``tsv:PATH``) yields lists of ``Pair``
(``source``, ``target``) for its train and held-out test split, plus the tokenizer that
turns both sides into ids (one shared vocabulary for source and target; special ids
``pad=0, bos=1, eos=2, unk=3``).
"""

from __future__ import annotations

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
