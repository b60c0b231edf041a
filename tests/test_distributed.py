"""Ring attention on real process groups.

Every multi-process case spawns its own CPU processes (gloo on 127.0.0.1, a free port, one
thread each). Spawning is slow, so the cases are grouped: one spawn checks everything about
ring attention on 2 ranks, one on 4 ranks. References are PyTorch's own
``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` on the whole sequence.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from spawn_support import spawn
from torch import nn

import attnkit as ak
import attnkit.distributed as akd
import attnkit.functional as akf
from attnkit.distributed import SequenceParallel

TOL = dict(atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- ring workers


def _check_ring(rank: int, world: int, *, layout: str, causal: bool, kv_heads: int = 4, N: int = 32) -> None:
    """One ring attention case against F.scaled_dot_product_attention on the full sequence."""
    g = torch.Generator().manual_seed(1234)  # same full tensors on every rank
    B, H, d = 2, 4, 16
    q = torch.randn(B, H, N, d, generator=g, requires_grad=True)  # (B, H, N, d)
    k = torch.randn(B, kv_heads, N, d, generator=g, requires_grad=True)
    v = torch.randn(B, kv_heads, N, d, generator=g, requires_grad=True)
    w = torch.randn(B, H, N, d, generator=g)  # loss weights -> a non-trivial dout
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=kv_heads != H)
    (ref * w).sum().backward()

    qs, ks, vs = (akd.shard(t.detach(), layout=layout).requires_grad_() for t in (q, k, v))
    out = akd.ring_attention(qs, ks, vs, causal=causal, layout=layout)  # (B, H, N/P, d)
    what = f"rank {rank}/{world} layout={layout} causal={causal} kv_heads={kv_heads}"
    torch.testing.assert_close(out, akd.shard(ref.detach(), layout=layout), **TOL, msg=lambda m: f"{what}: {m}")
    torch.testing.assert_close(akd.unshard(out, layout=layout), ref.detach(), **TOL)
    (out * akd.shard(w, layout=layout)).sum().backward()
    for name, mine, full in (("dq", qs, q), ("dk", ks, k), ("dv", vs, v)):
        torch.testing.assert_close(
            mine.grad, akd.shard(full.grad, layout=layout), **TOL, msg=lambda m, n=name: f"{what} {n}: {m}"
        )


def _check_shard_roundtrip(rank: int, world: int) -> None:
    x = torch.arange(3 * 8 * world * 5, dtype=torch.float32).reshape(3, 8 * world, 5)
    for layout in akd.LAYOUTS:
        for dim in (1, -2):
            s = akd.shard(x, layout=layout, dim=dim)
            assert s.shape == (3, 8, 5)
            torch.testing.assert_close(akd.unshard(s, layout=layout, dim=dim), x, atol=0, rtol=0)
    # zigzag: rank r holds chunks r and 2P-1-r of 2P, in that order
    chunks = x.chunk(2 * world, dim=1)
    torch.testing.assert_close(akd.shard(x, layout="zigzag", dim=1), torch.cat([chunks[rank], chunks[-1 - rank]], 1))
    torch.testing.assert_close(akd.shard(x, dim=1), x.chunk(world, dim=1)[rank])
    with pytest.raises(ValueError, match="cannot shard length"):
        akd.shard(torch.zeros(2, 2 * world + 1, 3), dim=1)
    assert akd.chunk_offsets(8) == [(rank * 8, 8)]
    assert akd.chunk_offsets(8, layout="zigzag") == [(rank * 4, 4), ((2 * world - 1 - rank) * 4, 4)]
    assert akd.chunk_offsets(8, layout="zigzag", rank=world - 1) == [((world - 1) * 4, 4), (world * 4, 4)]


def _check_rotary_sequence_parallel(rank: int, world: int, layout: str) -> None:
    """Rotary positions under ring attention are the *global* ones: sharded == whole sequence."""
    from attnkit.positions import RotaryEmbedding

    g = torch.Generator().manual_seed(5)
    torch.manual_seed(2)
    E, H, N = 32, 4, 8 * world
    full = ak.MultiHeadAttention(E, H, rotary=RotaryEmbedding(E // H))
    ring = ak.MultiHeadAttention(E, H, rotary=RotaryEmbedding(E // H), sequence_parallel=SequenceParallel(layout=layout))
    ring.load_state_dict(full.state_dict())
    x = torch.randn(2, N, E, generator=g)
    with torch.no_grad():
        ref, _ = full(x, causal=True)
        out, _ = ring(akd.shard(x, layout=layout, dim=1), causal=True)
    torch.testing.assert_close(out, akd.shard(ref, layout=layout, dim=1), **TOL)


def _check_mha_sequence_parallel(rank: int, world: int, layout: str) -> None:
    """ak.MultiHeadAttention(sequence_parallel=...) on shards == nn.MultiheadAttention on the
    whole sequence, outputs and (all-reduced) parameter gradients."""
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    E, H, B, N = 32, 4, 2, 16 * world
    peer = nn.MultiheadAttention(E, H, batch_first=True)
    x = torch.randn(B, N, E, generator=g, requires_grad=True)
    w = torch.randn(B, N, E, generator=g)
    ref, _ = peer(x, x, x, attn_mask=~ak.causal_mask(N), need_weights=False)  # torch: True = masked
    (ref * w).sum().backward()

    ours = ak.MultiHeadAttention.from_torch(peer, sequence_parallel=SequenceParallel(layout=layout))
    xs = akd.shard(x.detach(), layout=layout, dim=1).requires_grad_()
    out, weights = ours(xs, causal=True)  # (B, N/P, E)
    assert weights is None
    torch.testing.assert_close(out, akd.shard(ref.detach(), layout=layout, dim=1), **TOL)
    (out * akd.shard(w, layout=layout, dim=1)).sum().backward()
    torch.testing.assert_close(xs.grad, akd.shard(x.grad, layout=layout, dim=1), **TOL)
    E_ = peer.embed_dim  # peer gradients under our parameter names
    peer_grads = {
        "q_proj.weight": peer.in_proj_weight.grad[:E_], "k_proj.weight": peer.in_proj_weight.grad[E_:2 * E_],
        "v_proj.weight": peer.in_proj_weight.grad[2 * E_:], "q_proj.bias": peer.in_proj_bias.grad[:E_],
        "k_proj.bias": peer.in_proj_bias.grad[E_:2 * E_], "v_proj.bias": peer.in_proj_bias.grad[2 * E_:],
        "out_proj.weight": peer.out_proj.weight.grad, "out_proj.bias": peer.out_proj.bias.grad,
    }
    assert set(peer_grads) == {n for n, _ in ours.named_parameters()}
    for name, p in ours.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad)  # each rank holds its shard's share of the parameter gradient
        torch.testing.assert_close(grad, peer_grads[name], atol=1e-4, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    with pytest.raises(ValueError, match="key_mask"):
        ours(xs, key_mask=torch.ones(B, xs.shape[1], dtype=torch.bool))


def _check_encoder_sequence_parallel(rank: int, world: int, layout: str) -> None:
    """ak.Encoder with sequence_parallel on shards == nn.TransformerEncoder on the whole sequence."""
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(1)
    E, N = 32, 8 * world
    layer = nn.TransformerEncoderLayer(E, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
    peer = nn.TransformerEncoder(layer, num_layers=2, norm=nn.LayerNorm(E), enable_nested_tensor=False)
    x = torch.randn(2, N, E, generator=g, requires_grad=True)
    ref = peer(x)
    ref.square().sum().backward()
    ours = ak.Encoder.from_torch(peer, sequence_parallel=SequenceParallel(layout=layout))
    xs = akd.shard(x.detach(), layout=layout, dim=1).requires_grad_()
    hidden, _ = ours(xs)  # (B, N/P, E)
    torch.testing.assert_close(hidden, akd.shard(ref.detach(), layout=layout, dim=1), **TOL)
    hidden.square().sum().backward()
    torch.testing.assert_close(xs.grad, akd.shard(x.grad, layout=layout, dim=1), atol=1e-4, rtol=1e-5)


def _ring_suite(rank: int, world: int, full: bool) -> None:
    for layout, causal in (("contiguous", True), ("zigzag", True), ("zigzag", False), ("contiguous", False)):
        if full or causal or layout == "zigzag":  # non-causal: the layout is only a permutation
            _check_ring(rank, world, layout=layout, causal=causal)
    _check_shard_roundtrip(rank, world)
    if full:
        _check_ring(rank, world, layout="zigzag", causal=True, kv_heads=2)  # grouped-query heads
        fused = akf._flash_ok
        akf._flash_ok = lambda *a: False  # the math fallback of attention_and_lse (and its backward)
        try:
            _check_ring(rank, world, layout="zigzag", causal=True)
        finally:
            akf._flash_ok = fused
        for layout in akd.LAYOUTS:
            _check_mha_sequence_parallel(rank, world, layout)
            _check_encoder_sequence_parallel(rank, world, layout)
            _check_rotary_sequence_parallel(rank, world, layout)


# ----------------------------------------------------------------------------- tests


def test_ring_attention_single_process_matches_sdpa() -> None:
    """Without torch.distributed the ring has one rank: plain attention, fused and fallback."""
    q, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny calls: a thread pool only adds waiting on a busy machine
    try:
        for causal in (False, True):
            torch.testing.assert_close(
                akd.ring_attention(q, k, v, causal=causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            )
            assert torch.autograd.gradcheck(lambda a, b, c, cz=causal: akd.ring_attention(a, b, c, causal=cz), (q, k, v))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(akd.shard(q, layout="zigzag"), q)
    torch.testing.assert_close(akd.unshard(q), q)


def test_ring_attention_rejects_bad_input() -> None:
    q = torch.randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match="layout"):
        akd.ring_attention(q, q, q, layout="striped")
    with pytest.raises(ValueError, match=r"\(B, H, n, d\)"):
        akd.ring_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="share batch and length"):
        akd.ring_attention(q, q[..., :4, :], q)
    with pytest.raises(ValueError, match="odd shard length"):
        akd.ring_attention(q[..., :5, :], q[..., :5, :], q[..., :5, :], layout="zigzag")
    with pytest.raises(ValueError, match="SequenceParallel.layout"):
        SequenceParallel(layout="striped")
    with pytest.raises(ValueError, match="SequenceParallel or None, got True"):
        ak.MultiHeadAttention(8, 2, sequence_parallel=True)


@pytest.mark.slow
def test_ring_attention_2_ranks() -> None:
    """2 ranks: both layouts, causal and not, forward and gradients, GQA, the math fallback,
    shard/unshard round trips, MultiHeadAttention(sequence_parallel=...) vs nn.MultiheadAttention
    and Encoder(sequence_parallel=...) vs nn.TransformerEncoder."""
    spawn(_ring_suite, 2, True)


@pytest.mark.slow
def test_ring_attention_4_ranks() -> None:
    """4 ranks: both layouts causal, zigzag non-causal, forward and gradients, shard/unshard."""
    spawn(_ring_suite, 4, False)


if __name__ == "__main__":  # pragma: no cover - manual run
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pytest.main([__file__, "-x", "-q"])
