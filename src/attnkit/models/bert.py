"""A real pretrained BERT in our own layers.

:class:`BertEncoder` is built from :class:`attnkit.transformer.Embeddings` (word + learned
position + token type, then LayerNorm) and post-LN :class:`attnkit.transformer.EncoderLayer`
blocks with our :class:`attnkit.MultiHeadAttention`. Loading a Hugging Face checkpoint is a
plain copy through a small, explicit name map (:func:`hf_name_map`), and the loader refuses a
checkpoint with missing, unexpected or mis-shaped tensors. :meth:`BertEncoder.forward_packed`
runs the network on a packed stream of real tokens (no padding computed); sentence embeddings
on top of it live in :mod:`attnkit.models.sentence_encoder`.

Mask convention: ``key_mask`` is True at real tokens (Hugging Face's ``attention_mask == 1``).
"""

from __future__ import annotations

import copy
import functools
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from attnkit.transformer import (
    Embeddings,
    EncoderLayer,
    LayerSettings,
    PackedWorkspace,
    native_bf16,
)
from attnkit.varlen import cu_seqlens_from_lengths, positions

__all__ = ["DTYPES", "BertConfig", "BertEncoder", "PackedWorkspace", "hf_name_map", "native_bf16", "resolve_dtype"]

# Inference dtypes: "auto" is bfloat16 where the CPU multiplies bfloat16 natively, else float32.
DTYPES = ("auto", "float32", "bfloat16")

# Checkpoint tensors BertModel carries that this encoder does not use (HF's pooler, a buffer).
IGNORED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
ACTIVATIONS = ("gelu", "relu")


# --------------------------------------------------------------------------- config


@dataclass
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that shape the network.

    ``hidden_act`` is ``"gelu"`` (exact, erf) or ``"relu"``; only absolute (learned) position
    embeddings are supported. ``dropout`` is ``hidden_dropout_prob`` (inactive in eval mode).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BertConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside the vocabulary of {self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")

    @classmethod
    def from_hf(cls, hf: dict) -> BertConfig:
        """Build from a Hugging Face ``config.json`` dict (unrelated keys are ignored)."""
        if hf.get("model_type", "bert") != "bert":
            raise ValueError(f"expected a BERT config (model_type 'bert'), got model_type={hf.get('model_type')!r}")
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"only absolute position embeddings are supported, got position_embedding_type={pos!r}")
        fields = {k: hf[k] for k in cls.__dataclass_fields__ if k in hf}
        if "hidden_dropout_prob" in hf:
            fields["dropout"] = hf["hidden_dropout_prob"]
        return cls(**fields)

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no BERT config at {path}")
        return cls.from_hf(json.loads(path.read_text()))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def layer_settings(self) -> LayerSettings:
        """The settings of every (post-LN) encoder layer."""
        return LayerSettings(
            self.hidden_size, self.num_attention_heads, self.intermediate_size, dropout=self.dropout,
            activation=self.hidden_act, norm_first=False, layer_norm_eps=self.layer_norm_eps,
        )


# --------------------------------------------------------------------------- dtype


@functools.cache
def _warn_slow_bf16() -> None:
    warnings.warn(
        "bfloat16 was asked for, but this CPU has no native bfloat16 matmul (AVX512-BF16/AMX): "
        "it will be several times slower than float32 (dtype='auto' picks float32 here)",
        stacklevel=3,
    )


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"auto"`` | ``"float32"`` | ``"bfloat16"`` (or the torch dtype) -> the torch dtype.

    ``"auto"`` is bfloat16 where :func:`native_bf16`, else float32. Asking for bfloat16 on a CPU
    without native support warns once that it will be slow.
    """
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, torch.float32: torch.float32,
             torch.bfloat16: torch.bfloat16}
    if dtype == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    if dtype not in names:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if names[dtype] == torch.bfloat16 and not native_bf16():
        _warn_slow_bf16()
    return names[dtype]


# --------------------------------------------------------------------------- name map


def hf_name_map(config: BertConfig) -> dict[str, str]:
    """Hugging Face ``BertModel`` tensor name -> our parameter name, for every parameter."""
    names = {
        "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight": "embeddings.norm.weight",
        "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    }
    per_layer = {
        "attention.self.query": "self_attn.q_proj",
        "attention.self.key": "self_attn.k_proj",
        "attention.self.value": "self_attn.v_proj",
        "attention.output.dense": "self_attn.out_proj",
        "attention.output.LayerNorm": "norm1",
        "intermediate.dense": "ff.linear1",
        "output.dense": "ff.linear2",
        "output.LayerNorm": "norm2",
    }
    for i in range(config.num_hidden_layers):
        for hf, ours in per_layer.items():
            for p in ("weight", "bias"):
                names[f"encoder.layer.{i}.{hf}.{p}"] = f"layers.{i}.{ours}.{p}"
    return names


# --------------------------------------------------------------------------- encoder


class BertEncoder(nn.Module):
    """BERT: embeddings (word + learned position + token type, LayerNorm) and post-LN layers.

    ``forward(input_ids (B, T), key_mask (B, T) | None, token_type_ids (B, T) | None, *,
    need_weights)`` -> ``(hidden (B, T, E), [per-layer weights (B, H, T, T)] | None)``.
    :meth:`forward_packed` runs the same network on a packed stream of real tokens.

    Compute dtype (:attr:`dtype`): the dtype of the layers' linear weights, float32 or bfloat16
    (:meth:`with_dtype`). In bfloat16 the matmuls take bfloat16 weights and activations and
    accumulate in float32, attention runs the fused bfloat16 kernel (softmax in float32), the
    LayerNorms keep float32 parameters and statistics, and the embeddings (tables, sum and
    their LayerNorm) stay float32; the hidden states come out in bfloat16.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(
            config.vocab_size, config.hidden_size, position="learned", max_len=config.max_position_embeddings,
            dropout=config.dropout, padding_idx=config.pad_token_id, scale=False,
            type_vocab_size=config.type_vocab_size, layer_norm=True, layer_norm_eps=config.layer_norm_eps,
        )
        self.layers = nn.ModuleList(EncoderLayer(config.layer_settings()) for _ in range(config.num_hidden_layers))

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: that of the layers' linear weights (float32 with no layers)."""
        return self.layers[0].ff.linear1.weight.dtype if len(self.layers) else torch.float32

    def with_dtype(self, dtype: str | torch.dtype) -> BertEncoder:
        """This encoder computing in ``dtype`` (see :data:`DTYPES`): ``self`` when it already
        does, else a copy whose linear weights are converted (rounded to nearest), sharing the
        float32 embeddings; LayerNorm parameters stay float32."""
        dtype = resolve_dtype(dtype)
        if dtype == self.dtype:
            return self
        new = copy.deepcopy(self, memo={id(self.embeddings): self.embeddings})
        for module in new.layers.modules():
            if isinstance(module, nn.Linear):
                module.to(dtype)
        return new

    def non_embedding_parameters(self) -> int:
        """Parameters of the layers (not the embedding tables): a forward pass costs about
        ``2 * non_embedding_parameters()`` FLOPs per real token, plus attention scores."""
        return sum(p.numel() for p in self.layers.parameters())

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: str | torch.dtype = "float32") -> BertEncoder:
        """Load ``config.json`` + ``model.safetensors`` from a Hugging Face BERT folder, to
        compute in ``dtype`` (``"auto"``, ``"float32"`` or ``"bfloat16"``, see :meth:`with_dtype`).

        Raises ``FileNotFoundError`` when a file is missing and ``ValueError`` listing every
        missing, unexpected or mis-shaped tensor. The model is returned in eval mode.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist")
        config = BertConfig.from_json(folder / "config.json")
        weights_path = folder / "model.safetensors"
        if not weights_path.is_file():
            raise FileNotFoundError(f"no model.safetensors in {folder} (only safetensors checkpoints are read)")
        model = cls(config)
        model.load_hf_state_dict(load_file(str(weights_path)), source=str(weights_path))
        return model.with_dtype(dtype).eval()

    def load_hf_state_dict(self, tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Copy Hugging Face ``BertModel`` tensors in, strictly (see :func:`hf_name_map`)."""
        names = hf_name_map(self.config)
        ours = self.state_dict()
        missing = sorted(hf for hf in names if hf not in tensors)
        unexpected = sorted(k for k in tensors if k not in names and k not in IGNORED_TENSORS)
        misshaped = sorted(
            f"{hf} {tuple(tensors[hf].shape)} (expected {tuple(ours[our].shape)})"
            for hf, our in names.items()
            if hf in tensors and tensors[hf].shape != ours[our].shape
        )
        problems = [
            f"{label}: {', '.join(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if items
        ]
        if problems:
            raise ValueError(f"{source} does not fit BertEncoder({self.config}): " + "; ".join(problems))
        self.load_state_dict({ours_name: tensors[hf] for hf, ours_name in names.items()}, strict=True)

    # -- padded forward --------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        key_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """``input_ids (B, T)``, ``key_mask (B, T)`` True at real tokens ->
        ``(hidden (B, T, E), [weights (B, H, T, T) per layer] | None)``."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        if key_mask is not None and key_mask.dtype != torch.bool:
            key_mask = key_mask.bool()  # HF-style 0/1 attention_mask
        x = self.embeddings(input_ids, token_type_ids=token_type_ids).to(self.dtype)  # (B, T, E)
        weights: list[Tensor] = []
        for layer in self.layers:
            x, w = layer(x, key_mask=key_mask, need_weights=need_weights)
            if need_weights:
                weights.append(w)
        return x, (weights if need_weights else None)

    # -- packed forward --------------------------------------------------------------------

    def forward_packed(
        self,
        input_ids: Tensor,
        lengths: Sequence[int],
        token_type_ids: Tensor | None = None,
        *,
        workspace: PackedWorkspace | None = None,
    ) -> Tensor:
        """The same network on a packed stream: ``input_ids (N,)`` holds sequences of
        ``lengths`` back to back (``sum(lengths) == N``) -> ``hidden (N, E)``.

        The result is in the compute dtype (:attr:`dtype`). Embeddings, linears, LayerNorm
        and feed-forward see only the N real tokens;
        attention runs per group of equal-length sequences (each layer's
        :meth:`attnkit.transformer.EncoderLayer.forward_packed`). Without autograd every step
        writes into reused buffers (a :class:`PackedWorkspace`; pass one to reuse it across
        calls, and the result is then a view of it that the next call overwrites). With
        autograd (training) the ops allocate as usual.
        """
        lengths = [int(n) for n in lengths]
        if input_ids.dim() != 1 or input_ids.shape[0] != sum(lengths):
            raise ValueError(
                f"forward_packed needs input_ids (N,) with N = sum(lengths) = {sum(lengths)}, "
                f"got shape {tuple(input_ids.shape)}"
            )
        longest = max(lengths, default=0)
        if longest > self.config.max_position_embeddings:
            raise ValueError(
                f"a sequence of {longest} tokens is longer than max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if grad and workspace is not None:
            raise ValueError("forward_packed: a workspace needs no autograd (use torch.inference_mode())")
        ws = None if grad else (workspace if workspace is not None else PackedWorkspace())
        x = self._embed_packed(input_ids, cu_seqlens_from_lengths(lengths, device=input_ids.device), token_type_ids, ws)
        for layer in self.layers:
            x = layer.forward_packed(x, lengths, ws)
        return x  # (N, E)

    def _embed_packed(
        self, input_ids: Tensor, cu_seqlens: Tensor, token_type_ids: Tensor | None, ws: PackedWorkspace | None
    ) -> Tensor:
        """Word + position (restarting at 0 in every sequence) + token type, then LayerNorm."""
        emb = self.embeddings
        N, E = input_ids.shape[0], self.config.hidden_size
        word, pos = emb.word_embeddings.weight, emb.position_embeddings.weight
        if ws is None:
            x = emb.word_embeddings(input_ids) + emb.position_embeddings(positions(cu_seqlens))  # (N, E)
        else:
            x = torch.index_select(word, 0, input_ids, out=ws.take("embed", (N, E), word))
            x.add_(torch.index_select(pos, 0, positions(cu_seqlens), out=ws.take("pos", (N, E), word)))
        # x is a fresh sum (or our buffer) on both paths, so the type embedding goes in in place
        if token_type_ids is None:
            x.add_(emb.token_type_embeddings.weight[0])  # type 0 everywhere: one row, broadcast
        else:
            x.add_(emb.token_type_embeddings(token_type_ids))
        x = emb.dropout(emb.norm(x) if ws is None else ws.layer_norm(x, emb.norm, "emb"))  # (N, E) float32
        if x.dtype == self.dtype:
            return x
        return x.to(self.dtype) if ws is None else ws.take("x0", (N, E), x.new_empty(0, dtype=self.dtype)).copy_(x)

