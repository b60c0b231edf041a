"""The one atomic file write of attnkit: a temp file beside the target, fsync, rename.

Every writer of the package (tokenizers, the explorer page, embeddings, checkpoint files,
manifests) goes through :func:`atomic_open` / :func:`atomic_write`, so a kill at any moment
leaves either the previous file or the complete new one, never a torn one, and a full disk
leaves the previous file untouched (the temp file is removed)::

    with atomic_open("emb.npy") as f:      # binary; mode="w" for text
        np.save(f, matrix)
    atomic_write("vocab.json", text)       # str or bytes
    digest = atomic_write_parts("rows.jsonl", lines)   # an iterable of bytes; returns its SHA-256
    with atomic_path("emb.npy", size=n_bytes) as tmp:   # for writers that need a path (memmap)
        fill(np.memmap(tmp, ...))

:func:`fsync_path` makes a rename or a finished file durable (a folder is synced too).
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "atomic_path", "atomic_write", "atomic_write_parts", "fsync_path", "preallocate"]


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> tuple[int, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    return fd, Path(tmp)


def _publish(tmp: Path, path: Path, durable: bool) -> None:
    """Rename a finished temp file over ``path`` (and make the rename durable)."""
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
    os.replace(tmp, path)
    if durable:
        fsync_path(path.parent)


def preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of disk for the open file ``fd``, so that a full disk fails here with
    ``OSError(ENOSPC)`` and not later (a write into a memory map of a sparse file on a full disk
    kills the process with SIGBUS). Where the file system cannot reserve space the file is only
    extended (sparse)."""
    if size < 0:
        raise ValueError(f"size must be >= 0 bytes, got {size}")
    if size == 0:
        return
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        os.ftruncate(fd, size)
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise  # ENOSPC above all
        os.ftruncate(fd, size)  # this file system cannot reserve space


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str = "utf-8",
                durable: bool = True) -> Iterator[IO]:
    """Open a temp file beside ``path`` for writing (``mode`` ``"wb"`` or ``"w"``); when the
    block ends without an error it is flushed, fsynced (``durable``) and renamed over
    ``path`` (and the folder fsynced); on an error it is removed and ``path`` is untouched.
    The parent folder is created."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes a whole file: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, mode, **({"encoding": encoding} if mode == "w" else {})) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        _publish(tmp, path, durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike, *, size: int | None = None, durable: bool = True) -> Iterator[Path]:
    """:func:`atomic_open` for writers that need a path rather than a file object (a memory map,
    a library that opens the file itself): yields the path of an empty temp file beside ``path``
    (``size`` bytes reserved on disk by :func:`preallocate` when given); when the block ends
    without an error the temp file is fsynced (``durable``) and renamed over ``path``; on an
    error it is removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        try:
            if size is not None:
                preallocate(fd, size)
        finally:
            os.close(fd)
        yield tmp
        if durable:
            fsync_path(tmp)
        _publish(tmp, path, durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes, *, encoding: str = "utf-8",
                 durable: bool = True) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb", encoding=encoding, durable=durable) as f:
        f.write(data)
    return Path(path)


def atomic_write_parts(path: str | os.PathLike, parts: Iterable[bytes | memoryview], *, durable: bool = True) -> str:
    """Write ``parts`` one after the other to ``path`` atomically (see :func:`atomic_open`), one
    part in memory at a time; returns the SHA-256 (hex) of everything written."""
    digest = hashlib.sha256()
    with atomic_open(path, durable=durable) as f:
        for part in parts:
            digest.update(part)
            f.write(part)
    return digest.hexdigest()
