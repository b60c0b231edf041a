"""Character-level vocabulary, batching into padded LongTensors, tokenizer save/load.

Special ids are fixed for every attnkit tokenizer: ``pad=0, bos=1, eos=2, unk=3``.

>>> v = CharVocab.build(["<de_DE> 24. November 2026", "2026-11-24"])
>>> v.tokenize("<de_DE> 24. Nov")       # a leading locale tag is ONE token
['<de_DE>', '2', '4', '.', ' ', 'N', 'o', 'v']
>>> v.decode(v.encode("<de_DE> 24. Nov", add_eos=True))
'<de_DE> 24. Nov'

A leading tag ``<name>`` followed by one space (the date task's locale prefix) is a single
token when ``tags=True``; the space after it is part of the tag token. ``offsets(text)``
gives each token's ``(start, end)`` character span in ``text`` so character spans (e.g.
:func:`attnkit.data.dates.month_span`) map onto token positions with
:meth:`CharVocab.token_span`.

Batching (used by the Trainer): :func:`batch_encode` pads a list of strings into
``ids (B, L) long`` and ``mask (B, L) bool`` (True = real token, the attnkit mask rule);
:func:`collate` builds a seq2seq :class:`Batch` (``src``, ``src_mask``, ``tgt_in`` =
BOS + target, ``tgt_out`` = target + EOS, ``tgt_mask``) from pre-encoded id lists
(:func:`encode_pairs`, do it once per dataset, not per step).

Save/load: ``tokenizer.save(dir)`` writes ``vocab.json`` (char) or ``tokenizer.json``
(BPE, :class:`attnkit.data.pairs.BPETokenizer`); :func:`load_tokenizer` reads whichever
the directory holds.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from attnkit.data.base import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Pair,
    SpecialIdsTokenizer,
    Tokenizer,
)

VOCAB_FILE = "vocab.json"
BPE_FILE = "tokenizer.json"

_TAG = re.compile(r"<[A-Za-z][A-Za-z0-9_]*> ")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        _write_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=0))
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


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load the tokenizer saved in ``directory`` (``vocab.json`` = char, ``tokenizer.json`` = BPE)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
    if (directory / VOCAB_FILE).exists():
        return CharVocab.load(directory / VOCAB_FILE)
    if (directory / BPE_FILE).exists():
        from attnkit.data.pairs import BPETokenizer

        return BPETokenizer.load(directory)
    raise FileNotFoundError(f"no {VOCAB_FILE} or {BPE_FILE} in {directory}")


# ---------------------------------------------------------------------- batching
@dataclass
class Batch:
    """A padded seq2seq batch. Masks are bool, True = real token.

    src (B, S), src_mask (B, S); tgt_in (B, T) = BOS + target; tgt_out (B, T) = target + EOS;
    tgt_mask (B, T) marks the real positions of both tgt_in and tgt_out.
    """

    src: torch.Tensor
    src_mask: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    tgt_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.src, self.src_mask, self.tgt_in, self.tgt_out, self.tgt_mask)))

    @property
    def num_target_tokens(self) -> int:
        return int(self.tgt_mask.sum())


def pad_ids(seqs: Sequence[Sequence[int]], *, pad_id: int = PAD_ID,
            max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists into ``ids (B, L) long`` and ``mask (B, L) bool`` (True = real token).

    ``max_len`` truncates longer rows (and fixes L); by default L is the longest row.
    """
    if len(seqs) == 0:
        raise ValueError("cannot pad an empty list of sequences")
    lengths = [len(s) if max_len is None else min(len(s), max_len) for s in seqs]
    width = max(lengths) if max_len is None else max_len
    rows = [[*s[:n], *([pad_id] * (width - n))] for s, n in zip(seqs, lengths, strict=True)]
    ids = torch.tensor(rows, dtype=torch.long).reshape(len(seqs), width)  # (B, L)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    return ids, mask


def batch_encode(tokenizer: Tokenizer, texts: Sequence[str], *, add_bos: bool = False,
                 add_eos: bool = False, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode and pad ``texts``: ``ids (B, L) long``, ``mask (B, L) bool`` (True = real token)."""
    seqs = [tokenizer.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
    return pad_ids(seqs, pad_id=tokenizer.pad_id, max_len=max_len)


def encode_pairs(tokenizer: Tokenizer, pairs: Iterable[Pair]) -> list[tuple[list[int], list[int]]]:
    """``(source ids, target ids)`` of each pair, without BOS/EOS (collate adds them)."""
    return [(tokenizer.encode(p.source), tokenizer.encode(p.target)) for p in pairs]


def collate(encoded: Sequence[tuple[Sequence[int], Sequence[int]]], *, pad_id: int = PAD_ID,
            bos_id: int = BOS_ID, eos_id: int = EOS_ID) -> Batch:
    """Build a :class:`Batch` from ``(source ids, target ids)`` pairs (see :func:`encode_pairs`)."""
    src, src_mask = pad_ids([s for s, _ in encoded], pad_id=pad_id)  # (B, S)
    tgt_in, tgt_mask = pad_ids([[bos_id, *t] for _, t in encoded], pad_id=pad_id)  # (B, T)
    tgt_out, _ = pad_ids([[*t, eos_id] for _, t in encoded], pad_id=pad_id)  # (B, T)
    return Batch(src, src_mask, tgt_in, tgt_out, tgt_mask)
