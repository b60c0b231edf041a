"""A user's TSV corpus (error reporting with line numbers, hold-out split) and batching.

Peer: ``attnkit.padding_mask`` for the batch masks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attnkit as ak
from attnkit.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    CharVocab,
    Pair,
    batch_encode,
    collate,
    encode_pairs,
    load_task,
)
from attnkit.data.tsv import read_tsv, split_holdout


def write_file(tmp_path: Path, data: bytes, name: str = "c.tsv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_reads_anki_export_extra_columns_ignored(good_tsv, tsv_corpus) -> None:
    corpus = read_tsv(good_tsv())
    assert [(p.source, p.target) for p in corpus.pairs] == tsv_corpus
    assert corpus.skipped == 0 and corpus.report() == ""


def test_bad_lines_reported_with_line_numbers(tmp_path: Path) -> None:
    data = (b"\xef\xbb\xbfGo.\tVa !\r\n"      # 1 BOM + CRLF: fine
            b"no tab here\n"                  # 2
            b"\tempty source\n"               # 3
            b"Hi.\t  \n"                      # 4 empty target
            b"\n"                             # 5 blank: ignored
            b"caf\xe9\tcafe\n"                # 6 latin-1 byte: invalid UTF-8
            b"Run!\tCours !\n")               # 7
    path = write_file(tmp_path, data)
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
        read_tsv(write_file(tmp_path, b"", "empty.tsv"))
    with pytest.raises(ValueError, match="empty"):
        read_tsv(write_file(tmp_path, b"\n  \n", "blank.tsv"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_tsv(write_file(tmp_path, "Go.\tVa !\n".encode("utf-16"), "u16.tsv"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_tsv(write_file(tmp_path, "Grüße\tÇa\n".encode("latin-1"), "l1.tsv"))
    with pytest.raises(ValueError, match="no valid"):
        read_tsv(write_file(tmp_path, b"just text\nmore\n", "notab.tsv"))
    with pytest.raises(ValueError, match="directory"):
        read_tsv(tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        load_task("tsv-nope")


def test_holdout_is_the_last_ten_percent(tmp_path: Path, good_tsv) -> None:
    task = load_task(f"tsv:{good_tsv(50)}")
    assert len(task.train) == 45 and len(task.test) == 5
    all_pairs = read_tsv(tmp_path / "c.tsv").pairs
    assert task.train == all_pairs[:45] and task.test == all_pairs[45:]
    train, test = split_holdout(all_pairs[:3], 0.1)
    assert len(train) == 2 and len(test) == 1
    with pytest.raises(ValueError, match="holdout"):
        split_holdout(all_pairs, 1.5)


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
