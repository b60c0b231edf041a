"""Sentence embeddings of any sentence-transformers folder whose transformer is a Hugging Face
family with the attention interface (XLM-R, RoBERTa, ModernBERT, ...): the folder's own model
through transformers with ``attn_implementation="attnkit"``, on packed rows (no padding
computed), then the folder's pooling and normalisation.

:class:`HFSentenceEncoder` is a :class:`attnkit.models.sentence_encoder.SentenceEmbedder`, so it
embeds wherever attnkit's own :class:`attnkit.SentenceEncoder` does (``embed``, ``embed_ids``,
:func:`attnkit.embedding.embed_file`, ``attnkit embed``), and
``SentenceEncoder.from_pretrained(folder)`` returns one for such a folder: the ``attnkit``
package registers :meth:`HFSentenceEncoder.from_pretrained` as its loader. MiniLM/BERT folders
keep attnkit's own encoder, which is faster on a CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.hf.attention import check, pack, register
from attnkit.models.sentence_encoder import (
    SentenceEmbedder,
    read_max_seq_length,
    read_pooling,
    resolve_model_folder,
    transformer_folder,
)
from attnkit.varlen import Packed

__all__ = ["HFSentenceEncoder"]


class HFSentenceEncoder(SentenceEmbedder):
    """Tokenizer -> Hugging Face model (attnkit attention, packed rows) -> pooling (-> L2 normalise).

    ``HFSentenceEncoder.from_pretrained(folder)`` reproduces
    ``sentence_transformers.SentenceTransformer(folder).encode`` (mean, CLS or max pooling, with
    or without the ``Normalize`` module). Texts longer than ``max_seq_length`` tokens are cut
    by the tokenizer's own truncation (special tokens kept), with a warning naming how many.
    ``dtype``: ``"auto"``, ``"float32"`` or ``"bfloat16"`` (a bfloat16 copy of the model, made on
    first use); ``"int8"`` is refused, naming the family.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, max_seq_length: int, pooling: str = "mean",
                 normalize: bool = True) -> None:
        super().__init__(check(model, instead="embed it with sentence-transformers itself"), tokenizer,
                         max_seq_length=max_seq_length, pooling=pooling, normalize=normalize)
        self.family = str(model.config.model_type)
        # the tokenizer's own engine (the ``tokenizers`` library), truncating as transformers does,
        # so each encoding says whether it was cut
        self._truncating = copy.deepcopy(tokenizer.backend_tokenizer)
        self._truncating.enable_truncation(max_length=max_seq_length, direction=tokenizer.truncation_side)
        self._truncating.no_padding()
        self._truncating.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        # RoBERTa-family embeddings number positions from padding_idx + 1 (fairseq's convention)
        padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
        self.position_offset = 0 if padding_idx is None else int(padding_idx) + 1

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> HFSentenceEncoder:
        """Load a sentence-transformers folder: the transformer (with ``attn_implementation="attnkit"``),
        its tokenizer, ``max_seq_length``, pooling and normalisation. ValueError naming the family
        when it does not dispatch through the attention interface (MPNet, DeBERTa-v2)."""
        import transformers
        from transformers.utils import logging as hf_logging

        folder = resolve_model_folder(name_or_path)
        path = transformer_folder(folder)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar: the caller shows its own progress
        try:
            model = transformers.AutoModel.from_pretrained(path, local_files_only=True,
                                                           attn_implementation=register())
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if not hasattr(tokenizer, "backend_tokenizer"):
            raise ValueError(f"{path}: the tokenizer ({type(tokenizer).__name__}) has no tokenizer.json "
                             "(a fast tokenizer), which attnkit reads")
        max_len = read_max_seq_length(path, int(model.config.max_position_embeddings))
        pooling, normalize = read_pooling(folder)
        return cls(model, tokenizer, max_seq_length=max_len, pooling=pooling, normalize=normalize).eval()

    def encoder_in(self, dtype: str | torch.dtype) -> nn.Module:
        if dtype in ("int8", torch.int8):
            raise ValueError(f"dtype 'int8' is not available for the {self.family} family (it runs through "
                             "Hugging Face transformers): use auto, float32 or bfloat16")
        return super().encoder_in(dtype)

    def _with_dtype(self, dtype: torch.dtype) -> nn.Module:
        return copy.deepcopy(self.encoder).to(dtype)

    def tokenize(self, texts: Sequence[str], *, with_tokens: bool = False) -> tuple[list[list[int]], list[list[str]] | None, int]:
        """Token ids of each text, the tokenizer's special tokens included, cut to
        ``max_seq_length`` by its truncation. Texts are not stripped (sentence-transformers 6 keeps
        their spaces). Returns ``(ids, tokens or None, number of texts that were cut)``."""
        self._check_texts(texts)
        encodings = self._truncating.encode_batch(list(texts))
        cut = sum(1 for enc in encodings if enc.overflowing)
        return [enc.ids for enc in encodings], ([enc.tokens for enc in encodings] if with_tokens else None), cut

    def _embed_packed(self, ids: list[list[int]], encoder: nn.Module) -> Tensor:
        input_ids, key_mask = self._padded(ids, self.pad_id)  # (b, T) each
        row = pack({"input_ids": input_ids, "attention_mask": key_mask})  # one row of the N real tokens
        row["position_ids"] = row["position_ids"] + self.position_offset
        hidden = encoder(**row).last_hidden_state[0]  # (N, E)
        return self._pool(hidden, Packed.from_lengths([len(r) for r in ids]))

    def _embed_padded(self, ids: list[list[int]], encoder: nn.Module) -> Tensor:
        input_ids, key_mask = self._padded(ids, self.pad_id)  # (b, T) each
        hidden = encoder(input_ids=input_ids, attention_mask=key_mask.long()).last_hidden_state  # (b, T, E)
        return self._pool(hidden[key_mask], Packed.from_lengths([len(r) for r in ids]))
