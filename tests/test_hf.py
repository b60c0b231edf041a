"""attnkit inside Hugging Face models (``attn_implementation="attnkit"``) against the peer that
defines the semantics, transformers' own ``eager`` attention, on tiny random models built from
configs (no network): logits, attention weights, greedy generation, one training step's
gradients, and packed (padding-free) batches against each sequence run alone."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import torch

tf = pytest.importorskip("transformers")

from embed_support import hf_sentence_folder  # noqa: E402

import attnkit.hf as akhf  # noqa: E402
import attnkit.hf.attention as akattn  # noqa: E402
import attnkit.varlen  # noqa: E402

NAME = akhf.register()
V = 64  # vocabulary of every tiny model
PAD = 0

# family -> (kind, builder); every dropout is 0 so a training step is deterministic
FAMILIES = {
    "llama": ("decoder", lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD))),
    "mistral": ("decoder", lambda: tf.MistralForCausalLM(tf.MistralConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, sliding_window=3, pad_token_id=PAD))),
    "gemma2": ("decoder", lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, max_position_embeddings=64, sliding_window=3,
        attn_logit_softcapping=1.5, final_logit_softcapping=30.0, pad_token_id=PAD))),
    "qwen2": ("decoder", lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD))),
    "gpt_oss": ("decoder", lambda: tf.GptOssForCausalLM(tf.GptOssConfig(  # attention sinks, sliding layers, MoE
        vocab_size=V, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=3,
        max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=PAD))),
    "gpt2": ("decoder", lambda: tf.GPT2LMHeadModel(tf.GPT2Config(
        vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, pad_token_id=PAD))),
    "bert": ("encoder", lambda: tf.BertForMaskedLM(tf.BertConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=PAD))),
    "bart": ("seq2seq", lambda: tf.BartForConditionalGeneration(tf.BartConfig(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=2, forced_eos_token_id=None))),
    "t5": ("seq2seq", lambda: tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        dropout_rate=0.0, pad_token_id=PAD, eos_token_id=1, decoder_start_token_id=PAD))),
}
PACKABLE = [f for f, (kind, _) in FAMILIES.items() if kind != "seq2seq"]
LENGTHS = [7, 4, 6]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    torch.manual_seed(0)
    kind, build = FAMILIES[request.param]
    model = build().eval()
    model.set_attn_implementation(NAME)  # the tests' default; _run switches to eager and back
    with torch.no_grad():  # random weights that are not all tiny: attention that is far from uniform
        for p in model.parameters() if request.param != "t5" else ():  # (T5's scores are unscaled already)
            if p.dim() > 1:
                p.mul_(3.0)
    return request.param, kind, model


def _batch(side: str, lengths=LENGTHS) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask (B, T)`` padded on ``side`` with PAD."""
    g = torch.Generator().manual_seed(1)
    T = max(lengths)
    ids = torch.full((len(lengths), T), PAD)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        cols = slice(T - n, T) if side == "left" else slice(0, n)
        ids[b, cols] = torch.randint(3, V, (n,), generator=g)
        mask[b, cols] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _inputs(kind: str, side: str) -> dict[str, torch.Tensor]:
    batch = _batch(side)
    if kind == "seq2seq":  # the encoder input is padded; the decoder reads 5 tokens
        batch["decoder_input_ids"] = torch.randint(3, V, (len(LENGTHS), 5), generator=torch.Generator().manual_seed(2))
    return batch


def _run(model, impl: str, **inputs):
    model.set_attn_implementation(impl)
    try:
        return model(**inputs, return_dict=True)
    finally:
        model.set_attn_implementation(NAME)


def _query_rows(kind: str, inputs) -> torch.Tensor:
    """``(B, T)`` True at the query rows that attend to something (real tokens)."""
    if kind == "seq2seq":
        return torch.ones_like(inputs["decoder_input_ids"], dtype=torch.bool)
    return inputs["attention_mask"].bool()


@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_equal_eager_on_padded_batches(family, side):
    name, kind, model = family
    inputs = _inputs(kind, side)
    with torch.no_grad():
        eager, ours = _run(model, "eager", **inputs), _run(model, NAME, **inputs)
    rows = _query_rows(kind, inputs)
    torch.testing.assert_close(ours.logits[rows], eager.logits[rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_output_attentions_equal_eager(family, side):
    name, kind, model = family
    inputs = _inputs(kind, side)
    with torch.no_grad():
        eager = _run(model, "eager", **inputs, output_attentions=True)
        ours = _run(model, NAME, **inputs, output_attentions=True)
    if kind == "seq2seq":
        enc_rows = inputs["attention_mask"].bool()
        pairs = [(eager.encoder_attentions, ours.encoder_attentions, enc_rows),
                 (eager.decoder_attentions, ours.decoder_attentions, None),
                 (eager.cross_attentions, ours.cross_attentions, None)]
    else:
        pairs = [(eager.attentions, ours.attentions, inputs["attention_mask"].bool())]
    for theirs, mine, rows in pairs:
        assert len(mine) == len(theirs) and all(w is not None for w in mine)
        for w_eager, w_ours in zip(theirs, mine, strict=True):
            assert w_ours.shape == w_eager.shape
            if rows is not None:  # (B, H, T, S) -> the rows of real query tokens
                w_eager, w_ours = w_eager.transpose(1, 2)[rows], w_ours.transpose(1, 2)[rows]
            torch.testing.assert_close(w_ours, w_eager, atol=1e-6, rtol=0)


def test_bfloat16_logits_close_to_eager(family):
    """bfloat16 (native or emulated): both softmax in float32 and multiply in bfloat16, in another
    order; the logits at real tokens differ by at most 2 bfloat16 steps of the largest logit
    (measured 0 to 1.1 steps on Llama, Gemma 2, BERT and T5)."""
    name, kind, model = family
    model = copy.deepcopy(model).to(torch.bfloat16)
    inputs = _inputs(kind, "left")
    with torch.no_grad():
        eager, ours = _run(model, "eager", **inputs), _run(model, NAME, **inputs)
    rows = _query_rows(kind, inputs)
    assert ours.logits.dtype == torch.bfloat16
    e, o = eager.logits[rows].float(), ours.logits[rows].float()
    assert float((o - e).abs().max()) <= 2 * 2**-7 * float(e.abs().max())


def test_weights_only_when_asked(family, monkeypatch):
    """Without output_attentions attnkit's fused path runs and no weights come back."""
    name, kind, model = family
    asked = []
    real = akattn.scaled_dot_product_attention

    def spy(*args, **kwargs):
        asked.append(kwargs.get("return_weights", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(akattn, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        out = _run(model, NAME, **_inputs(kind, "right"))
    assert getattr(out, "attentions", None) is None
    if name not in ("gemma2", "gpt_oss"):  # soft-capped scores and sinks are written out by attnkit.hf itself
        assert asked and not any(asked)


def test_generate_greedy_equals_eager(family):
    name, kind, model = family
    if kind == "encoder":
        pytest.skip("an encoder-only model does not generate")
    inputs = _batch("left" if kind == "decoder" else "right")
    tokens = {}
    for impl in ("eager", NAME):
        model.set_attn_implementation(impl)
        tokens[impl] = model.generate(**inputs, max_new_tokens=6, do_sample=False, num_beams=1, pad_token_id=PAD)
    model.set_attn_implementation(NAME)
    assert torch.equal(tokens[NAME], tokens["eager"])


def test_training_step_gradients_equal_eager(family):
    name, kind, model = family
    inputs = _inputs(kind, "right")
    labels = inputs.get("decoder_input_ids", inputs["input_ids"]).clone()
    if kind != "seq2seq":
        labels[inputs["attention_mask"] == 0] = -100
    grads = {}
    model.train()
    try:
        for impl in ("eager", NAME):
            model.zero_grad()
            _run(model, impl, **inputs, labels=labels).loss.backward()
            grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        model.eval()
        model.zero_grad()
    assert grads[NAME].keys() == grads["eager"].keys() and grads[NAME]
    for n, g in grads["eager"].items():
        torch.testing.assert_close(grads[NAME][n], g, atol=1e-5, rtol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def test_attention_dropout_draws_eager_masks():
    """In training the dropout mask is eager's for the same seed (the weights path runs)."""
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention_dropout=0.5, pad_token_id=PAD)).train()
    inputs = _batch("right")
    logits = {}
    for impl in ("eager", NAME):
        torch.manual_seed(7)
        logits[impl] = _run(model, impl, **inputs).logits
    rows = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits[NAME][rows], logits["eager"][rows], atol=1e-5, rtol=0)
    torch.manual_seed(8)  # and dropout does act: another seed changes the result
    assert not torch.allclose(_run(model, NAME, **inputs).logits[rows], logits[NAME][rows], atol=1e-3)


def test_rows_with_nothing_to_attend_to():
    """A left-padded causal model's first rows see only padding: eager makes them uniform over
    every key (its mask is the dtype's minimum, not -inf); attnkit makes them zero. No NaN."""
    torch.manual_seed(0)
    model = FAMILIES["llama"][1]().eval()
    inputs = _batch("left")
    with torch.no_grad():
        eager = _run(model, "eager", **inputs, output_attentions=True)
        ours = _run(model, NAME, **inputs, output_attentions=True)
    T = inputs["input_ids"].shape[1]
    pad_rows = ~inputs["attention_mask"].bool()  # (B, T)
    assert pad_rows.any()
    for w_eager, w_ours in zip(eager.attentions, ours.attentions, strict=True):
        e, o = w_eager.transpose(1, 2)[pad_rows], w_ours.transpose(1, 2)[pad_rows]  # (rows, H, T)
        torch.testing.assert_close(e, torch.full_like(e, 1.0 / T))
        assert torch.equal(o, torch.zeros_like(o))
    assert torch.isfinite(ours.logits).all()


# ----------------------------------------------------------------------------- packed batches


def _alone(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids[None], return_dict=True).logits[0]  # (n, V)


@pytest.mark.parametrize("form", ["position_ids", "flash_kwargs"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_equals_each_sequence_alone(family, form, side, monkeypatch):
    name, kind, model = family
    if kind == "seq2seq":
        pytest.skip("encoder-decoder families are not packed")
    batch = _batch(side)
    packed = akhf.pack(batch)
    if form == "position_ids":
        packed = {k: v for k, v in packed.items() if not k.startswith(("cu_seq", "max_length"))}
    calls = []
    real = attnkit.varlen.varlen_attention
    monkeypatch.setattr(akattn, "varlen_attention", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    with torch.no_grad():
        out = akhf.unpack(model(**packed, return_dict=True).logits, batch["attention_mask"])  # (B, T, V)
    rows = batch["attention_mask"].bool()
    for b in range(len(LENGTHS)):
        torch.testing.assert_close(out[b][rows[b]], _alone(model, batch["input_ids"][b][rows[b]]), atol=1e-5, rtol=0)
    assert torch.equal(out[~rows], torch.zeros_like(out[~rows]))
    if name not in ("mistral", "gemma2", "gpt_oss"):  # sinks, or a sliding window shorter than a sequence runs each one densely
        assert calls and all(lengths == LENGTHS for lengths in calls)


def test_packed_weights_equal_eager(family):
    """output_attentions on a packed row: eager's block-diagonal weights (zero across sequences).
    (Without ``use_cache=False`` eager attends across the sequences of a decoder's packed row;
    attnkit, as flash-attention, reads the restarting position_ids either way.)"""
    name, kind, model = family
    if kind == "seq2seq":
        pytest.skip("encoder-decoder families are not packed")
    if name == "gpt_oss":
        pytest.skip("gpt-oss gives its mask functions no position_ids: eager attends across a packed row")
    packed = akhf.pack(_batch("right"))
    packed = {k: v for k, v in packed.items() if not k.startswith(("cu_seq", "max_length"))}
    if kind == "decoder":  # transformers reads a packed row only without a cache
        packed["use_cache"] = False
    with torch.no_grad():
        eager = _run(model, "eager", **packed, output_attentions=True)
        ours = _run(model, NAME, **packed, output_attentions=True)
    for w_eager, w_ours in zip(eager.attentions, ours.attentions, strict=True):
        torch.testing.assert_close(w_ours, w_eager, atol=1e-6, rtol=0)


def test_packed_training_gradients_equal_eager():
    torch.manual_seed(0)
    model = FAMILIES["llama"][1]().train()
    packed = akhf.pack({**_batch("right"), "labels": _batch("right")["input_ids"]})
    grads = {}
    for impl in ("eager", NAME):
        model.zero_grad()
        _run(model, impl, **packed, use_cache=False).loss.backward()  # eager reads a packed row without a cache
        grads[impl] = [p.grad.clone() for p in model.parameters()]
    for g_ours, g_eager in zip(grads[NAME], grads["eager"], strict=True):
        torch.testing.assert_close(g_ours, g_eager, atol=1e-5, rtol=1e-5)


def test_pack_and_unpack():
    batch = _batch("left", [3, 1, 2])
    batch["labels"] = batch["input_ids"].clone()
    packed = akhf.pack(batch)
    real = batch["attention_mask"].bool()
    assert packed["input_ids"].tolist() == [batch["input_ids"][real].tolist()]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]]
    assert packed["labels"][0].tolist() == [-100, *batch["input_ids"][0, 1:].tolist(), -100, -100,
                                             batch["input_ids"][2, 2].item()]
    assert packed["cu_seq_lens_q"].tolist() == [0, 3, 4, 6] and packed["max_length_k"] == 3
    back = akhf.unpack(packed["input_ids"], batch["attention_mask"])
    assert torch.equal(back, batch["input_ids"].masked_fill(~real, 0))
    with pytest.raises(ValueError, match="rows \\[1\\] have gaps"):
        akhf.pack({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 1]])})
    with pytest.raises(ValueError, match="empty sequence"):
        akhf.pack({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1], [0, 0, 0]])})
    with pytest.raises(ValueError, match=r"got shape \(1, 5, 4\)"):
        akhf.unpack(torch.zeros(1, 5, 4), batch["attention_mask"])


def test_packed_position_ids_must_restart_at_zero():
    torch.manual_seed(0)
    model = FAMILIES["llama"][1]().eval()
    model.set_attn_implementation(NAME)
    ids = torch.randint(3, V, (1, 7))
    with pytest.raises(ValueError, match="starting at index 4 begins at position 5"):
        with torch.no_grad():
            model(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, 3, 5, 6, 7]]))


# ----------------------------------------------------------------------------- bad input


def test_register_is_idempotent():
    assert akhf.register() == NAME == akhf.register()
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert AttentionInterface._global_mapping[NAME] is akhf.attention_forward
    assert AttentionMaskInterface._global_mapping[NAME] is akhf.attention_mask


def test_family_without_the_interface_is_named():
    model = tf.MPNetModel(tf.MPNetConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                         intermediate_size=64))
    with pytest.raises(ValueError, match="the mpnet family \\(MPNetModel\\) does not dispatch"):
        akhf.check(model)
    assert akhf.check(FAMILIES["bert"][1]()) is not None


def test_transformers_too_old_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers.masking_utils", None)
    with pytest.raises(ValueError, match=r"needs transformers >= 4\.53 .*found \S+: pip install") as info:
        akhf.register()
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- the explorer


def test_explorer_loads_with_attnkit(tiny_model, tmp_path, monkeypatch):
    """explore() on a Hugging Face folder runs attnkit's weights path; the weights are eager's."""
    from viz_support import TEXT, load_reference

    from attnkit.viz import explore

    asked = []
    real = akattn.scaled_dot_product_attention
    monkeypatch.setattr(akattn, "scaled_dot_product_attention",
                        lambda *a, **k: asked.append(k.get("return_weights")) or real(*a, **k))
    folder = tiny_model("gpt2")
    att = explore(folder, TEXT, path=tmp_path / "view.html")
    assert asked and all(asked)
    model, _ = load_reference("gpt2", folder)  # eager
    with torch.no_grad():
        eager = model(input_ids=torch.tensor([att.ids]), output_attentions=True).attentions
    torch.testing.assert_close(att.weights["decoder"], torch.stack([w[0] for w in eager]), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- sentence embeddings

SENTENCES = ["the cat sat on the mat", "a dog", "time flies like an arrow, fruit flies like a banana",
             "hello", "attention is all you need, they said, and then they padded everything"]


@pytest.mark.parametrize(("family", "pooling", "normalize"),
                         [("xlm-roberta", "mean", True), ("xlm-roberta", "cls", False), ("modernbert", "mean", True)])
def test_hf_sentence_encoder_equals_sentence_transformers(family, pooling, normalize, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    folder = hf_sentence_folder(family, tmp_path, pooling=pooling, normalize=normalize)
    texts = SENTENCES * 3  # the longest is cut to max_seq_length=24
    reference = SentenceTransformer(folder, device="cpu").encode(texts, convert_to_tensor=True, batch_size=4)
    calls = []
    real = attnkit.varlen.varlen_attention
    monkeypatch.setattr(akattn, "varlen_attention", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    encoder = akhf.HFSentenceEncoder.from_pretrained(folder)
    assert encoder.encoder.config._attn_implementation == NAME and encoder.max_seq_length == 24
    ours = encoder.embed(texts, max_tokens=40)
    assert ours.shape == (len(texts), 32)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    if family == "xlm-roberta":  # packed rows ran through varlen (ModernBERT's local layers window them)
        assert calls and max(len(lengths) for lengths in calls) > 1


# ----------------------------------------------------------------------------- SentenceEncoder dispatch

@pytest.fixture(scope="module")
def xlmr_folder(tmp_path_factory) -> str:
    pytest.importorskip("sentence_transformers")
    return hf_sentence_folder("xlm-roberta", tmp_path_factory.mktemp("xlmr"))


def _st_encode(folder: str, texts: list[str]) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu").encode(texts, convert_to_tensor=True, batch_size=4)


@pytest.mark.parametrize("family", ["xlm-roberta", "modernbert"])
def test_sentence_encoder_loads_any_family_through_hf(family, xlmr_folder, tmp_path, monkeypatch):
    """SentenceEncoder.from_pretrained is the one way in: a non-BERT folder (written by
    sentence-transformers 6, ``"pooling_mode": "mean"``) gets HFSentenceEncoder, equal to
    sentence-transformers to 1e-5, packed or padded; spaces around a text are kept, as there."""
    from attnkit import SentenceEncoder
    from attnkit.models.sentence_encoder import SentenceEmbedder

    folder = xlmr_folder if family == "xlm-roberta" else hf_sentence_folder(family, tmp_path)
    assert '"pooling_mode": "mean"' in (Path(folder) / "1_Pooling" / "config.json").read_text()
    texts = [*SENTENCES, "  spaces around  ", ""]
    encoder = SentenceEncoder.from_pretrained(folder)
    assert type(encoder) is akhf.HFSentenceEncoder and isinstance(encoder, SentenceEmbedder)
    assert encoder.max_seq_length == 24 and encoder.dim == 32 and encoder.family == family
    reference = _st_encode(folder, texts)
    with pytest.warns(UserWarning, match="1 of 7 texts were longer than max_seq_length=24"):
        packed = encoder.embed(texts, max_tokens=40)
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-5)
    with pytest.warns(UserWarning, match="truncated"):
        padded = encoder.embed(texts, batch_size=3, packed=False)
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-5)


def test_hf_sentence_encoder_dtypes(xlmr_folder, monkeypatch):
    """bfloat16 computes in a copy (the fp32 model untouched) close to the fp32 result; int8 is
    refused in one line naming the family."""
    import warnings

    from attnkit import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained(xlmr_folder)
    fp32 = encoder.embed(SENTENCES, dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "slow" where the CPU lacks bf16, truncation
        bf16 = encoder.embed(SENTENCES, dtype="bfloat16")
        assert encoder.encoder_in("bfloat16") is encoder.encoder_in(torch.bfloat16)
    assert bf16.dtype == torch.float32 and encoder.encoder.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(bf16, fp32).min() >= 0.99
    with pytest.raises(ValueError, match="dtype 'int8' is not available for the xlm-roberta family") as info:
        encoder.embed(SENTENCES, dtype="int8")
    assert "\n" not in str(info.value)


def test_bert_folders_keep_attnkits_encoder(tmp_path):
    """A MiniLM/BERT folder gets attnkit's own SentenceEncoder, in the older pooling format
    (``pooling_mode_mean_tokens: true``) and in sentence-transformers 6's (``pooling_mode``)."""
    import json

    from embed_support import tiny_model

    from attnkit import SentenceEncoder

    folder = tiny_model(tmp_path / "bert")
    texts = ["the cat sat on a mat", "dog", "attention weights show which tokens matter"]
    legacy = SentenceEncoder.from_pretrained(folder)
    assert type(legacy) is SentenceEncoder
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "mean"}))
    current = SentenceEncoder.from_pretrained(folder)
    assert type(current) is SentenceEncoder and current.pooling == "mean"
    torch.testing.assert_close(current.embed(texts, dtype="float32"), legacy.embed(texts, dtype="float32"))
    torch.testing.assert_close(current.embed(texts, dtype="float32"), _st_encode(str(folder), texts),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("config", "mode"), [
    ({"pooling_mode": "cls"}, "cls"), ({"pooling_mode": ["max"]}, "max"),
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
    ({"word_embedding_dimension": 32}, "mean"),  # no flag set: mean, as sentence-transformers reads it
    ({"pooling_mode": "cls", "pooling_mode_mean_tokens": True}, "cls"),  # the new key wins, as there
])
def test_pooling_config_in_either_format(config, mode, tmp_path):
    """sentence-transformers 6's ``pooling_mode`` (a name or a list of one) and the older flags."""
    import json

    from attnkit.models.sentence_encoder import read_pooling

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    assert read_pooling(tmp_path) == (mode, False)


@pytest.mark.parametrize(("config", "named"), [
    ({"pooling_mode": "weightedmean"}, "'weightedmean'"),
    ({"pooling_mode": ["mean", "max"]}, "'mean + max'"),
    ({"pooling_mode_lasttoken": True}, "'lasttoken'"),
])
def test_unknown_pooling_mode_is_named(config, named, xlmr_folder, tmp_path):
    """An unsupported mode, in either format, is one ValueError naming it."""
    import json
    import shutil

    from attnkit import SentenceEncoder

    folder = tmp_path / "st"
    shutil.copytree(xlmr_folder, folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(f"pooling mode {named} is not supported")) as info:
        SentenceEncoder.from_pretrained(folder)
    assert "\n" not in str(info.value)


def test_family_without_the_interface_is_refused_by_name(tmp_path):
    """MPNet does not dispatch through the attention interface: one line naming it."""
    from attnkit import SentenceEncoder

    folder = hf_sentence_folder("mpnet", tmp_path)
    with pytest.raises(ValueError, match="the mpnet family \\(MPNetModel\\) does not dispatch") as info:
        SentenceEncoder.from_pretrained(folder)
    assert "\n" not in str(info.value)


def test_pack_takes_a_tokenizers_batch_as_it_comes():
    """A fast tokenizer's batch with ``return_length=True`` and the special-tokens / offsets
    extras packs as is: ``length`` (one value per row) is left out, ``(B, T, ...)`` values packed;
    a value of any other shape is still one ValueError naming it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "a", "b", "c", "d"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]")
    batch = tok(["a b c", "d", "c a"], padding=True, return_tensors="pt", return_length=True,
                return_special_tokens_mask=True, return_offsets_mapping=True)
    assert "length" in batch and batch["length"].shape == (3,)
    packed = akhf.pack(batch)
    assert "length" not in packed
    assert packed["input_ids"].tolist() == [[2, 3, 4, 5, 4, 2]]
    assert packed["offset_mapping"].shape == (1, 6, 2) and packed["special_tokens_mask"].shape == (1, 6)
    with pytest.raises(ValueError, match=r"pack: extra has shape \(3, 4, 5\)"):
        akhf.pack({**batch, "extra": torch.zeros(3, 4, 5)})
