"""Packed (varlen) batches: pack/unpack round trips and attention that matches padded SDPA."""

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import varlen
from attnkit.runtime import DISPATCH


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


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.sampled_from([0, 1, 2, 3, 5, 9, 24, 25, 31]), min_size=1, max_size=6),
    kv_heads=st.sampled_from([1, 2, 4]),
    causal=st.booleans(),
    sort=st.booleans(),
    # runs up to DISPATCH.explicit_max_len take the explicit path, longer ones the fused kernel: 0 is
    # fused only, 9 both, 128 explicit only; max_scores 64 splits explicit runs into chunks
    explicit_max=st.sampled_from([0, 9, 128]),
    max_scores=st.sampled_from([64, 1 << 22]),
)
def test_varlen_attention_matches_padded_torch_sdpa(lengths, kv_heads, causal, sort, explicit_max, max_scores):
    """Peer: torch's F.scaled_dot_product_attention on the padded batch with a key mask."""
    with mock.patch.object(DISPATCH, "explicit_max_len", explicit_max), \
            mock.patch.object(DISPATCH, "explicit_max_scores_per_call", max_scores):
        _check_against_padded_sdpa(lengths, kv_heads, causal, sort)


def _check_against_padded_sdpa(lengths, kv_heads, causal, sort):
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


def _fused_qkv(lengths, H, d, dtype, scale=1.0, seed=0):
    """Packed q, k, v as views of one (N, 3*H*d) projection output, as EncoderLayer makes them."""
    g = torch.Generator().manual_seed(seed)
    N, E = sum(lengths), H * d
    qkv = (torch.randn(N, 3 * E, generator=g) * scale).to(dtype)
    return [t.view(N, H, d) for t in qkv.split(E, 1)]


def _padded_reference(q, k, v, lengths, causal=False, scale=None):
    """Peer: torch's SDPA in float64 on each sequence of the packed stream -> (N, H, d)."""
    out, first = [], 0
    for n in lengths:
        if n:
            qs, ks, vs = (t[first : first + n].transpose(0, 1).double() for t in (q, k, v))  # (H, n, d)
            out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale).transpose(0, 1))
        first += n
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_explicit_path_on_projection_views_matches_torch(dtype, causal):
    """The layout of a real pass: q/k/v strided views of one projection, runs both shorter and
    longer than DISPATCH.explicit_max_len. bfloat16 rounds only its output (scores and softmax are float32)."""
    lengths = [3, 3, 7, 7, 7, 1, 20, 0, 150, 2]
    q, k, v = _fused_qkv(lengths, H=4, d=16, dtype=dtype)
    out = varlen.varlen_attention(q, k, v, lengths, causal=causal)
    ref = _padded_reference(q, k, v, lengths, causal)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5  # bf16: one rounding of values of size ~1
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    with mock.patch.object(DISPATCH, "explicit_max_len", 0):  # the fused kernel on every run
        fused = varlen.varlen_attention(q, k, v, lengths, causal=causal)
    torch.testing.assert_close(out.double(), fused.double(), atol=tol, rtol=tol)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_explicit_path_rows_far_below_the_block_maximum(dtype):
    """Row 0 of a sequence scores +1000 on both keys and row 1 scores -1000: subtracting the
    matrix's largest score would underflow row 1's exp-sum to zero, so its rows are redone with
    their own maxima. Each row then weighs both keys equally."""
    a = 1000.0**0.5  # scale 1: row 0 scores a * a, row 1 scores -a * a
    q = torch.tensor([[[a]], [[-a]]], dtype=dtype)  # (N=2, H=1, d=1)
    k = torch.tensor([[[a]], [[a]]], dtype=dtype)
    v = torch.tensor([[[1.0]], [[3.0]]], dtype=dtype)
    with mock.patch.object(varlen, "_score", wraps=varlen._score) as score:
        out = varlen.varlen_attention(q, k, v, [2], scale=1.0)
    assert score.call_count == 2  # scored, then scored again for the rows' own maxima
    torch.testing.assert_close(out, torch.full((2, 1, 1), 2.0, dtype=dtype), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.double(), _padded_reference(q, k, v, [2], scale=1.0), atol=1e-6, rtol=0)


def test_explicit_path_gives_a_sequence_the_same_result_in_any_batch():
    """Each sequence is normalised by its own scores only, so embedding a text alone or beside
    others gives the same bits."""
    lengths = [5, 5, 5, 9]
    q, k, v = _fused_qkv(lengths, H=4, d=8, dtype=torch.bfloat16, scale=3.0)
    together = varlen.varlen_attention(q, k, v, lengths)
    for first, n in ((0, 5), (10, 5), (15, 9)):
        alone = varlen.varlen_attention(q[first : first + n], k[first : first + n], v[first : first + n], [n])
        torch.testing.assert_close(alone, together[first : first + n], atol=0, rtol=0)


def test_explicit_path_falls_back_where_strides_do_not_allow_row_views():
    lengths = [3, 5, 5]
    q, k, v = (torch.randn(13, 16, 2).transpose(1, 2) for _ in range(3))  # (N, H=2, d=16), d not unit-stride
    assert varlen._row_view(q) is None
    out = varlen.varlen_attention(q, k, v, lengths)
    torch.testing.assert_close(out.double(), _padded_reference(q, k, v, lengths), atol=1e-5, rtol=1e-5)


def test_explicit_path_is_inference_only_and_gradients_flow():
    """With autograd on, every run takes the fused kernel (differentiable); without, the
    explicit path; both agree."""
    lengths = [2, 2, 6]
    q, k, v = (torch.randn(10, 2, 8, requires_grad=True) for _ in range(3))
    out = varlen.varlen_attention(q, k, v, lengths)
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
    with torch.no_grad():
        explicit = varlen.varlen_attention(q, k, v, lengths)
    torch.testing.assert_close(explicit, out.detach(), atol=1e-6, rtol=1e-5)


def test_explicit_path_reuses_scratch_buffers():
    from attnkit.runtime import Role, scratch

    lengths = [5, 5, 9]
    q, k, v = _fused_qkv(lengths, H=3, d=8, dtype=torch.bfloat16)
    pool = scratch()
    pool.clear()
    first = varlen.varlen_attention(q, k, v, lengths)
    pointers = {key: buf.data_ptr() for key, buf in pool._buffers.items()}
    roles = {key[0] for key in pointers}
    assert {Role.GATHERED_Q, Role.WIDE_Q, Role.SCORES, Role.RUN_OUTPUT, Role.TOKEN_OUTPUT} <= roles
    again = varlen.varlen_attention(q, k, v, lengths)
    assert {key: buf.data_ptr() for key, buf in pool._buffers.items()} == pointers  # nothing reallocated
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    torch.testing.assert_close(varlen.varlen_attention(q, k, v, lengths), first, atol=0, rtol=0)


def test_packed_value_round_trips_left_and_right_padding():
    """Packed.from_mask keeps where each token came from: unpack puts left- and right-padded
    batches back in place (zeros at padding), positions restart in every sequence, and equal
    lengths form one run; made from lengths, unpack left-aligns like varlen.unpack."""
    from attnkit.varlen import Packed

    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    left = right.flip(1)
    x = torch.randn(3, 4, 5)
    for mask in (right, left):
        packed = Packed.from_mask(mask)
        assert packed.lengths == (3, 2, 2) and packed.max_len == 3 and packed.num_tokens == 7
        stream = packed.pack(x)  # (N, 5)
        torch.testing.assert_close(stream, x[mask], rtol=0, atol=0)
        torch.testing.assert_close(packed.unpack(stream), x * mask[..., None], rtol=0, atol=0)
        assert packed.positions.tolist() == [0, 1, 2, 0, 1, 0, 1] and packed.runs == [(0, 1, 3), (3, 2, 2)]
    by_lengths = Packed.from_lengths([3, 2, 2])
    torch.testing.assert_close(by_lengths.unpack(x[right]), varlen.unpack(x[right], by_lengths.cu_seqlens)[0])
    with pytest.raises(ValueError, match="bool"):
        Packed.from_mask(right.long())
    with pytest.raises(ValueError, match="has 6 tokens, expected 7"):
        by_lengths.unpack(torch.randn(6, 5))
