"""Batching: id lists into padded LongTensors and seq2seq :class:`Batch` es.

:func:`batch_encode` pads a list of strings into ``ids (B, L) long`` and ``mask (B, L) bool``
(True = real token, the attnkit mask rule); :func:`collate` builds a seq2seq :class:`Batch`
(``src``, ``src_mask``, ``tgt_in`` = BOS + target, ``tgt_out`` = target + EOS, ``tgt_mask``)
from pre-encoded id lists (:func:`encode_pairs`: do it once per dataset, not per step).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from attnkit.data.base import BOS_ID, EOS_ID, PAD_ID, Pair, Tokenizer

__all__ = ["Batch", "batch_encode", "collate", "encode_pairs", "pad_ids"]


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
