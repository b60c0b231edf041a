"""The Transformer built from our attention: embeddings and positions, feed-forward,
encoder/decoder layers and stacks (Vaswani et al., 2017).

The stacks work on already-embedded vectors, batch first, like ``nn.TransformerEncoder`` /
``nn.TransformerDecoder``, and import their weights exactly (:meth:`Encoder.from_torch`,
:meth:`Decoder.from_torch`). Mask convention: a boolean mask is True where attention is
allowed; ``key_mask``/``memory_mask`` ``(B, S)`` are True at real tokens.

Post-LN (the paper, BERT)::   x = norm1(x + SelfAttn(x));   x = norm2(x + FF(x))
Pre-LN (``norm_first``)::     x = x + SelfAttn(norm1(x));   x = x + FF(norm2(x))

Attention scores are ``q·k / sqrt(d_k)`` with ``d_k`` the head dimension (the seed's
``1/sqrt(n)`` is a slip: the scale depends on the vector size, not the sequence length).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.attention import KVCache, MultiHeadAttention
from attnkit.varlen import varlen_attention

__all__ = [
    "TransformerConfig",
    "SinusoidalPositions",
    "RotaryEmbedding",
    "Embeddings",
    "FeedForward",
    "LayerSettings",
    "EncoderLayer",
    "DecoderLayer",
    "Encoder",
    "Decoder",
    "DecoderCache",
    "PackedWorkspace",
    "native_bf16",
]

ACTIVATIONS = ("relu", "gelu")
POSITIONS = ("sinusoidal", "learned", "rope")


# --------------------------------------------------------------------------- config


@dataclass
class TransformerConfig:
    """Encoder-decoder Transformer. ``tgt_vocab_size=None`` shares one vocabulary.

    ``kv_heads`` < ``num_heads`` gives grouped-query attention; ``position`` is
    ``"sinusoidal"`` (the paper), ``"learned"`` (a table of ``max_len`` rows) or ``"rope"``
    (rotary, applied to self-attention queries and keys). ``tie_embeddings`` shares the target
    embedding with the output projection.
    """

    src_vocab_size: int
    tgt_vocab_size: int | None = None
    embed_dim: int = 256
    num_heads: int = 4
    kv_heads: int | None = None
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    ff_dim: int = 1024
    dropout: float = 0.1
    activation: str = "relu"
    norm_first: bool = False
    position: str = "sinusoidal"
    max_len: int = 512
    tie_embeddings: bool = True
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        tgt = self.target_vocab_size
        for name in ("src_vocab_size", "embed_dim", "num_heads", "ff_dim", "max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}")
        if tgt <= 0:
            raise ValueError(f"TransformerConfig.tgt_vocab_size must be positive, got {self.tgt_vocab_size}")
        if self.num_encoder_layers < 0 or self.num_decoder_layers <= 0:
            raise ValueError(
                f"need num_encoder_layers >= 0 and num_decoder_layers >= 1, got "
                f"{self.num_encoder_layers} and {self.num_decoder_layers}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        kv = self.num_heads if self.kv_heads is None else self.kv_heads
        if kv <= 0 or self.num_heads % kv:
            raise ValueError(f"kv_heads={self.kv_heads} does not divide num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.position == "rope" and (self.embed_dim // self.num_heads) % 2:
            raise ValueError(
                f"rope needs an even head dim, got embed_dim={self.embed_dim} / num_heads={self.num_heads}"
            )
        ids = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        if len(set(ids.values())) != 3:
            raise ValueError(f"pad_id, bos_id and eos_id must differ, got {ids}")
        for name, value in ids.items():
            if not 0 <= value < min(self.src_vocab_size, tgt):
                raise ValueError(
                    f"{name}={value} is outside the vocabularies (src {self.src_vocab_size}, tgt {tgt})"
                )

    @property
    def target_vocab_size(self) -> int:
        return self.src_vocab_size if self.tgt_vocab_size is None else self.tgt_vocab_size


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


# --------------------------------------------------------------------------- positions


def sinusoidal_table(length: int, dim: int, offset: int = 0) -> Tensor:
    """``(length, dim)`` table: ``PE[p, 2i] = sin(p / 10000^(2i/dim))``, ``PE[p, 2i+1] = cos(...)``."""
    pos = torch.arange(offset, offset + length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (dim/2,)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine positions added to the embeddings (no parameters)."""

    def __init__(self, embed_dim: int, max_len: int = 512) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.register_buffer("table", sinusoidal_table(max_len, embed_dim), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Positions ``offset .. offset + length - 1`` -> ``(length, E)``."""
        end = offset + length
        if end <= self.table.shape[0]:
            return self.table[offset:end]
        return sinusoidal_table(length, self.embed_dim, offset).to(self.table.device)


class RotaryEmbedding(nn.Module):
    """Rotary positions (Su et al., 2021), "rotate half" layout.

    ``forward(x (B, H, L, d), offset)`` rotates each pair ``(x[i], x[i + d/2])`` by the angle
    ``p * 10000^(-2i/d)`` of its position ``p = offset + l``. Applied to queries and keys, the
    score then depends only on the distance between positions. No parameters.
    """

    def __init__(self, head_dim: int, max_len: int = 512, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding needs an even head_dim, got {head_dim}")
        self.head_dim, self.base = head_dim, base
        cos, sin = self._tables(max_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, end: int, start: int = 0) -> tuple[Tensor, Tensor]:
        inv = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        angles = torch.arange(start, end, dtype=torch.float32).unsqueeze(1) * inv  # (L, d/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, d)
        return angles.cos(), angles.sin()

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        L = x.shape[-2]
        if offset + L <= self.cos.shape[0]:
            cos, sin = self.cos[offset : offset + L], self.sin[offset : offset + L]  # (L, d)
        else:
            cos, sin = (t.to(x.device) for t in self._tables(offset + L, offset))
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)  # (..., L, d)
        return (x * cos + rotated * sin).to(x.dtype)


class Embeddings(nn.Module):
    """Token embedding + positions (+ optional token types), then LayerNorm and dropout.

    ``position``: ``"sinusoidal"`` (fixed, added), ``"learned"`` (a ``max_len``-row table,
    added; longer inputs raise ``ValueError``), ``"rope"`` (nothing added here: rotary is
    applied to queries/keys inside self-attention, see :class:`RotaryEmbedding`).
    ``scale=True`` multiplies the token embedding by ``sqrt(embed_dim)`` as in the paper
    (BERT uses ``scale=False``). ``layer_norm=True`` adds a LayerNorm (BERT).

    ``forward(tokens (B, L), *, token_type_ids=None, offset=0) -> (B, L, E)``; ``offset`` is
    the position of the first token (step-by-step decoding).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        *,
        position: str = "sinusoidal",
        max_len: int = 512,
        dropout: float = 0.0,
        padding_idx: int | None = None,
        scale: bool = True,
        type_vocab_size: int = 0,
        layer_norm: bool = False,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        if vocab_size <= 0 or embed_dim <= 0 or max_len <= 0:
            raise ValueError(
                f"Embeddings needs positive sizes, got vocab_size={vocab_size}, embed_dim={embed_dim}, max_len={max_len}"
            )
        self.embed_dim, self.position, self.max_len = embed_dim, position, max_len
        self.scale = math.sqrt(embed_dim) if scale else 1.0
        self.word_embeddings = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.position_embeddings: nn.Module | None = None
        if position == "learned":
            self.position_embeddings = nn.Embedding(max_len, embed_dim)
        elif position == "sinusoidal":
            self.position_embeddings = SinusoidalPositions(embed_dim, max_len)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, embed_dim) if type_vocab_size else None
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps) if layer_norm else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, *, token_type_ids: Tensor | None = None, offset: int = 0) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, L), got shape {tuple(tokens.shape)}")
        L = tokens.shape[1]
        x = self.word_embeddings(tokens)  # (B, L, E)
        if self.scale != 1.0:
            x = x * self.scale
        if self.position == "learned":
            if offset + L > self.max_len:
                raise ValueError(
                    f"sequence of length {offset + L} is longer than max_len={self.max_len} (learned positions)"
                )
            pos = torch.arange(offset, offset + L, device=tokens.device)
            x = x + self.position_embeddings(pos)  # (L, E) broadcast over B
        elif self.position == "sinusoidal":
            x = x + self.position_embeddings(L, offset).to(x.dtype)
        if self.token_type_embeddings is not None:
            types = torch.zeros_like(tokens) if token_type_ids is None else token_type_ids
            x = x + self.token_type_embeddings(types)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


# --------------------------------------------------------------------------- layers


class FeedForward(nn.Module):
    """Position-wise feed-forward: ``linear2(dropout(act(linear1(x))))``, act = ReLU or GELU."""

    def __init__(
        self, embed_dim: int, ff_dim: int, *, activation: str = "relu", dropout: float = 0.0, bias: bool = True
    ) -> None:
        super().__init__()
        _check_activation(activation)
        self.activation = activation
        self.linear1 = nn.Linear(embed_dim, ff_dim, bias=bias)
        self.linear2 = nn.Linear(ff_dim, embed_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return f"activation={self.activation}"

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x)  # (B, L, ff_dim)
        h = F.relu(h) if self.activation == "relu" else F.gelu(h)
        return self.linear2(self.dropout(h))  # (B, L, E)


@dataclass(frozen=True)
class LayerSettings:
    """What every layer of a stack shares: sizes, activation, norm placement, dropout.

    ``kv_heads`` < ``num_heads`` gives grouped-query attention; ``norm_first`` is pre-LN;
    ``bias=False`` means no bias parameters anywhere (linears and LayerNorms).
    """

    embed_dim: int
    num_heads: int
    ff_dim: int
    kv_heads: int | None = None
    dropout: float = 0.1
    activation: str = "relu"
    norm_first: bool = False
    layer_norm_eps: float = 1e-5
    bias: bool = True

    def __post_init__(self) -> None:
        if self.embed_dim <= 0 or self.num_heads <= 0 or self.ff_dim <= 0:
            raise ValueError(
                f"LayerSettings needs positive sizes, got embed_dim={self.embed_dim}, "
                f"num_heads={self.num_heads}, ff_dim={self.ff_dim}"
            )
        _check_activation(self.activation)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_config(cls, config: TransformerConfig) -> LayerSettings:
        """The layers of a :class:`TransformerConfig` (encoder and decoder share them)."""
        c = config
        return cls(c.embed_dim, c.num_heads, c.ff_dim, kv_heads=c.kv_heads, dropout=c.dropout,
                   activation=c.activation, norm_first=c.norm_first)

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer) -> LayerSettings:
        """The settings of a ``torch.nn`` Transformer layer (its sizes, dropout, norms, activation)."""
        return cls(
            layer.self_attn.embed_dim, layer.self_attn.num_heads, layer.linear1.out_features,
            dropout=layer.dropout.p, activation=_torch_activation(layer), norm_first=layer.norm_first,
            layer_norm_eps=layer.norm1.eps, bias=layer.linear1.bias is not None,
        )

    def attention(self, rotary: nn.Module | None = None, sequence_parallel: object = None,
                  sequence_layout: str = "contiguous") -> MultiHeadAttention:
        """A :class:`MultiHeadAttention` of these sizes."""
        return MultiHeadAttention(
            self.embed_dim, self.num_heads, kv_heads=self.kv_heads, bias=self.bias, dropout=self.dropout,
            rotary=rotary, sequence_parallel=sequence_parallel, sequence_layout=sequence_layout,
        )

    def norm(self) -> nn.LayerNorm:
        return nn.LayerNorm(self.embed_dim, eps=self.layer_norm_eps, bias=self.bias)

    def feed_forward(self) -> FeedForward:
        return FeedForward(self.embed_dim, self.ff_dim, activation=self.activation, dropout=self.dropout,
                           bias=self.bias)


class EncoderLayer(nn.Module):
    """Self-attention + feed-forward, each with a residual; post-LN or pre-LN (``norm_first``).

    Submodules mirror ``nn.TransformerEncoderLayer``: ``self_attn``, ``ff.linear1``,
    ``ff.linear2``, ``norm1``, ``norm2``. ``rotary`` (a :class:`RotaryEmbedding`) rotates the
    self-attention queries/keys; ``sequence_parallel``/``sequence_layout`` make the
    self-attention ring attention (see :class:`MultiHeadAttention`).

    :meth:`forward` takes a padded batch ``(B, S, E)``; :meth:`forward_packed` the same layer on a
    packed stream of real tokens ``(N, E)``.
    """

    def __init__(
        self,
        settings: LayerSettings,
        *,
        rotary: nn.Module | None = None,
        sequence_parallel: object = None,
        sequence_layout: str = "contiguous",
    ) -> None:
        super().__init__()
        self.norm_first = settings.norm_first
        self.self_attn = settings.attention(rotary, sequence_parallel, sequence_layout)
        self.ff = settings.feed_forward()
        self.norm1, self.norm2 = settings.norm(), settings.norm()
        self.dropout1 = nn.Dropout(settings.dropout)
        self.dropout2 = nn.Dropout(settings.dropout)

    def _sa(self, x: Tensor, key_mask: Tensor | None, attn_mask: Tensor | None, need_weights: bool):
        out, w = self.self_attn(x, key_mask=key_mask, attn_mask=attn_mask, need_weights=need_weights)
        return self.dropout1(out), w

    def forward(
        self,
        x: Tensor,
        *,
        key_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``x (B, S, E)``, ``key_mask (B, S)`` True at real tokens, ``attn_mask`` as in
        :class:`MultiHeadAttention` -> ``(x (B, S, E), weights (B, H, S, S) | None)``."""
        if self.norm_first:
            a, w = self._sa(self.norm1(x), key_mask, attn_mask, need_weights)
            x = x + a
            x = x + self.dropout2(self.ff(self.norm2(x)))
        else:
            a, w = self._sa(x, key_mask, attn_mask, need_weights)
            x = self.norm1(x + a)
            x = self.norm2(x + self.dropout2(self.ff(x)))
        return x, w

    def forward_packed(
        self, x: Tensor, lengths: Sequence[int], workspace: PackedWorkspace | None = None
    ) -> Tensor:
        """The same layer on a packed stream: ``x (N, E)`` holds sequences of ``lengths`` back
        to back (``sum(lengths) == N``) -> ``(N, E)``.

        The linears, norms and feed-forward see only the N real tokens; attention runs once
        per run of equal-length sequences (:func:`attnkit.varlen.varlen_attention`), so no
        padding is computed. With a ``workspace`` (inference only) every step writes into its
        reused buffers, and the result is its buffer ``"x0"``, which the next call overwrites.
        Rotary positions, ring attention and attention dropout in training are not available
        here (``ValueError``).
        """
        attn = self.self_attn
        unsupported = {
            "rotary positions": attn.rotary is not None,
            "sequence_parallel": attn.sequence_parallel not in (None, False),
            f"attention dropout {attn.dropout} in training": self.training and attn.dropout > 0.0,
        }
        bad = [name for name, present in unsupported.items() if present]
        if bad:
            raise ValueError(f"EncoderLayer.forward_packed does not support: {', '.join(bad)}")
        if x.dim() != 2 or x.shape[1] != attn.embed_dim or x.shape[0] != sum(lengths):
            raise ValueError(
                f"forward_packed needs x (N, {attn.embed_dim}) with N = sum(lengths) = {sum(lengths)}, "
                f"got {tuple(x.shape)}"
            )
        ws = workspace
        if self.norm_first:  # x = x + attn(norm1(x));  x = x + ff(norm2(x))
            x = self._attend_packed(_layer_norm(x, self.norm1, ws, "x1"), lengths, ws, residual=x)  # in "proj"
            return self._ff_packed(_layer_norm(x, self.norm2, ws, "x1"), ws, "x0", residual=x)
        # post-LN: x = norm1(x + attn(x));  x = norm2(x + ff(x))
        x = _layer_norm(self._attend_packed(x, lengths, ws, residual=x), self.norm1, ws, "x1")
        return _layer_norm(self._ff_packed(x, ws, "proj", residual=x), self.norm2, ws, "x0")

    def _attend_packed(
        self, x: Tensor, lengths: Sequence[int], ws: PackedWorkspace | None, *, residual: Tensor
    ) -> Tensor:
        """``residual + dropout1(out_proj(varlen attention(q, k, v)))`` of packed ``x (N, E)``,
        in buffer ``"proj"``."""
        attn = self.self_attn
        N, E = x.shape
        w, b = ws.qkv_weight(attn) if ws is not None else attn.qkv_weight()
        q, k, v = attn.split_qkv(_linear(x, w, b, ws, "qkv"))  # (N, H, d), (N, Hkv, d) x2: one matmul
        out = None if ws is None else ws.take("attn", (N, attn.num_heads, attn.head_dim), x)
        o = varlen_attention(q, k, v, lengths, out=out, workspace=ws).view(N, E)  # (N, H, d) -> (N, E)
        if ws is not None and not self.training:  # dropout1 is the identity: the sum goes into the linear
            return ws.linear(o, attn.out_proj.weight, attn.out_proj.bias, "proj", residual=residual)
        return self.dropout1(_linear(o, attn.out_proj.weight, attn.out_proj.bias, ws, "proj")).add_(residual)

    def _ff_packed(self, x: Tensor, ws: PackedWorkspace | None, name: str, *, residual: Tensor) -> Tensor:
        """``residual + dropout2(ff(x))`` of packed ``x (N, E)``, in buffer ``name``."""
        ff = self.ff
        if ws is None:
            h = _linear(x, ff.linear1.weight, ff.linear1.bias, ws, "ff")  # (N, ff_dim)
            h = F.relu(h) if ff.activation == "relu" else F.gelu(h)
            return self.dropout2(F.linear(ff.dropout(h), ff.linear2.weight, ff.linear2.bias)).add_(residual)
        h = ws.linear(x, ff.linear1.weight, ff.linear1.bias, "ff", activation=ff.activation)  # (N, ff_dim)
        if not self.training:  # the dropouts are the identity: the sum goes into the linear
            return ws.linear(h, ff.linear2.weight, ff.linear2.bias, name, residual=residual)
        return self.dropout2(ws.linear(ff.dropout(h), ff.linear2.weight, ff.linear2.bias, name)).add_(residual)


class PackedWorkspace:
    """Buffers a packed pass (:meth:`EncoderLayer.forward_packed`) reuses from batch to batch,
    inference only.

    Every step writes into a named buffer kept here (grown to the largest batch seen) instead
    of a fresh tensor, and each attention's stacked q/k/v weights are concatenated once.
    Fresh multi-megabyte tensors per layer cost page faults whenever the C allocator hands
    freed memory back to the OS between batches: ~200,000 minor faults per pass over the
    embedding benchmark's corpus, and pass times varying by 30% (measured; gone with the
    workspace). Valid for one model whose weights do not change while it is in use.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self._qkv: dict[MultiHeadAttention, tuple[Tensor, Tensor | None]] = {}
        self._onednn: dict[int, tuple[Tensor, Tensor]] = {}  # id(weight) -> (weight, oneDNN's layout of it)

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A contiguous ``shape`` view of buffer ``name`` (dtype and device of ``like``)."""
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = like.new_empty(n)
        return buf[:n].view(shape)

    def qkv_weight(self, attn: MultiHeadAttention) -> tuple[Tensor, Tensor | None]:
        """``attn.qkv_weight()``, stacked on first use and kept."""
        if attn not in self._qkv:
            self._qkv[attn] = attn.qkv_weight()
        return self._qkv[attn]

    def linear(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, name: str, *,
        activation: str | None = None, residual: Tensor | None = None,
    ) -> Tensor:
        """``activation(x @ weight.T + bias) + residual`` for ``x (N, in)`` (``activation`` one of
        ``"relu"``, ``"gelu"`` or None; ``residual (N, out)`` or None; not both), into buffer ``name``.

        bfloat16 on a CPU with native bf16 matmul (:func:`native_bf16`) takes oneDNN's linear, with
        the bias, activation or residual sum fused into the matmul, into a fresh tensor (not the
        buffer): one pass over the output instead of two or three, 8-20% faster embedding than
        ``addmm`` (measured on AMX). Elsewhere ``addmm`` into the buffer, then in place.
        """
        if activation is not None and residual is not None:
            raise ValueError("PackedWorkspace.linear takes an activation or a residual, not both")
        if activation not in (None, *ACTIVATIONS):
            raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {activation!r}")
        if _fused_linear(x):
            fused = torch.ops.mkldnn._linear_pointwise
            weight = self._onednn_weight(weight, x.shape[0])
            if residual is not None:
                return fused.binary(x, residual, weight, bias, "add")
            return fused(x, weight, bias, activation or "none", [], "none")  # "none": exact (erf) GELU
        out = self.take(name, (x.shape[0], weight.shape[0]), x)
        out = torch.mm(x, weight.t(), out=out) if bias is None else torch.addmm(bias, x, weight.t(), out=out)
        if activation is not None:
            out = out.relu_() if activation == "relu" else torch.ops.aten.gelu_(out)
        return out if residual is None else out.add_(residual)

    def _onednn_weight(self, weight: Tensor, rows: int) -> Tensor:
        """``weight`` reordered once into the blocked layout oneDNN's matmul reads, for batches of
        about ``rows`` rows (any row count works). Linears with it ran 10-20% faster in isolation
        than with the plain weight, which oneDNN reorders on every call, and took 3-5% less time
        in an embedding pass (measured on an AVX512-BF16 EPYC, bf16, all-MiniLM's shapes at
        300-2,048 rows); same results. The plain weight where
        the reorder op is missing."""
        entry = self._onednn.get(id(weight))
        if entry is None or entry[0] is not weight:
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
            except (AttributeError, RuntimeError):
                packed = weight
            entry = self._onednn[id(weight)] = (weight, packed)
        return entry[1]

    def layer_norm(self, x: Tensor, norm: nn.LayerNorm, name: str) -> Tensor:
        """``norm(x)`` for ``x (N, E)``, into buffer ``name``."""
        N = x.shape[0]
        out = self.take(name, tuple(x.shape), x)
        # mean and 1/std, which inference does not need: float32 for bfloat16 x with float32 weights
        stats = self.take("norm_stats", (2, N, 1), x if norm.weight is None or norm.weight.dtype == x.dtype else norm.weight)
        torch.ops.aten.native_layer_norm.out(x, list(norm.normalized_shape), norm.weight, norm.bias, norm.eps,
                                             out0=out, out1=stats[0], out2=stats[1])
        return out


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX), asked once.

    Elsewhere PyTorch emulates bfloat16 matmuls, several times slower than float32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


@functools.cache
def _onednn_bf16_linear() -> bool:
    """Whether oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``) serves bfloat16
    here: a CPU with native bf16 matmul and a torch build that has the op."""
    return native_bf16() and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _fused_linear(x: Tensor) -> bool:
    """Whether :meth:`PackedWorkspace.linear` of ``x`` takes oneDNN's fused bfloat16 linear."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and _onednn_bf16_linear()


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, ws: PackedWorkspace | None, name: str) -> Tensor:
    return F.linear(x, weight, bias) if ws is None else ws.linear(x, weight, bias, name)


def _layer_norm(x: Tensor, norm: nn.LayerNorm, ws: PackedWorkspace | None, name: str) -> Tensor:
    return norm(x) if ws is None else ws.layer_norm(x, norm, name)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, feed-forward.

    Submodules mirror ``nn.TransformerDecoderLayer``: ``self_attn``, ``cross_attn`` (torch's
    ``multihead_attn``), ``ff.linear1``, ``ff.linear2``, ``norm1..3``. With caches, the
    self-attention keys/values of earlier steps come from ``self_cache`` and the memory is
    projected once into ``cross_cache``.
    """

    def __init__(self, settings: LayerSettings, *, rotary: nn.Module | None = None) -> None:
        super().__init__()
        self.norm_first = settings.norm_first
        self.self_attn = settings.attention(rotary)
        self.cross_attn = settings.attention()
        self.ff = settings.feed_forward()
        self.norm1, self.norm2, self.norm3 = settings.norm(), settings.norm(), settings.norm()
        self.dropout1 = nn.Dropout(settings.dropout)
        self.dropout2 = nn.Dropout(settings.dropout)
        self.dropout3 = nn.Dropout(settings.dropout)

    def _sa(self, y, key_mask, need_weights, cache):
        out, w = self.self_attn(y, key_mask=key_mask, causal=True, need_weights=need_weights, cache=cache)
        return self.dropout1(out), w

    def _ca(self, y, memory, memory_mask, need_weights, cache):
        out, w = self.cross_attn(y, memory, key_mask=memory_mask, need_weights=need_weights, cache=cache)
        return self.dropout2(out), w

    def forward(
        self,
        y: Tensor,
        memory: Tensor,
        *,
        key_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        need_weights: bool | str = False,
        self_cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``y (B, L, E)``, ``memory (B, S, E)``; ``key_mask (B, L)`` / ``memory_mask (B, S)``
        True at real tokens -> ``(y (B, L, E), self (B, H, L, L') | None, cross (B, H, L, S) | None)``
        where ``L'`` counts cached steps too. ``need_weights="cross"`` returns the cross weights
        only (the self-attention keeps the fused path)."""
        self_w, cross_w = need_weights is True, bool(need_weights)
        if self.norm_first:
            a, ws = self._sa(self.norm1(y), key_mask, self_w, self_cache)
            y = y + a
            c, wc = self._ca(self.norm2(y), memory, memory_mask, cross_w, cross_cache)
            y = y + c
            y = y + self.dropout3(self.ff(self.norm3(y)))
        else:
            a, ws = self._sa(y, key_mask, self_w, self_cache)
            y = self.norm1(y + a)
            c, wc = self._ca(y, memory, memory_mask, cross_w, cross_cache)
            y = self.norm2(y + c)
            y = self.norm3(y + self.dropout3(self.ff(y)))
        return y, ws, wc


# --------------------------------------------------------------------------- torch import


def _torch_activation(layer: nn.Module) -> str:
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    raise ValueError(f"only ReLU or (exact) GELU activations can be imported, got {act!r}")


def _copy_linear(dst: nn.Linear, src: nn.Linear) -> None:
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)


def _copy_norm(dst: nn.LayerNorm, src: nn.LayerNorm) -> None:
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)


# --------------------------------------------------------------------------- stacks


def _final_norm(final_norm: bool | None, settings: LayerSettings) -> nn.LayerNorm | None:
    use = settings.norm_first if final_norm is None else final_norm
    return settings.norm() if use else None


def _torch_stack_settings(cls: type, m: nn.Module, torch_type: type) -> LayerSettings:
    """Check that ``m`` is a non-empty ``torch_type`` stack; the settings of its layers."""
    if not isinstance(m, torch_type):
        raise ValueError(f"{cls.__name__}.from_torch expects nn.{torch_type.__name__}, got {type(m).__name__}")
    if len(m.layers) == 0:
        raise ValueError(f"nn.{torch_type.__name__} has no layers")
    return LayerSettings.from_torch(m.layers[0])


def _copy_torch_stack(new: nn.Module, m: nn.Module, copy_extra: Callable) -> nn.Module:
    """Shared body of ``Encoder.from_torch``/``Decoder.from_torch``: copy self-attention,
    feed-forward and norms layer by layer (plus ``copy_extra(ours, theirs)`` for what only
    decoders have) and the optional final norm into the freshly built stack ``new``."""
    if m.norm is not None:
        new.norm.eps = m.norm.eps
    p = m.layers[0].linear1.weight
    new = new.to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        for ours, theirs in zip(new.layers, m.layers, strict=True):
            ours.self_attn.load_state_dict(MultiHeadAttention.from_torch(theirs.self_attn).state_dict())
            _copy_linear(ours.ff.linear1, theirs.linear1)
            _copy_linear(ours.ff.linear2, theirs.linear2)
            _copy_norm(ours.norm1, theirs.norm1)
            _copy_norm(ours.norm2, theirs.norm2)
            copy_extra(ours, theirs)
        if m.norm is not None:
            _copy_norm(new.norm, m.norm)
    return new.train(m.training)


class Encoder(nn.Module):
    """A stack of ``num_layers`` :class:`EncoderLayer` with an optional final LayerNorm (``norm``).

    ``final_norm=None`` adds it for pre-LN stacks only; ``nn.Transformer`` always has one.
    ``forward(x (B, S, E), *, key_mask=None, need_weights=False)`` ->
    ``(hidden (B, S, E), [per-layer (B, H, S, S)] | None)``.

    ``sequence_parallel=group`` (a process group, or ``True`` for the default one) runs every
    self-attention as ring attention: ``x`` is then this rank's shard ``(B, S/P, E)`` of the
    sequence, cut in ``sequence_layout`` (see :func:`attnkit.distributed.shard`); everything else
    in a layer is per token.
    """

    def __init__(
        self,
        num_layers: int,
        settings: LayerSettings,
        *,
        final_norm: bool | None = None,
        rotary: nn.Module | None = None,
        sequence_parallel: object = None,
        sequence_layout: str = "contiguous",
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.layers = nn.ModuleList(
            EncoderLayer(settings, rotary=rotary, sequence_parallel=sequence_parallel, sequence_layout=sequence_layout)
            for _ in range(num_layers)
        )
        self.norm = _final_norm(final_norm, settings)

    @classmethod
    def from_config(cls, config: TransformerConfig, rotary: nn.Module | None = None) -> Encoder:
        """The encoder of a :class:`TransformerConfig` (with a final norm, as ``nn.Transformer``)."""
        return cls(config.num_encoder_layers, LayerSettings.from_config(config), final_norm=True, rotary=rotary)

    def forward(
        self, x: Tensor, *, key_mask: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        weights = [] if need_weights else None
        for layer in self.layers:
            x, w = layer(x, key_mask=key_mask, need_weights=need_weights)
            if need_weights:
                weights.append(w)
        if self.norm is not None:
            x = self.norm(x)
        return x, weights

    @classmethod
    def from_torch(
        cls, m: nn.TransformerEncoder, *, sequence_parallel: object = None, sequence_layout: str = "contiguous"
    ) -> Encoder:
        """Exact weight import from ``nn.TransformerEncoder`` (post-LN or ``norm_first``,
        ReLU or GELU, with or without the final norm, ``batch_first`` either way), optionally
        run sequence-parallel (as in the constructor)."""
        settings = _torch_stack_settings(cls, m, nn.TransformerEncoder)
        new = cls(len(m.layers), settings, final_norm=m.norm is not None, sequence_parallel=sequence_parallel,
                  sequence_layout=sequence_layout)
        return _copy_torch_stack(new, m, lambda ours, theirs: None)


class DecoderCache:
    """Per-layer KV caches of a :class:`Decoder`: ``self_caches[i]`` grows one step at a time,
    ``cross_caches[i]`` holds the memory's keys/values, projected on the first call.

    ``len(cache)`` is the number of target positions already decoded.
    """

    def __init__(self, num_layers: int) -> None:
        self.self_caches = [KVCache() for _ in range(num_layers)]
        self.cross_caches = [KVCache() for _ in range(num_layers)]

    def __len__(self) -> int:
        return len(self.self_caches[0]) if self.self_caches else 0

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index (B',)`` of every cache (beam search)."""
        for c in self.self_caches + self.cross_caches:
            c.reorder(index)


class Decoder(nn.Module):
    """A stack of :class:`DecoderLayer` with an optional final LayerNorm (``norm``).

    ``forward(y (B, L, E), memory (B, S, E), *, key_mask=None, memory_mask=None,
    need_weights=False, cache=None)`` -> ``(hidden (B, L, E), ([self (B, H, L, L)],
    [cross (B, H, L, S)]) | None)``. Self-attention is always causal. With
    ``cache=decoder.new_cache()``, ``y`` may be fed one step (or a chunk) at a time and gives the
    same hidden states as the full causal forward; the memory is projected once.
    ``need_weights="last_cross"`` returns ``([], [last layer's cross (B, H, L, S)])`` and keeps
    the fused path everywhere else (what decoding needs for its alignments).
    """

    def __init__(
        self, num_layers: int, settings: LayerSettings, *, final_norm: bool | None = None,
        rotary: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if num_layers <= 0:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.layers = nn.ModuleList(DecoderLayer(settings, rotary=rotary) for _ in range(num_layers))
        self.norm = _final_norm(final_norm, settings)

    @classmethod
    def from_config(cls, config: TransformerConfig, rotary: nn.Module | None = None) -> Decoder:
        """The decoder of a :class:`TransformerConfig` (with a final norm, as ``nn.Transformer``)."""
        return cls(config.num_decoder_layers, LayerSettings.from_config(config), final_norm=True, rotary=rotary)

    def new_cache(self) -> DecoderCache:
        """An empty cache for step-by-step decoding (pass it as ``cache=``)."""
        return DecoderCache(len(self.layers))

    def forward(
        self,
        y: Tensor,
        memory: Tensor,
        *,
        key_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        need_weights: bool | str = False,
        cache: DecoderCache | None = None,
    ) -> tuple[Tensor, tuple[list[Tensor], list[Tensor]] | None]:
        if need_weights not in (True, False, "last_cross"):
            raise ValueError(f"need_weights must be True, False or 'last_cross', got {need_weights!r}")
        if cache is not None and len(cache.self_caches) != len(self.layers):
            raise ValueError(f"cache has {len(cache.self_caches)} layers, decoder has {len(self.layers)}")
        self_w: list[Tensor] = []
        cross_w: list[Tensor] = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            layer_weights = ("cross" if i == last else False) if need_weights == "last_cross" else need_weights
            y, ws, wc = layer(
                y, memory, key_mask=key_mask, memory_mask=memory_mask, need_weights=layer_weights,
                self_cache=None if cache is None else cache.self_caches[i],
                cross_cache=None if cache is None else cache.cross_caches[i],
            )
            if ws is not None:
                self_w.append(ws)
            if wc is not None:
                cross_w.append(wc)
        if self.norm is not None:
            y = self.norm(y)
        return y, ((self_w, cross_w) if need_weights else None)

    @classmethod
    def from_torch(cls, m: nn.TransformerDecoder) -> Decoder:
        """Exact weight import from ``nn.TransformerDecoder`` (post-LN or ``norm_first``,
        ReLU or GELU, with or without the final norm, ``batch_first`` either way)."""

        def copy_cross(ours: DecoderLayer, theirs: nn.TransformerDecoderLayer) -> None:
            ours.cross_attn.load_state_dict(MultiHeadAttention.from_torch(theirs.multihead_attn).state_dict())
            _copy_norm(ours.norm3, theirs.norm3)

        settings = _torch_stack_settings(cls, m, nn.TransformerDecoder)
        new = cls(len(m.layers), settings, final_norm=m.norm is not None)
        return _copy_torch_stack(new, m, copy_cross)
