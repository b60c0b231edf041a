"""Reading a corpus for ``attnkit embed`` a chunk at a time: one text per line, never the whole
file in memory.

A *line* ends at ``\\n`` (a trailing ``\\r`` is dropped, so CRLF files read the same; a last line
without a newline counts; a UTF-8 byte order mark at the start of the file is dropped), so line
``i`` of the file (1-based, as editors and ``sed -n`` count) is output row ``i - 1``. Plain text
lines are embedded as they are, empty lines included. With ``field`` (``--field``, or ``--ids``)
every line is a JSON object and its ``field`` is the text; with ``ids`` its ``"id"`` is carried
into the output so rows can be joined back.

:func:`scan` reads the file once, fast (blocks of 16 MiB, newlines found with numpy): it counts
the lines, records the byte offset where every chunk of ``chunk_lines`` lines starts, and finds
every bad line (not UTF-8; with ``field``: not a JSON object with that string field) before
anything is embedded. :func:`read_chunk` then reads one chunk by its offsets.
:func:`fingerprint` identifies a file cheaply (size + SHA-256 of its first and last MiB).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BadLine", "CorpusIndex", "LineFormat", "Row", "fingerprint", "read_chunk", "scan"]

SCAN_BLOCK = 16 << 20  # bytes read at a time by scan
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark at the start of the file is not part of line 1
FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of a file


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size", "sha256_head_tail"}`` of a file: its size in bytes and the SHA-256 of its first
    and last MiB (the whole file when it is at most 2 MiB). Cheap on any size of file."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(FINGERPRINT_SPAN))
        if size > FINGERPRINT_SPAN:
            f.seek(max(FINGERPRINT_SPAN, size - FINGERPRINT_SPAN))
            digest.update(f.read(FINGERPRINT_SPAN))
    return {"size": size, "sha256_head_tail": digest.hexdigest()}


@dataclass(frozen=True)
class BadLine:
    """A line that cannot be embedded: its 1-based ``line`` number, why, and its id when known."""

    line: int
    reason: str
    id: Any = None


@dataclass(frozen=True)
class Row:
    """One line as read: ``text`` (None for a bad line, then ``bad`` says why) and its ``id``."""

    text: str | None
    id: Any = None
    bad: str | None = None


@dataclass(frozen=True)
class LineFormat:
    """How a line becomes a text: plain UTF-8 text (``field=None``), or a JSON object whose
    ``field`` is the text (and, with ``ids``, whose ``"id"`` is kept)."""

    field: str | None = None
    ids: bool = False

    def __post_init__(self) -> None:
        if self.ids and self.field is None:
            raise ValueError("ids=True reads JSON lines: give the text field too (field='text')")
        if self.field is not None and not (isinstance(self.field, str) and self.field):
            raise ValueError(f"field must be a non-empty string, got {self.field!r}")

    def parse(self, raw: bytes) -> Row:
        """One line (without its ``\\n``) -> a :class:`Row` (``bad`` set instead of raising)."""
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Row(None, bad=f"not UTF-8 (byte {exc.start} of the line: {exc.reason})")
        if self.field is None:
            return Row(text)
        if not text.strip():
            return Row(None, bad="empty (a JSON object was expected)")
        try:
            obj = json.loads(text)
        except ValueError as exc:
            return Row(None, bad=f"not valid JSON ({exc})")
        if not isinstance(obj, dict):
            return Row(None, bad=f"not a JSON object (got {type(obj).__name__})")
        ident = obj.get("id")
        if self.ids and "id" not in obj:
            return Row(None, bad='has no "id" field')
        value = obj.get(self.field)
        if not isinstance(value, str):
            why = (f"has no {self.field!r} field" if self.field not in obj
                   else f"its {self.field!r} field is {type(value).__name__}, not a string")
            return Row(None, ident if self.ids else None, why)
        try:  # JSON may escape a lone surrogate ("\\ud800"): no tokenizer takes it
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return Row(None, ident if self.ids else None,
                       f"its {self.field!r} field is not valid Unicode (a lone surrogate "
                       f"\\u{ord(value[exc.start]):04x} at character {exc.start})")
        return Row(value, ident if self.ids else None)


@dataclass
class CorpusIndex:
    """What :func:`scan` learnt: ``lines`` in the file, the byte ``offsets`` where each chunk of
    ``chunk_lines`` lines starts (plus the file size at the end), and every bad line."""

    lines: int
    chunk_lines: int
    offsets: list[int]
    bad: list[BadLine] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        return len(self.offsets) - 1

    def chunk_span(self, k: int) -> tuple[int, int]:
        """``(first line index (0-based), number of lines)`` of chunk ``k``."""
        if not 0 <= k < self.chunks:
            raise ValueError(f"chunk {k} is outside 0..{self.chunks - 1}")
        first = k * self.chunk_lines
        return first, min(self.chunk_lines, self.lines - first)

    def to_json(self) -> dict[str, Any]:
        return {"lines": self.lines, "chunk_lines": self.chunk_lines, "offsets": self.offsets,
                "bad": [[b.line, b.reason, b.id] for b in self.bad]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CorpusIndex:
        return cls(d["lines"], d["chunk_lines"], list(d["offsets"]), [BadLine(*b) for b in d["bad"]])


def _blocks(path: Path, block: int) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, bytes)`` of consecutive pieces of the file, each ending after a ``\\n``
    (the last one may not)."""
    offset, carry = 0, b""
    with path.open("rb") as f:
        while True:
            data = f.read(block)
            if not data:
                break
            data = carry + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no newline in this block: a very long line, keep reading
                carry = data
                continue
            yield offset, data[:cut]
            offset += cut
            carry = data[cut:]
    if carry:
        yield offset, carry


def scan(path: str | os.PathLike, chunk_lines: int, fmt: LineFormat = LineFormat(), *,
         on_bytes: Any = None) -> CorpusIndex:
    """Count the lines of ``path``, record where each chunk of ``chunk_lines`` lines starts, and
    find every bad line, reading the file once. ``on_bytes(n)`` (optional) is told how many
    bytes were read, for a progress bar."""
    import numpy as np

    if chunk_lines <= 0:
        raise ValueError(f"--chunk-lines must be positive, got {chunk_lines}")
    path = Path(path)
    offsets, bad, lines, size = [0], [], 0, 0
    for start, data in _blocks(path, SCAN_BLOCK):
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)  # positions of the newlines
        n = len(ends) + (not data.endswith(b"\n"))  # lines in this block
        # chunk k >= 1 starts at line k * chunk_lines: in this block when lines <= k * chunk_lines < lines + n
        for k in range(max(1, -(-lines // chunk_lines)), (lines + n - 1) // chunk_lines + 1):
            m = k * chunk_lines - lines  # its index in the block (>= 1: block 0 starts with chunk 0)
            offsets.append(start + int(ends[m - 1]) + 1 if m else start)
        if fmt.field is not None or not _is_utf8(data):
            pieces = data.split(b"\n")[:n]
            if start == 0:
                pieces[0] = pieces[0].removeprefix(BOM)
            for i, raw in enumerate(pieces):
                row = fmt.parse(raw)
                if row.bad is not None:
                    bad.append(BadLine(lines + i + 1, row.bad, row.id))
        lines += n
        size = start + len(data)
        if on_bytes is not None:
            on_bytes(len(data))
    if lines:
        offsets.append(size)
    return CorpusIndex(lines, chunk_lines, offsets, bad)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_chunk(path: str | os.PathLike, index: CorpusIndex, k: int, fmt: LineFormat = LineFormat()) -> list[Row]:
    """The rows of chunk ``k`` (one :class:`Row` per line, bad lines included with ``bad`` set).

    Raises ``ValueError`` when the file no longer has the lines :func:`scan` found there (it was
    changed while the job ran)."""
    first, count = index.chunk_span(k)
    start, end = index.offsets[k], index.offsets[k + 1]
    with Path(path).open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    pieces = data.split(b"\n")
    if data.endswith(b"\n"):
        pieces.pop()
    if start == 0 and pieces:
        pieces[0] = pieces[0].removeprefix(BOM)
    if len(pieces) != count:
        raise ValueError(f"{path} changed while it was being embedded: bytes {start}..{end} hold "
                         f"{len(pieces)} lines, not the {count} lines {first + 1}..{first + count} found before")
    return [fmt.parse(raw) for raw in pieces]
