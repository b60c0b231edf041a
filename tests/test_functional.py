"""scaled_dot_product_attention and masks against torch's own F.scaled_dot_product_attention."""

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit as ak
from attnkit import functional
from attnkit.functional import masked_softmax, merge_masks
from attnkit.runtime import DISPATCH


def ref_sdpa(q, k, v, mask=None, causal=False, scale=None):
    """Textbook reference written independently of attnkit (float64 math)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.double() @ k.double().transpose(-2, -1)) * scale
    L, S = q.shape[-2], k.shape[-2]
    allowed = torch.ones(L, S, dtype=torch.bool)
    if causal:
        allowed = torch.ones(L, S, dtype=torch.bool).tril(S - L)
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    elif mask is not None:
        s = s + mask.double()
    s = s.masked_fill(~allowed, float("-inf"))
    w = torch.softmax(s, -1).nan_to_num(0.0)
    return (w @ v.double()).to(q.dtype), w.to(q.dtype)


def test_causal_mask_aligns_to_end():
    m = ak.causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert torch.equal(ak.causal_mask(3), torch.ones(3, 3, dtype=torch.bool).tril())


def test_padding_mask():
    m = ak.padding_mask(torch.tensor([2, 0, 3]), max_len=4)
    assert m.tolist() == [[True, True, False, False], [False] * 4, [True, True, True, False]]
    with pytest.raises(ValueError, match="max_len=2"):
        ak.padding_mask([3], max_len=2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("LS", [(5, 5), (3, 7), (6, 6)])
def test_fused_matches_torch_and_math(causal, LS):
    L, S = LS
    q, k, v = torch.randn(2, 3, L, 8), torch.randn(2, 3, S, 8), torch.randn(2, 3, S, 5)
    ours = ak.scaled_dot_product_attention(q, k, v, causal=causal)
    ours_m, w = ak.scaled_dot_product_attention(q, k, v, causal=causal, return_weights=True)
    ref, ref_w = ref_sdpa(q, k, v, causal=causal)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_m, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-5)
    if L == S:  # torch's is_causal is top-left aligned, identical when square
        torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=1e-5, rtol=1e-5)


def test_bool_and_float_masks_match_torch():
    q, k, v = torch.randn(2, 4, 6, 16), torch.randn(2, 4, 9, 16), torch.randn(2, 4, 9, 16)
    bmask = torch.rand(2, 1, 6, 9) > 0.3
    bmask[..., 0] = True  # no empty rows: torch would give NaN there
    fmask = torch.randn(2, 4, 6, 9)
    for mask in (bmask, fmask):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(ak.scaled_dot_product_attention(q, k, v, mask=mask), ref, atol=1e-5, rtol=1e-5)
        out, _ = ak.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_grouped_query_matches_torch_enable_gqa():
    q, k, v = torch.randn(2, 8, 5, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(ak.scaled_dot_product_attention(q, k, v), ref, atol=1e-5, rtol=1e-5)
    out, w = ak.scaled_dot_product_attention(q, k, v, return_weights=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert w.shape == (2, 8, 5, 7)


@pytest.mark.parametrize("return_weights", [False, True])
def test_empty_rows_zero_forward_and_backward(return_weights):
    q = torch.randn(2, 2, 4, 8, requires_grad=True)
    k = torch.randn(2, 2, 5, 8, requires_grad=True)
    v = torch.randn(2, 2, 5, 8, requires_grad=True)
    mask = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    mask[0, 0, 1] = False  # query row 1 of batch 0 sees nothing
    mask[1] = False  # the whole second item is empty
    res = ak.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=return_weights)
    out = res[0] if return_weights else res
    assert torch.isfinite(out).all()
    assert out[0, :, 1].abs().max() == 0 and out[1].abs().max() == 0
    if return_weights:
        w = res[1]
        assert w[0, :, 1].abs().max() == 0
        torch.testing.assert_close(w[0, :, 0].sum(-1), torch.ones(2))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert q.grad[0, :, 1].abs().max() == 0 and q.grad[1].abs().max() == 0


def test_float_mask_all_neg_inf_row_is_empty():
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    mask = torch.zeros(3, 5)
    mask[2] = float("-inf")
    out, w = ak.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert out[0, 2].abs().max() == 0 and w[0, 2].abs().max() == 0
    assert ak.scaled_dot_product_attention(q, k, v, mask=mask)[0, 2].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_dtype_and_accuracy(dtype):
    q, k, v = torch.randn(2, 2, 6, 32), torch.randn(2, 2, 6, 32), torch.randn(2, 2, 6, 32)
    ref, ref_w = ref_sdpa(q, k, v, causal=True)
    out, w = ak.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True, return_weights=True)
    fused = ak.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True)
    assert out.dtype == w.dtype == fused.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(fused.float(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_huge_scores_stay_finite(dtype):
    q = torch.full((1, 4, 8), 1e2).to(dtype)
    k = torch.full((1, 4, 8), 1e2).to(dtype)  # q.k * scale ~ 1e4*8/sqrt(8)
    v = torch.randn(1, 4, 8).to(dtype)
    out, w = ak.scaled_dot_product_attention(q, k, v, return_weights=True, causal=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert torch.isfinite(ak.scaled_dot_product_attention(q, k, v, causal=True)).all()


def test_gradcheck_math_path_float64():
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, True, True], [False] * 5, [True] * 5])

    def f(q, k, v):
        return ak.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)

    assert torch.autograd.gradcheck(f, (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: ak.scaled_dot_product_attention(q, k, v, mask=mask), (q, k, v))


def test_merge_masks():
    a = torch.tensor([[True, False]])
    b = torch.tensor([[True, True]])
    assert merge_masks(a, b).tolist() == [[True, False]]
    f = merge_masks(torch.zeros(1, 2), a)
    assert f[0, 0] == 0 and torch.isneginf(f[0, 1])
    assert merge_masks(None, None) is None


def test_masked_softmax_other_dim():
    s = torch.randn(3, 4)
    m = torch.tensor([True, False, True])[:, None].expand(3, 4)
    w = masked_softmax(s, m, dim=0)
    torch.testing.assert_close(w.sum(0), torch.ones(4))
    assert (w[1] == 0).all()


@pytest.mark.parametrize(
    "shapes, mask, match",
    [
        (((2, 5, 8), (2, 6, 7), (2, 6, 7)), None, r"last dim.*\(2, 5, 8\).*\(2, 6, 7\)"),
        (((2, 5, 8), (2, 6, 8), (2, 4, 8)), None, r"same length.*\(2, 6, 8\).*\(2, 4, 8\)"),
        (((2, 5, 8), (2, 6, 8), (2, 6, 8)), torch.ones(5, 3, dtype=torch.bool), r"\(5, 3\).*L=5, S=6"),
        (((3, 5, 8), (2, 6, 8), (2, 6, 8)), None, "do not broadcast"),
    ],
)
def test_bad_inputs_name_shapes(shapes, mask, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        ak.scaled_dot_product_attention(q, k, v, mask=mask)


def test_non_floating_input_rejected():
    with pytest.raises(ValueError, match="floating-point.*torch.int64"):
        ak.scaled_dot_product_attention(torch.ones(2, 3, dtype=torch.long), torch.randn(2, 3), torch.randn(2, 3))


# ----------------------------------------------------------------- property tests

dims = st.integers(min_value=1, max_value=6)


@settings(max_examples=40, deadline=None)
@given(B=dims, L=dims, S=dims, d=dims, seed=st.integers(0, 2**16), causal=st.booleans())
def test_weights_are_distributions(B, L, S, d, seed, causal):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, d, generator=g) for n in (L, S, S))
    mask = torch.rand(B, L, S, generator=g) > 0.4
    out, w = ak.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, return_weights=True)
    assert (w >= 0).all()
    sums = w.sum(-1)
    allowed = mask & ak.causal_mask(L, S) if causal else mask
    expected = allowed.any(-1).float()
    torch.testing.assert_close(sums, expected, atol=1e-5, rtol=0)
    fused = ak.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(L=dims, S=st.integers(2, 8), d=dims, seed=st.integers(0, 2**16))
def test_permuting_keys_and_values_together_is_invariant(L, S, d, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(L, d, generator=g), torch.randn(S, d, generator=g), torch.randn(S, d, generator=g)
    perm = torch.randperm(S, generator=g)
    a = ak.scaled_dot_product_attention(q, k, v)
    b = ak.scaled_dot_product_attention(q, k[perm], v[perm])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(L=dims, S=st.integers(2, 8), d=dims, seed=st.integers(0, 2**16), weights=st.booleans())
def test_masking_a_key_equals_deleting_it(L, S, d, seed, weights):
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(L, d, generator=g), torch.randn(S, d, generator=g), torch.randn(S, d, generator=g)
    drop = int(torch.randint(S, (1,), generator=g))
    keep = torch.ones(S, dtype=torch.bool)
    keep[drop] = False
    masked = ak.scaled_dot_product_attention(q, k, v, mask=keep, return_weights=weights)
    deleted = ak.scaled_dot_product_attention(q, k[keep], v[keep], return_weights=weights)
    if weights:
        torch.testing.assert_close(masked[0], deleted[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masked[1][:, keep], deleted[1], atol=1e-5, rtol=1e-5)
        assert (masked[1][:, drop] == 0).all()
    else:
        torch.testing.assert_close(masked, deleted, atol=1e-5, rtol=1e-5)


mask_kinds = st.sampled_from(["none", "bool_keys", "bool_padding", "bool_full", "float", "float_neg_inf", "causal",
                              "bool_causal", "bool_padding_causal", "bool_left_padding_causal"])


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 3), H=st.sampled_from([1, 2, 4]), kv=st.sampled_from([1, 2]), L=dims, S=dims,
       d=st.integers(1, 8), kind=mask_kinds, seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_inference_weights_path_equals_math_path(B, H, kv, L, S, d, kind, seed, dtype):
    """The in-place weights path (inference, no graph) == the reference math path (taken when a
    graph is needed), on every mask kind, grouped-query heads and rows with nothing to attend to
    (``bool_padding``: a padded batch, key lengths 0..S, scored item by item over the real keys
    whatever the size, as large items are; causal calls in blocks of a few query rows; left
    padding with causal leaves early rows nothing)."""
    if H % kv:
        kv = 1
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, d, generator=g).to(dtype)
    k, v = (torch.randn(B, kv, S, d, generator=g).to(dtype) for _ in range(2))
    allowed = torch.rand(B, 1, L, S, generator=g) > 0.5
    allowed[:, :, 0] = False  # the first query row of every item sees nothing
    mask, causal = {
        "none": (None, False), "bool_keys": (allowed[:, :, :1, :].clone().fill_(True) & (torch.arange(S) > 0), False),
        "bool_padding": (ak.padding_mask(torch.randint(0, S + 1, (B,), generator=g), S)[:, None, None, :], False),
        "bool_full": (allowed, False), "float": (torch.randn(B, H, L, S, generator=g), False),
        "float_neg_inf": (torch.zeros(B, 1, L, S).masked_fill(~allowed, float("-inf")), False),
        "causal": (None, True), "bool_causal": (allowed, True),
        "bool_padding_causal": (ak.padding_mask(torch.randint(0, S + 1, (B,), generator=g), S)[:, None, None, :], True),
        "bool_left_padding_causal": (ak.padding_mask(torch.randint(0, S + 1, (B,), generator=g), S)
                                     .flip(-1)[:, None, None, :], True),
    }[kind]
    # small items scored item by item and causal calls in blocks of 3 query rows, as large ones are
    with (torch.no_grad(), mock.patch.object(DISPATCH, "prefix_min_scores", 0),
          mock.patch.object(DISPATCH, "causal_block", 3)):
        out, w = ak.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, return_weights=True)
    ref_out, ref_w = ak.scaled_dot_product_attention(
        q.clone().requires_grad_(), k, v, mask=mask, causal=causal, return_weights=True)
    assert out.dtype == w.dtype == dtype and w.shape == (B, H, L, S)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(w, ref_w.detach(), **tol)
    torch.testing.assert_close(out, ref_out.detach(), **tol)
    if kind in ("bool_full", "float_neg_inf", "bool_causal"):
        assert not w[:, :, 0].any() and not out[:, :, 0].any()  # empty rows: zero weights and output


@pytest.mark.parametrize("kind", ["none", "padding", "causal", "padding+causal", "gqa"])
def test_short_training_attention_takes_the_explicit_path_and_matches_torch(kind) -> None:
    """Training on short sequences (here 20 x 20 scores a head) runs the explicit path, which
    is faster there than the fused kernel; output and gradients equal torch's fused SDPA."""
    g = torch.Generator().manual_seed(3)
    B, H, L, d = 6, 4, 20, 16
    kv = 2 if kind == "gqa" else H
    q = torch.randn(B, H, L, d, generator=g, requires_grad=True)
    k, v = (torch.randn(B, kv, L, d, generator=g, requires_grad=True) for _ in range(2))
    lengths = torch.tensor([20, 17, 9, 1, 20, 12])
    mask = ak.padding_mask(lengths, L)[:, None, None, :] if "padding" in kind else None
    causal = "causal" in kind
    dout = torch.randn(B, H, L, d, generator=g)
    with mock.patch.object(functional, "_attention_math", wraps=functional._attention_math) as spy:
        out = ak.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
    assert spy.call_count == 1
    grads = torch.autograd.grad(out, (q, k, v), dout)
    full = mask if not causal else (ak.causal_mask(L) if mask is None else mask & ak.causal_mask(L))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=full, enable_gqa=kind == "gqa")
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), mock.patch.object(functional, "_attention_math") as spy:  # inference: fused
        ak.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
    assert spy.call_count == 0


def _key_mask(kind: str, lengths: list[int], S: int) -> torch.Tensor:
    """(B, 1, 1, S) boolean key masks: ``prefix`` (right padding), ``left`` (left padding),
    ``holes`` (not a prefix: every third key hidden as well)."""
    mask = ak.padding_mask(torch.tensor(lengths), S)
    if kind == "left":
        mask = mask.flip(-1)
    elif kind == "holes":
        mask = mask & (torch.arange(S) % 3 != 1)
    return mask[:, None, None, :]


@pytest.mark.parametrize("mask_kind", [None, "prefix", "left", "holes"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("L, S", [(37, 37), (13, 37), (37, 13), (1, 29), (29, 1)])
@pytest.mark.parametrize("block", [5, 64])
def test_weights_path_skipping_padding_and_future_matches_torch(mask_kind, causal, L, S, block) -> None:
    """The weights path that scores only each row's allowed prefix (padded items by length,
    causal in query blocks of ``block`` rows, bottom-right aligned for ``L != S``) gives torch's
    fused output and an explicit softmax's weights; masked entries are exactly 0 and rows with
    nothing to attend to (an empty item, left padding under causal, ``L > S``) are zeros."""
    g = torch.Generator().manual_seed(L * 100 + S)
    B, H, d = 4, 3, 7
    q = torch.randn(B, H, L, d, generator=g)
    k, v = (torch.randn(B, H, S, d, generator=g) for _ in range(2))
    lengths = [S, max(S - 5, 1), 0, S // 2]  # full, shorter, empty, half; two items share no length
    mask = None if mask_kind is None else _key_mask(mask_kind, lengths, S)
    with (torch.no_grad(), mock.patch.object(DISPATCH, "prefix_min_scores", 0),
          mock.patch.object(DISPATCH, "causal_block", block)):
        out, w = ak.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, return_weights=True)
    allowed = torch.ones(B, 1, L, S, dtype=torch.bool)
    if causal:
        allowed = allowed & ak.causal_mask(L, S)
    if mask is not None:
        allowed = allowed & mask
    ref_out, ref_w = ref_sdpa(q, k, v, mask=allowed)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    assert not w.masked_select(~allowed).any()  # exact zeros where attention is not allowed
    empty = ~allowed.any(-1)  # (B, 1, L)
    assert not out.masked_select(empty[..., None]).any() and torch.isfinite(out).all()
    has_key = ~empty
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | empty[..., None])
    torch.testing.assert_close(out * has_key[..., None], fused * has_key[..., None], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), has_key.expand(B, H, L).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("L, S", [(37, 37), (13, 37)])
@pytest.mark.parametrize("block", [5, 64])
def test_weights_path_reads_a_causal_right_padded_mask_as_two_prefixes(L, S, block) -> None:
    """A full (B, 1, L, S) mask that is causal and right-padded (how transformers hands a causal
    model's padded batch over) is scored as causal blocks over each item's key prefix: the
    same weights and output as an explicit softmax, exact zeros where masked."""
    g = torch.Generator().manual_seed(L + S)
    B, H, kv, d = 3, 4, 2, 7
    q = torch.randn(B, H, L, d, generator=g)
    k, v = (torch.randn(B, kv, S, d, generator=g) for _ in range(2))
    lengths = [S, S - 5, S // 2]
    mask = ak.causal_mask(L, S) & _key_mask("prefix", lengths, S)  # (B, 1, L, S)
    assert functional._causal_prefix_lengths(mask, (B, H), L, S) == lengths
    for other in (_key_mask("left", lengths, S) & ak.causal_mask(L, S), mask.transpose(-2, -1)[..., :L, :S]):
        assert functional._causal_prefix_lengths(other, (B, H), L, S) is None
    with (torch.no_grad(), mock.patch.object(DISPATCH, "prefix_min_scores", 0),
          mock.patch.object(DISPATCH, "causal_block", block)):
        out, w = ak.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    ke, ve = k.repeat_interleave(H // kv, 1), v.repeat_interleave(H // kv, 1)
    ref_out, ref_w = ref_sdpa(q, ke, ve, mask=mask)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    assert not w.masked_select(~mask).any()


@pytest.mark.parametrize("causal", [False, True])
def test_weights_path_large_padded_and_causal_matches_reference(causal) -> None:
    """At sizes over the dispatch thresholds (no patching), odd lengths, grouped-query heads:
    the skipping path equals an explicit float64 softmax reference."""
    g = torch.Generator().manual_seed(11)
    B, H, kv, L, S, d = 3, 8, 2, 161, 257, 16
    q = torch.randn(B, H, L, d, generator=g)
    k, v = (torch.randn(B, kv, S, d, generator=g) for _ in range(2))
    mask = _key_mask("prefix", [257, 150, 77], S)
    assert H * L * S >= DISPATCH.prefix_min_scores and L > DISPATCH.causal_block
    with torch.inference_mode():
        out, w = ak.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, return_weights=True)
    ke, ve = k.repeat_interleave(H // kv, 1), v.repeat_interleave(H // kv, 1)
    ref_out, ref_w = ref_sdpa(q, ke, ve, mask=mask, causal=causal)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    allowed = mask & (ak.causal_mask(L, S) if causal else True)
    assert not w.masked_select(~allowed).any()


def test_weights_kept_by_the_caller_survive_later_calls_and_dropped_ones_are_reused(monkeypatch) -> None:
    """The weights go on reused memory (runtime.returned_memory): weights a caller keeps (whole,
    as a view, as a numpy array) stay exact through later calls of the same size, each live
    result has its own memory, and a dropped result's memory serves the next call. A pool of
    its own, so blocks that earlier tests free at some moment (garbage collection) play no part."""
    from attnkit.runtime import ReturnedMemory

    pool = ReturnedMemory()
    monkeypatch.setattr(functional, "returned_memory", lambda: pool)
    g = torch.Generator().manual_seed(5)
    B, H, L, d = 2, 4, 256, 16  # 2 MiB of weights a call: over DISPATCH.returned_min_bytes
    calls = [tuple(torch.randn(B, H, L, d, generator=g) for _ in range(3)) for _ in range(4)]
    with torch.inference_mode():
        kept = [ak.scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)[1] for q, k, v in calls[:2]]
        view, array = kept[1][1, 2], kept[1].numpy()
        ptrs = {w.data_ptr() for w in kept}
        dropped = set()
        for q, k, v in calls[2:]:  # each result dropped at once
            w = ak.scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)[1]
            assert w.data_ptr() not in ptrs
            dropped.add(w.data_ptr())
            del w
        assert len(dropped) == 1  # the second call reused the first one's memory
        again = ak.scaled_dot_product_attention(*calls[3], causal=True, return_weights=True)[1]
    assert again.data_ptr() in dropped
    for (q, k, v), w in zip(calls[:2], kept, strict=True):
        torch.testing.assert_close(w, ref_sdpa(q, k, v, causal=True)[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(view, kept[1][1, 2])
    torch.testing.assert_close(torch.from_numpy(array), kept[1])
    torch.testing.assert_close(again, ref_sdpa(*calls[3], causal=True)[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mask_kind", [None, "prefix"])
def test_weights_path_with_grad_keeps_the_reference_path(mask_kind) -> None:
    """Inputs that require grad take the reference math path (autograd through the weights):
    same weights as the skipping path, gradients equal torch's fused SDPA's."""
    g = torch.Generator().manual_seed(5)
    B, H, L, S, d = 2, 2, 70, 70, 8
    q = torch.randn(B, H, L, d, generator=g, requires_grad=True)
    k, v = (torch.randn(B, H, S, d, generator=g, requires_grad=True) for _ in range(2))
    mask = None if mask_kind is None else _key_mask("prefix", [70, 41], S)
    with mock.patch.object(functional, "_attention_math_inplace") as spy:
        out, w = ak.scaled_dot_product_attention(q, k, v, mask=mask, causal=True, return_weights=True)
    assert spy.call_count == 0
    with torch.no_grad():
        out_fast, w_fast = ak.scaled_dot_product_attention(q, k, v, mask=mask, causal=True, return_weights=True)
    torch.testing.assert_close(w.detach(), w_fast, atol=1e-6, rtol=1e-5)
    dout = torch.randn(B, H, L, d, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    allowed = ak.causal_mask(L, S) if mask is None else mask & ak.causal_mask(L, S)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, torch.autograd.grad(ref, (q, k, v), dout), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (1, 1, 1, 1), (2, 1, 5, 1)])
def test_weights_path_mask_broadcast_over_the_keys(shape, causal) -> None:
    """A boolean mask whose key dim is 1 (it broadcasts over every key) is not a key prefix of
    length 1: every key stays allowed, as in torch's own attention."""
    g = torch.Generator().manual_seed(1)
    B, H, L, S, d = 2, 3, 5, 40, 8
    q, k, v = (torch.randn(B, H, n, d, generator=g) for n in (L, S, S))
    mask = torch.ones(shape, dtype=torch.bool)
    with torch.no_grad(), mock.patch.object(DISPATCH, "prefix_min_scores", 0):
        out, w = ak.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, return_weights=True)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=False, attn_mask=ak.causal_mask(L, S) if causal else None)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert (w > 0).sum(-1).min() > 1


def test_weights_path_float_mask_with_a_graph_of_its_own() -> None:
    """A learned additive bias (requires grad) on inputs that need none: the weights and the
    bias's gradient equal torch's."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 20, 8, generator=g) for _ in range(3))
    bias = torch.randn(1, 3, 20, 20, generator=g, requires_grad=True)
    out, w = ak.scaled_dot_product_attention(q, k, v, mask=bias, return_weights=True)
    (grad,) = torch.autograd.grad((out * torch.arange(8.0)).sum(), bias)
    ref_bias = bias.detach().clone().requires_grad_(True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_bias)
    (ref_grad,) = torch.autograd.grad((ref * torch.arange(8.0)).sum(), ref_bias)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8) + bias, -1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("B, H, L, S", [(0, 4, 8, 8), (2, 0, 8, 8), (2, 4, 0, 8), (2, 4, 8, 0)])
def test_weights_path_zero_size_inputs(B, H, L, S) -> None:
    """Empty batches, heads, queries or keys give empty results (zeros for rows with no key),
    as the reference path and torch do."""
    q, k, v = torch.randn(B, H, L, 16), torch.randn(B, H, S, 16), torch.randn(B, H, S, 16)
    with torch.no_grad():
        out, w = ak.scaled_dot_product_attention(q, k, v, return_weights=True)
    assert out.shape == (B, H, L, 16) and w.shape == (B, H, L, S)
    if S == 0:
        assert not out.any()


def test_gqa_weights_are_on_the_output_path() -> None:
    """With fewer kv heads than query heads, the returned weights are the tensor the output
    is computed from: a gradient with respect to them equals the one through repeated kv heads."""
    g = torch.Generator().manual_seed(3)
    B, H, kv, L, d = 2, 4, 2, 6, 8
    q = torch.randn(B, H, L, d, generator=g, requires_grad=True)
    k, v = (torch.randn(B, kv, L, d, generator=g) for _ in range(2))
    out, w = ak.scaled_dot_product_attention(q, k, v, return_weights=True)
    (grad,) = torch.autograd.grad((out * torch.arange(float(d))).sum(), w)
    ke, ve = k.repeat_interleave(H // kv, 1), v.repeat_interleave(H // kv, 1)
    out2, w2 = ak.scaled_dot_product_attention(q, ke, ve, return_weights=True)
    (grad2,) = torch.autograd.grad((out2 * torch.arange(float(d))).sum(), w2)
    torch.testing.assert_close(out, out2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad, grad2, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("q_dtype, mask_dtype", [(torch.float32, torch.float64), (torch.float16, torch.bfloat16),
                                                 (torch.bfloat16, torch.float64)])
def test_a_float_mask_of_any_float_dtype_takes_every_path(q_dtype, mask_dtype) -> None:
    """torch's fused kernel refuses a float mask that is neither float32 nor the queries' dtype;
    every attnkit path (fused, explicit, with or without autograd) takes it, as torch's math
    reference does on the same values."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 8, 16, generator=g).to(q_dtype) for _ in range(3))
    bias = torch.randn(2, 1, 8, 8, generator=g)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias.to(mask_dtype).float())
    tol = 1e-5 if q_dtype == torch.float32 else 2e-2
    for grad in (False, True):
        for return_weights in (False, True):
            with torch.set_grad_enabled(grad):
                got = ak.scaled_dot_product_attention(q, k, v, mask=bias.to(mask_dtype), return_weights=return_weights)
            got = got[0] if return_weights else got
            torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
