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
its rows file has the recorded size; :func:`attnkit.embedding.writers.assemble` checks every SHA-256 while it copies the
chunks, in input order, into ``OUT`` (and the sidecars ``OUT.ids.jsonl`` /
``OUT.skipped.jsonl``), renames it into place last, and then removes the folder.

The folder itself appears and goes in one rename each (:mod:`attnkit.io`'s temp folders): a new
job's folder is made as ``.OUT.parts.tmp-XXXXXXXX`` with its manifest and renamed to
``OUT.parts``; a finished or discarded one is renamed into a fresh ``.OUT.parts.tmp-XXXXXXXX``
before it is deleted. So ``OUT.parts`` always holds a manifest, and the next run removes what a
kill leaves of those temp folders (and of ``OUT.parts.new-PID`` / ``OUT.parts.trash-PID``, the
names older versions used).
"""

from __future__ import annotations

import glob
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit.embedding.corpus import CorpusIndex, fingerprint
from attnkit.io import atomic_write, publish_dir, remove_dir, sweep_temp_dirs, temp_dir_beside

__all__ = ["Job", "discard", "lines_done", "model_fingerprint", "outputs_of", "parts_dir", "prepare"]

MANIFEST = "manifest.json"
VERSION = 1
COPY_BYTES = 16 << 20  # assembly copies at most this much at a time (RSS stays flat)
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json",
               "1_Pooling/config.json")


def parts_dir(out: Path) -> Path:
    """The work folder of the output ``out``: ``out`` + ``.parts``."""
    return out.with_name(out.name + ".parts")


def discard(parts: Path) -> None:
    """Remove the work folder ``parts``: renamed aside first (one atomic step), then deleted, so
    a kill never leaves ``parts`` without its manifest (:func:`attnkit.io.remove_dir`)."""
    remove_dir(parts)


def _sweep(parts: Path) -> None:
    """Remove what a killed run left of ``parts``'s temp folders: ``.PARTS.tmp-*``
    (:func:`attnkit.io.sweep_temp_dirs`), and ``PARTS.new-PID`` / ``PARTS.trash-PID``, the names
    attnkit used before."""
    sweep_temp_dirs(parts)
    for leftover in parts.parent.glob(f"{glob.escape(parts.name)}.*-*"):
        kind, _, pid = leftover.name[len(parts.name) + 1:].partition("-")
        if kind in ("new", "trash") and pid.isdigit() and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def outputs_of(out: Path, *, ids: bool) -> list[Path]:
    """Every file a finished job may write: ``out``, and beside it ``out`` + ``.skipped.jsonl``
    (the skipped lines, when there are any) and, for ``.npy`` with ids, ``out`` + ``.ids.jsonl``."""
    extra = [out.with_name(out.name + ".ids.jsonl")] if ids and out.suffix == ".npy" else []
    return [out, *extra, out.with_name(out.name + ".skipped.jsonl")]


def model_fingerprint(folder: Path) -> str:
    """SHA-256 over the :func:`~attnkit.embedding.corpus.fingerprint` of the files that define a
    sentence-transformers folder: :data:`MODEL_FILES` at its root (weights, config, tokenizer,
    pooling) and every file in each module folder its ``modules.json`` names below the root (an
    older folder keeps its weights and tokenizer in ``0_Transformer/``). A folder whose modules
    are the root and ``1_Pooling/config.json`` hashes exactly what it always did, so its
    unfinished jobs still resume."""
    parts = {name: fingerprint(folder / name) for name in MODEL_FILES if (folder / name).is_file()}
    for module in _module_paths(folder):
        for path in sorted(p for p in (folder / module).iterdir() if p.is_file()):
            parts[f"{module}/{path.name}"] = fingerprint(path)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _module_paths(folder: Path) -> list[str]:
    """The module folders below ``folder`` that its ``modules.json`` lists (``"0_Transformer"``,
    ``"1_Pooling"``), as written there; none when there is no readable list (the loader says why)."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return []
    paths = {m.get("path") for m in modules if isinstance(m, dict)} if isinstance(modules, list) else set()
    return sorted(Path(p).as_posix() for p in paths if isinstance(p, str) and p and (folder / p).is_dir())


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
        joint = " " if first.reason.startswith("has ") else ": " if first.reason.startswith("its ") else " is "
        head = f"{input_name} cannot be embedded: line {first.line}{joint}{first.reason}"
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
    _sweep(parts)
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
    discard(parts)  # --overwrite: the unfinished job goes
    manifest = {"version": VERSION, "identity": identity, "names": names, "index": index.to_json(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    new = temp_dir_beside(parts)
    atomic_write(new / MANIFEST, json.dumps(manifest))
    publish_dir(new, parts)  # the folder appears with its manifest
    return Job(out, manifest, index), ""


def lines_done(records: dict[int, dict[str, Any]]) -> int:
    """Lines in the finished chunks."""
    return sum(r["lines"] for r in records.values())
