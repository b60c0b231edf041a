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

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from attnkit.functional import _needs_graph, scaled_dot_product_attention
from attnkit.runtime import DISPATCH, BufferPool, Role, scratch

__all__ = [
    "Packed",
    "cu_seqlens_from_lengths",
    "lengths_from_cu_seqlens",
    "pack",
    "unpack",
    "positions",
    "sequence_ids",
    "equal_length_runs",
    "varlen_attention",
]

_EXPLICIT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


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


@dataclass(frozen=True, eq=False)
class Packed:
    """Sequences laid end to end as one stream of real tokens: what a model makes once, right
    after its embeddings, and what attention alone reads.

    ``lengths`` are the sequence lengths (``N = sum(lengths)`` tokens); ``cu_seqlens (B + 1,)``
    their cumulative offsets (sequence ``b`` is rows ``cu_seqlens[b]:cu_seqlens[b + 1]``);
    ``max_len`` the longest; ``index (N,)``, when the stream was taken from a padded batch
    ``(B, T)`` (:meth:`from_mask`), the flat position ``b * T + t`` each token came from, so
    :meth:`unpack` puts the tokens back where they were (left or right padding alike).

    Position-wise layers (embeddings, linears, norms, feed-forward) run on the stream
    ``(N, ...)`` as on any leading shape; only attention needs to know where sequences start.
    """

    lengths: tuple[int, ...]
    cu_seqlens: Tensor
    max_len: int
    index: Tensor | None = None
    padded_shape: tuple[int, int] | None = None

    @classmethod
    def from_lengths(cls, lengths: Tensor | Sequence[int], device: torch.device | str | None = None) -> Packed:
        """Sequences of ``lengths`` back to back (the stream already exists)."""
        lens = tuple(_lengths_list(lengths))
        return cls(lens, cu_seqlens_from_lengths(lens, device=device), max(lens, default=0))

    @classmethod
    def from_mask(cls, key_mask: Tensor) -> Packed:
        """The real tokens of a padded batch: ``key_mask (B, T)`` bool, True = real token."""
        if key_mask.dtype != torch.bool or key_mask.dim() != 2:
            raise ValueError(f"key_mask must be a bool (B, T) tensor, got {key_mask.dtype} {tuple(key_mask.shape)}")
        lengths = key_mask.sum(1)  # (B,)
        lens = tuple(lengths.tolist())
        cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        index = key_mask.flatten().nonzero().squeeze(1)  # (N,)
        return cls(lens, cu, max(lens, default=0), index, tuple(key_mask.shape))

    @property
    def num_tokens(self) -> int:
        return int(self.cu_seqlens[-1]) if self.lengths else 0

    @functools.cached_property
    def runs(self) -> list[tuple[int, int, int]]:
        """:func:`equal_length_runs` of the lengths, computed once."""
        return equal_length_runs(self.lengths)

    @functools.cached_property
    def positions(self) -> Tensor:
        """``(N,)`` position of each token inside its own sequence (0, 1, ... per sequence)."""
        return positions(self.cu_seqlens)

    def pack(self, x: Tensor) -> Tensor:
        """``x (B, T, ...)`` of the padded batch this was made from -> ``(N, ...)``."""
        if self.index is None or tuple(x.shape[:2]) != self.padded_shape:
            raise ValueError(f"Packed.pack needs x {self.padded_shape} + (...) (Packed.from_mask), got {tuple(x.shape)}")
        return x.flatten(0, 1).index_select(0, self.index)  # (N, ...)

    def unpack(self, x: Tensor) -> Tensor:
        """``x (N, ...)`` -> ``(B, T, ...)``, zeros at padding. Tokens go back to where
        :meth:`from_mask` took them from; made from lengths, they are left-aligned in
        ``T = max_len``."""
        if x.shape[0] != self.num_tokens:
            raise ValueError(f"Packed.unpack: the stream has {x.shape[0]} tokens, expected {self.num_tokens}")
        if self.index is None:
            return unpack(x, self.cu_seqlens.to(x.device), self.max_len)[0]
        B, T = self.padded_shape
        out = x.new_zeros(B * T, *x.shape[1:])
        return out.index_copy_(0, self.index, x).unflatten(0, (B, T))  # (B, T, ...)


def _row_view(t: Tensor) -> tuple[Tensor, int] | None:
    """``t (N, h, d)`` with unit stride in ``d`` as rows of ``d`` -> ``(rows (R, d), step)``: token
    ``n``'s head ``j`` is row ``n * step + j``. A view, no copy (the packed q/k/v of one fused
    projection are such views). None where the strides do not allow it."""
    N, h, d = t.shape
    if N == 0 or t.stride(2) != 1:
        return None
    row = t.stride(1) if h > 1 else t.stride(0)
    if row <= 0 or t.stride(0) % row:
        return None
    step = t.stride(0) // row
    return t.as_strided(((N - 1) * step + h, d), (row, 1), t.storage_offset()), step


@functools.lru_cache(maxsize=8)
def _run_major_plan(
    runs: tuple[tuple[int, int, int], ...], heads: int, groups: int, steps: tuple[int, int, int], device: torch.device
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Index tensors of :func:`_explicit_runs`, cached: every layer of a packed pass asks again.

    Run-major order is run r, then its sequence, head, position. Returns ``token (T,)`` (each
    token's place in the stream), ``dest (T * heads,)`` (the run-major row of each token's head,
    in (token, head) order) and, for q, k and v, the source row (``token * step + head``, a kv
    head for k and v) of each run-major row.
    """
    firsts, counts, lens = (torch.tensor(c, device=device) for c in zip(*runs, strict=True))
    sizes = counts * lens  # tokens per run
    starts = sizes.cumsum(0) - sizes
    T = int(sizes.sum())
    run_of = torch.repeat_interleave(torch.arange(len(runs), device=device), sizes)  # (T,)
    local = torch.arange(T, device=device) - starts[run_of]  # (T,) place inside the run
    L = lens[run_of]  # (T,)
    token = firsts[run_of] + local  # (T,)
    # run r starts at row starts[r] * heads; its sequence s, head h, position p is row
    # start + s * heads * L + h * L + p
    head = torch.arange(heads, device=device)
    dest = (starts[run_of] * heads + (local // L) * (heads * L) + local % L)[:, None] + head * L[:, None]  # (T, heads)
    dest = dest.flatten()
    sources = []
    for step, source_head in zip(steps, (head, head // groups, head // groups), strict=True):
        index = torch.empty(T * heads, dtype=torch.long, device=device)
        index[dest] = (token[:, None] * step + source_head).flatten()
        sources.append(index)
    return token, dest, tuple(sources)


# A row whose exp-sum falls below this after its matrix's largest score was subtracted is
# redone with its own maximum (its values would lose precision as float32 subnormals).
_TINY_SUM = 2.0**-100


def _score(s: Tensor, q: Tensor, k: Tensor, scale: float, future: Tensor | None) -> None:
    """``s (n, L, S) <- scale * q @ k^T`` for ``q (n, L, d)``, ``k (n, S, d)``; -inf where ``future``."""
    torch.baddbmm(s, q, k.transpose(1, 2), beta=0.0, alpha=scale, out=s)
    if future is not None:
        s.masked_fill_(future, float("-inf"))


def _softmax_rows_(s: Tensor, rescore: Callable[[], None]) -> None:
    """In-place softmax over the last dim of scores ``s (n, L, S)``, one whole-tensor op per step.

    torch.softmax works row by row and is several times slower on rows this short. Each
    ``(L, S)`` matrix (one sequence and head) subtracts its largest score instead of each row's
    (exp never overflows, and a sequence's result does not depend on the others in the block);
    where some row's exp-sum then underflows, ``rescore()`` writes the scores again and every
    row subtracts its own maximum.
    """
    n, L, S = s.shape
    s.sub_(s.view(n, L * S).amax(-1).view(n, 1, 1)).exp_()
    total = s.sum(-1, keepdim=True)  # (n, L, 1)
    if float(total.min()) < _TINY_SUM:
        rescore()
        s.sub_(s.amax(-1, keepdim=True)).exp_()
        total = s.sum(-1, keepdim=True)
    s.div_(total)


def _explicit_runs(
    q: Tensor, k: Tensor, v: Tensor, runs: list[tuple[int, int, int]], out: Tensor, *, causal: bool,
    scale: float, pool: BufferPool,
) -> bool:
    """Attention of the ``runs`` (``(first, count, L)``, see :func:`equal_length_runs`) of packed
    ``q (N, H, d)``, ``k/v (N, Hkv, d|dv)`` into ``out (N, H, dv)``, explicitly: one gather lays
    each of q, k and v out run by run as ``(count * H, L, d)`` blocks in float32 (float64 stays
    float64), each block is scored (``baddbmm``), normalised row by row and applied (``bmm``),
    and one gather puts the rows back. Two gathers per tensor replace the fused kernel's per-block
    set-up and the copies of strided blocks. Scratch memory comes from ``pool``. Returns False
    (nothing done) where the strides of q/k/v do not allow row views."""
    views = [_row_view(t) for t in (q, k, v)]
    if any(view is None for view in views):
        return False
    (q_rows, q_step), (k_rows, k_step), (v_rows, v_step) = views
    H, dv = q.shape[1], v.shape[2]
    dev = q.device
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    token, dest, sources = _run_major_plan(tuple(runs), H, H // k.shape[1], (q_step, k_step, v_step), dev)
    T = token.shape[0]
    blocks = []
    roles = ((Role.GATHERED_Q, Role.WIDE_Q), (Role.GATHERED_K, Role.WIDE_K), (Role.GATHERED_V, Role.WIDE_V))
    for (gathered_role, wide_role), rows, index in zip(roles, (q_rows, k_rows, v_rows), sources, strict=True):
        width = rows.shape[1]
        gathered = torch.index_select(rows, 0, index, out=pool.take(gathered_role, (T * H, width), rows.dtype, dev))
        if gathered.dtype != cdt:
            gathered = pool.take(wide_role, (T * H, width), cdt, dev).copy_(gathered)
        blocks.append(gathered)
    qz, kz, vz = blocks
    oz = pool.take(Role.RUN_OUTPUT, (T * H, dv), cdt, dev)  # run-major outputs
    limit = DISPATCH.explicit_max_scores_per_call
    chunk = {L: max(1, limit // (H * L * L)) for _, _, L in runs}  # sequences scored at once
    scores = pool.take(Role.SCORES, (max(min(c, chunk[L]) * H * L * L for _, c, L in runs),), cdt, dev)
    at = 0
    for _, count, L in runs:
        step = chunk[L]
        future = torch.ones(L, L, dtype=torch.bool, device=dev).triu_(1) if causal else None
        for s0 in range(0, count, step):
            n = min(step, count - s0) * H  # (n, L, d) blocks of this chunk
            rows = slice(at, at + n * L)
            qb, kb, vb, ob = (t[rows].view(n, L, -1) for t in (qz, kz, vz, oz))
            s = scores[: n * L * L].view(n, L, L)  # (n, L, L)
            score = functools.partial(_score, s, qb, kb, scale, future)
            score()
            _softmax_rows_(s, score)
            torch.bmm(s, vb, out=ob)
            at += n * L
    back = pool.take(Role.TOKEN_OUTPUT, (T * H, dv), cdt, dev)
    torch.index_select(oz, 0, dest, out=back)  # (T*H, dv) in (token, head) order
    back = back.view(T, H, dv)
    if T == out.shape[0]:  # the runs cover the stream in order
        out.copy_(back)
    else:
        out.index_copy_(0, token, back.to(out.dtype))
    return True


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lengths: Packed | Tensor | Sequence[int],
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
        lengths: a :class:`Packed`, or the ``(B,)`` sequence lengths summing to ``N`` (a list
            avoids a device sync).
        causal: each token attends only to itself and the tokens before it in its sequence.
        scale: score factor, default ``1/sqrt(d)``.
        out: optional ``(N, H, dv)`` tensor to write the result into (no autograd through it).

    Returns:
        ``(N, H, dv)`` (``out`` when given). In CPU inference (no autograd), runs of sequences
        up to ``DISPATCH.explicit_max_len`` tokens (:mod:`attnkit.runtime`) take the explicit
        path of :func:`_explicit_runs` (float32 scores and softmax for bfloat16/float16 inputs,
        scratch from this thread's :func:`attnkit.runtime.scratch` pool). Every other run is one
        fused ``F.scaled_dot_product_attention`` call on a dense ``(count, H, L, d)`` view; sort
        sequences by length for the fewest calls.
    """
    packed = lengths if isinstance(lengths, Packed) else None
    lens = list(packed.lengths) if packed is not None else _lengths_list(lengths)
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
    runs = packed.runs if packed is not None else equal_length_runs(lens)
    if q.device.type == "cpu" and not _needs_graph(q, k, v) and q.dtype in _EXPLICIT_DTYPES:
        short = [run for run in runs if run[2] <= DISPATCH.explicit_max_len]
        if short and _explicit_runs(q, k, v, short, out, causal=causal, pool=scratch(),
                                    scale=1.0 / math.sqrt(d) if scale is None else float(scale)):
            runs = [run for run in runs if run[2] > DISPATCH.explicit_max_len]
    for first, count, L in runs:
        rows = slice(first, first + count * L)
        # (count*L, H, d) -> (count, L, H, d) -> (count, H, L, d): views, no copy
        qb = q[rows].unflatten(0, (count, L)).transpose(1, 2)
        kb = k[rows].unflatten(0, (count, L)).transpose(1, 2)
        vb = v[rows].unflatten(0, (count, L)).transpose(1, 2)
        ob = scaled_dot_product_attention(qb, kb, vb, causal=causal, scale=scale)  # (count, H, L, dv)
        out[rows].view(count, L, H, dv).copy_(ob.transpose(1, 2))
    return out
