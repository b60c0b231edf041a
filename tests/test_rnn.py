"""RNN encoder-decoder: peers are torch's own GRU/LSTM run per sequence without padding and
the decoder equations written out with nn.GRUCell."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnkit as ak
from attnkit.models.generation import generate
from attnkit.rnn import RNNConfig

V = 23


pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw) -> ak.RNNSeq2Seq:
    cfg = {"embed_dim": 8, "hidden_dim": 12, **kw}
    return ak.RNNSeq2Seq(RNNConfig(V, **cfg))


def batch(B: int = 4, S: int = 9, T: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, V, (B, S), generator=g)
    lengths = torch.tensor([S, S - 3, 2, S - 1][:B])
    src[torch.arange(S)[None, :] >= lengths[:, None]] = 0  # pad
    tgt = torch.randint(3, V, (B, T), generator=g)
    return src, lengths, tgt


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize("kw, word", [
    ({"cell": "rnn"}, "cell"),
    ({"attention": "luong"}, "attention"),
    ({"hidden_dim": 13}, "hidden_dim=13"),
    ({"dropout": 1.0}, "dropout"),
    ({"eos_id": 1}, "differ"),
    ({"pad_id": 99}, "pad_id=99"),
    ({"num_layers": 0}, "num_layers"),
    ({"tie_embeddings": True, "embed_dim": 8}, "tie_embeddings"),
])
def test_config_errors_name_the_values(kw, word):
    with pytest.raises(ValueError, match=word):
        RNNConfig(V, **{"hidden_dim": 12, **kw})


def test_shared_vocab_default():
    assert RNNConfig(V).tgt_vocab_size == V


# ---------------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_encoder_matches_torch_rnn_per_sequence(cell, bidirectional):
    """Packed batch == torch's RNN run on each unpadded sequence alone (padding costs nothing
    and changes nothing); final state = last forward step and first backward step."""
    cfg = RNNConfig(V, embed_dim=8, hidden_dim=12, num_layers=2, cell=cell, bidirectional=bidirectional)
    enc = ak.RNNEncoder(cfg)
    src, lengths, _ = batch()
    mask = src != 0
    out, final = enc(src, mask)
    h = final[0] if cell == "lstm" else final
    assert out.shape == (4, 9, 12) and h.shape == (2, 4, 12)
    peer = (nn.GRU if cell == "gru" else nn.LSTM)(8, 12 // (2 if bidirectional else 1), num_layers=2,
                                                   batch_first=True, bidirectional=bidirectional)
    peer.load_state_dict(enc.rnn.state_dict())
    for b, n in enumerate(lengths.tolist()):
        ref_out, ref_final = peer(enc.embed(src[b:b + 1, :n]))
        ref_h = ref_final[0] if cell == "lstm" else ref_final  # (layers * dirs, 1, H / dirs)
        torch.testing.assert_close(out[b, :n], ref_out[0], atol=1e-6, rtol=1e-5)
        assert (out[b, n:] == 0).all()
        ref_h = ref_h.view(2, 2 if bidirectional else 1, -1).flatten(1)  # (layers, H)
        torch.testing.assert_close(h[:, b], ref_h, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------- decoder


def test_decoder_step_equals_the_equations():
    """One additive-attention step against the formulas written out with nn.GRUCell."""
    torch.manual_seed(1)
    model = small(bidirectional=False)
    src, _, tgt = batch()
    mask = src != 0
    state = model.encode(src)
    logits, weights, _ = model.decode_step(state, tgt[:, :1])

    dec = model.decoder
    memory, final = model.encoder(src, mask)
    cell = nn.GRUCell(8 + 12, 12)
    cell.weight_ih.data, cell.weight_hh.data = dec.rnn.weight_ih_l0.data, dec.rnn.weight_hh_l0.data
    cell.bias_ih.data, cell.bias_hh.data = dec.rnn.bias_ih_l0.data, dec.rnn.bias_hh_l0.data
    h0 = torch.tanh(dec.bridge(final[-1]))
    x = torch.cat([dec.embed(tgt[:, 0]), torch.zeros(4, 12)], dim=-1)  # input feeding starts at 0
    h1 = cell(x, h0)
    att = dec.attention
    e = att.v(torch.tanh(att.w_query(h1)[:, None, :] + att.w_key(memory))).squeeze(-1)  # (B, S)
    a = torch.softmax(e.masked_fill(~mask, float("-inf")), dim=-1)
    c = (a[:, :, None] * memory).sum(1)
    ref = dec.out(torch.tanh(dec.combine(torch.cat([h1, c], -1))))
    torch.testing.assert_close(weights, a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["additive", "general", "dot", "none"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_forward_equals_stepwise_and_ignores_padding(attention, cell):
    torch.manual_seed(0)
    model = small(attention=attention, cell=cell, num_layers=2)
    src, lengths, tgt = batch()
    logits, weights = model(src, tgt, need_weights=True)
    assert logits.shape == (4, 6, V) and weights.shape == (4, 6, 9)
    same_logits, maps = model.forward_with_weights(src, tgt)  # the seq2seq models' one format
    assert torch.equal(same_logits, logits) and list(maps) == ["cross"] and torch.equal(maps["cross"][0][:, 0], weights)
    state, steps = model.encode(src), []
    for t in range(tgt.shape[1]):
        step_logits, _, state = model.decode_step(state, tgt[:, t:t + 1])
        steps.append(step_logits)
    torch.testing.assert_close(torch.stack(steps, 1), logits, atol=1e-6, rtol=1e-5)
    for b, n in enumerate(lengths.tolist()):  # one unpadded sequence gives the same result
        torch.testing.assert_close(model(src[b:b + 1, :n], tgt[b:b + 1]), logits[b:b + 1], atol=1e-5, rtol=1e-4)
    if attention == "none":
        assert (weights == 0).all()
    else:
        assert (weights.masked_select((src == 0)[:, None, :].expand_as(weights)) == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(4, 6))


def test_no_attention_context_is_the_last_state():
    """attention="none": the output does not depend on encoder outputs except the final state."""
    torch.manual_seed(0)
    model = small(attention="none", bidirectional=False)
    src, _, tgt = batch()
    state = model.encode(src)
    memory2 = torch.randn_like(state.memory)
    state2 = ak.rnn.DecoderState(memory2, None, state.mask, state.last, state.feed, state.hidden)
    torch.testing.assert_close(model.decode_step(state, tgt[:, :1])[0], model.decode_step(state2, tgt[:, :1])[0])


def test_explicit_src_mask_wins():
    torch.manual_seed(0)
    model = small()
    src, _, tgt = batch()
    mask = src != 0
    mask[0, 5:] = False  # treat the tail of row 0 as padding although it holds tokens
    logits, weights = model(src, tgt, mask, need_weights=True)
    assert (weights[0, :, 5:] == 0).all()
    torch.testing.assert_close(logits[0:1], model(src[0:1, :5], tgt[0:1]), atol=1e-5, rtol=1e-4)


def test_gradcheck_float64():
    """Gradients through packing, masked attention and input feeding, by finite differences."""
    torch.manual_seed(0)
    model = ak.RNNSeq2Seq(RNNConfig(V, embed_dim=3, hidden_dim=4, attention_dim=3)).double()
    src, _, tgt = batch(B=2, S=4, T=3)
    names = ["decoder.attention.v.weight", "decoder.attention.w_query.weight", "encoder.rnn.weight_hh_l0"]
    params = dict(model.named_parameters())

    probe = torch.randn(2, 3, V, dtype=torch.float64)  # one scalar output: one backward pass

    def f(*tensors):
        return (torch.func.functional_call(model, dict(zip(names, tensors, strict=True)), (src, tgt)) * probe).sum()

    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("attention", ["additive", "dot", "none"])
def test_generate_greedy_matches_manual_argmax(attention):
    torch.manual_seed(3)
    model = small(attention=attention).eval()
    src, _, _ = batch()
    tokens, attn = generate(model, src, max_len=7, return_attention=True)
    state = model.encode(src)
    last = torch.full((4, 1), 1)
    for t in range(tokens.shape[1]):
        logits, weights, state = model.decode_step(state, last)
        logits[:, [0, 1]] = float("-inf")  # pad and BOS are never emitted
        nxt = logits.argmax(-1)
        alive = t == 0 or ~(tokens[:, :t] == 2).any(1)
        assert ((tokens[:, t] == nxt) | ~torch.as_tensor(alive)).all()
        torch.testing.assert_close(attn[:, t][alive], weights[alive])
        last = nxt[:, None]
    beam1 = generate(model, src, max_len=7, method="beam", beam_size=1)
    assert torch.equal(beam1, tokens)
    beam = generate(model, src, max_len=7, method="beam", beam_size=3)
    assert beam.shape[0] == 4 and beam.dtype == torch.long
