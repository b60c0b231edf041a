"""Packed (varlen) batches: pack/unpack round trips and attention that matches padded SDPA."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import varlen


def _padded_batch(lengths: list[int], E: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(lengths, default=0)
    x = torch.randn(len(lengths), T, E)
    mask = torch.arange(T) < torch.tensor(lengths)[:, None]
    return x, mask


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=1, max_size=6))
def test_pack_unpack_round_trip(lengths):
    x, mask = _padded_batch(lengths)
    packed, cu = varlen.pack(x, mask)
    assert packed.shape == (sum(lengths), x.shape[-1])
    assert cu.tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    back, back_mask = varlen.unpack(packed, cu, max_len=x.shape[1])
    assert torch.equal(back_mask, mask)
    assert torch.equal(back[mask], x[mask])
    assert not back[~mask].any()  # padding comes back as zeros


def test_positions_and_sequence_ids():
    cu = varlen.cu_seqlens_from_lengths([3, 0, 2])
    assert cu.tolist() == [0, 3, 3, 5]
    assert varlen.positions(cu).tolist() == [0, 1, 2, 0, 1]
    assert varlen.sequence_ids(cu).tolist() == [0, 0, 0, 2, 2]
    assert varlen.equal_length_runs([2, 2, 0, 3, 3, 2]) == [(0, 2, 2), (4, 2, 3), (10, 1, 2)]


def test_bad_inputs_name_the_values():
    with pytest.raises(ValueError, match="non-negative"):
        varlen.cu_seqlens_from_lengths([2, -1])
    with pytest.raises(ValueError, match="sum"):
        varlen.varlen_attention(torch.randn(4, 2, 3), torch.randn(4, 2, 3), torch.randn(4, 2, 3), [2, 3])
    with pytest.raises(ValueError, match="shorter"):
        varlen.unpack(torch.randn(5, 2), varlen.cu_seqlens_from_lengths([2, 3]), max_len=2)


@settings(max_examples=25, deadline=None)
@given(
    # both paths: runs up to EXPLICIT_MAX_LEN (24) go explicit, longer ones fused
    lengths=st.lists(st.sampled_from([0, 1, 2, 3, 5, 9, 24, 25, 31]), min_size=1, max_size=6),
    kv_heads=st.sampled_from([1, 2, 4]),
    causal=st.booleans(),
    sort=st.booleans(),
)
def test_varlen_attention_matches_padded_torch_sdpa(lengths, kv_heads, causal, sort):
    """Peer: torch's F.scaled_dot_product_attention on the padded batch with a key mask."""
    if sort:
        lengths = sorted(lengths)
    H, d = 4, 8
    B, T = len(lengths), max(max(lengths), 1)
    mask = torch.arange(T) < torch.tensor(lengths)[:, None]  # (B, T)
    q = torch.randn(B, H, T, d, dtype=torch.float64)
    k = torch.randn(B, kv_heads, T, d, dtype=torch.float64)
    v = torch.randn(B, kv_heads, T, d, dtype=torch.float64)
    allowed = mask[:, None, None, :] & torch.ones(T, T, dtype=torch.bool).tril() if causal else mask[:, None, None, :]
    allowed = allowed | ~mask[:, None, :, None]  # padded query rows: anything (ignored below)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=kv_heads != H)  # (B, H, T, d)

    def packed(t):  # (B, h, T, d) -> (N, h, d)
        return varlen.pack(t.transpose(1, 2), mask)[0]

    threads = torch.get_num_threads()
    out = varlen.varlen_attention(packed(q), packed(k), packed(v), lengths, causal=causal)  # (N, H, d)
    assert torch.get_num_threads() == threads  # small runs go single-threaded, then it is restored
    torch.testing.assert_close(out, packed(ref), atol=1e-10, rtol=1e-10)
    buffer = torch.full_like(out, float("nan"))
    into = varlen.varlen_attention(packed(q), packed(k), packed(v), lengths, causal=causal, out=buffer)
    assert into is buffer
    torch.testing.assert_close(buffer, out, atol=0, rtol=0)
