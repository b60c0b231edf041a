"""Transformer layers and stacks against torch.nn.Transformer{Encoder,Decoder} (fp32, 1e-5 at
real positions), cached decoding against the full causal forward, positions and config checks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnkit as ak
from attnkit.distributed import SequenceParallel
from attnkit.models.transformer_seq2seq import TransformerConfig
from attnkit.positions import RotaryEmbedding, sinusoidal_table
from attnkit.transformer import (
    Decoder,
    Embeddings,
    Encoder,
    EncoderLayer,
    FeedForward,
    LayerSettings,
)
from attnkit.varlen import Packed

TOL = dict(atol=1e-5, rtol=1e-5)


def _lengths_mask(B: int, S: int) -> torch.Tensor:
    lengths = torch.randint(1, S + 1, (B,))
    lengths[0] = S
    return ak.padding_mask(lengths, S)  # (B, S) True = real


def _torch_encoder(E, H, F_, n, norm_first, activation, final_norm, batch_first=True, eps=1e-5):
    layer = nn.TransformerEncoderLayer(
        E, H, F_, dropout=0.0, activation=activation, batch_first=batch_first, norm_first=norm_first,
        layer_norm_eps=eps,
    )
    norm = nn.LayerNorm(E, eps=eps) if final_norm else None
    enc = nn.TransformerEncoder(layer, n, norm=norm, enable_nested_tensor=False)
    for p in enc.parameters():  # non-trivial norms too
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    return enc.eval()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("final_norm", [False, True])
def test_encoder_matches_torch(norm_first, activation, final_norm):
    E, H, F_, B, S = 32, 4, 64, 3, 7
    ref = _torch_encoder(E, H, F_, 2, norm_first, activation, final_norm)
    ours = Encoder.from_torch(ref).eval()
    x = torch.randn(B, S, E)
    mask = _lengths_mask(B, S)
    with torch.no_grad():
        want = ref(x, src_key_padding_mask=~mask)
        got, weights = ours(x, key_mask=mask, need_weights=True)
        got_fast, none = ours(x, key_mask=mask)
    assert none is None and len(weights) == 2 and weights[0].shape == (B, H, S, S)
    torch.testing.assert_close(got[mask], want[mask], **TOL)
    torch.testing.assert_close(got_fast[mask], want[mask], **TOL)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_encoder_from_torch_sequence_first_and_eps():
    ref = _torch_encoder(16, 2, 32, 1, False, "relu", False, batch_first=False, eps=1e-12)
    ours = Encoder.from_torch(ref).eval()
    assert ours.layers[0].norm1.eps == 1e-12
    x = torch.randn(5, 2, 16)  # (S, B, E) for the torch side
    with torch.no_grad():
        torch.testing.assert_close(ours(x.transpose(0, 1))[0], ref(x).transpose(0, 1), **TOL)


def test_encoder_layer_submodule_names():
    layer = EncoderLayer(LayerSettings(16, 2, 32, activation="gelu", layer_norm_eps=1e-12))
    names = dict(layer.named_modules())
    for name in ("self_attn", "ff.linear1", "ff.linear2", "norm1", "norm2"):
        assert name in names
    assert isinstance(layer.self_attn, ak.MultiHeadAttention)
    assert layer.norm2.eps == 1e-12


def test_encoder_padding_rows_do_not_leak_and_no_nan():
    enc = Encoder(2, LayerSettings(16, 4, 32, dropout=0.0)).eval()
    x = torch.randn(2, 6, 16, requires_grad=True)
    mask = ak.padding_mask([6, 3], 6)
    out, _ = enc(x, key_mask=mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    x2 = x.detach().clone()
    x2[1, 3:] = 100.0  # changing padding must not change real positions
    out2, _ = enc(x2, key_mask=mask)
    torch.testing.assert_close(out2[mask], out.detach()[mask], **TOL)


def test_feedforward_rejects_unknown_activation():
    with pytest.raises(ValueError, match="swish"):
        FeedForward(8, 16, activation="swish")


def test_sinusoidal_table_formula():
    t = sinusoidal_table(50, 8)
    p, i = 17, 3  # dims 6 (sin) and 7 (cos) use frequency 10000^(-6/8)
    angle = p / 10000 ** (6 / 8)
    torch.testing.assert_close(t[p, 6], torch.tensor(angle).sin())
    torch.testing.assert_close(t[p, 7], torch.tensor(angle).cos())
    assert i == 3


def test_learned_positions_too_long_raises():
    emb = Embeddings(10, 8, position="learned", max_len=4)
    emb(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="5.*max_len=4"):
        emb(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len=4"):
        emb(torch.zeros(1, 2, dtype=torch.long), offset=3)


def test_rotary_scores_depend_on_distance_only():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    s1 = rope(q, 3) @ rope(k, 1).transpose(-1, -2)
    s2 = rope(q, 40) @ rope(k, 38).transpose(-1, -2)
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=1e-4)
    x = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(rope(x, 0).norm(dim=-1), x.norm(dim=-1))  # a rotation
    torch.testing.assert_close(rope(x, 600)[..., 1:, :], rope(torch.cat([x[..., :1, :], x], -2), 599)[..., 2:, :])


# --------------------------------------------------------------------------- decoder


def _torch_decoder(E, H, F_, n, norm_first, activation, final_norm):
    layer = nn.TransformerDecoderLayer(
        E, H, F_, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    )
    dec = nn.TransformerDecoder(layer, n, norm=nn.LayerNorm(E) if final_norm else None)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return dec.eval()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation,final_norm", [("relu", True), ("gelu", False)])
def test_decoder_matches_torch(norm_first, activation, final_norm):
    E, H, F_, B, L, S = 32, 4, 64, 3, 6, 8
    ref = _torch_decoder(E, H, F_, 2, norm_first, activation, final_norm)
    ours = Decoder.from_torch(ref).eval()
    y, memory = torch.randn(B, L, E), torch.randn(B, S, E)
    tgt_mask, mem_mask = _lengths_mask(B, L), _lengths_mask(B, S)
    with torch.no_grad():
        want = ref(
            y, memory, tgt_mask=~ak.causal_mask(L), tgt_is_causal=True,
            tgt_key_padding_mask=~tgt_mask, memory_key_padding_mask=~mem_mask,
        )
        got, (self_w, cross_w) = ours(y, memory, key_mask=tgt_mask, memory_mask=mem_mask, need_weights=True)
        got_fast, none = ours(y, memory, memory_mask=mem_mask)  # right padding: causal is enough
    assert none is None and self_w[1].shape == (B, H, L, L) and cross_w[0].shape == (B, H, L, S)
    torch.testing.assert_close(got[tgt_mask], want[tgt_mask], **TOL)
    torch.testing.assert_close(got_fast[tgt_mask], want[tgt_mask], **TOL)
    assert torch.all(self_w[0].triu(1) == 0)  # causal
    assert torch.all(cross_w[0].masked_select(~mem_mask[:, None, None, :]) == 0)


@pytest.mark.parametrize("kv_heads,norm_first,rotary", [(None, False, False), (2, True, False), (1, False, True)])
def test_decoder_cache_equals_full_forward(kv_heads, norm_first, rotary):
    E, H, B, L, S = 32, 4, 2, 9, 5
    rope = RotaryEmbedding(E // H) if rotary else None
    dec = Decoder(2, LayerSettings(E, H, 48, kv_heads=kv_heads, norm_first=norm_first, dropout=0.0), rotary=rope).eval()
    y, memory = torch.randn(B, L, E), torch.randn(B, S, E)
    mem_mask = ak.padding_mask([5, 3], S)
    with torch.no_grad():
        full, (_, cross_full) = dec(y, memory, memory_mask=mem_mask, need_weights=True)
        cache = dec.new_cache()
        steps, crosses = [], []
        for chunk in (y[:, :1], y[:, 1:2], y[:, 2:5], y[:, 5:6], y[:, 6:]):  # steps and chunks
            h, (_, cross) = dec(chunk, memory, memory_mask=mem_mask, need_weights=True, cache=cache)
            steps.append(h)
            crosses.append(cross[-1])
    assert len(cache) == L
    torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)
    torch.testing.assert_close(torch.cat(crosses, 2), cross_full[-1], **TOL)


def test_rope_model_differs_from_no_positions_and_is_shift_invariant():
    # with rotary and no other positions, self-attention depends on relative offsets only
    rope = RotaryEmbedding(8)
    settings = LayerSettings(16, 2, 32, dropout=0.0)
    enc = Encoder(1, settings, rotary=rope).eval()
    no_rope = Encoder(1, settings).eval()
    no_rope.load_state_dict(enc.state_dict())  # the same weights, no rotation
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        out = enc(x)[0]
        plain = no_rope(x)[0]
    assert not torch.allclose(out, plain, atol=1e-4)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(embed_dim=30, num_heads=4), "embed_dim=30.*num_heads=4"),
        (dict(num_heads=4, kv_heads=3), "kv_heads=3.*num_heads=4"),
        (dict(activation="tanh"), "'tanh'"),
        (dict(position="alibi"), "'alibi'"),
        (dict(dropout=1.5), "1.5"),
        (dict(embed_dim=36, num_heads=4, position="rope"), "embed_dim=36.*num_heads=4"),
        (dict(pad_id=1, bos_id=1), "'pad_id': 1, 'bos_id': 1"),
        (dict(eos_id=50), "eos_id=50.*src 10"),
        (dict(num_decoder_layers=0), "num_decoder_layers"),
        (dict(max_len=0), "max_len.*0"),
    ],
)
def test_bad_config_raises_naming_values(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TransformerConfig(src_vocab_size=10, **kwargs)


def test_config_defaults_are_the_documented_ones():
    c = TransformerConfig(100)
    assert (c.tgt_vocab_size, c.embed_dim, c.num_heads, c.kv_heads, c.num_encoder_layers) == (None, 256, 4, None, 3)
    assert (c.num_decoder_layers, c.ff_dim, c.dropout, c.activation, c.norm_first) == (3, 1024, 0.1, "relu", False)
    assert (c.position, c.max_len, c.tie_embeddings, c.pad_id, c.bos_id, c.eos_id) == ("sinusoidal", 512, True, 0, 1, 2)
    assert c.target_vocab_size == 100


# --------------------------------------------------------------------------- packed layers


@pytest.mark.parametrize("norm_first,activation,bias,kv_heads", [
    (False, "gelu", True, None), (True, "relu", True, 2), (False, "relu", False, 1), (True, "gelu", False, None),
])
@pytest.mark.parametrize("inference", [False, True])
def test_packed_forward_equals_padded_forward(norm_first, activation, bias, kv_heads, inference):
    """EncoderLayer.forward(packed=) on the real tokens == forward on the padded batch (peer:
    nn.TransformerEncoderLayer through from_torch for the bias=True cases). In inference a
    second, smaller batch reuses the scratch buffers of the first."""
    torch.manual_seed(0)
    settings = LayerSettings(32, 4, 48, kv_heads=kv_heads, dropout=0.0, activation=activation,
                             norm_first=norm_first, bias=bias)
    layer = EncoderLayer(settings).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    lengths = [7, 7, 3, 30, 1, 0, 25]  # runs of equal length, both attention paths, an empty one
    x = torch.randn(len(lengths), max(lengths), 32)
    mask = ak.padding_mask(lengths, max(lengths))
    with torch.inference_mode() if inference else torch.enable_grad():
        want, _ = layer(x, key_mask=mask)
        got, _ = layer(x[mask], packed=Packed.from_lengths(lengths))
        again, _ = layer(x[mask][: sum(lengths[:3])], packed=Packed.from_lengths(lengths[:3]))  # a smaller batch
    torch.testing.assert_close(got, want[mask], **TOL)
    torch.testing.assert_close(again, want[mask][: sum(lengths[:3])], **TOL)


@pytest.mark.parametrize("fused", [True, False], ids=["onednn", "addmm"])
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_runtime_linear_in_bf16_equals_torch_in_fp32(fused, activation, monkeypatch):
    """runtime.linear in bfloat16, through oneDNN's fused linear (bias and activation in the
    matmul, the weight reordered once) and through addmm, against torch's F.linear/F.gelu in float32."""
    from attnkit import runtime

    if fused and not runtime._onednn_bf16_linear():
        pytest.skip("oneDNN's fused bf16 linear serves CPUs with native bf16 matmul only")
    monkeypatch.setattr(runtime, "_onednn_bf16_linear", lambda: fused)
    torch.manual_seed(0)
    x, w, b = torch.randn(70, 48), torch.randn(40, 48) / 7, torch.randn(40)
    want = F.linear(x, w, b)
    want = {None: want, "relu": F.relu(want), "gelu": F.gelu(want)}[activation]
    owner = torch.nn.Linear(48, 40)
    bf = [t.bfloat16() for t in (x, w, b)]
    with torch.inference_mode():
        got = runtime.linear(*bf, owner=owner, activation=activation)
        again = runtime.linear(*bf, owner=owner, activation=activation)  # the kept weight layout
    assert got.dtype == torch.bfloat16 and got.shape == (70, 40)
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.02)
    assert torch.equal(got, again)


def test_runtime_linear_refuses_bad_activation():
    from attnkit import runtime

    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="'tanh'"):
        runtime.linear(x, w, None, owner=torch.nn.Linear(4, 5), activation="tanh")


@pytest.mark.parametrize("fused", [True, False], ids=["onednn", "addmm"])
@pytest.mark.parametrize("norm_first,activation", [(False, "gelu"), (True, "relu")])
def test_bf16_packed_forward_follows_the_fp32_padded_forward(fused, norm_first, activation, monkeypatch):
    """A bfloat16 packed layer (fused or addmm linears, the explicit or fused attention) against
    the float32 padded forward: within bf16 rounding, no NaN."""
    from attnkit import runtime

    if fused and not runtime._onednn_bf16_linear():
        pytest.skip("oneDNN's fused bf16 linear serves CPUs with native bf16 matmul only")
    monkeypatch.setattr(runtime, "_onednn_bf16_linear", lambda: fused)
    torch.manual_seed(0)
    settings = LayerSettings(64, 4, 96, dropout=0.0, activation=activation, norm_first=norm_first)
    layer = EncoderLayer(settings).eval()
    lengths = [9, 9, 30, 3, 0, 17]
    x = torch.randn(len(lengths), max(lengths), 64)
    mask = ak.padding_mask(lengths, max(lengths))
    with torch.inference_mode():
        want, _ = layer(x, key_mask=mask)
        bf16 = copy.deepcopy(layer)
        for lin in (bf16.self_attn.q_proj, bf16.self_attn.k_proj, bf16.self_attn.v_proj, bf16.self_attn.out_proj,
                    bf16.ff.linear1, bf16.ff.linear2):
            lin.to(torch.bfloat16)
        got, _ = bf16(x[mask].bfloat16(), packed=Packed.from_lengths(lengths))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got.float()).all()
    cos = F.cosine_similarity(got.float(), want[mask], dim=-1)
    assert cos.min() > 0.999, cos


def test_packed_forward_refuses_what_it_does_not_compute():
    settings = LayerSettings(16, 2, 32, dropout=0.1)
    x = torch.randn(5, 16)
    five = Packed.from_lengths([5])
    with pytest.raises(ValueError, match="rotary"):
        EncoderLayer(settings, rotary=RotaryEmbedding(8))(x, packed=five)
    with pytest.raises(ValueError, match="sequence_parallel"):
        EncoderLayer(settings, sequence_parallel=SequenceParallel())(x, packed=five)
    with pytest.raises(ValueError, match="attention dropout 0.1 in training"):
        EncoderLayer(settings).train()(x, packed=five)
    with pytest.raises(ValueError, match=r"N = sum\(lengths\) = 4"):
        EncoderLayer(settings).eval()(x, packed=Packed.from_lengths([4]))
    with pytest.raises(ValueError, match="key_mask, need_weights"):
        EncoderLayer(settings).eval()(x, key_mask=torch.ones(1, 5, dtype=torch.bool), need_weights=True, packed=five)
