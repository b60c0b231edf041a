"""The Transformer encoder-decoder (``nn.Transformer``'s architecture from attnkit's layers)
and the decoding protocol :func:`attnkit.generate` drives (see :mod:`attnkit.models.generation`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from attnkit.models.generation import source_mask
from attnkit.positions import POSITIONS, RotaryEmbedding
from attnkit.transformer import (
    ACTIVATIONS,
    Decoder,
    DecoderCache,
    DecoderWeights,
    Embeddings,
    Encoder,
    LayerSettings,
)

__all__ = ["Recompute", "TransformerConfig", "TransformerSeq2Seq", "TransformerState"]


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

    def layer_settings(self) -> LayerSettings:
        """The layers' settings (encoder and decoder share them)."""
        return LayerSettings(self.embed_dim, self.num_heads, self.ff_dim, kv_heads=self.kv_heads,
                             dropout=self.dropout, activation=self.activation, norm_first=self.norm_first)

    @property
    def target_vocab_size(self) -> int:
        return self.src_vocab_size if self.tgt_vocab_size is None else self.tgt_vocab_size



@dataclass
class TransformerState:
    """Per-batch decoding state of :class:`TransformerSeq2Seq`.

    ``memory (B, S, E)`` and ``src_mask (B, S)`` from the encoder; ``cache`` holds the decoder's
    keys/values (None = recompute the whole prefix each step); ``prefix (B, t)`` are the
    tokens fed so far (kept only without a cache).
    """

    memory: Tensor
    src_mask: Tensor
    cache: DecoderCache | None
    prefix: Tensor | None = None


class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder Transformer: :class:`Embeddings` + :class:`Encoder` + :class:`Decoder` +
    output projection, like ``nn.Transformer`` (whose ``encoder``/``decoder`` import through
    ``Encoder.from_torch``/``Decoder.from_torch``; both stacks end with a LayerNorm, as there).

    With one shared vocabulary (``tgt_vocab_size=None``) source and target share the embedding;
    ``tie_embeddings`` shares the target embedding with the output projection.
    """

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"TransformerSeq2Seq takes a TransformerConfig, got {type(config).__name__}")
        self.config = c = config
        rotary = RotaryEmbedding(c.embed_dim // c.num_heads, c.max_len) if c.position == "rope" else None

        def embeddings(vocab: int) -> Embeddings:
            return Embeddings(
                vocab, c.embed_dim, position=c.position, max_len=c.max_len, dropout=c.dropout, padding_idx=c.pad_id
            )

        self.src_embed = embeddings(c.src_vocab_size)
        self.tgt_embed = self.src_embed if c.tgt_vocab_size is None else embeddings(c.tgt_vocab_size)
        # both stacks end with a LayerNorm, as nn.Transformer's
        self.encoder = Encoder(c.num_encoder_layers, c.layer_settings(), final_norm=True, rotary=rotary)
        self.decoder = Decoder(c.num_decoder_layers, c.layer_settings(), final_norm=True, rotary=rotary)
        self.out_proj = nn.Linear(c.embed_dim, c.target_vocab_size, bias=False)
        self._init_weights()
        if c.tie_embeddings:
            self.out_proj.weight = self.tgt_embed.word_embeddings.weight

    def _init_weights(self) -> None:
        # embeddings ~ N(0, 1/E): times sqrt(E) in Embeddings gives unit variance, and the tied
        # output projection starts with logits of order one
        std = self.config.embed_dim**-0.5
        for emb in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(emb.word_embeddings.weight, std=std)
            with torch.no_grad():
                emb.word_embeddings.weight[self.config.pad_id].zero_()
        nn.init.normal_(self.out_proj.weight, std=std)

    # -- training forward ------------------------------------------------------------------

    def encode_memory(self, src: Tensor, src_mask: Tensor, need_weights: bool = False):
        """``src (B, S)`` -> ``(memory (B, S, E), encoder weights | None)``."""
        return self.encoder(self.src_embed(src), key_mask=src_mask, need_weights=need_weights)

    def forward(self, src: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """``src (B, S)``, ``tgt_in (B, T)`` (BOS + target, right-padded) -> logits ``(B, T, V)``.

        The target needs no mask: self-attention is causal and padding comes last, so a real
        position never sees a padded one (padded positions' logits are meaningless; the loss
        ignores them).
        """
        src_mask = source_mask(src, src_mask, self.config.pad_id)
        memory, _ = self.encode_memory(src, src_mask)
        hidden, _ = self.decoder(self.tgt_embed(tgt_in), memory, memory_mask=src_mask)
        return self.out_proj(hidden)

    def forward_with_weights(
        self, src: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, list[Tensor]]]:
        """Like :meth:`forward`, plus every attention map: ``{"encoder": [(B, H, S, S)],
        "decoder_self": [(B, H, T, T)], "cross": [(B, H, T, S)]}``, one entry per layer."""
        src_mask = source_mask(src, src_mask, self.config.pad_id)
        memory, enc_w = self.encode_memory(src, src_mask, need_weights=True)
        hidden, (self_w, cross_w) = self.decoder(
            self.tgt_embed(tgt_in), memory, memory_mask=src_mask, need_weights=True
        )
        return self.out_proj(hidden), {"encoder": enc_w, "decoder_self": self_w, "cross": cross_w}

    # -- decoding protocol -----------------------------------------------------------------

    def encode(self, src: Tensor, src_mask: Tensor | None = None, *, use_cache: bool = True) -> TransformerState:
        """Run the encoder once. ``use_cache=False`` makes :meth:`decode_step` recompute the
        whole prefix each step (the reference for tests and benchmarks)."""
        src_mask = source_mask(src, src_mask, self.config.pad_id)
        memory, _ = self.encode_memory(src, src_mask)
        if use_cache:
            return TransformerState(memory, src_mask, self.decoder.new_cache())
        return TransformerState(memory, src_mask, None, src.new_zeros(src.shape[0], 0))

    def decode_step(self, state: TransformerState, tokens: Tensor) -> tuple[Tensor, Tensor, TransformerState]:
        """``tokens (B, 1)`` -> ``(logits (B, V), attention (B, S), state)``; attention is the last
        layer's cross-attention for this step, averaged over heads."""
        if tokens.dim() != 2 or tokens.shape[1] != 1:
            raise ValueError(f"decode_step takes tokens of shape (B, 1), got {tuple(tokens.shape)}")
        if state.cache is not None:
            y = self.tgt_embed(tokens, offset=len(state.cache))  # (B, 1, E)
            hidden, (_, cross) = self.decoder(
                y, state.memory, memory_mask=state.src_mask, need_weights=True, which=DecoderWeights.LAST_CROSS,
                cache=state.cache,
            )
        else:
            state = replace(state, prefix=torch.cat([state.prefix, tokens], dim=1))
            hidden, (_, cross) = self.decoder(
                self.tgt_embed(state.prefix), state.memory, memory_mask=state.src_mask, need_weights=True,
                which=DecoderWeights.LAST_CROSS,
            )
        logits = self.out_proj(hidden[:, -1])  # (B, V)
        attention = cross[-1][:, :, -1].mean(dim=1)  # (B, H, S) -> (B, S)
        return logits, attention, state

    def reorder_state(self, state: TransformerState, index: Tensor) -> TransformerState:
        """Keep rows ``index (B',)`` (the cache is reordered in place)."""
        if state.cache is not None:
            state.cache.reorder(index)
        return TransformerState(
            state.memory.index_select(0, index),
            state.src_mask.index_select(0, index),
            state.cache,
            None if state.prefix is None else state.prefix.index_select(0, index),
        )


class Recompute:
    """A view of a :class:`TransformerSeq2Seq` that decodes without a KV cache, recomputing the
    whole prefix at every step: the O(t^2)-per-token reference that cached decoding must equal."""

    def __init__(self, model: TransformerSeq2Seq) -> None:
        self.model, self.config = model, model.config

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> TransformerState:
        return self.model.encode(src, src_mask, use_cache=False)

    def decode_step(self, state, tokens):
        return self.model.decode_step(state, tokens)

    def reorder_state(self, state, index):
        return self.model.reorder_state(state, index)

    def eval(self) -> Recompute:
        self.model.eval()
        return self
