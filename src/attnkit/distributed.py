"""Ring attention over ``torch.distributed``: attention over a sequence split across ranks.

A sequence too long for one worker is cut into ``P`` shards, one per rank of a process group.
Each rank keeps its block of queries; key/value blocks travel around the ring (rank ``r`` sends
to ``r + 1`` and receives from ``r - 1``), and after ``P`` steps every query block has met every
key/value block. Each step's partial result is merged with the online-softmax rescaling of
FlashAttention (Liu et al., 2023, *Ring Attention with Blockwise Transformers*)::

    lse = logaddexp(lse_a, lse_b)
    out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)

so no rank ever holds more than one ``(N/P) x (N/P)`` block of scores, and with the fused kernel
not even that. While a block is being computed the next key/value block is already in flight
(``isend``/``irecv``), so communication hides behind compute when the blocks are large enough.

Shapes: ``q (B, H, n, d)``, ``k``/``v`` ``(B, Hkv, n, d)`` with ``n = N / P`` this rank's shard
(``Hkv`` divides ``H``: grouped-query heads, query head ``h`` uses kv head ``h // (H // Hkv)``).

Layouts (how the sequence of length ``N`` is dealt to ``P`` ranks):

* ``"contiguous"`` (default): rank ``r`` holds positions ``[r*N/P, (r+1)*N/P)``. With
  ``causal=True`` the blocks entirely in the future are skipped, so rank ``P-1`` does ``P`` block
  products and rank 0 only one: correct but unbalanced.
* ``"zigzag"``: the sequence is cut into ``2P`` equal chunks and rank ``r`` holds chunks ``r`` and
  ``2P-1-r``, in that order. Under a causal mask every rank then does the same amount of work
  (one diagonal block plus ``P-1`` half blocks).

Gradients: :func:`ring_attention` is a ``torch.autograd.Function``. The backward pass is a second
ring: ``dq`` stays local, while the ``dk``/``dv`` accumulators travel with their key/value block
and arrive back at their owner after ``P`` hops. Each block's backward uses the *global* output and
log-sum-exp saved by the forward, so nothing is recomputed except the block products themselves.

Process groups: :func:`init_distributed` joins the group ``torchrun`` describes, and
:func:`peer_guard` turns a collective that failed because another rank died or hung into a
:class:`PeerLostError` that says so (training and embedding both use them).

Blocks are computed by :func:`attnkit.functional.attention_and_lse` and its backward, which
call PyTorch's fused CPU flash-attention op (it returns the log-sum-exp the merge needs) and run
the same formula explicitly where that op does not apply (which materialises one block of scores).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from attnkit.functional import attention_and_lse, attention_and_lse_backward

__all__ = [
    "LAYOUTS", "PeerLostError", "SequenceParallel", "check_layout", "chunk_offsets", "default_backend", "init_distributed", "peer_guard",
    "ring_attention", "shard", "unshard",
]

LAYOUTS = ("contiguous", "zigzag")

# tags keep the four streams apart when two exchanges with the same peer are in flight (gloo)
_TAG_KV, _TAG_DKV = 0, 2


# ------------------------------------------------------------------------- process group


def _group_info(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """``(world size, rank)`` of ``group``; ``(1, 0)`` when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("a process group was given but torch.distributed is not initialised")
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def check_layout(layout: str, what: str = "layout") -> None:
    """Raise ``ValueError`` (naming ``what``) unless ``layout`` is one of :data:`LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"{what} must be one of {LAYOUTS}, got {layout!r}")


# ------------------------------------------------------------------------- shard / unshard


def chunk_offsets(
    shard_len: int, *, group: dist.ProcessGroup | None = None, layout: str = "contiguous", rank: int | None = None
) -> list[tuple[int, int]]:
    """Where the pieces of a rank's shard of ``shard_len`` positions sit in the full sequence.

    Returns ``(global start, length)`` per piece, in the order the shard holds them:
    ``"contiguous"`` gives rank ``r`` one piece ``(r * n, n)``; ``"zigzag"`` gives two,
    chunks ``r`` and ``2P-1-r`` of length ``n/2``. ``rank`` defaults to this rank of ``group``.
    """
    check_layout(layout)
    P, me = _group_info(group)
    r = me if rank is None else rank
    if not 0 <= r < P:
        raise ValueError(f"rank {r} is outside a group of {P}")
    if layout == "contiguous":
        return [(r * shard_len, shard_len)]
    if shard_len % 2:
        raise ValueError(f"a zigzag shard holds two equal chunks; got odd shard length {shard_len}")
    c = shard_len // 2
    return [(r * c, c), ((2 * P - 1 - r) * c, c)]


def shard(
    x: Tensor, *, group: dist.ProcessGroup | None = None, layout: str = "contiguous", dim: int = -2
) -> Tensor:
    """This rank's shard of the full tensor ``x`` along ``dim`` (default -2, the sequence of
    ``(B, H, N, d)``): ``N/P`` positions, contiguous or zigzag (chunks ``r`` and ``2P-1-r``).

    ``N`` must be divisible by ``P`` (``2P`` for zigzag). Differentiable (a slice of ``x``).
    """
    check_layout(layout)
    P, _ = _group_info(group)
    parts = P if layout == "contiguous" else 2 * P
    N = x.shape[dim]
    if N % parts:
        raise ValueError(f"cannot shard length {N} (dim {dim}) into {parts} equal chunks ({layout}, P={P})")
    pieces = [x.narrow(dim, start, n) for start, n in chunk_offsets(N // P, group=group, layout=layout)]
    return pieces[0].contiguous() if len(pieces) == 1 else torch.cat(pieces, dim=dim)


class _Unshard(torch.autograd.Function):
    """All-gather the shards into the full tensor; backward hands each rank its own slice of
    the gradient (every rank is assumed to compute the same loss from the gathered tensor)."""

    @staticmethod
    def forward(ctx, x: Tensor, group, layout: str, dim: int) -> Tensor:  # noqa: D102
        ctx.group, ctx.layout, ctx.dim = group, layout, dim
        P, _ = _group_info(group)
        if P == 1:
            return x.clone()
        pieces = [torch.empty_like(x) for _ in range(P)]
        dist.all_gather(pieces, x.contiguous(), group=group)
        n = x.shape[dim]
        placed = []  # (global start, chunk) of every piece of every rank's shard
        for rank, piece in enumerate(pieces):
            offsets = chunk_offsets(n, group=group, layout=layout, rank=rank)
            chunks = piece.split([length for _, length in offsets], dim=dim)
            placed += [(start, c) for (start, _), c in zip(offsets, chunks, strict=True)]
        return torch.cat([c for _, c in sorted(placed, key=lambda sc: sc[0])], dim=dim)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return shard(grad, group=ctx.group, layout=ctx.layout, dim=ctx.dim), None, None, None


def unshard(
    x: Tensor, *, group: dist.ProcessGroup | None = None, layout: str = "contiguous", dim: int = -2
) -> Tensor:
    """Gather every rank's shard (all-gather) back into the full tensor along ``dim``, undoing
    :func:`shard` in the same ``layout``. All ranks get the full tensor.

    Differentiable: the backward pass returns this rank's slice of the incoming gradient, which
    is the right gradient when every rank computes the same loss from the gathered tensor.
    """
    check_layout(layout)
    if layout == "zigzag" and x.shape[dim] % 2:
        raise ValueError(f"a zigzag shard holds two equal chunks; got odd length {x.shape[dim]} (dim {dim})")
    return _Unshard.apply(x, group, layout, dim)


# ------------------------------------------------------------------------- the ring


@dataclass
class _Pending:
    """Tensors in flight: wait() returns the received ones (the sent ones are kept alive)."""

    reqs: list
    recv: list[Tensor]
    sent: list[Tensor] = field(default_factory=list)

    def wait(self) -> list[Tensor]:
        for req in self.reqs:
            req.wait()
        return self.recv


class _Ring:
    """Neighbours of this rank in ``group``: send to ``rank + 1``, receive from ``rank - 1``."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group
        self.size, self.rank = _group_info(group)
        self.next = self._global((self.rank + 1) % self.size)
        self.prev = self._global((self.rank - 1) % self.size)

    def _global(self, group_rank: int) -> int:
        if self.group is None or self.group is dist.group.WORLD:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def exchange(self, tensors: list[Tensor], tag: int) -> _Pending:
        """Start sending ``tensors`` to the next rank and receiving their peers from the previous."""
        sent = [t.contiguous() for t in tensors]
        recv = [torch.empty_like(t) for t in sent]
        ops = []
        for i, (s, r) in enumerate(zip(sent, recv, strict=True)):
            ops.append(dist.P2POp(dist.isend, s, self.next, self.group, tag + i))
            ops.append(dist.P2POp(dist.irecv, r, self.prev, self.group, tag + i))
        return _Pending(dist.batch_isend_irecv(ops), recv, sent)


def _block_plan(rank: int, src: int, P: int, n: int, causal: bool, layout: str):
    """Which of this rank's query rows attend to which rows of the kv block that rank ``src``
    holds: ``(q slice, kv slice, causal)``, or None when the block is entirely in the future."""
    every = slice(None)
    if not causal:
        return every, every, False
    if src == rank:  # the diagonal: both layouts keep positions increasing inside a shard
        return every, every, True
    if layout == "contiguous":
        return (every, every, False) if src < rank else None
    # zigzag: this rank holds chunks (rank, 2P-1-rank), src holds (src, 2P-1-src)
    half = n // 2
    if src < rank:  # both our chunks come after chunk src, both come before chunk 2P-1-src
        return every, slice(0, half), False
    return slice(half, None), every, False  # only our late chunk 2P-1-rank sees src's chunks


def _merge(out: Tensor, lse: Tensor, o: Tensor, l_blk: Tensor) -> None:
    """Fold one block's ``(o (B, H, rows, dv), l_blk (B, H, rows))`` into the running
    ``out``/``lse`` views, in place (online softmax)::

        lse' = logaddexp(lse, l_blk)
        out' = out * exp(lse - lse') + o * exp(l_blk - lse')
             = out - sigmoid(l_blk - lse) * (out - o)
    """
    w = torch.sigmoid(l_blk - lse).unsqueeze(-1)  # (B, H, rows, 1); lse = -inf -> 1
    out.sub_(w * (out - o.to(out.dtype)))
    lse.copy_(torch.logaddexp(lse, l_blk))


def _ring_forward(q, k, v, group, causal, scale, layout) -> tuple[Tensor, Tensor]:
    ring = _Ring(group)
    P, r, n = ring.size, ring.rank, q.shape[-2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=acc, device=q.device)  # (B, H, n, dv)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)  # (B, H, n)
    k_cur, v_cur = k, v
    for step in range(P):
        src = (r - step) % P
        pending = ring.exchange([k_cur, v_cur], _TAG_KV) if step + 1 < P else None
        plan = _block_plan(r, src, P, n, causal, layout)
        if plan is not None:
            qs, ks, blk_causal = plan
            o, l_blk = attention_and_lse(q[..., qs, :], k_cur[..., ks, :], v_cur[..., ks, :], causal=blk_causal,
                                         scale=scale)
            _merge(out[..., qs, :], lse[..., qs], o, l_blk)
        if pending is not None:
            k_cur, v_cur = pending.wait()
    return out.to(q.dtype), lse


def _ring_backward(dout, q, k, v, out, lse, group, causal, scale, layout) -> tuple[Tensor, Tensor, Tensor]:
    ring = _Ring(group)
    P, r, n = ring.size, ring.rank, q.shape[-2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    k_cur, v_cur = k, v
    dkv_pending = None  # accumulated (dk, dv) of the block we are about to see, coming from prev
    for step in range(P):
        src = (r - step) % P
        kv_pending = ring.exchange([k_cur, v_cur], _TAG_KV) if step + 1 < P else None
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)  # (B, Hkv, n, d)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        plan = _block_plan(r, src, P, n, causal, layout)
        if plan is not None:
            qs, ks, blk_causal = plan
            dq_b, dk_b, dv_b = attention_and_lse_backward(
                dout[..., qs, :], q[..., qs, :], k_cur[..., ks, :], v_cur[..., ks, :],
                out[..., qs, :], lse[..., qs], causal=blk_causal, scale=scale,
            )
            dq[..., qs, :] += dq_b
            dk[..., ks, :] += dk_b
            dv[..., ks, :] += dv_b
        if dkv_pending is not None:  # what the ranks before us accumulated for this block
            dk_in, dv_in = dkv_pending.wait()
            dk += dk_in
            dv += dv_in
        dkv_pending = ring.exchange([dk, dv], _TAG_DKV) if P > 1 else None
        if kv_pending is not None:
            k_cur, v_cur = kv_pending.wait()
    if dkv_pending is not None:  # after P hops our own block's gradients are back home
        dk, dv = dkv_pending.wait()
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, causal, scale, layout):  # noqa: D102
        out, lse = _ring_forward(q, k, v, group, causal, scale, layout)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.causal, ctx.scale, ctx.layout = group, causal, scale, layout
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _ring_backward(
            dout.contiguous(), q, k, v, out, lse, ctx.group, ctx.causal, ctx.scale, ctx.layout
        )
        return dq, dk, dv, None, None, None, None


def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    causal: bool = False,
    scale: float | None = None,
    layout: str = "contiguous",
) -> Tensor:
    """Attention over a sequence sharded across the ranks of ``group``.

    Args:
        q: this rank's query shard ``(B, H, n, d)``, ``n = N / P``.
        k: this rank's key shard ``(B, Hkv, n, d)``; ``Hkv`` divides ``H``.
        v: this rank's value shard ``(B, Hkv, n, dv)``.
        group: process group (default: the world); without torch.distributed this is plain
            attention on one rank.
        causal: position ``i`` attends to positions ``<= i`` of the *whole* sequence.
        scale: score factor, default ``1/sqrt(d)``.
        layout: how the shards were cut, ``"contiguous"`` or ``"zigzag"`` (see :func:`shard`).

    Returns:
        this rank's output shard ``(B, H, n, dv)``, equal to the matching rows of full attention
        over the whole sequence. No masks other than ``causal``: every shard is all real tokens.
        Differentiable (ring backward pass). All ranks must call it with the same shapes.
    """
    check_layout(layout)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"ring_attention expects {name} of shape (B, H, n, d), got {tuple(t.shape)}")
        if not torch.is_floating_point(t):
            raise ValueError(f"ring_attention expects floating-point {name}, got {t.dtype}")
    if not (q.shape[0] == k.shape[0] == v.shape[0] and q.shape[2] == k.shape[2] == v.shape[2]):
        raise ValueError(
            f"q, k, v shards must share batch and length: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[1] != v.shape[1] or q.shape[1] % k.shape[1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"heads/dims do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
            "(k and v need the same heads, dividing q's, and k needs q's head dim)"
        )
    if layout == "zigzag" and q.shape[2] % 2:
        raise ValueError(f"a zigzag shard holds two equal chunks; got odd shard length {q.shape[2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _RingAttention.apply(q, k, v, group, causal, scale, layout)


# ----------------------------------------------------------------------------- sequence parallelism


@dataclass(frozen=True)
class SequenceParallel:
    """How a self-attention layer attends over a sequence sharded across ranks: ring attention
    over ``group`` (None: the default process group), the sequence cut in ``layout`` (see
    :func:`shard`). Give it to a layer at construction
    (``MultiHeadAttention(..., sequence_parallel=SequenceParallel(layout="zigzag"))``); the
    layer's input is then this rank's shard ``(B, N/P, E)``."""

    group: Any = None
    layout: str = "contiguous"

    def __post_init__(self) -> None:
        check_layout(self.layout, "SequenceParallel.layout")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None,
               rotary: Callable[[Tensor, int], Tensor] | None = None) -> Tensor:
        """``q (B, H, n, d)``, ``k``/``v`` ``(B, Hkv, n, d)``: this rank's shard -> ``(B, H, n, d)``.
        ``rotary(x, offset)`` (a :class:`attnkit.positions.RotaryEmbedding`) rotates queries and
        keys by their *global* positions, piece by piece (:func:`chunk_offsets`)."""
        if rotary is not None:
            offsets = chunk_offsets(q.shape[-2], group=self.group, layout=self.layout)
            q, k = (_rotate_pieces(t, offsets, rotary) for t in (q, k))
        return ring_attention(q, k, v, group=self.group, causal=causal, scale=scale, layout=self.layout)


def _rotate_pieces(x: Tensor, offsets: list[tuple[int, int]], rotary: Callable[[Tensor, int], Tensor]) -> Tensor:
    """Rotate each piece of ``x (B, H, n, d)`` by its global position: ``offsets`` lists
    ``(global start, length)`` of the pieces in order."""
    pieces, at = [], 0
    for start, length in offsets:
        pieces.append(rotary(x[..., at : at + length, :], start))
        at += length
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)


# ----------------------------------------------------------------------------- process groups


class PeerLostError(RuntimeError):
    """A collective failed on this rank because another rank died, hung past the process-group
    timeout, or lost its network. The message says which step and where the last checkpoint
    is; ``checkpoint`` is that folder (None when training wrote none)."""

    def __init__(self, message: str, checkpoint: str | Path | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def default_backend() -> str:
    """``"nccl"`` when CUDA is available (one GPU per process), ``"gloo"`` on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def init_distributed(*, backend: str | None = None, timeout_s: float | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), once.

    The backend is :func:`default_backend` unless given (nccl also selects GPU ``LOCAL_RANK``).
    ``timeout_s`` (default ``$ATTNKIT_DIST_TIMEOUT`` or 300) bounds how long a rank waits for a
    hung peer before failing. The group is destroyed at interpreter exit. Returns True when this
    process is one of several ranks (an already initialised group counts), False for a plain run.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return False
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout_s = float(os.environ.get("ATTNKIT_DIST_TIMEOUT", "300")) if timeout_s is None else timeout_s
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(_destroy)
    return True


def _is_peer_failure(exc: BaseException) -> bool:
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return any(m in text for m in ("gloo", "nccl", "connection", "peer", "timed out", "timeout", "broken pipe"))


@contextlib.contextmanager
def peer_guard(rank: int, world_size: int, step: int, checkpoint: str | Path | None = None) -> Iterator[None]:
    """Turn a failed collective inside the block into a :class:`PeerLostError` that names this
    rank, the step and the last checkpoint. A no-op for a single process."""
    if world_size <= 1:
        yield
        return
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, PeerLostError) or not _is_peer_failure(exc):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        where = (f"the last checkpoint in {checkpoint} is intact and resumes on any number of processes"
                 if checkpoint is not None else "no checkpoint directory was set")
        raise PeerLostError(
            f"rank {rank} of {world_size}: lost contact with another rank during step {step} "
            f"(a process died, hung past the timeout, or lost its network: {type(exc).__name__}: {first}); {where}",
            checkpoint,
        ) from exc
