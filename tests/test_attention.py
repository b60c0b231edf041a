"""MultiHeadAttention against torch.nn.MultiheadAttention; KV cache; RNN attention modules."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attnkit as ak


def torch_mha(E, H, *, kdim=None, vdim=None, bias=True, batch_first=True):
    m = nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, bias=bias, batch_first=batch_first).eval()
    with torch.no_grad():  # torch zero-inits the biases: make them non-trivial
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def run_torch(m, q, k, v, *, key_mask=None, attn_mask=None, need_weights=False):
    """Call torch's module with OUR mask convention translated to its (True = blocked)."""
    kpm = None if key_mask is None else ~key_mask
    am = attn_mask
    if am is not None and am.dtype == torch.bool:
        am = ~am
    if am is not None and am.dim() == 4:  # ours (B, H, L, S) -> torch (B*H, L, S)
        am = am.flatten(0, 1)
    if not m.batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    out, w = m(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights, average_attn_weights=False)
    if not m.batch_first:
        out = out.transpose(0, 1)
    return out, w


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cross", [False, True])
def test_matches_torch_mha(batch_first, bias, cross):
    B, L, S, E, H = 3, 5, 7, 24, 4
    kdim, vdim = (10, 12) if cross else (None, None)
    m = torch_mha(E, H, kdim=kdim, vdim=vdim, bias=bias, batch_first=batch_first)
    ours = ak.MultiHeadAttention.from_torch(m).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in m.parameters())
    x = torch.randn(B, L, E)
    k = torch.randn(B, S, kdim or E) if cross else x
    v = torch.randn(B, S, vdim or E) if cross else x
    Sk = k.shape[1]
    key_mask = torch.rand(B, Sk) > 0.3
    key_mask[:, 0] = True
    attn_mask = torch.rand(L, Sk) > 0.2
    attn_mask[:, 0] = True
    for km, am in ((None, None), (key_mask, None), (None, attn_mask), (key_mask, attn_mask)):
        ref, ref_w = run_torch(m, x, k, v, key_mask=km, attn_mask=am, need_weights=True)
        out, w = ours(x, None if not cross else k, None if not cross else v, key_mask=km, attn_mask=am, need_weights=True)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-5)
        out2, none = ours(x, None if not cross else k, None if not cross else v, key_mask=km, attn_mask=am)
        assert none is None
        torch.testing.assert_close(out2, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", ["LS", "BLS", "BHLS", "float"])
def test_attn_mask_shapes_match_torch(shape):
    B, L, E, H = 2, 6, 16, 4
    m = torch_mha(E, H)
    ours = ak.MultiHeadAttention.from_torch(m).eval()
    x = torch.randn(B, L, E)
    if shape == "LS":
        am = torch.rand(L, L) > 0.3
    elif shape == "BLS":
        am = torch.rand(B, L, L) > 0.3
    elif shape == "BHLS":
        am = torch.rand(B, H, L, L) > 0.3
    else:
        am = torch.randn(L, L)
    if am.dtype == torch.bool:
        am[..., 0] = True
    torch_am = am.unsqueeze(1).expand(B, H, L, L) if shape == "BLS" else am
    ref, _ = run_torch(m, x, x, x, attn_mask=torch_am)
    out, _ = ours(x, attn_mask=am)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_causal_matches_torch():
    B, L, E, H = 2, 7, 32, 4
    m = torch_mha(E, H)
    ours = ak.MultiHeadAttention.from_torch(m).eval()
    x = torch.randn(B, L, E)
    ref, ref_w = m(x, x, x, attn_mask=nn.Transformer.generate_square_subsequent_mask(L), need_weights=True, average_attn_weights=False)
    for need in (False, True):
        out, w = ours(x, causal=True, need_weights=need)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-5)


def test_fully_padded_rows_give_bias_not_nan():
    B, L, E, H = 2, 4, 16, 2
    m = torch_mha(E, H)
    ours = ak.MultiHeadAttention.from_torch(m).eval()
    x = torch.randn(B, L, E, requires_grad=True)
    key_mask = torch.ones(B, L, dtype=torch.bool)
    key_mask[1] = False  # item 1 has no real key at all
    ref, _ = run_torch(m, x, x, x, key_mask=key_mask)
    out, w = ours(x, key_mask=key_mask, need_weights=True)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
    if torch.isfinite(ref[1]).all():  # torch versions differ: NaN (older) or the bias (newer)
        torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=1e-5)
    ref_w = run_torch(m, x, x, x, key_mask=key_mask, need_weights=True)[1]
    assert torch.isnan(ref_w[1]).all()  # torch's weights path still gives NaN here; ours gives 0
    torch.testing.assert_close(out[1], m.out_proj.bias.expand(L, E))
    assert (w[1] == 0).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_grouped_query_heads_match_torch_sdpa_gqa():
    B, L, E, H, KV = 2, 5, 32, 8, 2
    mha = ak.MultiHeadAttention(E, H, kv_heads=KV).eval()
    assert mha.k_proj.weight.shape == (KV * E // H, E)
    x = torch.randn(B, L, E)
    d = E // H
    q = mha.q_proj(x).view(B, L, H, d).transpose(1, 2)
    k = mha.k_proj(x).view(B, L, KV, d).transpose(1, 2)
    v = mha.v_proj(x).view(B, L, KV, d).transpose(1, 2)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref = mha.out_proj(ref.transpose(1, 2).reshape(B, L, E))
    for need in (False, True):
        out, w = mha(x, causal=True, need_weights=need)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert w.shape == (B, H, L, L)
    mqa = ak.MultiHeadAttention(E, H, kv_heads=1)
    assert mqa(x)[0].shape == (B, L, E)


def test_no_bias_has_no_bias_parameters():
    mha = ak.MultiHeadAttention(16, 4, bias=False)
    assert not any("bias" in n for n, _ in mha.named_parameters())


def test_to_torch_round_trip():
    ours = ak.MultiHeadAttention(24, 3, kdim=8, vdim=12).eval()
    m = ours.to_torch()
    x, k, v = torch.randn(2, 4, 24), torch.randn(2, 6, 8), torch.randn(2, 6, 12)
    torch.testing.assert_close(ours(x, k, v)[0], m(x, k, v)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="kv_heads=2"):
        ak.MultiHeadAttention(24, 4, kv_heads=2).to_torch()


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_kv_cache_step_by_step_equals_full_causal(kv_heads):
    B, L, E, H = 2, 9, 32, 4
    mha = ak.MultiHeadAttention(E, H, kv_heads=kv_heads).eval()
    x = torch.randn(B, L, E)
    full, _ = mha(x, causal=True)
    cache = ak.KVCache()
    steps = [mha(x[:, t : t + 1], cache=cache)[0] for t in range(L)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=1e-6)
    assert len(cache) == L
    # chunks work too (the diagonal aligns to the end of the cache)
    cache = ak.KVCache()
    chunks = [mha(x[:, a:b], cache=cache)[0] for a, b in ((0, 4), (4, 5), (5, 9))]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-6, rtol=1e-6)


def test_kv_cache_cross_attention_projects_memory_once():
    B, L, S, E, H = 2, 4, 6, 16, 2
    mha = ak.MultiHeadAttention(E, H).eval()
    y, mem = torch.randn(B, L, E), torch.randn(B, S, E)
    mem_mask = torch.rand(B, S) > 0.3
    mem_mask[:, 0] = True
    full, _ = mha(y, mem, key_mask=mem_mask)
    cache = ak.KVCache()
    steps = [mha(y[:, t : t + 1], mem, key_mask=mem_mask, cache=cache)[0] for t in range(L)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=1e-6)
    cache.reorder(torch.tensor([1, 1]))
    assert torch.equal(cache.keys[0], cache.keys[1])


def test_attention_head_is_one_head_of_mha():
    head = ak.AttentionHead(16, 8)
    x = torch.randn(2, 5, 16)
    out, w = head(x, need_weights=True)
    q, k, v = head.q(x), head.k(x), head.v(x)
    ref_w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), -1)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, ref_w @ v, atol=1e-6, rtol=1e-6)


def test_gradcheck_module_float64():
    mha = ak.MultiHeadAttention(8, 2, kv_heads=1).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    km = torch.tensor([[True, True, False], [False, False, False]])
    assert torch.autograd.gradcheck(lambda x: mha(x, key_mask=km, need_weights=True)[0], (x,))
    assert torch.autograd.gradcheck(lambda x: mha(x, key_mask=km)[0], (x,))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embed_dim=30, num_heads=4), "embed_dim=30.*num_heads=4"),
        (dict(embed_dim=32, num_heads=4, kv_heads=3), "kv_heads=3.*num_heads=4"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ak.MultiHeadAttention(**kwargs)


def test_bad_shapes_and_masks():
    mha = ak.MultiHeadAttention(16, 2)
    with pytest.raises(ValueError, match=r"\(B, L, 16\).*\(2, 5, 8\)"):
        mha(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"key_mask must be \(B, S\)=\(2, 5\).*\(2, 4\)"):
        mha(torch.randn(2, 5, 16), key_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask.*\(3, 3\)"):
        mha(torch.randn(2, 5, 16), attn_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        mha(torch.randn(2, 5, 16), key_mask=torch.ones(2, 5))


# ----------------------------------------------------------------- RNN attention modules


def test_additive_attention_formula():
    att = ak.AdditiveAttention(6, 5, 7)
    q, keys = torch.randn(3, 6), torch.randn(3, 4, 5)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [False] * 4])
    ctx, w = att(q, keys, key_mask=mask)
    # v^T tanh(W_q q + W_k k), written out longhand
    e = torch.stack([att.v(torch.tanh(att.w_query(q) + att.w_key(keys[:, j]))).squeeze(-1) for j in range(4)], 1)
    e = e.masked_fill(~mask, float("-inf"))
    ref_w = torch.softmax(e, -1).nan_to_num(0.0)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ctx, (ref_w.unsqueeze(-1) * keys).sum(1), atol=1e-6, rtol=1e-6)
    assert (ctx[2] == 0).all()
    ctx2, _ = att(q, keys, key_mask=mask, keys_proj=att.project_keys(keys))
    torch.testing.assert_close(ctx2, ctx)


def test_general_and_dot_attention():
    q, keys, values = torch.randn(2, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    gen = ak.GeneralAttention(4, 4)
    _, w = gen(q, keys)
    torch.testing.assert_close(w, torch.softmax(torch.einsum("bq,kq,bsk->bs", q, gen.weight, keys), -1))
    ctx, w = ak.DotAttention()(q, keys, values)
    ref = torch.softmax(torch.einsum("bd,bsd->bs", q, keys), -1)
    torch.testing.assert_close(w, ref)
    torch.testing.assert_close(ctx, torch.einsum("bs,bsv->bv", ref, values))
    _, ws = ak.DotAttention(scaled=True)(q, keys)
    torch.testing.assert_close(ws, torch.softmax(torch.einsum("bd,bsd->bs", q, keys) / 2.0, -1))
    with pytest.raises(ValueError, match="equal sizes"):
        ak.DotAttention()(torch.randn(2, 5), keys)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 6), S=st.integers(1, 6), H=st.sampled_from([1, 2, 4]),
       seed=st.integers(0, 2**16))
def test_property_matches_torch_on_random_masks(B, L, S, H, seed):
    g = torch.Generator().manual_seed(seed)
    E = 8 * H
    m = nn.MultiheadAttention(E, H, batch_first=True).eval()
    ours = ak.MultiHeadAttention.from_torch(m).eval()
    x, mem = torch.randn(B, L, E, generator=g), torch.randn(B, S, E, generator=g)
    km = torch.rand(B, S, generator=g) > 0.5
    ref, _ = m(x, mem, mem, key_padding_mask=~km)
    out, w = ours(x, mem, key_mask=km, need_weights=True)
    finite = torch.isfinite(ref).all(-1)
    torch.testing.assert_close(out[finite], ref[finite], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(w.sum(-1), km.any(-1).float()[:, None, None].expand(B, H, L), atol=1e-5, rtol=0)
