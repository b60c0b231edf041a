"""The layers against peers on edge cases that once failed: task-model BERT folders, float masks
of another dtype, torch final norms unlike the layers, left-padded RNN sources, null pad ids.

Peers: ``torch.nn.MultiheadAttention``, ``torch.nn.TransformerEncoder/Decoder`` and Hugging Face
``transformers.BertModel`` (a tiny random config, saved and loaded offline).
"""

import pytest
import torch
from torch import nn

import attnkit as ak
from attnkit.models.bert import BertEncoder


def _bert_config():
    transformers = pytest.importorskip("transformers")
    return transformers, transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=24,
    )


@pytest.mark.parametrize("head", ["BertForMaskedLM", "BertForSequenceClassification"])
def test_bert_task_model_folder_loads_its_encoder_like_hf(tmp_path, head):
    """A task model's folder (bert-base-uncased is a BertForPreTraining checkpoint) keeps the
    encoder under ``bert.``: BertModel.from_pretrained reads it, and so must we."""
    transformers, cfg = _bert_config()
    torch.manual_seed(0)
    getattr(transformers, head)(cfg).eval().save_pretrained(str(tmp_path), safe_serialization=True)
    ref_model = transformers.BertModel.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    ours = BertEncoder.from_pretrained(tmp_path)
    ids = torch.randint(1, 60, (2, 7))
    mask = torch.arange(7) < torch.tensor([7, 4])[:, None]
    with torch.no_grad():
        ref = ref_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        out, _ = ours(ids, mask)
    assert (out - ref)[mask].abs().max() < 1e-5


def test_bert_legacy_gamma_beta_names_load():
    transformers, cfg = _bert_config()
    torch.manual_seed(0)
    hf = transformers.BertModel(cfg).eval()
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in hf.state_dict().items()}
    ours = BertEncoder(ak.models.bert.BertConfig.from_hf(cfg.to_dict())).eval()
    ours.load_hf_state_dict(legacy)
    ids = torch.randint(1, 60, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).last_hidden_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("dtype", "mask_dtype"), [(torch.float32, torch.float64), (torch.bfloat16, torch.float64),
                                                   (torch.float16, torch.bfloat16)])
def test_float_attn_mask_of_another_dtype_works_in_inference(dtype, mask_dtype):
    """Training accepted a float mask of another dtype; inference (the fused kernel) crashed."""
    torch.manual_seed(0)
    peer = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    mha = ak.MultiHeadAttention.from_torch(peer).to(dtype).eval()
    x = torch.randn(2, 5, 16)
    bias = torch.randn(5, 5).triu(1) * 0.5 + nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        want, _ = peer(x, x, x, attn_mask=bias)
        got, _ = mha(x.to(dtype), attn_mask=bias.to(mask_dtype))
        got_w, _ = mha(x.to(dtype), attn_mask=bias.to(mask_dtype), need_weights=True)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    torch.testing.assert_close(got_w.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("norm", [
    lambda E: nn.LayerNorm(E),  # after bias=False layers
    lambda E: nn.LayerNorm(E, elementwise_affine=False),
], ids=["affine-after-bias-free-layers", "non-affine"])
def test_from_torch_final_norm_unlike_the_layers(norm):
    torch.manual_seed(0)
    E = 16
    enc_layer = nn.TransformerEncoderLayer(E, 4, 32, dropout=0.0, batch_first=True, bias=False)
    dec_layer = nn.TransformerDecoderLayer(E, 4, 32, dropout=0.0, batch_first=True, bias=False)
    te = nn.TransformerEncoder(enc_layer, 2, norm=norm(E), enable_nested_tensor=False).eval()
    td = nn.TransformerDecoder(dec_layer, 2, norm=norm(E)).eval()
    with torch.no_grad():
        for p in list(te.norm.parameters()) + list(td.norm.parameters()):
            p.uniform_(0.5, 1.5)
    x, y = torch.randn(2, 6, E), torch.randn(2, 4, E)
    enc, dec = ak.Encoder.from_torch(te).eval(), ak.Decoder.from_torch(td).eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[0], te(x), atol=1e-5, rtol=1e-5)
        causal = nn.Transformer.generate_square_subsequent_mask(4)
        torch.testing.assert_close(dec(y, x)[0], td(y, x, tgt_mask=causal), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="final norm must be nn.LayerNorm"):
        ak.Encoder.from_torch(nn.TransformerEncoder(enc_layer, 1, norm=nn.RMSNorm(E), enable_nested_tensor=False))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_rnn_left_padded_source_equals_unpadded(cell):
    """The RNN read the mask as lengths: a left-padded row ran over its padding and silently
    gave other logits than the same row unpadded (the Transformer model handles it)."""
    torch.manual_seed(0)
    model = ak.RNNSeq2Seq(ak.RNNConfig(20, embed_dim=8, hidden_dim=12, cell=cell, num_layers=2)).double().eval()
    rows = torch.randint(3, 20, (2, 4))
    tgt = torch.randint(3, 20, (2, 3))
    tgt[:, 0] = 1
    left = torch.cat([torch.zeros(2, 2, dtype=torch.long), rows], 1)
    left[1, :2] = rows[1, :2]  # row 1: a hole in the middle instead
    left[1, 2:4] = 0
    mask = left != 0
    logits, weights = model(left, tgt, mask, need_weights=True)
    for b in range(2):  # row 1 holds rows[1] around a hole: [r0, r1, pad, pad, r2, r3]
        torch.testing.assert_close(logits[b : b + 1], model(rows[b : b + 1], tgt[b : b + 1]))
    assert (weights[~mask[:, None, :].expand_as(weights)] == 0).all()


def test_bert_config_with_null_pad_token_id_loads_like_hf(tmp_path):
    """``"pad_token_id": null`` is a valid HF BERT config (no padding row); it raised TypeError."""
    transformers, cfg = _bert_config()
    cfg.pad_token_id = None
    torch.manual_seed(0)
    transformers.BertModel(cfg).eval().save_pretrained(str(tmp_path), safe_serialization=True)
    ref_model = transformers.BertModel.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    ours = BertEncoder.from_pretrained(tmp_path)
    assert ours.config.pad_token_id is None
    ids = torch.randint(0, 60, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], ref_model(ids).last_hidden_state, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pad_token_id=60"):
        ak.models.bert.BertConfig(vocab_size=60, hidden_size=32, num_attention_heads=4, pad_token_id=60)


def test_learned_positions_past_the_table_are_one_valueerror_packed_or_padded():
    emb = ak.Embeddings(10, 8, position="learned", max_len=4)
    with pytest.raises(ValueError, match="longer than max_len=4"):
        emb(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="reaches position 4, past max_len=4"):
        emb(torch.zeros(6, dtype=torch.long), positions=torch.tensor([0, 1, 0, 1, 2, 4]))
    assert emb(torch.zeros(4, dtype=torch.long), positions=torch.tensor([0, 1, 2, 3])).shape == (4, 8)
