"""Attention modules: one head, multi-head (with grouped-query heads and a KV cache), and the
three score functions of RNN encoder-decoder attention (Bahdanau additive, Luong general/dot).

Everything is batch first. Mask convention: a boolean mask is True where attention is
allowed (``key_mask`` True = real token); a float mask is added to the scores.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnkit.distributed import SequenceParallel
from attnkit.functional import (
    additive_scores,
    dot_scores,
    general_scores,
    masked_softmax,
    merge_masks,
    scaled_dot_product_attention,
)
from attnkit.runtime import linear, prepared
from attnkit.varlen import Packed, varlen_attention

__all__ = [
    "AttentionHead",
    "KVCache",
    "MultiHeadAttention",
    "AdditiveAttention",
    "GeneralAttention",
    "DotAttention",
]


class AttentionHead(nn.Module):
    """One head of self-attention, the building block the seed describes.

    Projects each token embedding ``x (B, L, E)`` to a query, key and value of size
    ``head_dim``, scores them with the scaled dot product and returns the weighted sum of
    values ``(B, L, head_dim)``.
    """

    def __init__(self, embed_dim: int, head_dim: int) -> None:
        super().__init__()
        if embed_dim <= 0 or head_dim <= 0:
            raise ValueError(f"AttentionHead needs positive sizes, got embed_dim={embed_dim}, head_dim={head_dim}")
        self.q = nn.Linear(embed_dim, head_dim)
        self.k = nn.Linear(embed_dim, head_dim)
        self.v = nn.Linear(embed_dim, head_dim)

    def forward(
        self, x: Tensor, *, key_mask: Tensor | None = None, causal: bool = False, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``x (B, L, E)``, ``key_mask (B, L)`` -> ``(out (B, L, head_dim), weights (B, L, L) | None)``."""
        mask = None if key_mask is None else key_mask[:, None, :]  # (B, 1, L)
        res = scaled_dot_product_attention(
            self.q(x), self.k(x), self.v(x), mask=mask, causal=causal, return_weights=need_weights
        )
        return res if need_weights else (res, None)


class KVCache:
    """Keys and values of one attention layer, kept across decoding steps.

    Self-attention (``mha(x_step, cache=c)``): each call appends the step's projected keys and
    values and attends over everything cached so far (causal by construction). Cross-attention
    (``mha(y, memory, cache=c)``): the first call projects the memory and stores it; later calls
    reuse it, so the memory is projected once per generation.

    ``keys``/``values`` are ``(B, Hkv, S, d)``; ``key_mask`` is ``(B, S)`` or None.
    """

    def __init__(self) -> None:
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.key_mask: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def append(self, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Add ``k, v (B, Hkv, L, d)`` (and their ``key_mask (B, L)``); return the whole cache."""
        if self.keys is None:
            self.keys, self.values = k, v
            self.key_mask = key_mask
            return k, v, key_mask
        if k.shape[0] != self.keys.shape[0]:
            raise ValueError(f"KVCache holds batch {self.keys.shape[0]}, got a step of batch {k.shape[0]}")
        if key_mask is not None or self.key_mask is not None:
            B, old, new = k.shape[0], self.keys.shape[-2], k.shape[-2]
            prev = self.key_mask if self.key_mask is not None else torch.ones(B, old, dtype=torch.bool, device=k.device)
            cur = key_mask if key_mask is not None else torch.ones(B, new, dtype=torch.bool, device=k.device)
            self.key_mask = torch.cat([prev, cur], dim=1)
        self.keys = torch.cat([self.keys, k], dim=-2)
        self.values = torch.cat([self.values, v], dim=-2)
        return self.keys, self.values, self.key_mask

    def store(self, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> None:
        """Hold the memory's keys and values ``(B, Hkv, S, d)`` (cross-attention): stored once,
        read by every later step; a cache that already holds some refuses (``ValueError``)."""
        if self.keys is not None:
            raise ValueError(f"KVCache already holds keys of length {len(self)}; use a new cache")
        self.keys, self.values, self.key_mask = k, v, key_mask

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search: follow the surviving hypotheses)."""
        if self.keys is None:
            return
        self.keys = self.keys.index_select(0, index)
        self.values = self.values.index_select(0, index)
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Multi-head attention, self or cross, with optional grouped-query heads.

    ``num_heads`` query heads of size ``head_dim = embed_dim // num_heads``; ``kv_heads``
    key/value heads (default ``num_heads``; ``1`` is multi-query). Query head ``h`` uses kv head
    ``h // (num_heads // kv_heads)``. ``kdim``/``vdim`` are the key/value input sizes
    (default ``embed_dim``). ``bias=False`` means no bias parameters at all.

    Parameters mirror the usual checkpoint layout: ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj``.

    ``rotary`` (e.g. :class:`attnkit.positions.RotaryEmbedding`), called as
    ``rotary(x (B, H, L, d), offset) -> x``, rotates self-attention queries and keys by their
    positions (``offset`` = the position of the first one: steps already in the KV cache, or
    where this rank's shard starts). None = no rotation.

    ``sequence_parallel`` (an :class:`attnkit.distributed.SequenceParallel`: a process group and
    a layout) turns self-attention into ring attention: ``forward`` then takes this rank's shard
    ``(B, N/P, E)`` of the sequence and returns this rank's shard of the output. Masks other
    than ``causal``, weights, caches and attention dropout are not available on that path.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kv_heads: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        rotary: nn.Module | None = None,
        sequence_parallel: SequenceParallel | None = None,
    ) -> None:
        super().__init__()
        kv_heads = num_heads if kv_heads is None else kv_heads
        if embed_dim <= 0 or num_heads <= 0 or kv_heads <= 0:
            raise ValueError(
                f"MultiHeadAttention needs positive sizes, got embed_dim={embed_dim}, "
                f"num_heads={num_heads}, kv_heads={kv_heads}"
            )
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if num_heads % kv_heads:
            raise ValueError(f"kv_heads={kv_heads} does not divide num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if sequence_parallel is not None and not isinstance(sequence_parallel, SequenceParallel):
            raise ValueError(f"sequence_parallel must be an attnkit.distributed.SequenceParallel or None, "
                             f"got {sequence_parallel!r}")
        self.embed_dim, self.num_heads, self.kv_heads = embed_dim, num_heads, kv_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout = dropout
        self.sequence_parallel = sequence_parallel
        kv_dim = kv_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, kv_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, kv_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.rotary = rotary

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kv_heads={self.kv_heads}"

    # -- projections -------------------------------------------------------------------

    def _split(self, x: Tensor, heads: int) -> Tensor:
        # (B, L, heads*d) -> (B, heads, L, d)
        return x.unflatten(-1, (heads, self.head_dim)).transpose(1, 2)

    def _stack_qkv(self) -> tuple[Tensor, Tensor | None]:
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        b = None if self.q_proj.bias is None else torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        return w, b

    def qkv_weight(self) -> tuple[Tensor, Tensor | None]:
        """q, k and v projections stacked: ``(weight (E + 2*Hkv*d, E), bias or None)``, so
        self-attention projects all three with one matmul. Without autograd (``no_grad``,
        ``inference_mode``) the stack is made once and kept until a projection's weights change
        (:func:`attnkit.runtime.prepared`); with autograd it is stacked anew, so gradients reach
        the weights and the inputs whatever requires them."""
        if torch.is_grad_enabled():
            return self._stack_qkv()
        sources = tuple(getattr(lin, n) for lin in (self.q_proj, self.k_proj, self.v_proj) for n in ("weight", "bias"))
        return prepared(self, "qkv", sources, self._stack_qkv)

    def split_qkv(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``qkv (..., E + 2*Hkv*d)`` (the output of the stacked projection) ->
        ``q (..., H, d)``, ``k``/``v`` ``(..., Hkv, d)`` (views)."""
        kv_dim = self.kv_heads * self.head_dim
        q, k, v = qkv.split([self.embed_dim, kv_dim, kv_dim], dim=-1)
        # (..., heads*d) -> (..., heads, d)
        return (q.unflatten(-1, (self.num_heads, self.head_dim)), k.unflatten(-1, (self.kv_heads, self.head_dim)),
                v.unflatten(-1, (self.kv_heads, self.head_dim)))

    def _project_self(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One matmul for q, k and v when all three come from the same tensor ``x (..., E)``
        -> ``q (..., H, d)``, ``k``/``v`` ``(..., Hkv, d)``."""
        w, b = self.qkv_weight()
        return self.split_qkv(linear(x, w, b, owner=self, key="qkv"))  # (..., E + 2*kv_dim) split

    def _out(self, o: Tensor) -> Tensor:
        """The output projection of ``o (..., E)``."""
        return linear(o, self.out_proj.weight, self.out_proj.bias, owner=self.out_proj)

    def project_kv(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """``key (B, S, kdim)``, ``value (B, S, vdim)`` -> ``k, v (B, Hkv, S, d)``."""
        return self._split(self.k_proj(key), self.kv_heads), self._split(self.v_proj(value), self.kv_heads)

    # -- forward -----------------------------------------------------------------------

    def _check(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query must be (B, L, {self.embed_dim}), got {tuple(query.shape)}")
        if key.dim() != 3 or key.shape[-1] != self.kdim:
            raise ValueError(f"key must be (B, S, {self.kdim}), got {tuple(key.shape)}")
        if value.dim() != 3 or value.shape[-1] != self.vdim:
            raise ValueError(f"value must be (B, S, {self.vdim}), got {tuple(value.shape)}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                f"batch/length mismatch: query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
            )

    def _attn_mask(self, attn_mask: Tensor | None, B: int, L: int, S: int) -> Tensor | None:
        """Bring ``attn_mask`` (L, S) | (B, L, S) | (B, H, L, S) to a 4-D broadcastable mask."""
        if attn_mask is None:
            return None
        shape = tuple(attn_mask.shape)
        if shape == (L, S):
            return attn_mask
        if shape == (B, L, S):
            return attn_mask.unsqueeze(1)  # (B, 1, L, S)
        if shape == (B, self.num_heads, L, S):
            return attn_mask
        raise ValueError(
            f"attn_mask must be (L, S)=({L}, {S}), (B, L, S)=({B}, {L}, {S}) or "
            f"(B, H, L, S)=({B}, {self.num_heads}, {L}, {S}); got {shape}"
        )

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        key_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
        cache: KVCache | None = None,
        packed: Packed | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query (B, L, E)`` to ``key (B, S, kdim)`` / ``value (B, S, vdim)``.

        ``key``/``value`` default to ``query`` (self-attention; ``value`` defaults to ``key``).
        ``key_mask (B, S)`` is True at real keys; ``attn_mask`` is bool (True = allowed) or float
        (added), shaped ``(L, S)``, ``(B, L, S)`` or ``(B, H, L, S)``. With ``cache``, see
        :class:`KVCache` (self-attention then also masks the future).

        Returns ``(out (B, L, E), weights (B, H, L, S) | None)``. A query row with nothing to
        attend to gets zero attention, so its output is ``out_proj.bias`` and its weights zero.

        ``packed`` (a :class:`attnkit.varlen.Packed`): self-attention over a packed stream,
        ``query (N, E)`` holding the sequences of ``packed`` back to back; every sequence attends
        only to itself, and no padding is computed. Returns ``(out (N, E), None)``.
        """
        if packed is not None:
            extras = {"key/value": key is not None or value is not None, "key_mask": key_mask is not None,
                      "attn_mask": attn_mask is not None, "need_weights": need_weights, "cache": cache is not None}
            bad = [name for name, given in extras.items() if given]
            if bad:
                raise ValueError(f"packed self-attention takes no {', '.join(bad)}")
            return self._forward_packed(query, packed, causal), None
        self_attn = key is None
        key = query if key is None else key
        value = key if value is None else value
        self._check(query, key, value)
        B, L, _ = query.shape
        if key_mask is not None and (key_mask.dim() != 2 or key_mask.shape != key.shape[:2]):
            raise ValueError(f"key_mask must be (B, S)={tuple(key.shape[:2])}, got {tuple(key_mask.shape)}")
        if key_mask is not None and key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask must be bool (True = real token), got {key_mask.dtype}")

        if self_attn and self.kdim == self.vdim == self.embed_dim:
            # (B, L, heads, d) -> (B, heads, L, d)
            q, k, v = (t.transpose(1, 2) for t in self._project_self(query))  # (B, H, L, d), (B, Hkv, L, d) x2
        else:
            q = self._split(self.q_proj(query), self.num_heads)  # (B, H, L, d)
            k = v = None
            if cache is None or self_attn or cache.keys is None:
                k, v = self.project_kv(key, value)  # (B, Hkv, S, d)

        if self.sequence_parallel is not None:
            return self._forward_sequence_parallel(
                q, k, v, self_attn=self_attn, key_mask=key_mask, attn_mask=attn_mask, causal=causal,
                need_weights=need_weights, cache=cache,
            )

        if self.rotary is not None and self_attn:
            offset = len(cache) if cache is not None else 0
            q, k = self.rotary(q, offset), self.rotary(k, offset)

        if cache is not None:
            if self_attn:
                k, v, key_mask = cache.append(k, v, key_mask)
                causal = True
            else:
                if cache.keys is None:
                    cache.store(k, v, key_mask)
                k, v = cache.keys, cache.values
                key_mask = cache.key_mask if key_mask is None else key_mask
        S = k.shape[-2]

        mask = merge_masks(
            None if key_mask is None else key_mask[:, None, None, :],  # (B, 1, 1, S)
            self._attn_mask(attn_mask, B, L, S),
        )
        res = scaled_dot_product_attention(
            q, k, v, mask=mask, causal=causal,
            dropout=self.dropout if self.training else 0.0, return_weights=need_weights,
        )
        out, weights = res if need_weights else (res, None)  # (B, H, L, d)
        out = out.transpose(1, 2).reshape(B, L, self.embed_dim)  # (B, L, E)
        return self._out(out), weights

    def _forward_packed(self, x: Tensor, packed: Packed, causal: bool) -> Tensor:
        """Self-attention of the packed stream ``x (N, E)`` -> ``(N, E)`` (see :meth:`forward`)."""
        unsupported = {
            "rotary positions": self.rotary is not None,
            "sequence_parallel": self.sequence_parallel is not None,
            f"attention dropout {self.dropout} in training": self.training and self.dropout > 0.0,
            f"kdim/vdim {self.kdim}/{self.vdim} != embed_dim": not self.kdim == self.vdim == self.embed_dim,
        }
        bad = [name for name, present in unsupported.items() if present]
        if bad:
            raise ValueError(f"packed attention does not support: {', '.join(bad)}")
        if x.dim() != 2 or x.shape != (packed.num_tokens, self.embed_dim):
            raise ValueError(
                f"packed attention needs x (N, {self.embed_dim}) with N = sum(lengths) = {packed.num_tokens}, "
                f"got {tuple(x.shape)}"
            )
        q, k, v = self._project_self(x)  # (N, H, d), (N, Hkv, d) x2
        o = varlen_attention(q, k, v, packed, causal=causal)  # (N, H, d)
        return self._out(o.flatten(1))  # (N, H, d) -> (N, E) -> out_proj

    def _forward_sequence_parallel(
        self, q: Tensor, k: Tensor, v: Tensor, *, self_attn: bool, key_mask: Tensor | None,
        attn_mask: Tensor | None, causal: bool, need_weights: bool, cache: KVCache | None,
    ) -> tuple[Tensor, None]:
        """Self-attention over a sequence sharded across ranks: ``q (B, H, n, d)``,
        ``k``/``v`` ``(B, Hkv, n, d)`` are this rank's shard; keys/values travel the ring."""
        unsupported = {
            "cross-attention (key/value given)": not self_attn, "key_mask": key_mask is not None,
            "attn_mask": attn_mask is not None, "need_weights": need_weights, "cache": cache is not None,
            f"attention dropout {self.dropout} in training": self.training and self.dropout > 0.0,
        }
        bad = [name for name, present in unsupported.items() if present]
        if bad:
            raise ValueError(f"sequence_parallel attention does not support: {', '.join(bad)}")
        B, _, n, _ = q.shape
        out = self.sequence_parallel.attend(q, k, v, causal=causal, rotary=self.rotary)  # (B, H, n, d)
        out = out.transpose(1, 2).reshape(B, n, self.embed_dim)  # (B, n, E)
        return self._out(out), None

    # -- interop with torch.nn.MultiheadAttention ------------------------------------------

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention, *, sequence_parallel: SequenceParallel | None = None
                   ) -> MultiHeadAttention:
        """Exact weight import from ``nn.MultiheadAttention`` (packed or separate in-proj,
        with or without bias, ``batch_first`` either way; ours is always batch first),
        optionally run sequence-parallel (as in the constructor).

        The parameter count is kept. ``add_bias_kv`` and ``add_zero_attn`` have no
        counterpart here and raise ``ValueError``.
        """
        if not isinstance(m, nn.MultiheadAttention):
            raise ValueError(f"from_torch expects nn.MultiheadAttention, got {type(m).__name__}")
        if m.bias_k is not None or m.add_zero_attn:
            raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
        bias = m.in_proj_bias is not None
        if bias != (m.out_proj.bias is not None):
            raise ValueError("in-projection and out-projection must both have or both lack a bias")
        new = cls(m.embed_dim, m.num_heads, kdim=m.kdim, vdim=m.vdim, bias=bias, dropout=m.dropout,
                  sequence_parallel=sequence_parallel)
        new = new.to(device=m.out_proj.weight.device, dtype=m.out_proj.weight.dtype)
        E = m.embed_dim
        with torch.no_grad():
            if m._qkv_same_embed_dim:
                wq, wk, wv = m.in_proj_weight.split(E)
            else:
                wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
            for lin, w in ((new.q_proj, wq), (new.k_proj, wk), (new.v_proj, wv)):
                lin.weight.copy_(w)
            if bias:
                for lin, b in zip((new.q_proj, new.k_proj, new.v_proj), m.in_proj_bias.split(E), strict=True):
                    lin.bias.copy_(b)
                new.out_proj.bias.copy_(m.out_proj.bias)
            new.out_proj.weight.copy_(m.out_proj.weight)
        return new.train(m.training)

    def to_torch(self, batch_first: bool = True) -> nn.MultiheadAttention:
        """Export to an equivalent ``nn.MultiheadAttention`` (not for grouped-query heads)."""
        if self.kv_heads != self.num_heads:
            raise ValueError(
                f"nn.MultiheadAttention has no grouped-query heads (kv_heads={self.kv_heads}, num_heads={self.num_heads})"
            )
        bias = self.q_proj.bias is not None
        m = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, dropout=self.dropout, bias=bias, kdim=self.kdim,
            vdim=self.vdim, batch_first=batch_first,
        ).to(device=self.q_proj.weight.device, dtype=self.q_proj.weight.dtype)
        with torch.no_grad():
            if m._qkv_same_embed_dim:
                m.in_proj_weight.copy_(torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            else:
                m.q_proj_weight.copy_(self.q_proj.weight)
                m.k_proj_weight.copy_(self.k_proj.weight)
                m.v_proj_weight.copy_(self.v_proj.weight)
            if bias:
                m.in_proj_bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
                m.out_proj.bias.copy_(self.out_proj.bias)
            m.out_proj.weight.copy_(self.out_proj.weight)
        return m.train(self.training)


# ------------------------------------------------------------------------------ RNN attention


class _AlignmentAttention(nn.Module):
    """Shared forward of the RNN attention modules: scores -> masked softmax -> context."""

    def scores(self, query: Tensor, keys: Tensor, keys_proj: Tensor | None = None) -> Tensor:
        """``query (B, dq)``, ``keys (B, S, dk)`` -> unnormalised scores ``(B, S)``."""
        raise NotImplementedError

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor | None = None,
        key_mask: Tensor | None = None,
        keys_proj: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``query (B, dq)``, ``keys (B, S, dk)``, ``values (B, S, dv)`` (default ``keys``),
        ``key_mask (B, S)`` True at real positions -> ``(context (B, dv), weights (B, S))``.

        ``keys_proj`` is an optional per-source precomputation (``AdditiveAttention.project_keys``)
        reused across decoder steps; the other score functions ignore it."""
        values = keys if values is None else values
        if query.dim() != 2 or keys.dim() != 3 or query.shape[0] != keys.shape[0]:
            raise ValueError(f"expected query (B, dq) and keys (B, S, dk); got {tuple(query.shape)} and {tuple(keys.shape)}")
        if values.shape[:2] != keys.shape[:2]:
            raise ValueError(f"values {tuple(values.shape)} must match keys {tuple(keys.shape)} in (B, S)")
        if key_mask is not None and key_mask.shape != keys.shape[:2]:
            raise ValueError(f"key_mask must be (B, S)={tuple(keys.shape[:2])}, got {tuple(key_mask.shape)}")
        weights = masked_softmax(self.scores(query, keys, keys_proj), key_mask)  # (B, S)
        context = (weights.unsqueeze(1) @ values).squeeze(1)  # (B, dv)
        return context, weights


class AdditiveAttention(_AlignmentAttention):
    """Bahdanau et al. (2015): ``score(q, k) = v^T tanh(W_q q + W_k k)``.

    ``W_k k`` does not depend on the decoder step: :meth:`project_keys` computes it once per
    source, and :meth:`scores` accepts the projected keys (``keys_proj=``) to skip the work.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w_query = nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_key = nn.Linear(key_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        """``keys (B, S, dk)`` -> ``W_k keys (B, S, hidden)``."""
        return self.w_key(keys)

    def scores(self, query: Tensor, keys: Tensor, keys_proj: Tensor | None = None) -> Tensor:
        keys_proj = self.project_keys(keys) if keys_proj is None else keys_proj
        # additive_scores works on (..., L, dq); one query per row -> L = 1
        return additive_scores(query.unsqueeze(1), keys_proj, self.w_query.weight, self.v.weight[0]).squeeze(1)


class GeneralAttention(_AlignmentAttention):
    """Luong et al. (2015) "general": ``score(q, k) = q^T W k`` (bilinear)."""

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(key_dim, query_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def scores(self, query: Tensor, keys: Tensor, keys_proj: Tensor | None = None) -> Tensor:
        return general_scores(query.unsqueeze(1), keys, self.weight).squeeze(1)


class DotAttention(_AlignmentAttention):
    """Luong "dot": ``score(q, k) = q · k`` (unscaled, as in the paper; ``scaled=True``
    divides by ``sqrt(d)``). Query and keys must have the same size."""

    def __init__(self, scaled: bool = False) -> None:
        super().__init__()
        self.scaled = scaled

    def extra_repr(self) -> str:
        return f"scaled={self.scaled}"

    def scores(self, query: Tensor, keys: Tensor, keys_proj: Tensor | None = None) -> Tensor:
        if query.shape[-1] != keys.shape[-1]:
            raise ValueError(f"DotAttention needs equal sizes: query {tuple(query.shape)}, keys {tuple(keys.shape)}")
        s = dot_scores(query.unsqueeze(1), keys).squeeze(1)  # (B, S)
        return s / math.sqrt(query.shape[-1]) if self.scaled else s
