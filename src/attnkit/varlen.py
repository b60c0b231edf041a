"""Variable-length (packed) batches: the real tokens of a padded batch as one stream.

A padded batch ``x (B, T, ...)`` with ``key_mask (B, T)`` (True = real token) holds
``N = key_mask.sum()`` real tokens. :func:`pack` lays them end to end as ``(N, ...)`` and
returns ``cu_seqlens (B + 1,)``, the cumulative offsets: sequence ``b`` is the rows
``cu_seqlens[b]:cu_seqlens[b + 1]`` of the stream. :func:`unpack` is the inverse (padding is
filled with zeros, real tokens left-aligned).

Position-wise layers (embeddings, linears, LayerNorm, feed-forward) run on the stream as it
is, so they never touch a padded position. Attention is the one layer that mixes tokens:
:func:`varlen_attention` runs it on each *run of consecutive sequences of equal length* as one
dense ``(count, H, L, d)`` batch with no mask, through the fused
``F.scaled_dot_product_attention``. Sort the sequences by length before packing and there is
one call per distinct length, and no padded score is ever computed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from attnkit.functional import scaled_dot_product_attention

__all__ = [
    "cu_seqlens_from_lengths",
    "lengths_from_cu_seqlens",
    "pack",
    "unpack",
    "positions",
    "sequence_ids",
    "equal_length_runs",
    "varlen_attention",
]

# A run whose attention costs fewer multiply-adds than this runs on one thread: splitting a
# tiny kernel across threads costs more in synchronisation than it saves (measured: ~1.8x
# faster embedding of short texts on a busy 2-core machine, ~5% slower at worst when idle).
SERIAL_WORK = 1 << 22
# Runs of sequences this short use the explicit path (scores -> softmax -> weighted sum) instead
# of the fused kernel, whose per-block overhead dominates tiny sequences: forward over 1,024
# tokens of 12 heads x 32 dims, 2 threads, it took 5.3 ms at length 8 and 3.5 ms at 24 where
# the explicit path took 1.5 ms (benchmarked in inference; above ~32 the fused kernel wins).
# float32 only: in bfloat16 the explicit path converts q, k, v and the result to float32, and the
# fused kernel ties or wins at every length (embedding ~10% faster, measured on AMX).
EXPLICIT_MAX_LEN = 24


def _lengths_list(lengths: Tensor | Sequence[int]) -> list[int]:
    out = lengths.tolist() if isinstance(lengths, Tensor) else [int(n) for n in lengths]
    if any(n < 0 for n in out):
        raise ValueError(f"sequence lengths must be non-negative, got {out}")
    return out


def cu_seqlens_from_lengths(lengths: Tensor | Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """``lengths (B,)`` -> ``cu_seqlens (B + 1,)`` int64: ``[0, l0, l0 + l1, ...]``."""
    lens = torch.tensor(_lengths_list(lengths), dtype=torch.long, device=device)
    return torch.cat([lens.new_zeros(1), lens.cumsum(0)])


def lengths_from_cu_seqlens(cu_seqlens: Tensor) -> Tensor:
    """``cu_seqlens (B + 1,)`` -> ``lengths (B,)``; checks that the offsets never decrease."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or int(cu_seqlens[0]) != 0:
        raise ValueError(f"cu_seqlens must be 1-D and start at 0, got {cu_seqlens.tolist()}")
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"cu_seqlens must be non-decreasing, got {cu_seqlens.tolist()}")
    return lengths


def pack(x: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the real tokens of a padded batch.

    ``x (B, T, ...)``, ``key_mask (B, T)`` bool (True = real token) ->
    ``(packed (N, ...), cu_seqlens (B + 1,) int64)`` with ``N = key_mask.sum()``. Tokens keep
    their order within a row; rows follow each other in batch order.
    """
    if key_mask.dtype != torch.bool or key_mask.dim() != 2 or x.shape[:2] != key_mask.shape:
        raise ValueError(
            f"pack needs x (B, T, ...) and a bool key_mask (B, T); got x {tuple(x.shape)}, "
            f"key_mask {tuple(key_mask.shape)} {key_mask.dtype}"
        )
    cu_seqlens = torch.cat([key_mask.new_zeros(1, dtype=torch.long), key_mask.sum(1).cumsum(0)])
    return x[key_mask], cu_seqlens  # (N, ...)


def unpack(packed: Tensor, cu_seqlens: Tensor, max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`pack`: ``packed (N, ...)`` -> ``(padded (B, T, ...), key_mask (B, T))``.

    Real tokens are left-aligned; padded positions are zero. ``T`` is the longest sequence,
    or ``max_len`` when given (it may not be shorter).
    """
    lengths = lengths_from_cu_seqlens(cu_seqlens).to(packed.device)  # (B,)
    if int(cu_seqlens[-1]) != packed.shape[0]:
        raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])} but the stream has {packed.shape[0]} tokens")
    longest = int(lengths.max()) if lengths.numel() else 0
    T = longest if max_len is None else max_len
    if T < longest:
        raise ValueError(f"unpack: max_len={max_len} is shorter than the longest sequence {longest}")
    key_mask = torch.arange(T, device=packed.device) < lengths[:, None]  # (B, T)
    padded = packed.new_zeros(lengths.numel(), T, *packed.shape[1:])  # (B, T, ...)
    padded[key_mask] = packed
    return padded, key_mask


def sequence_ids(cu_seqlens: Tensor) -> Tensor:
    """``(N,)`` index of the sequence each packed token belongs to."""
    lengths = lengths_from_cu_seqlens(cu_seqlens)
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)


def positions(cu_seqlens: Tensor) -> Tensor:
    """``(N,)`` position of each packed token inside its own sequence (0, 1, ... per sequence)."""
    lengths = lengths_from_cu_seqlens(cu_seqlens)
    n = int(cu_seqlens[-1])
    starts = torch.repeat_interleave(cu_seqlens[:-1], lengths)  # (N,)
    return torch.arange(n, device=cu_seqlens.device) - starts


def equal_length_runs(lengths: Tensor | Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive sequences with the same length.

    Returns ``(first_token, count, length)`` per run, skipping empty sequences: tokens
    ``first_token : first_token + count * length`` of the stream form a dense
    ``(count, length)`` block.
    """
    runs: list[tuple[int, int, int]] = []
    start = 0
    for n in _lengths_list(lengths):
        if n and runs and runs[-1][2] == n and runs[-1][0] + runs[-1][1] * n == start:
            first, count, _ = runs[-1]
            runs[-1] = (first, count + 1, n)
        elif n:
            runs.append((start, 1, n))
        start += n
    return runs


@contextmanager
def _one_thread(enabled: bool = True) -> Iterator[None]:
    """Run the enclosed torch CPU kernels on one intra-op thread, then restore the count."""
    n = torch.get_num_threads()
    if n == 1 or not enabled:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lengths: Tensor | Sequence[int],
    *,
    causal: bool = False,
    scale: float | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Attention inside each packed sequence, never across them and never on padding.

    Args:
        q: packed queries ``(N, H, d)``.
        k: packed keys ``(N, Hkv, d)`` (``Hkv`` divides ``H``: grouped-query heads).
        v: packed values ``(N, Hkv, dv)``.
        lengths: ``(B,)`` sequence lengths summing to ``N`` (a list avoids a device sync).
        causal: each token attends only to itself and the tokens before it in its sequence.
        scale: score factor, default ``1/sqrt(d)``.
        out: optional ``(N, H, dv)`` tensor to write the result into (a reused buffer; no
            autograd through it).

    Returns:
        ``(N, H, dv)`` (``out`` when given). Each run of equal-length sequences is one fused
        ``F.scaled_dot_product_attention`` call on a dense ``(count, H, L, d)`` view; sort
        sequences by length for the fewest calls. float32 runs of length <= ``EXPLICIT_MAX_LEN``
        use the explicit score/softmax path, which is faster there. On CPU, runs smaller than
        ``SERIAL_WORK`` multiply-adds run on one thread (their kernels are too small to split).
    """
    lens = _lengths_list(lengths)
    N = sum(lens)
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3 or not (q.shape[0] == k.shape[0] == v.shape[0] == N):
        raise ValueError(
            f"varlen_attention needs q (N, H, d), k (N, Hkv, d), v (N, Hkv, dv) with N = sum(lengths) = {N}; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    H, d, dv = q.shape[1], q.shape[2], v.shape[2]
    if out is None:
        out = q.new_empty(N, H, dv)  # (N, H, dv)
    elif out.shape != (N, H, dv):
        raise ValueError(f"varlen_attention: out must have shape {(N, H, dv)}, got {tuple(out.shape)}")
    small: list[tuple[int, int, int]] = []
    large: list[tuple[int, int, int]] = []
    for run in equal_length_runs(lens):  # work = count * L^2 * H * (d + dv) multiply-adds
        (small if run[1] * run[2] * run[2] * H * (d + dv) < SERIAL_WORK else large).append(run)

    def attend(first: int, count: int, L: int) -> None:
        rows = slice(first, first + count * L)
        # (count*L, H, d) -> (count, L, H, d) -> (count, H, L, d): views, no copy
        qb = q[rows].unflatten(0, (count, L)).transpose(1, 2)
        kb = k[rows].unflatten(0, (count, L)).transpose(1, 2)
        vb = v[rows].unflatten(0, (count, L)).transpose(1, 2)
        if L <= EXPLICIT_MAX_LEN and q.dtype == torch.float32:  # (count, H, L, dv); its weights are dropped
            ob = scaled_dot_product_attention(qb, kb, vb, causal=causal, scale=scale, return_weights=True)[0]
        else:
            ob = scaled_dot_product_attention(qb, kb, vb, causal=causal, scale=scale)  # (count, H, L, dv)
        out[rows].view(count, L, H, dv).copy_(ob.transpose(1, 2))

    for run in large:
        attend(*run)
    if small:
        with _one_thread(enabled=q.device.type == "cpu"):
            for run in small:
                attend(*run)
    return out
