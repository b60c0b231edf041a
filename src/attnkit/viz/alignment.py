"""Alignments of a trained seq2seq model: where the decoder looked while writing each output
token (the seed's "nontrivial alignments between the words").

    [a] = align(model, tokenizer, ["<de_DE> 24. November 2026"])
    a.prediction               # '2026-11-24'
    a.weights                  # (T, S): row t = attention while writing a.output_tokens[t]
    draw(a, "align.png")       # the heatmap: rows = outputs, columns = inputs

The output is cut after its first EOS (shown as ``</s>``), and every token is labelled with
the tokenizer's own string, so the matrix and its labels always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnkit.models.generation import generate

__all__ = ["EOS_LABEL", "Alignment", "align", "cut_at_eos", "draw", "output_labels"]

EOS_LABEL = "</s>"


@dataclass
class Alignment:
    """One input's alignment: ``weights (T, S)`` between ``output_tokens`` (T, up to and
    including EOS) and ``source_tokens`` (S), the decoded ``prediction`` and the ``source``."""

    source: str
    source_tokens: list[str]
    output_ids: list[int]
    output_tokens: list[str]
    weights: Tensor
    prediction: str

    def _repr_png_(self) -> bytes:
        """In a notebook: the alignment heatmap (:func:`draw`)."""
        from attnkit.viz.notebook import figure_png

        return figure_png(draw(self))


def cut_at_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    """``ids`` up to and including the first ``eos_id`` (all of them when there is none)."""
    ids = list(ids)
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


def output_labels(ids: Sequence[int], tokenizer: Any) -> list[str]:
    """One label per output id: its token string, ``</s>`` for EOS."""
    return [EOS_LABEL if t == tokenizer.eos_id else tokenizer.decode([t], skip_special=False) for t in ids]


@torch.inference_mode()
def align(model: Any, tokenizer: Any, texts: Sequence[str], *, max_len: int = 64, beam_size: int = 1) -> list[Alignment]:
    """Decode ``texts`` (greedy, or beam search with ``beam_size > 1``) and return each one's
    :class:`Alignment` (the attention that produced each output token: the RNN's alignment,
    the Transformer's last-layer cross-attention averaged over heads)."""
    from attnkit.data import pad_ids

    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, got a single str (wrap it in a list)")
    ids = [tokenizer.encode(t) for t in texts]
    empty = [i + 1 for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"input(s) number {empty} are empty")
    src, mask = pad_ids(ids, pad_id=model.config.pad_id)  # (B, S)
    tokens, attention = generate(model, src, src_mask=mask, max_len=max_len, return_attention=True,
                                 method="greedy" if beam_size == 1 else "beam", beam_size=beam_size)
    out = []
    for i, (text, row) in enumerate(zip(texts, tokens.tolist(), strict=True)):
        kept = cut_at_eos(row, model.config.eos_id)
        out.append(Alignment(text, tokenizer.tokenize(text), kept, output_labels(kept, tokenizer),
                             attention[i, : len(kept), : len(ids[i])], tokenizer.decode(row)))
    return out


def draw(alignment: Alignment, path: str | Path | None = None, *, title: str | None = None) -> Any:
    """The alignment heatmap (rows: output tokens, columns: input tokens); ``title`` defaults
    to ``source -> prediction``. Returns the matplotlib figure."""
    from attnkit.viz.heatmap import heatmap

    a = alignment
    return heatmap(a.weights, a.source_tokens, a.output_tokens, path,
                   title=title if title is not None else f"{a.source} -> {a.prediction}")
