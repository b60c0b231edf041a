"""attnkit's tokenizers: byte-level BPE and characters (save/load, round trips, errors).

Peer: the ``tokenizers`` library itself (our saved tokenizer.json loaded by
``tokenizers.Tokenizer`` must encode identically).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit.data import BOS_ID, EOS_ID, UNK_ID, CharVocab, load_task, load_tokenizer
from attnkit.data.tokenizers import BPETokenizer

# a small bilingual sample in several scripts to learn BPE merges from
TEXTS = ["Go.", "Va !", "Thank you.", "Merci.", "Good morning.", "Bonjour.", "Tokyo is big.", "東京は大きい。",
         "Moscow", "Москва", "Cairo", "القاهرة"]


def test_bpe_round_trip_and_reload(tmp_path: Path, good_tsv) -> None:
    from tokenizers import Tokenizer

    task = load_task(f"tsv:{good_tsv(200)}", tokenizer="bpe", vocab_size=400)
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
        _BPE.append(BPETokenizer.train(TEXTS * 5, vocab_size=300))
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
