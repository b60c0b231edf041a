"""The job's files: each chunk's rows (``.npy`` or ``.jsonl``) and record, and the assembly of
the finished chunks, in input order, into ``OUT`` (see :mod:`attnkit.embedding.job` for the work
folder they live in). Every file is written with :mod:`attnkit.io` (temp file, fsync, rename)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from attnkit.embedding.corpus import Row
from attnkit.embedding.job import COPY_BYTES, Job, discard, outputs_of
from attnkit.io import json_text

__all__ = ["ChunkRows", "assemble", "write_chunk"]


@dataclass
class ChunkRows:
    """What chunk ``k`` produced: the rows (``(lines, E)`` float32, zero at skipped lines), the
    rows as read (texts, ids, bad; the first is input line ``first + 1``) and the token counts."""

    k: int
    first: int
    rows: Sequence[Row]
    embeddings: Any  # numpy (lines, E) float32
    tokens: int
    truncated: int


def _json_line(row: Row, vec: Any, *, ids: bool, line: int) -> bytes:
    obj: dict[str, Any] = {"id": row.id} if ids else {"text": row.text}
    obj["embedding"] = None if row.bad is not None else vec
    if row.bad is not None:
        obj["skipped"] = f"line {line}: {row.bad}"
    return (json_text(obj) + "\n").encode()


def write_chunk(job: Job, chunk: ChunkRows, *, rank: int = 0, seconds: float = 0.0) -> dict[str, Any]:
    """Write chunk ``chunk.k``'s rows file, then its record (both atomic and fsynced). Returns the record."""
    import numpy as np

    from attnkit.io import atomic_write, atomic_write_parts

    ident = job.manifest["identity"]
    first, count = chunk.first, len(chunk.rows)
    ids = ident["lines"]["ids"]
    path = job.data_path(chunk.k)
    if ident["output"]["format"] == ".npy":
        arr = np.ascontiguousarray(chunk.embeddings, dtype=ident["output"]["dtype"])  # (lines, E)
        rows = memoryview(arr).cast("B")
        payload = hashlib.sha256(rows).hexdigest()  # of the rows: what assembly checks as it copies them
        atomic_write_parts(path, (_npy_header(arr.dtype, arr.shape), rows))
    else:  # one row of Python floats at a time: a whole chunk of them would take 6x the array's memory
        payload = atomic_write_parts(path, (_json_line(row, vec.tolist(), ids=ids, line=first + i + 1)
                                            for i, (row, vec) in enumerate(zip(chunk.rows, chunk.embeddings,
                                                                               strict=True))))
    skipped = [[first + i + 1, r.bad, r.id] for i, r in enumerate(chunk.rows) if r.bad is not None]
    record = {"chunk": chunk.k, "first_line": first + 1, "lines": count, "dim": int(chunk.embeddings.shape[1]),
              "tokens": chunk.tokens, "truncated": chunk.truncated, "skipped": skipped,
              "ids": [r.id for r in chunk.rows] if ids and ident["output"]["format"] == ".npy" else None,
              "file_bytes": path.stat().st_size, "sha256": payload, "rank": rank, "seconds": round(seconds, 3)}
    atomic_write(job.record_path(chunk.k), json_text(record))
    return record


# --------------------------------------------------------------------------- the final file


def _npy_header(dtype: Any, shape: tuple[int, int]) -> bytes:
    """The header ``np.save`` writes for a C-ordered array of this dtype and shape."""
    import numpy as np

    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # a header too long for format 1.0 (np.save then writes 2.0)
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} is damaged ({why}); delete it and its .json record, then --resume redoes that chunk")


def _copy_npy_chunk(src_path: Path, rec: dict, tmp: Path, offset: int, dtype: Any, dim: int) -> None:
    """Copy one chunk's rows into the output ``tmp`` at byte ``offset``, a memory-mapped window
    of at most :data:`COPY_BYTES` at a time, checking the SHA-256 of the rows."""
    import numpy as np

    row_bytes = dim * np.dtype(dtype).itemsize
    step = max(1, COPY_BYTES // max(1, row_bytes))
    sha = hashlib.sha256()
    with src_path.open("rb") as src:
        version = np.lib.format.read_magic(src)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, src_dtype = read_header(src)
        if shape != (rec["lines"], dim) or fortran or src_dtype != np.dtype(dtype):
            raise _corrupt(src_path, f"holds {src_dtype} {shape}, expected {np.dtype(dtype)} {(rec['lines'], dim)}")
        for r0 in range(0, rec["lines"], step):
            n = min(step, rec["lines"] - r0)
            window = np.memmap(tmp, dtype=dtype, mode="r+", offset=offset + r0 * row_bytes, shape=(n, dim))
            view = memoryview(window).cast("B")
            if src.readinto(view) != n * row_bytes:
                raise _corrupt(src_path, "it is shorter than its record says")
            sha.update(view)
            window.flush()
            del view, window
    if sha.hexdigest() != rec["sha256"]:
        raise _corrupt(src_path, "its rows do not match the SHA-256 in its record")


def _copy_file_checked(src_path: Path, rec: dict, dst: IO[bytes]) -> None:
    sha = hashlib.sha256()
    with src_path.open("rb") as src:
        while block := src.read(COPY_BYTES):
            sha.update(block)
            dst.write(block)
    if sha.hexdigest() != rec["sha256"]:
        raise _corrupt(src_path, "it does not match the SHA-256 in its record")


def _write_jsonl(path: Path, objects: Iterable[Any]) -> None:
    from attnkit.io import atomic_open

    with atomic_open(path) as f:
        for obj in objects:
            f.write((json_text(obj) + "\n").encode())


def assemble(job: Job, records: dict[int, dict[str, Any]], *, dim: int, remove_parts: bool = True) -> list[list[Any]]:
    """Write the final output (rows of width ``dim``) from the finished chunks, in input order
    (sidecars first, ``OUT`` last, each atomically), then remove the work folder. Returns the
    skipped lines ``[line, reason, id]``. Raises ``ValueError`` when a chunk is missing or damaged."""
    import numpy as np

    from attnkit.io import atomic_open, atomic_path

    missing = [k for k in range(job.index.chunks) if k not in records]
    if missing:
        raise ValueError(f"cannot assemble {job.out}: chunks {missing[:10]} are not finished")
    ident = job.manifest["identity"]
    recs = [records[k] for k in range(job.index.chunks)]
    widths = sorted({r["dim"] for r in recs} - {dim})
    if widths:
        raise ValueError(f"cannot assemble {job.out}: chunks of width {widths} in a job of width {dim}")
    skipped = [s for r in recs for s in r["skipped"]]
    out = job.out
    side = dict(zip(("ids", "skipped"), outputs_of(out, ids=True)[1:], strict=True)) if out.suffix == ".npy" else {
        "skipped": outputs_of(out, ids=False)[1]}
    if ident["lines"]["ids"] and out.suffix == ".npy":
        _write_jsonl(side["ids"], (i for r in recs for i in r["ids"]))
    if skipped:
        _write_jsonl(side["skipped"], ({"line": s[0], "reason": s[1], "id": s[2]} for s in skipped))
    else:
        side["skipped"].unlink(missing_ok=True)  # a stale report of an earlier run would mislead
    if ident["output"]["format"] == ".npy":
        dtype = np.dtype(ident["output"]["dtype"])
        header = _npy_header(dtype, (job.index.lines, dim))
        with atomic_path(out, size=len(header) + job.index.lines * dim * dtype.itemsize) as tmp:
            with tmp.open("r+b") as f:
                f.write(header)
            offset = len(header)
            for k, rec in enumerate(recs):
                _copy_npy_chunk(job.data_path(k), rec, tmp, offset, dtype, dim)
                offset += rec["lines"] * dim * dtype.itemsize
    else:
        with atomic_open(out) as f:
            for k, rec in enumerate(recs):
                _copy_file_checked(job.data_path(k), rec, f)
    if remove_parts:
        discard(job.parts)
    return skipped


