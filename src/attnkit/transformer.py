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

import enum
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attnkit.runtime as runtime
from attnkit.attention import KVCache, MultiHeadAttention
from attnkit.distributed import SequenceParallel
from attnkit.positions import POSITIONS, SinusoidalPositions
from attnkit.varlen import Packed

__all__ = [
    "Embeddings",
    "FeedForward",
    "LayerSettings",
    "EncoderLayer",
    "DecoderLayer",
    "Encoder",
    "Decoder",
    "DecoderCache",
    "DecoderWeights",
]

ACTIVATIONS = tuple(runtime.ACTIVATIONS)


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


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

    def forward(
        self, tokens: Tensor, *, token_type_ids: Tensor | None = None, offset: int = 0,
        positions: Tensor | None = None,
    ) -> Tensor:
        """``tokens (B, L)`` at positions ``offset ..`` -> ``(B, L, E)``; or a packed stream
        ``tokens (N,)`` with ``positions (N,)``, each token's place in its own sequence -> ``(N, E)``."""
        if positions is None and tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, L), got shape {tuple(tokens.shape)}")
        if positions is not None and (tokens.dim() != 1 or positions.shape != tokens.shape):
            raise ValueError(
                f"packed tokens must be (N,) with positions (N,), got {tuple(tokens.shape)} and {tuple(positions.shape)}"
            )
        x = self.word_embeddings(tokens)  # (B, L, E) or (N, E)
        if self.scale != 1.0:
            x = x * self.scale
        if positions is None and self.position != "rope":
            L = tokens.shape[1]
            if self.position == "learned" and offset + L > self.max_len:
                raise ValueError(
                    f"sequence of length {offset + L} is longer than max_len={self.max_len} (learned positions)"
                )
            positions = torch.arange(offset, offset + L, device=tokens.device)  # (L,) broadcast over B
        elif self.position == "learned" and positions.numel() and int(positions.max()) >= self.max_len:
            raise ValueError(f"a packed sequence reaches position {int(positions.max())}, past max_len={self.max_len} "
                             f"(learned positions)")
        if self.position == "learned":
            x = x + self.position_embeddings(positions)
        elif self.position == "sinusoidal":
            x = x + self.position_embeddings.at(positions).to(x.dtype)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:  # type 0 everywhere: one row, broadcast
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(token_type_ids)
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
        """``x (..., E)`` (a padded batch or a packed stream) -> ``(..., E)``."""
        l1, l2 = self.linear1, self.linear2
        h = runtime.linear(x, l1.weight, l1.bias, owner=l1, activation=self.activation)  # (..., ff_dim)
        return runtime.linear(self.dropout(h), l2.weight, l2.bias, owner=l2)  # (..., E)


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
    def from_torch(cls, layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer) -> LayerSettings:
        """The settings of a ``torch.nn`` Transformer layer (its sizes, dropout, norms, activation)."""
        return cls(
            layer.self_attn.embed_dim, layer.self_attn.num_heads, layer.linear1.out_features,
            dropout=layer.dropout.p, activation=_torch_activation(layer), norm_first=layer.norm_first,
            layer_norm_eps=layer.norm1.eps, bias=layer.linear1.bias is not None,
        )

    def attention(self, rotary: nn.Module | None = None,
                  sequence_parallel: SequenceParallel | None = None) -> MultiHeadAttention:
        """A :class:`MultiHeadAttention` of these sizes."""
        return MultiHeadAttention(
            self.embed_dim, self.num_heads, kv_heads=self.kv_heads, bias=self.bias, dropout=self.dropout,
            rotary=rotary, sequence_parallel=sequence_parallel,
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
    self-attention queries/keys; ``sequence_parallel`` (a :class:`SequenceParallel`) makes the
    self-attention ring attention (see :class:`MultiHeadAttention`).

    :meth:`forward` takes a padded batch ``(B, S, E)``, or a packed stream of real tokens
    ``(N, E)`` with ``packed=`` (only self-attention reads it; every other step is per token).
    """

    def __init__(
        self,
        settings: LayerSettings,
        *,
        rotary: nn.Module | None = None,
        sequence_parallel: SequenceParallel | None = None,
    ) -> None:
        super().__init__()
        self.norm_first = settings.norm_first
        self.self_attn = settings.attention(rotary, sequence_parallel)
        self.ff = settings.feed_forward()
        self.norm1, self.norm2 = settings.norm(), settings.norm()
        self.dropout1 = nn.Dropout(settings.dropout)
        self.dropout2 = nn.Dropout(settings.dropout)

    def forward(
        self,
        x: Tensor,
        *,
        key_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        need_weights: bool = False,
        packed: Packed | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``x (B, S, E)``, ``key_mask (B, S)`` True at real tokens, ``attn_mask`` as in
        :class:`MultiHeadAttention` -> ``(x (B, S, E), weights (B, H, S, S) | None)``; or
        ``x (N, E)`` with ``packed`` -> ``(x (N, E), None)``."""
        attend = functools.partial(self.self_attn, key_mask=key_mask, attn_mask=attn_mask,
                                   need_weights=need_weights, packed=packed)
        if self.norm_first:
            a, w = attend(self.norm1(x))
            x = x + self.dropout1(a)
            x = x + self.dropout2(self.ff(self.norm2(x)))
        else:
            a, w = attend(x)
            x = self.norm1(x + self.dropout1(a))
            x = self.norm2(x + self.dropout2(self.ff(x)))
        return x, w


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

    def forward(
        self,
        y: Tensor,
        memory: Tensor,
        *,
        key_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        need_self_weights: bool = False,
        need_cross_weights: bool = False,
        self_cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``y (B, L, E)``, ``memory (B, S, E)``; ``key_mask (B, L)`` / ``memory_mask (B, S)``
        True at real tokens -> ``(y (B, L, E), self (B, H, L, L') | None, cross (B, H, L, S) | None)``
        where ``L'`` counts cached steps too; each kind of weights is computed only when asked
        (the other attention keeps the fused path)."""
        attend_self = functools.partial(self.self_attn, key_mask=key_mask, causal=True,
                                        need_weights=need_self_weights, cache=self_cache)
        attend_memory = functools.partial(self.cross_attn, key=memory, key_mask=memory_mask,
                                          need_weights=need_cross_weights, cache=cross_cache)
        if self.norm_first:
            a, ws = attend_self(self.norm1(y))
            y = y + self.dropout1(a)
            c, wc = attend_memory(self.norm2(y))
            y = y + self.dropout2(c)
            y = y + self.dropout3(self.ff(self.norm3(y)))
        else:
            a, ws = attend_self(y)
            y = self.norm1(y + self.dropout1(a))
            c, wc = attend_memory(y)
            y = self.norm2(y + self.dropout2(c))
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
    if src.weight is not None:
        dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)


def _final_norm_like(norm: nn.Module, embed_dim: int) -> nn.LayerNorm:
    """An empty LayerNorm shaped like a torch stack's final ``norm``, which need not share the
    layers' settings (``nn.LayerNorm(E)`` after ``bias=False`` layers, or without affine
    parameters); anything but a LayerNorm over ``embed_dim`` raises ``ValueError``."""
    if not isinstance(norm, nn.LayerNorm) or tuple(norm.normalized_shape) != (embed_dim,):
        raise ValueError(f"the stack's final norm must be nn.LayerNorm({embed_dim}), got {norm!r}")
    return nn.LayerNorm(embed_dim, eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                        bias=norm.bias is not None)


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
        new.norm = _final_norm_like(m.norm, m.layers[0].self_attn.embed_dim)
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

    ``sequence_parallel`` (a :class:`SequenceParallel`: group and layout) runs every
    self-attention as ring attention: ``x`` is then this rank's shard ``(B, S/P, E)`` of the
    sequence (see :func:`attnkit.distributed.shard`); everything else
    in a layer is per token.
    """

    def __init__(
        self,
        num_layers: int,
        settings: LayerSettings,
        *,
        final_norm: bool | None = None,
        rotary: nn.Module | None = None,
        sequence_parallel: SequenceParallel | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.layers = nn.ModuleList(
            EncoderLayer(settings, rotary=rotary, sequence_parallel=sequence_parallel)
            for _ in range(num_layers)
        )
        self.norm = _final_norm(final_norm, settings)

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
        cls, m: nn.TransformerEncoder, *, sequence_parallel: SequenceParallel | None = None
    ) -> Encoder:
        """Exact weight import from ``nn.TransformerEncoder`` (post-LN or ``norm_first``,
        ReLU or GELU, with or without the final norm, ``batch_first`` either way), optionally
        run sequence-parallel (as in the constructor)."""
        settings = _torch_stack_settings(cls, m, nn.TransformerEncoder)
        new = cls(len(m.layers), settings, final_norm=m.norm is not None, sequence_parallel=sequence_parallel)
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


class DecoderWeights(enum.Enum):
    """Which attention weights :meth:`Decoder.forward` returns when ``need_weights=True``."""

    ALL = "every layer's self- and cross-attention"
    LAST_CROSS = "the last layer's cross-attention only (what decoding needs for its alignments)"


class Decoder(nn.Module):
    """A stack of :class:`DecoderLayer` with an optional final LayerNorm (``norm``).

    ``forward(y (B, L, E), memory (B, S, E), *, key_mask=None, memory_mask=None,
    need_weights=False, cache=None)`` -> ``(hidden (B, L, E), ([self (B, H, L, L)],
    [cross (B, H, L, S)]) | None)``. Self-attention is always causal. With
    ``cache=decoder.new_cache()``, ``y`` may be fed one step (or a chunk) at a time and gives the
    same hidden states as the full causal forward; the memory is projected once.
    ``which=DecoderWeights.LAST_CROSS`` (with ``need_weights=True``) returns
    ``([], [last layer's cross (B, H, L, S)])`` and keeps the fused path everywhere else.
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
        need_weights: bool = False,
        which: DecoderWeights = DecoderWeights.ALL,
        cache: DecoderCache | None = None,
    ) -> tuple[Tensor, tuple[list[Tensor], list[Tensor]] | None]:
        if not isinstance(need_weights, bool) or not isinstance(which, DecoderWeights):
            raise ValueError(f"need_weights must be a bool and which a DecoderWeights, got {need_weights!r}, {which!r}")
        if cache is not None and len(cache.self_caches) != len(self.layers):
            raise ValueError(f"cache has {len(cache.self_caches)} layers, decoder has {len(self.layers)}")
        self_w: list[Tensor] = []
        cross_w: list[Tensor] = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            y, ws, wc = layer(
                y, memory, key_mask=key_mask, memory_mask=memory_mask,
                need_self_weights=need_weights and which is DecoderWeights.ALL,
                need_cross_weights=need_weights and (which is DecoderWeights.ALL or i == last),
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
