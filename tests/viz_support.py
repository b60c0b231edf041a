"""Shared helpers of the viz tests: reading the explorer page, tiny models to explore.

``page_data``/``page_views`` decode what an explorer page embeds. The tiny models are
random-weight Hugging Face models with real tokenizers, saved as a user's folder would be.

Each family gets a config with hidden size 32, 2 layers and 4 heads, a tokenizer trained here
with the ``tokenizers`` library (WordPiece for BERT and DistilBERT, byte-level BPE for RoBERTa,
GPT-2 and BART, Unigram with the SentencePiece ``▁`` for Marian and T5) wrapped as
``transformers.PreTrainedTokenizerFast`` with the family's special tokens, and both written with
``save_pretrained`` into a folder that ``attnkit.viz.explore`` then loads like any other.
No network: everything is built from configs.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np

from attnkit.viz.explorer import EncodedWeights


def softmax_weights(*shape: int, temperature: float = 2.0, seed: int = 0) -> np.ndarray:
    """Random attention weights: softmax over the last axis, rows sum to 1."""
    scores = np.random.default_rng(seed).standard_normal(size=shape, dtype=np.float32)
    scores *= temperature
    scores -= scores.max(-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(-1, keepdims=True)
    return scores


def page_data(path) -> dict:
    """The JSON object an explorer page embeds."""
    text = Path(path).read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="attn-data">(.*?)</script>', text, re.S)
    assert match, "the page embeds its data"
    return json.loads(match.group(1))


def _b64(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype)


def decode_view(view: dict) -> EncodedWeights:
    """One view record of the page as :class:`EncodedWeights` (top-k views made dense again)."""
    shape = (view["layers"], view["heads"], view["nq"], view["nk"])
    rowmax = _b64(view["rowmax"], "<f4").reshape(shape[:3])
    if view["encoding"] == "dense":
        q = _b64(view["q"], np.uint8).reshape(shape)
        return EncodedWeights(q=q, rowmax=rowmax, top_k=None, kept_mass=view["keptMass"])
    k = view["k"]
    idx = _b64(view["idx"], "<u2").reshape(*shape[:3], k).astype(np.int64)
    q = np.zeros(shape, np.uint8)
    np.put_along_axis(q, idx, _b64(view["q"], np.uint8).reshape(*shape[:3], k), axis=-1)
    return EncodedWeights(q=q, rowmax=rowmax, top_k=k, kept_mass=view["keptMass"], topk_idx=idx)


def page_views(path) -> dict[tuple[str | None, str], tuple[dict, EncodedWeights]]:
    """``(kind, view) -> (view record, its weights)`` for every view of an explorer page."""
    data = page_data(path)
    return {(v.get("kind"), v.get("view", "raw")): (v, decode_view(v)) for v in [data, *data.get("more", [])]}


def neuron_arrays(path, kind: str) -> dict[str, np.ndarray]:
    """The neuron view's float16 q ``(L, H, Tq, d)`` and k ``(L, H, Tk, d)`` of ``kind``, as float64."""
    n = page_data(path)["neuron"][kind]
    q = _b64(n["q"], "<f2").reshape(n["layers"], n["heads"], n["nq"], n["d"]).astype(np.float64)
    k = _b64(n["k"], "<f2").reshape(n["layers"], n["heads"], n["nk"], n["d"]).astype(np.float64)
    return {"q": q, "k": k}

CORPUS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "time flies like an arrow",
    "fruit flies like a banana",
    "hello world, this is a test of attention",
    "attention is not an explanation by itself",
    "der hund lief im park",
    "le chat est sur le tapis",
]
TEXT = "the cat sat on the mat"
TARGET = "le chat est sur le tapis"

FAMILIES = ("bert", "roberta", "distilbert", "gpt2", "bart", "marian", "t5")
KIND_OF = {  # the attention kinds each family reports
    "bert": ("encoder",), "roberta": ("encoder",), "distilbert": ("encoder",),
    "gpt2": ("decoder",),
    "bart": ("encoder", "decoder", "cross"), "marian": ("encoder", "decoder", "cross"),
    "t5": ("encoder", "decoder", "cross"),
}


def wordpiece_tokenizer():
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS * 4, trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=specials, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok, {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                 "mask_token": "[MASK]"}


def _byte_bpe(specials: list[str], template: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=360, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if template is not None:
        names = sorted({t for t in template.split() if not t.startswith("$")})
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, tok.token_to_id(t)) for t in names])
    return tok


def _unigram(specials: list[str], unk: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS * 4, trainers.UnigramTrainer(
        vocab_size=100, special_tokens=specials, unk_token=unk, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return tok


def build(family: str, folder: Path) -> Path:
    """Write a tiny random ``family`` model and its tokenizer to ``folder``; returns it."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    small = {"num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "hidden_size": 32}
    seq2seq = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
               "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
               "max_position_embeddings": 64}
    if family in ("bert", "distilbert"):
        tok, special = wordpiece_tokenizer()
        fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, **special)
        if family == "bert":
            model = tf.BertModel(tf.BertConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=64,
                                               pad_token_id=fast.pad_token_id, **small))
        else:
            model = tf.DistilBertModel(tf.DistilBertConfig(
                vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                max_position_embeddings=64, pad_token_id=fast.pad_token_id))
    elif family == "roberta":
        tok = _byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s> $A </s>")
        fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                          pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                          cls_token="<s>", sep_token="</s>")
        model = tf.RobertaModel(tf.RobertaConfig(
            vocab_size=tok.get_vocab_size(), max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, **small))
    elif family == "gpt2":
        tok = _byte_bpe(["<|endoftext|>"], None)
        fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                          eos_token="<|endoftext|>", unk_token="<|endoftext|>")
        model = tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=64,
            bos_token_id=0, eos_token_id=0))
    elif family == "bart":
        tok = _byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s> $A </s>")
        fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                          pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
        model = tf.BartForConditionalGeneration(tf.BartConfig(
            vocab_size=tok.get_vocab_size(), pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=None, **seq2seq))
    elif family == "marian":
        tok = _unigram(["<pad>", "</s>", "<unk>"], "<unk>")
        fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                          unk_token="<unk>")
        model = tf.MarianMTModel(tf.MarianConfig(
            vocab_size=tok.get_vocab_size(), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            forced_eos_token_id=None, **seq2seq))
    elif family == "t5":
        tok = _unigram(["<pad>", "</s>", "<unk>"], "<unk>")
        fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                          unk_token="<unk>")
        model = tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=tok.get_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2,
            num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
            relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0))
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def load_reference(family: str, folder: Path):
    """The same folder loaded the way a user would, eager attention: ``(model, tokenizer)``."""
    import transformers as tf

    cls = {"gpt2": tf.AutoModelForCausalLM, "bart": tf.AutoModelForSeq2SeqLM,
           "marian": tf.AutoModelForSeq2SeqLM, "t5": tf.AutoModelForSeq2SeqLM}.get(family, tf.AutoModel)
    model = cls.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
    return model, tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)


def build_checkpoint(kind: str, folder: Path) -> Path:
    """An untrained attnkit ``"transformer"`` (2+2 layers, 4 heads over 2 kv heads, rotary
    positions) or ``"rnn"`` (additive attention) checkpoint with a character vocabulary."""
    import torch

    from attnkit import RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq, save_model
    from attnkit.data import CharVocab

    torch.manual_seed(0)
    vocab = CharVocab.build(CORPUS)
    if kind == "transformer":
        model = TransformerSeq2Seq(TransformerConfig(
            len(vocab), embed_dim=32, num_heads=4, kv_heads=2, num_encoder_layers=2, num_decoder_layers=2,
            ff_dim=64, dropout=0.0, position="rope", max_len=128))
    elif kind == "rnn":
        model = RNNSeq2Seq(RNNConfig(len(vocab), embed_dim=16, hidden_dim=32))
    else:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected 'transformer' or 'rnn'")
    return save_model(model.eval(), folder, tokenizer=vocab)
