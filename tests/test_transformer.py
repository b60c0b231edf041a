"""Transformer layers and stacks against torch.nn.Transformer{Encoder,Decoder} (fp32, 1e-5 at
real positions), cached decoding against the full causal forward, positions and config checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnkit as ak
from attnkit.transformer import (
    Embeddings,
    Encoder,
    EncoderLayer,
    FeedForward,
    RotaryEmbedding,
    sinusoidal_table,
)

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
    layer = EncoderLayer(16, 2, 32, activation="gelu", layer_norm_eps=1e-12)
    names = dict(layer.named_modules())
    for name in ("self_attn", "ff.linear1", "ff.linear2", "norm1", "norm2"):
        assert name in names
    assert isinstance(layer.self_attn, ak.MultiHeadAttention)
    assert layer.norm2.eps == 1e-12


def test_encoder_padding_rows_do_not_leak_and_no_nan():
    enc = Encoder(2, 16, 4, 32, dropout=0.0).eval()
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
