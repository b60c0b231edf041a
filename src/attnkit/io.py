"""The one atomic file write of attnkit: a temp file beside the target, fsync, rename.

Every writer of the package (tokenizers, the explorer page, embeddings, checkpoint files,
manifests) goes through :func:`atomic_open` / :func:`atomic_write`, so a kill at any moment
leaves either the previous file or the complete new one, never a torn one, and a full disk
leaves the previous file untouched (the temp file is removed)::

    with atomic_open("emb.npy") as f:      # binary; mode="w" for text
        np.save(f, matrix)
    atomic_write("vocab.json", text)       # str or bytes

:func:`fsync_path` makes a rename or a finished file durable (a folder is synced too).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "atomic_write", "fsync_path"]


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": encoding} if mode == "w" else {})) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes, *, encoding: str = "utf-8",
                 durable: bool = True) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb", encoding=encoding, durable=durable) as f:
        f.write(data)
    return Path(path)
