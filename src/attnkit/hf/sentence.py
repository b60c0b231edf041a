"""Sentence embeddings of any sentence-transformers folder whose transformer is a Hugging Face
family with the attention interface (XLM-R, RoBERTa, ModernBERT, ...): the folder's own model
through transformers with ``attn_implementation="attnkit"``, on packed rows (no padding
computed), then the folder's pooling and normalisation.

MiniLM/BERT folders have attnkit's own encoder (:class:`attnkit.SentenceEncoder`), which is
faster on a CPU; this class is for every other family.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.hf.attention import check, pack, register
from attnkit.models.sentence_encoder import SentenceEncoder, resolve_model_folder
from attnkit.progress import progress_bar
from attnkit.varlen import sequence_ids

__all__ = ["HFSentenceEncoder"]


def _transformer_path(folder: Path) -> Path:
    """The folder of the sentence-transformers ``Transformer`` module (the root for most models)."""
    modules = folder / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text()):
            if m.get("type", "").endswith(".Transformer"):
                return folder / m.get("path", "")
    return folder


_POOLING_MODES = {"mean": "mean", "mean_tokens": "mean", "cls": "cls", "cls_token": "cls", "max": "max",
                  "max_tokens": "max"}


def _pooling(folder: Path) -> tuple[str, bool]:
    """``(pooling mode, normalise)`` of a sentence-transformers folder: its ``Pooling`` module's
    config, in either format (``pooling_mode: "mean"`` since sentence-transformers 6, or the
    ``pooling_mode_mean_tokens: true`` flags before), and whether a ``Normalize`` module follows."""
    modules_path = folder / "modules.json"
    modules = json.loads(modules_path.read_text()) if modules_path.is_file() else []
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    mode = "mean"
    for m in modules:
        if not m.get("type", "").endswith(".Pooling"):
            continue
        cfg_path = folder / m.get("path", "") / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        chosen = cfg.get("pooling_mode")
        chosen = [chosen] if isinstance(chosen, str) else list(chosen or [])
        chosen += [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
        if len(chosen) != 1 or chosen[0] not in _POOLING_MODES:
            raise ValueError(f"unsupported pooling in {cfg_path}: {cfg} (one of mean/cls/max is supported)")
        mode = _POOLING_MODES[chosen[0]]
    return mode, normalize


class HFSentenceEncoder(nn.Module):
    """Tokenizer -> Hugging Face model (attnkit attention, packed rows) -> pooling (-> L2 normalise).

    ``HFSentenceEncoder.from_pretrained(folder)`` reproduces
    ``sentence_transformers.SentenceTransformer(folder).encode`` (mean, CLS or max pooling, with
    or without the ``Normalize`` module). Texts longer than ``max_seq_length`` tokens are cut.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, max_seq_length: int, pooling: str = "mean",
                 normalize: bool = True) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "max"):
            raise ValueError(f"pooling must be 'mean', 'cls' or 'max', got {pooling!r}")
        self.model, self.tokenizer = check(model), tokenizer
        self.max_seq_length, self.pooling, self.normalize = max_seq_length, pooling, normalize
        # RoBERTa-family embeddings number positions from padding_idx + 1 (fairseq's convention)
        padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
        self.position_offset = 0 if padding_idx is None else int(padding_idx) + 1

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> HFSentenceEncoder:
        """Load a sentence-transformers folder: the transformer (with ``attn_implementation="attnkit"``),
        its tokenizer, ``max_seq_length`` (``sentence_bert_config.json``), pooling and normalisation."""
        import transformers

        folder = resolve_model_folder(name_or_path)
        path = _transformer_path(folder)
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True, attn_implementation=register())
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        max_len = int(getattr(tokenizer, "model_max_length", 512))
        sbert = path / "sentence_bert_config.json"
        if sbert.is_file():
            max_len = int(json.loads(sbert.read_text()).get("max_seq_length", max_len))
        pooling, normalize = _pooling(folder)
        return cls(model, tokenizer, max_seq_length=max_len, pooling=pooling, normalize=normalize).eval()

    def _pool(self, hidden: Tensor, lengths: list[int]) -> Tensor:
        """Packed ``hidden (N, E)`` of sequences ``lengths`` -> ``(b, E)`` float32."""
        hidden = hidden.float()
        if self.pooling == "cls":
            starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
            out = hidden[starts]
        elif self.pooling == "max":
            out = torch.stack([h.max(0).values for h in hidden.split(lengths)])
        else:
            seq = sequence_ids(torch.tensor([0, *lengths]).cumsum(0))  # (N,)
            out = hidden.new_zeros(len(lengths), hidden.shape[1]).index_add_(0, seq, hidden)
            out = out / torch.tensor(lengths, dtype=out.dtype)[:, None]
        return F.normalize(out, p=2, dim=1) if self.normalize else out

    def _embed_batch(self, texts: list[str]) -> Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                               return_tensors="pt")
        packed = pack(dict(batch))
        packed["position_ids"] = packed["position_ids"] + self.position_offset
        hidden = self.model(**packed).last_hidden_state[0]  # (N, E)
        return self._pool(hidden, batch["attention_mask"].sum(1).tolist())

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False, *,
              max_tokens: int = 2048) -> Tensor:
        """Embed ``texts`` -> ``(n, E)`` float32: sorted by length, packed ``max_tokens`` real
        tokens at a time (a longer text alone)."""
        if batch_size <= 0 or max_tokens <= 0:
            raise ValueError(f"batch_size and max_tokens must be positive, got {batch_size} and {max_tokens}")
        out = torch.empty(len(texts), self.dim)
        if not texts:
            return out
        lengths = [len(ids) for ids in self.tokenizer(list(texts), truncation=True,
                                                       max_length=self.max_seq_length)["input_ids"]]
        batches = SentenceEncoder.token_budget_batches(lengths, max(max_tokens, self.max_seq_length))
        with progress_bar("embedding", len(texts), enabled=progress) as bar:
            for batch in batches:
                out[batch] = self._embed_batch([texts[i] for i in batch])
                bar.update(advance=len(batch))
        return out
