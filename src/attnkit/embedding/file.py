"""Embedding a text file at scale: one sentence embedding per line, streamed a chunk at a time.

The input is read in chunks of ``chunk_lines`` lines (default 65,536; :mod:`.corpus` scans it).
Each chunk is tokenized, embedded on the packed path (:meth:`SentenceEmbedder.embed_ids`) and
written to the job's work folder (``OUT.parts/``, :mod:`.job` and :mod:`.writers`) before the next
one is read, so memory stays flat in the size of the corpus and a kill at any moment loses at
most the chunk in progress: ``resume=True`` continues the job, on any number of processes. When
every chunk is finished, rank 0 copies them in input order into ``OUT`` (a ``.npy`` through a
memory map, or ``.jsonl``), atomically. Under ``torchrun`` each rank embeds its share of the
chunks (:mod:`.ranks`). See docs/embedding-large.md.
"""

from __future__ import annotations

import signal
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnkit.distributed import PeerLostError
from attnkit.embedding import corpus, writers
from attnkit.embedding import job as job_files
from attnkit.embedding.job import Job
from attnkit.embedding.ranks import Heartbeat, Ranks, join
from attnkit.models.sentence_encoder import SentenceEmbedder, SentenceEncoder, resolve_model_folder
from attnkit.progress import progress_bar
from attnkit.runtime import release_freed_memory, resolve_dtype

__all__ = ["DEFAULT_CHUNK_LINES", "EMBED_FORMATS", "EmbedStopped", "EmbedSummary", "embed_chunk", "embed_file"]

EMBED_FORMATS = (".npy", ".jsonl")
DEFAULT_CHUNK_LINES = 65_536
MAX_TOKENS = 2048  # real tokens per packed batch: SentenceEncoder.embed's default
TOKENIZE_LINES = 8192  # lines tokenized at a time (the tokenizer's per-text objects stay small)


class EmbedStopped(ValueError):
    """The job was stopped by a signal (SIGTERM: torchrun stopping every rank, a scheduler; SIGINT),
    named by ``signal`` (``"SIGTERM"`` or ``"SIGINT"``)."""

    def __init__(self, message: str, signal: str = "SIGTERM") -> None:
        super().__init__(message)
        self.signal = signal


@dataclass
class EmbedSummary:
    """What :func:`embed_file` did: ``lines`` in the input (= rows of the output), rows cut to
    the model's ``max_seq_length`` (``truncated``), the width ``dim``, the ``skipped`` lines
    (``[line, reason, id]``), how many of the ``chunks`` were finished before this run
    (``resumed``), ``tokens`` embedded by this process, and a ``note`` for the user."""

    lines: int = 0
    truncated: int = 0
    dim: int = 0
    skipped: list[list[Any]] = field(default_factory=list)
    chunks: int = 0
    resumed: int = 0
    tokens: int = 0
    note: str = ""
    rank: int = 0


# --------------------------------------------------------------------------- one chunk


class _TokenRows(Sequence):
    """Token ids of many texts kept compactly (4 bytes a token), read as a sequence of lists."""

    def __init__(self, flat: array, starts: list[int]) -> None:
        self.flat, self.starts = flat, starts

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.flat[self.starts[i] : self.starts[i + 1]].tolist()


def embed_chunk(encoder: SentenceEmbedder, texts: list[str], *, dtype: str = "auto",
                on_batch: Callable[[int, int], None] | None = None) -> tuple[Any, int, int]:
    """Embed ``texts`` with one :meth:`SentenceEmbedder.embed_ids` call (packed, ``MAX_TOKENS`` real
    tokens a batch), the token ids kept compactly in between; ``on_batch(texts, tokens)`` is called
    after every batch (progress, and a chance to raise to stop).

    Returns ``(embeddings (n, E) float32 numpy, tokens, texts truncated)``.
    """
    flat, starts, cut = array("i"), [0], 0
    for i in range(0, len(texts), TOKENIZE_LINES):
        ids, _, c = encoder.tokenize(texts[i : i + TOKENIZE_LINES])
        cut += c
        for row in ids:
            flat.extend(row)
            starts.append(len(flat))
    out = encoder.embed_ids(_TokenRows(flat, starts), max_tokens=MAX_TOKENS, dtype=dtype, on_batch=on_batch)
    return out.numpy(), len(flat), cut


# --------------------------------------------------------------------------- signals


@contextmanager
def _signals_stop(ranks: Ranks) -> Iterator[None]:
    """SIGTERM (and SIGINT) raise :class:`EmbedStopped` in the main thread, so the job stops
    between two steps with a clear line; finished chunks are kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        why = " (torchrun stops every rank when one fails)" if ranks.distributed else ""
        raise EmbedStopped(f"{ranks.name + ': ' if ranks.distributed else ''}stopped by {name}{why}", name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --------------------------------------------------------------------------- the whole file


def _check_arguments(input_path: Path, out_path: Path, *, batch_size: int, chunk_lines: int | None,
                     float16: bool) -> None:
    if out_path.suffix not in EMBED_FORMATS:
        raise ValueError(f"--out must end in {' or '.join(EMBED_FORMATS)}, got {out_path.name!r}")
    if not input_path.exists():
        raise FileNotFoundError(f"input file {input_path} does not exist")
    if not input_path.is_file():
        raise ValueError(f"input {input_path} is not a file")
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    if chunk_lines is not None and chunk_lines <= 0:
        raise ValueError(f"--chunk-lines must be positive, got {chunk_lines}")
    if float16 and out_path.suffix != ".npy":
        raise ValueError(f"--float16 applies to a .npy output, not {out_path.name!r}")
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"output folder {out_path.parent} does not exist")
    if input_path.resolve() == out_path.resolve():
        raise ValueError(f"--out {out_path} is the input file")


def _plan(input_path: Path, out_path: Path, model: str | Path, fmt: corpus.LineFormat, *, dtype: str, float16: bool,
          resume: bool, overwrite: bool, chunk_lines: int | None, skip_bad: bool, progress: bool) -> dict[str, Any]:
    """Rank 0: open or start the job. Returns what every rank needs (or the error to raise)."""
    folder = resolve_model_folder(model)
    identity = {"input": corpus.fingerprint(input_path), "model": job_files.model_fingerprint(folder),
                "dtype": dtype,
                "output": {"format": out_path.suffix, "dtype": "float16" if float16 else "float32"},
                "lines": {"field": fmt.field, "ids": fmt.ids}}
    names = {"input": str(input_path), "model": str(model)}

    def scan(lines: int | None) -> Any:
        size = identity["input"]["size"]
        with progress_bar("counting lines", size, enabled=progress and size > 64 << 20, transient=True) as bar:
            return corpus.scan(input_path, lines or DEFAULT_CHUNK_LINES, fmt, on_bytes=lambda b: bar.update(advance=b))

    job, note = job_files.prepare(out_path, identity, names, resume=resume, overwrite=overwrite,
                                  chunk_lines=chunk_lines, skip_bad=skip_bad, scan=scan)
    if job is None:
        return {"done": True, "note": note}
    job.clean_temp_files()  # no writer runs yet: the other ranks wait for this plan
    finished = job.finished()
    pending = [k for k in range(job.index.chunks) if k not in finished]
    return {"done": False, "note": note, "manifest": job.manifest, "pending": pending,
            "lines_done": job_files.lines_done(finished), "resumed": len(finished)}


def embed_file(
    input_path: str | Path, out_path: str | Path, *, model: str | Path = "all-MiniLM-L6-v2", batch_size: int = 32,
    progress: bool = True, chunk_lines: int | None = None, float16: bool = False, field: str | None = None,
    ids: bool = False, skip_bad: bool = False, resume: bool = False, overwrite: bool = False,
    dtype: str = "auto", encoder: SentenceEmbedder | None = None,
) -> EmbedSummary:
    """Embed every line of a UTF-8 text file (empty lines included, so row ``i`` is line ``i + 1``),
    streaming: chunks of ``chunk_lines`` lines (default :data:`DEFAULT_CHUNK_LINES`), each written
    before the next is read.

    ``OUT`` is ``.npy`` (a float32, or ``float16``, ``(n, E)`` matrix) or ``.jsonl`` (one
    ``{"text", "embedding"}`` object per line; ``{"id", "embedding"}`` with ``ids``). ``field``
    (or ``ids``, whose field defaults to ``"text"``) reads JSON lines. A bad line (not UTF-8,
    not such a JSON object) stops the job before anything is embedded, or with ``skip_bad`` keeps
    its row (zeros in ``.npy``, ``"embedding": null`` in ``.jsonl``) and is listed in
    ``OUT.skipped.jsonl``. ``resume`` continues the unfinished job of ``OUT`` (refused when
    the input, model, dtype or output differ); without it an existing output is an error unless
    ``overwrite``. Under ``torchrun`` each rank embeds its share and rank 0 writes ``OUT`` (set
    each rank's threads to :func:`attnkit.embedding.ranks.default_threads` first, as ``attnkit
    embed`` does: this call never changes the thread count). ``dtype`` (``"auto"``,
    ``"float32"``, ``"bfloat16"``, ``"int8"``) is resolved on this machine, recorded in the job and passed to
    :meth:`SentenceEmbedder.embed_ids`; ``encoder`` is an already loaded :class:`SentenceEmbedder` of
    ``model`` (what :meth:`SentenceEncoder.from_pretrained` returns: attnkit's BERT, or a Hugging Face
    family through :mod:`attnkit.hf`). Returns an :class:`EmbedSummary`; a stop by SIGTERM/SIGINT raises
    :class:`EmbedStopped` (finished chunks are kept for ``resume``).
    """
    input_path, out_path = Path(input_path), Path(out_path)
    _check_arguments(input_path, out_path, batch_size=batch_size, chunk_lines=chunk_lines, float16=float16)
    dtype = str(resolve_dtype(dtype)).removeprefix("torch.")  # "auto" -> what this machine computes in
    fmt = corpus.LineFormat(field if field is not None else ("text" if ids else None), ids)
    ranks = join()
    with _signals_stop(ranks):
        if ranks.rank == 0:
            try:
                plan = _plan(input_path, out_path, model, fmt, dtype=dtype, float16=float16, resume=resume,
                             overwrite=overwrite, chunk_lines=chunk_lines, skip_bad=skip_bad, progress=progress)
            except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
                ranks.share({"error": f"{type(exc).__name__}: {exc}"})
                raise
        plan = ranks.share(plan if ranks.rank == 0 else None)
        if "error" in plan:
            raise ValueError(f"{ranks.name}: rank 0 could not start the job ({plan['error']})")
        if plan["done"]:
            return EmbedSummary(note=plan["note"], rank=ranks.rank)
        manifest = plan["manifest"]
        job = Job(out_path, manifest, corpus.CorpusIndex.from_json(manifest["index"]))
        if encoder is None:
            encoder = SentenceEncoder.from_pretrained(model)
        summary = EmbedSummary(lines=job.index.lines, dim=encoder.dim, chunks=job.index.chunks,
                               resumed=plan["resumed"], note=plan["note"], rank=ranks.rank)
        mine = plan["pending"][ranks.rank :: ranks.world]
        _run_chunks(input_path, job, encoder, mine, plan["lines_done"], summary, ranks, dtype=dtype, fmt=fmt,
                    progress=progress)
        if ranks.rank != 0:
            return summary
        records = job.finished()
        summary.truncated = sum(r["truncated"] for r in records.values())
        try:
            summary.skipped = writers.assemble(job, records, dim=encoder.dim)
        except OSError as exc:
            raise ValueError(_write_failed(exc, job, ranks, assembling=True)) from exc
        except EmbedStopped as exc:
            raise EmbedStopped(str(exc) + _stopped_hint(job), exc.signal) from exc
    return summary


def _kept(job: Job) -> str:
    """'the 3 finished chunks of 16 are kept in OUT.parts'."""
    kept = len(job.finished()) if job.parts.is_dir() else 0
    what = "finished chunk" + ("" if kept == 1 else "s")
    return f"the {kept} {what} of {job.index.chunks} {'is' if kept == 1 else 'are'} kept in {job.parts}"


def _write_failed(exc: OSError, job: Job, ranks: Ranks, *, assembling: bool = False) -> str:
    """The one line for a failed write (a full disk, a permission): what was kept, how to go on."""
    where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    what = f"writing {job.out}" if assembling else "writing a chunk"
    return (f"{ranks.name + ': ' if ranks.distributed else ''}{what} failed{where}: {exc.strerror or exc}; "
            f"{_kept(job)}: free the space (or fix the cause) and run the same command with --resume")


def _stopped_hint(job: Job) -> str:
    return f"; {_kept(job)}: run the same command with --resume (on any number of processes) to finish"


def _embed_one_chunk(input_path: Path, job: Job, k: int, encoder: SentenceEmbedder, fmt: corpus.LineFormat, *,
                     dtype: str, on_batch: Callable[[int, int], None]) -> writers.ChunkRows:
    """Read chunk ``k`` and embed its good lines; a bad line's row stays zero."""
    import numpy as np

    rows = corpus.read_chunk(input_path, job.index, k, fmt)
    first, _ = job.index.chunk_span(k)
    good = [i for i, r in enumerate(rows) if r.bad is None]
    if len(good) < len(rows):
        known = {b.line for b in job.index.bad}
        new = [first + i + 1 for i, r in enumerate(rows) if r.bad is not None and first + i + 1 not in known]
        if new:
            raise ValueError(f"{input_path} changed while it was being embedded: line {new[0]} is "
                             f"{rows[new[0] - first - 1].bad}, and was not when the job started")
    emb, tokens, cut = embed_chunk(encoder, [rows[i].text for i in good], dtype=dtype, on_batch=on_batch)
    if len(good) < len(rows):
        full = np.zeros((len(rows), encoder.dim), dtype=np.float32)  # (lines, E): zero rows where skipped
        full[good] = emb
        emb = full
    return writers.ChunkRows(k, first, rows, emb, tokens, cut)


def _run_chunks(input_path: Path, job: Job, encoder: SentenceEmbedder, mine: list[int], lines_done: int,
                summary: EmbedSummary, ranks: Ranks, *, dtype: str, fmt: corpus.LineFormat, progress: bool) -> None:
    """Embed and write this rank's chunks ``mine``, with the progress bar and (under torchrun) the
    heartbeat; a failure becomes one line that says what is kept."""
    t_start = time.perf_counter()

    def tokens_field(tokens: int) -> str:
        return f"{tokens / max(time.perf_counter() - t_start, 1e-9):,.0f}/s"

    with progress_bar("embedding", job.index.lines, enabled=progress and ranks.rank == 0, completed=lines_done,
                      fields={"tokens": "-"}, rate="lines", eta=True) as bar:
        beat = Heartbeat(ranks).start() if ranks.distributed else None

        def on_batch(lines: int, tokens: int) -> None:
            summary.tokens += tokens
            if beat is None:
                bar.update(advance=lines, tokens=tokens_field(summary.tokens))
            else:
                beat.add(lines, tokens)
                beat.check()
                done, all_tokens = beat.totals  # every rank's, at the last beat
                bar.update(completed=lines_done + done, tokens=tokens_field(all_tokens))

        try:
            for k in mine:
                t0 = time.perf_counter()
                chunk = _embed_one_chunk(input_path, job, k, encoder, fmt, dtype=dtype, on_batch=on_batch)
                writers.write_chunk(job, chunk, rank=ranks.rank, seconds=time.perf_counter() - t0)
                del chunk  # not alive while the next one is read
                release_freed_memory()  # RSS stays flat from chunk to chunk (see its docstring)
            if beat is not None:
                beat.finish()
        except OSError as exc:
            if beat is not None:
                beat.fail()
            raise ValueError(_write_failed(exc, job, ranks)) from exc
        except PeerLostError as exc:
            raise PeerLostError(str(exc) + _stopped_hint(job)) from exc
        except ValueError as exc:  # EmbedStopped, another rank failed, the input changed
            if beat is not None and not isinstance(exc, EmbedStopped):
                beat.fail()
            if isinstance(exc, EmbedStopped):
                raise EmbedStopped(str(exc) + _stopped_hint(job), exc.signal) from exc
            raise ValueError(str(exc) + _stopped_hint(job)) from exc
