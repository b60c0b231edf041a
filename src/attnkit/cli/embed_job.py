"""The work folder of one ``attnkit embed`` job: what makes a kill at any moment resumable.

Beside the output ``OUT`` lives ``OUT.parts/`` until the job is done::

    emb.npy.parts/
      manifest.json        the job: input (path, size, SHA-256 of its first and last MiB), model
                           fingerprint, dtype, output format, line format, the corpus index
                           (line count, byte offset of every chunk, bad lines)
      chunk-000000.npy     the rows of chunk 0 (.jsonl for a .jsonl output)
      chunk-000000.json    its record: lines, tokens, truncated, skipped lines, ids, SHA-256 of the
                           rows; written after the rows, so it marks the chunk as finished

Every file is written with :mod:`attnkit.io` (temp file, fsync, rename, folder fsync), so a
kill leaves each file complete or absent. A chunk counts as finished when its record exists and
its rows file has the recorded size; :func:`assemble` checks every SHA-256 while it copies the
chunks, in input order, into ``OUT`` (and the sidecars ``OUT.ids.jsonl`` /
``OUT.skipped.jsonl``), renames it into place last, and then removes the folder.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from attnkit.cli.corpus import CorpusIndex, Row, fingerprint

__all__ = ["Job", "ChunkRows", "assemble", "model_fingerprint", "outputs_of", "parts_dir", "prepare"]

MANIFEST = "manifest.json"
VERSION = 1
COPY_BYTES = 16 << 20  # assembly copies at most this much at a time (RSS stays flat)
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json",
               "1_Pooling/config.json")


def parts_dir(out: Path) -> Path:
    """The work folder of the output ``out``: ``out`` + ``.parts``."""
    return out.with_name(out.name + ".parts")


def outputs_of(out: Path, *, ids: bool) -> list[Path]:
    """Every file a finished job may write: ``out``, and beside it ``out`` + ``.skipped.jsonl``
    (the skipped lines, when there are any) and, for ``.npy`` with ids, ``out`` + ``.ids.jsonl``."""
    extra = [out.with_name(out.name + ".ids.jsonl")] if ids and out.suffix == ".npy" else []
    return [out, *extra, out.with_name(out.name + ".skipped.jsonl")]


def model_fingerprint(folder: Path) -> str:
    """SHA-256 over the :func:`~attnkit.cli.corpus.fingerprint` of the files that define a
    sentence-transformers folder (weights, config, tokenizer, pooling)."""
    parts = {name: fingerprint(folder / name) for name in MODEL_FILES if (folder / name).is_file()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _chunk_name(k: int, suffix: str) -> str:
    return f"chunk-{k:06d}{suffix}"


@dataclass
class Job:
    """An open work folder: its ``manifest`` (a dict, see the module docstring) and ``index``."""

    out: Path
    manifest: dict[str, Any]
    index: CorpusIndex

    @property
    def parts(self) -> Path:
        return parts_dir(self.out)

    @property
    def suffix(self) -> str:
        return self.manifest["identity"]["output"]["format"]

    def data_path(self, k: int) -> Path:
        return self.parts / _chunk_name(k, self.suffix)

    def record_path(self, k: int) -> Path:
        return self.parts / _chunk_name(k, ".json")

    def finished(self) -> dict[int, dict[str, Any]]:
        """Records of the finished chunks, by chunk number."""
        done = {}
        for k in range(self.index.chunks):
            rec_path, data = self.record_path(k), self.data_path(k)
            if not rec_path.is_file() or not data.is_file():
                continue
            try:
                rec = json.loads(rec_path.read_text(encoding="utf-8"))
            except ValueError:  # cannot happen with atomic writes; redo the chunk if it does
                continue
            if rec.get("chunk") == k and data.stat().st_size == rec.get("file_bytes"):
                done[k] = rec
        return done

    def clean_temp_files(self) -> None:
        """Remove the temp files a killed writer left: of chunks in the work folder, and of the
        output and its sidecars beside it (call it only when no writer of this job runs)."""
        stale = list(self.parts.glob(".chunk-*.tmp"))
        for target in outputs_of(self.out, ids=True):
            stale += target.parent.glob(f".{glob.escape(target.name)}.*.tmp")
        for p in stale:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- start or resume


def _describe_input(ident: dict, path: str) -> str:
    return f"{path} ({ident['size']} bytes, first/last MiB sha256 {ident['sha256_head_tail'][:12]})"


def _differences(old: dict, new: dict, old_names: dict, new_names: dict) -> list[str]:
    """What differs between two job identities, as phrases for the user."""
    diffs = []
    if old["input"] != new["input"]:
        diffs.append(f"the input differs: the job embeds {_describe_input(old['input'], old_names['input'])}, "
                     f"this is {_describe_input(new['input'], new_names['input'])}")
    if old["model"] != new["model"]:
        diffs.append(f"the model differs: the job uses {old_names['model']} (fingerprint {old['model'][:12]}), "
                     f"this is {new_names['model']} ({new['model'][:12]})")
    if old["dtype"] != new["dtype"]:
        diffs.append(f"the dtype differs: the job computes in {old['dtype']}, this asks for {new['dtype']}")
    if old["output"] != new["output"]:
        diffs.append(f"the output differs: the job writes {old['output']['format']} {old['output']['dtype']}, "
                     f"this asks for {new['output']['format']} {new['output']['dtype']}")
    if old["lines"] != new["lines"]:
        diffs.append(f"the line format differs: the job reads {old['lines']}, this asks for {new['lines']}")
    return diffs


def _read_manifest(parts: Path) -> dict[str, Any]:
    path = parts / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{parts} is not a resumable attnkit embed job ({path}: {exc}); remove the folder "
                         f"or pass --overwrite to start over") from None
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path} is version {manifest.get('version')!r} of the job format, this attnkit reads "
                         f"version {VERSION}; pass --overwrite to start over")
    return manifest


def _bad_lines_message(input_name: str, index: CorpusIndex) -> str:
    first, bad = index.bad[0], index.bad
    if first.reason.startswith("not UTF-8 "):
        head = f"{input_name} is not UTF-8 text at line {first.line} {first.reason[len('not UTF-8 '):]}"
    else:
        head = f"{input_name} cannot be embedded: line {first.line} is {first.reason}"
    if len(bad) > 1:
        listed = ", ".join(str(b.line) for b in bad[:10]) + (", ..." if len(bad) > 10 else "")
        head += f" ({len(bad)} bad lines in all: {listed})"
    return (head + "; pass --skip-bad to embed the other lines (a skipped line keeps its row: zeros in .npy, "
            '"embedding": null in .jsonl)')


def prepare(out: Path, identity: dict[str, Any], names: dict[str, str], *, resume: bool, overwrite: bool,
            chunk_lines: int | None, skip_bad: bool, scan: Any) -> tuple[Job | None, str]:
    """Open the job that writes ``out``: resume the unfinished one, or start a new one.

    ``identity`` must equal the unfinished job's (input fingerprint, model fingerprint, dtype,
    output, line format) to resume it; ``names`` are the human names of the input and the model
    for messages. ``scan(chunk_lines)`` builds the :class:`CorpusIndex` of a new job. Without
    ``resume`` an unfinished job or an existing output is an error (``overwrite`` discards the
    one and replaces the other when the new job finishes). Returns ``(job, note)``; ``job`` is
    None when ``resume`` finds ``out`` already complete (``note`` says so).
    """
    parts = parts_dir(out)
    if parts.exists() and not overwrite:
        if not resume:
            raise ValueError(f"{parts} holds an unfinished job for {out}: pass --resume to finish it, or "
                             f"--overwrite to start over")
        manifest = _read_manifest(parts)
        diffs = _differences(manifest["identity"], identity, manifest["names"], names)
        if diffs:
            raise ValueError(f"cannot resume {out}: " + "; ".join(diffs)
                             + " (finish it as it was started, or pass --overwrite to start over)")
        index = CorpusIndex.from_json(manifest["index"])
        if chunk_lines is not None and chunk_lines != index.chunk_lines:
            raise ValueError(f"cannot resume {out} with --chunk-lines {chunk_lines}: the job was started with "
                             f"--chunk-lines {index.chunk_lines} (leave it out to resume)")
        return Job(out, manifest, index), ""
    if resume and not overwrite and out.exists():
        return None, f"{out} is already complete (no unfinished job in {parts}); nothing to resume"
    if not overwrite:
        existing = [p for p in outputs_of(out, ids=identity["lines"]["ids"]) if p.exists()]
        if existing:
            raise ValueError(f"{existing[0]} already exists: pass --overwrite to replace it, or choose another --out")
    index = scan(chunk_lines)
    if index.bad and not skip_bad:
        raise ValueError(_bad_lines_message(names["input"], index))
    if parts.exists():  # --overwrite: the unfinished job is discarded
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    manifest = {"version": VERSION, "identity": identity, "names": names, "index": index.to_json(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    from attnkit.io import atomic_write

    atomic_write(parts / MANIFEST, json.dumps(manifest))
    return Job(out, manifest, index), ""


# --------------------------------------------------------------------------- one chunk


class _HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.bytes += len(b)
        return self.f.write(b)


@dataclass
class ChunkRows:
    """What one chunk produced: the rows (``(lines, E)`` float32, zero at skipped lines), the
    rows as read (texts, ids, bad) and the token counts."""

    k: int
    rows: Sequence[Row]
    embeddings: Any  # numpy (lines, E) float32
    tokens: int
    truncated: int


def _json_line(row: Row, vec: Any, *, ids: bool, line: int) -> bytes:
    obj: dict[str, Any] = {"id": row.id} if ids else {"text": row.text}
    obj["embedding"] = None if row.bad is not None else vec
    if row.bad is not None:
        obj["skipped"] = f"line {line}: {row.bad}"
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


def write_chunk(job: Job, chunk: ChunkRows, *, rank: int = 0, seconds: float = 0.0) -> dict[str, Any]:
    """Write chunk ``chunk.k``'s rows file, then its record (both atomic and fsynced). Returns the record."""
    import numpy as np

    from attnkit.io import atomic_open, atomic_write

    ident = job.manifest["identity"]
    first, count = job.index.chunk_span(chunk.k)
    ids = ident["lines"]["ids"]
    path = job.data_path(chunk.k)
    if ident["output"]["format"] == ".npy":
        arr = np.ascontiguousarray(chunk.embeddings, dtype=ident["output"]["dtype"])  # (lines, E)
        with atomic_open(path) as f:
            np.save(f, arr)
        payload = hashlib.sha256(memoryview(arr).cast("B")).hexdigest()
    else:
        with atomic_open(path) as f:
            w = _HashingWriter(f)
            # one row of Python floats at a time: a whole chunk of them would take 6x the array's memory
            for i, (row, vec) in enumerate(zip(chunk.rows, chunk.embeddings, strict=True)):
                w.write(_json_line(row, vec.tolist(), ids=ids, line=first + i + 1))
        payload = w.sha.hexdigest()
    skipped = [[first + i + 1, r.bad, r.id] for i, r in enumerate(chunk.rows) if r.bad is not None]
    record = {"chunk": chunk.k, "first_line": first + 1, "lines": count, "dim": int(chunk.embeddings.shape[1]),
              "tokens": chunk.tokens, "truncated": chunk.truncated, "skipped": skipped,
              "ids": [r.id for r in chunk.rows] if ids and ident["output"]["format"] == ".npy" else None,
              "file_bytes": path.stat().st_size, "sha256": payload, "rank": rank, "seconds": round(seconds, 3)}
    atomic_write(job.record_path(chunk.k), json.dumps(record, ensure_ascii=False))
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
            f.write((json.dumps(obj, ensure_ascii=False) + "\n").encode())


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
        shutil.rmtree(job.parts, ignore_errors=True)
    return skipped


def lines_done(records: dict[int, dict[str, Any]]) -> int:
    """Lines in the finished chunks."""
    return sum(r["lines"] for r in records.values())
