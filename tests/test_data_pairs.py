"""TSV corpora (error reporting, hold-out split), BPE and character tokenizers, batching.

Peers: the ``tokenizers`` library itself (our saved tokenizer.json loaded by
``tokenizers.Tokenizer`` must encode identically) and ``attnkit.padding_mask`` for masks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit as ak
from attnkit.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    CharVocab,
    Pair,
    batch_encode,
    collate,
    encode_pairs,
    load_task,
    load_tokenizer,
)
from attnkit.data.pairs import BPETokenizer, read_tsv, split_holdout

CORPUS = [
    ("Go.", "Va !"), ("Hi.", "Salut !"), ("Run!", "Cours !"), ("Who?", "Qui ?"),
    ("I see.", "Je comprends."), ("Thank you.", "Merci."), ("Good morning.", "Bonjour."),
    ("Tokyo is big.", "東京は大きい。"), ("Moscow", "Москва"), ("Cairo", "القاهرة"),
]


def write(tmp_path: Path, data: bytes, name: str = "c.tsv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def good_tsv(tmp_path: Path, n: int = 10) -> Path:
    lines = [f"{s}\t{t}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}" for i, (s, t) in
             enumerate(CORPUS * (n // len(CORPUS) + 1))][:n]
    return write(tmp_path, ("\n".join(lines) + "\n").encode())


def test_reads_anki_export_extra_columns_ignored(tmp_path: Path) -> None:
    corpus = read_tsv(good_tsv(tmp_path))
    assert [(p.source, p.target) for p in corpus.pairs] == CORPUS
    assert corpus.skipped == 0 and corpus.report() == ""


def test_bad_lines_reported_with_line_numbers(tmp_path: Path) -> None:
    data = (b"\xef\xbb\xbfGo.\tVa !\r\n"      # 1 BOM + CRLF: fine
            b"no tab here\n"                  # 2
            b"\tempty source\n"               # 3
            b"Hi.\t  \n"                      # 4 empty target
            b"\n"                             # 5 blank: ignored
            b"caf\xe9\tcafe\n"                # 6 latin-1 byte: invalid UTF-8
            b"Run!\tCours !\n")               # 7
    path = write(tmp_path, data)
    corpus = read_tsv(path)
    assert [p.source for p in corpus.pairs] == ["Go.", "Run!"]
    assert [(b.line, b.reason.split(" at ")[0]) for b in corpus.bad_lines] == [
        (2, "no tab"), (3, "empty source"), (4, "empty target"), (6, "invalid UTF-8")]
    report = corpus.report()
    assert "skipped 4 bad lines" in report and "2 (no tab)" in report and "6 (invalid UTF-8" in report
    with pytest.raises(ValueError, match=r"c\.tsv:2: bad line \(no tab\)"):
        read_tsv(path, strict=True)
    task = load_task(f"tsv:{path}", strict=False)
    assert task.info["skipped"] == 4 and task.info["bad_lines"][0] == (2, "no tab")
    with pytest.raises(ValueError, match=":2:"):
        load_task(f"tsv:{path}", strict=True)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        read_tsv(tmp_path / "nope.tsv")
    with pytest.raises(ValueError, match="empty"):
        read_tsv(write(tmp_path, b"", "empty.tsv"))
    with pytest.raises(ValueError, match="empty"):
        read_tsv(write(tmp_path, b"\n  \n", "blank.tsv"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_tsv(write(tmp_path, "Go.\tVa !\n".encode("utf-16"), "u16.tsv"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_tsv(write(tmp_path, "Grüße\tÇa\n".encode("latin-1"), "l1.tsv"))
    with pytest.raises(ValueError, match="no valid"):
        read_tsv(write(tmp_path, b"just text\nmore\n", "notab.tsv"))
    with pytest.raises(ValueError, match="directory"):
        read_tsv(tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        load_task("tsv-nope")


def test_holdout_is_the_last_ten_percent(tmp_path: Path) -> None:
    task = load_task(f"tsv:{good_tsv(tmp_path, 50)}")
    assert len(task.train) == 45 and len(task.test) == 5
    all_pairs = read_tsv(tmp_path / "c.tsv").pairs
    assert task.train == all_pairs[:45] and task.test == all_pairs[45:]
    train, test = split_holdout(all_pairs[:3], 0.1)
    assert len(train) == 2 and len(test) == 1
    with pytest.raises(ValueError, match="holdout"):
        split_holdout(all_pairs, 1.5)


def test_bpe_round_trip_and_reload(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    task = load_task(f"tsv:{good_tsv(tmp_path, 200)}", tokenizer="bpe", vocab_size=400)
    tok = task.tokenizer
    assert isinstance(tok, BPETokenizer) and len(tok) <= 400
    assert [tok.tokenizer.id_to_token(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    text = "Good morning, Москва!  東京は大きい。 ✓"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and UNK_ID not in ids
    assert tok.decode(ids) == text
    assert len(tok.encode("Good morning.")) < len("Good morning.")  # merges were learned
    out = tmp_path / "ckpt"
    tok.save(out)
    assert (out / "tokenizer.json").exists()
    again = load_tokenizer(out)
    assert isinstance(again, BPETokenizer) and again.encode(text) == tok.encode(text)
    peer = Tokenizer.from_file(str(out / "tokenizer.json"))  # the library reads our file
    assert peer.encode(text, add_special_tokens=False).ids == tok.encode(text)
    t0, t1 = tok.token_span(text, (14, 20))  # "Москва"
    assert "".join(tok.tokenize(text)[t0:t1]).strip().startswith("Москва")


@settings(max_examples=25, deadline=None)
@given(st.text(max_size=40))
def test_bpe_is_lossless_for_any_text(text: str) -> None:
    tok = _small_bpe()
    assert tok.decode(tok.encode(text, add_eos=True)) == text


_BPE: list[BPETokenizer] = []


def _small_bpe() -> BPETokenizer:
    if not _BPE:
        _BPE.append(BPETokenizer.train([s for p in CORPUS for s in p] * 5, vocab_size=300))
    return _BPE[0]


def test_bpe_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size 100"):
        BPETokenizer.train(["abc"], vocab_size=100)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no vocab.json or tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_char_vocab_save_load_and_unknowns(tmp_path: Path) -> None:
    vocab = CharVocab.build(["<de_DE> 24. November 2026", "2026-11-24"])
    assert vocab.tokens[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert vocab.tokenize("<de_DE> 24")[0] == "<de_DE> "
    assert vocab.encode("Z")[0] == UNK_ID
    vocab.save(tmp_path)
    assert load_tokenizer(tmp_path) == vocab == CharVocab.load(tmp_path / "vocab.json")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "vocab.json").write_text('{"type": "bpe"}')
    with pytest.raises(ValueError, match="not an attnkit character vocabulary"):
        CharVocab.load(tmp_path / "bad")
    with pytest.raises(ValueError, match="first four tokens"):
        CharVocab(["a", "b", "c", "d"])


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab c<>_dDE", max_size=30))
def test_char_vocab_round_trip(text: str) -> None:
    vocab = CharVocab.build(["ab c<>_dDE", "<de_DE> x"])
    assert vocab.decode(vocab.encode(text, add_bos=True, add_eos=True)) == text


def test_batching_pads_and_masks() -> None:
    vocab = CharVocab.build(["abcdef", "0123"])
    ids, mask = batch_encode(vocab, ["abc", "a", "abcdef"], add_eos=True)
    assert ids.shape == (3, 7) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert torch.equal(mask, ak.padding_mask(torch.tensor([4, 2, 7]), 7))
    assert (ids[~mask] == PAD_ID).all() and ids[1, 1] == EOS_ID
    pairs = [Pair("abc", "01"), Pair("abcdef", "0123")]
    batch = collate(encode_pairs(vocab, pairs))
    assert batch.src.shape == (2, 6) and batch.tgt_in.shape == (2, 5)
    assert batch.tgt_in[0].tolist() == [BOS_ID, *vocab.encode("01"), PAD_ID, PAD_ID]
    assert batch.tgt_out[0].tolist() == [*vocab.encode("01"), EOS_ID, PAD_ID, PAD_ID]
    assert torch.equal(batch.tgt_mask, ak.padding_mask(torch.tensor([3, 5]), 5))
    assert batch.num_target_tokens == 8
    assert vocab.decode(batch.tgt_out[1]) == "0123"
