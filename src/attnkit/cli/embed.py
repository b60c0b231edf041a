"""``attnkit embed``: parse the options, call :func:`attnkit.embedding.embed_file`, print the summary.

See :mod:`attnkit.embedding` for what the job does (chunks, resume, ranks) and docs/embedding-large.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from attnkit.cli.console import check_file_path, console, stopped_by_signal, user_errors

DEFAULT_CHUNK_LINES = 65_536  # attnkit.embedding.DEFAULT_CHUNK_LINES (importing it here would load torch for --help)


def _set_threads(threads: int | None) -> None:
    """This process's intra-op threads: ``--threads``, else cores ÷ local ranks under torchrun
    (so the workers of one machine never oversubscribe its CPU), else torch's default."""
    import torch

    from attnkit.embedding.ranks import default_threads

    if threads is not None and threads <= 0:
        raise ValueError(f"--threads must be positive, got {threads}")
    n = threads if threads is not None else default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if n is not None:
        torch.set_num_threads(n)
        os.environ.setdefault("RAYON_NUM_THREADS", str(n))  # the tokenizer's pool, read when first used


# --------------------------------------------------------------------------- the command


@user_errors
def embed(
    input_file: str = typer.Argument(..., metavar="INPUT", help="UTF-8 text file, one text per line (or JSON lines "
                                     "with --field/--ids)"),
    out: str = typer.Option(..., "--out", help="output: .npy (float32 matrix, row i = line i+1) or .jsonl "
                            "({text, embedding} per line)"),
    model: str = typer.Option("all-MiniLM-L6-v2", "--model", help="sentence-transformers folder or known name: BERT "
                              "in attnkit's encoder, XLM-R, ModernBERT, ... via transformers (attnkit\\[hf])"),
    batch_size: int = typer.Option(32, "--batch-size", help="texts per batch on the padded path"),
    chunk_lines: int = typer.Option(None, "--chunk-lines", show_default=False,
                                    help=f"lines read, embedded and written at a time [default: {DEFAULT_CHUNK_LINES}; "
                                    "a resumed job keeps its own]"),
    float16: bool = typer.Option(False, "--float16", help="write the .npy as float16 (half the size)"),
    field: str = typer.Option(None, "--field", help="read JSON lines and embed this field of each object "
                              "[default with --ids: text]"),
    ids: bool = typer.Option(False, "--ids", help='read JSON lines {"id": ..., "text": ...} and keep each id '
                             "(in .jsonl rows; beside a .npy in OUT.ids.jsonl)"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip lines that are not UTF-8 (or not such JSON "
                                  "objects): their row stays, zero / null, listed in OUT.skipped.jsonl"),
    resume: bool = typer.Option(False, "--resume", help="finish the unfinished job of --out (after a kill, a full "
                                "disk, on any number of processes)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out (discarding an unfinished "
                                   "job of it)"),
    threads: int = typer.Option(None, "--threads", show_default=False,
                                help="intra-op threads [default: all cores; under torchrun cores / local ranks]"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 where native, else float32; never int8) | float32 | "
                              "bfloat16 | int8 (docs/embeddings.md); the output is float32 (or --float16)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Embed each line of INPUT with a pretrained sentence encoder: streamed in chunks, resumable
    after a kill (--resume), sharded over ranks under torchrun (packed: no compute on padding)."""
    from attnkit.embedding import embed_file
    from attnkit.embedding.file import EmbedStopped
    from attnkit.models.sentence_encoder import SentenceEncoder

    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: --resume finishes the unfinished job of "
                         "--out, --overwrite discards it; pass one")
    if not model:
        raise ValueError("--model is empty: name a sentence-transformers folder or a known model name")
    check_file_path("--out", out, what=".npy or .jsonl file")
    _set_threads(threads)
    # A new job loads the model first: one that cannot be loaded is one line, and leaves no
    # unfinished OUT.parts behind to block the next run (a resume may need no model at all).
    encoder = None if resume else SentenceEncoder.from_pretrained(model)
    try:
        s = embed_file(input_file, out, model=model, batch_size=batch_size, progress=not quiet,
                       chunk_lines=chunk_lines, float16=float16, field=field, ids=ids, skip_bad=skip_bad,
                       resume=resume, overwrite=overwrite, dtype=dtype, encoder=encoder)
    except EmbedStopped as exc:  # Ctrl-C / SIGTERM: finished chunks are kept for --resume
        stopped_by_signal(exc.signal, str(exc))
    if s.rank != 0:
        return
    if not s.lines and s.note:
        console.print(s.note, highlight=False, soft_wrap=True)
        return
    notes = [f"{s.dim} dims"]
    if s.truncated:
        notes.append(f"{s.truncated} truncated to the model's max_seq_length")
    if s.resumed:
        notes.append(f"{s.resumed} of {s.chunks} chunks from before")
    if s.skipped:
        listed = ", ".join(str(x[0]) for x in s.skipped[:5]) + (", ..." if len(s.skipped) > 5 else "")
        notes.append(f"{len(s.skipped)} bad lines skipped ({listed}; listed in {Path(out).name}.skipped.jsonl)")
    console.print(f"embedded {s.lines} lines ({', '.join(notes)}) -> {out}", highlight=False, soft_wrap=True)
