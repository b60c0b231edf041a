"""``attnkit embed``: one sentence embedding per line of a text file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from attnkit.cli.console import console, user_errors

__all__ = ["EMBED_FORMATS", "embed", "embed_file"]

EMBED_FORMATS = (".npy", ".jsonl")


def embed_file(
    input_path: str | Path, out_path: str | Path, *, model: str | Path = "all-MiniLM-L6-v2", batch_size: int = 32,
    progress: bool = True, dtype: str = "auto",
) -> tuple[int, int, int]:
    """Embed every line of a UTF-8 text file (empty lines included, so row ``i`` is line ``i``).

    Writes ``.npy`` (a float32 ``(n, E)`` matrix) or ``.jsonl`` (one ``{"text", "embedding"}``
    object per line), atomically (temp file + rename). Returns ``(texts, truncated, dim)``.
    """
    import numpy as np

    from attnkit.io import atomic_open
    from attnkit.models.sentence_encoder import SentenceEncoder

    input_path, out_path = Path(input_path), Path(out_path)
    if out_path.suffix not in EMBED_FORMATS:
        raise ValueError(f"--out must end in {' or '.join(EMBED_FORMATS)}, got {out_path.name!r}")
    if not input_path.exists():
        raise FileNotFoundError(f"input file {input_path} does not exist")
    if not input_path.is_file():
        raise ValueError(f"input {input_path} is not a file")
    try:
        texts = input_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{input_path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"output folder {out_path.parent} does not exist")
    encoder = SentenceEncoder.from_pretrained(model)
    ids, _, cut = encoder.tokenize(texts)
    emb = encoder.embed_ids(ids, batch_size=batch_size, progress=progress, dtype=dtype).numpy()  # (n, E) float32
    with atomic_open(out_path) as f:
        if out_path.suffix == ".npy":
            np.save(f, emb)
        else:
            for text, vec in zip(texts, emb.tolist(), strict=True):
                f.write((json.dumps({"text": text, "embedding": vec}, ensure_ascii=False) + "\n").encode())
    return len(texts), cut, encoder.dim


@user_errors
def embed(
    input_file: str = typer.Argument(..., metavar="INPUT.txt", help="UTF-8 text file, one text per line"),
    out: str = typer.Option(..., "--out", help="output: .npy (float32 matrix) or .jsonl ({text, embedding} per line)"),
    model: str = typer.Option("all-MiniLM-L6-v2", "--model", help="sentence-transformers BERT folder or known name"),
    batch_size: int = typer.Option(32, "--batch-size", help="texts per batch on the padded path"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    dtype: str = typer.Option("auto", "--dtype", help="compute dtype: auto (bfloat16 where the CPU has native "
                              "bfloat16 matmul, else float32), float32 or bfloat16; the output is float32"),
) -> None:
    """Embed each line of INPUT.txt with a pretrained sentence encoder (packed: no compute on padding)."""
    try:
        n, cut, dim = embed_file(input_file, out, model=model, batch_size=batch_size, progress=not quiet, dtype=dtype)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as exc:  # a full disk, a permission: the output was not written
        raise ValueError(f"cannot write {out}: {exc.strerror or exc}") from exc
    note = f", {cut} truncated to the model's max_seq_length" if cut else ""
    console.print(f"embedded {n} lines ({dim} dims{note}) -> {out}", highlight=False)
