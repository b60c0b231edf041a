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

A whole folder appears and goes in one rename each, through one temp-folder naming scheme,
``.NAME.tmp-XXXXXXXX`` beside the folder ``NAME`` (the checkpoints, an embed job's work
folder)::

    tmp = temp_dir_beside("ck")            # .ck.tmp-XXXXXXXX, empty
    fill(tmp)
    publish_dir(tmp, "ck", exchange=runtime.exchange_paths)   # ck appears, or is swapped in whole
    remove_dir("ck")                       # renamed into a fresh .ck.tmp-XXXXXXXX, then deleted
    sweep_temp_dirs("ck")                  # what a killed process left of those names

A kill at any moment leaves the folder whole or absent (or, between the two renames of
:func:`publish_dir`'s fallback swap, the previous folder under a temp name), and temp folders
that :func:`sweep_temp_dirs` removes.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_path", "atomic_write", "atomic_write_parts", "fsync_path", "json_text",
           "preallocate", "publish_dir", "remove_dir", "sweep_temp_dirs", "temp_dir_beside"]

TEMP_DIR_MARK = ".tmp-"  # a temp folder beside NAME is named "." + NAME + TEMP_DIR_MARK + a unique tail


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


def json_text(obj: Any, **options: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False, **options)``: non-ASCII text as it is, except where a
    string holds a lone surrogate (text decoded with ``surrogateescape``, or a JSON ``"\\udc80"``
    escape read back), which UTF-8 cannot hold: then ASCII escapes, which read back to the same
    value."""
    text = json.dumps(obj, ensure_ascii=False, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, **options)
    return text


def atomic_write_parts(path: str | os.PathLike, parts: Iterable[bytes | memoryview], *, durable: bool = True) -> str:
    """Write ``parts`` one after the other to ``path`` atomically (see :func:`atomic_open`), one
    part in memory at a time; returns the SHA-256 (hex) of everything written."""
    digest = hashlib.sha256()
    with atomic_open(path, durable=durable) as f:
        for part in parts:
            digest.update(part)
            f.write(part)
    return digest.hexdigest()


# --------------------------------------------------------------------------- whole folders


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """Make a new, empty temp folder beside the folder ``path`` and return it: named
    ``.NAME.tmp-XXXXXXXX`` (hidden, unique, mode 0700 until :func:`publish_dir`), the one name
    every temp folder of attnkit has, so that :func:`sweep_temp_dirs` finds what a kill left.
    The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMP_DIR_MARK}", dir=path.parent))


def publish_dir(tmp: str | os.PathLike, path: str | os.PathLike, *,
                exchange: Callable[[Path, Path], bool] | None = None, durable: bool = True) -> Path:
    """Put the finished folder ``tmp`` (made by :func:`temp_dir_beside` for ``path``) at ``path``
    in one rename (with the mode ``mkdir`` would give it: 0777 less the umask), and make the rename durable (the parent folder is fsynced).

    Where ``path`` exists it is swapped with ``tmp`` in one step by ``exchange(tmp, path)``
    (:func:`attnkit.runtime.exchange_paths`: ``renameat2(RENAME_EXCHANGE)``), which returns
    False where it cannot; then by two renames a moment apart, ``path`` to ``tmp`` + ``.old``
    and ``tmp`` to ``path`` (a kill between them leaves no ``path``, and the previous folder in
    ``.NAME.tmp-XXXXXXXX.old``). The previous folder is then deleted. Returns ``path``."""
    tmp, path = Path(tmp), Path(path)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    previous = None
    if not path.exists():
        os.replace(tmp, path)
    elif exchange is not None and exchange(tmp, path):
        previous = tmp
    else:
        previous = tmp.with_name(tmp.name + ".old")
        os.replace(path, previous)
        try:
            os.replace(tmp, path)
        except OSError:
            os.replace(previous, path)  # the previous folder goes back: an error loses nothing
            raise
    if durable:
        fsync_path(path.parent)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)  # a temp name: a kill here leaves it to the sweep
    return path


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``),
    else by setting it and putting it back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_dir(path: str | os.PathLike, *, durable: bool = True) -> None:
    """Remove the folder ``path`` in one atomic step: it is renamed into a fresh
    :func:`temp_dir_beside` folder (the rename made durable), which is then deleted. A kill at
    any moment leaves ``path`` whole or absent, and at most a temp folder for
    :func:`sweep_temp_dirs`. Nothing happens where ``path`` does not exist."""
    path = Path(path)
    if not path.exists():
        return
    aside = temp_dir_beside(path)
    os.replace(path, aside / path.name)
    if durable:
        fsync_path(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def sweep_temp_dirs(path: str | os.PathLike) -> list[Path]:
    """Delete the temp folders (``.NAME.tmp-*``, see :func:`temp_dir_beside`) beside ``path``
    that a killed process left, and return them. Call it only when nothing else is writing or
    removing ``path``, and only where no such folder can hold the last good copy (a kill
    between the two renames of :func:`publish_dir`'s fallback swap leaves it in one of them)."""
    path = Path(path)
    pattern = f".{glob.escape(path.name)}{TEMP_DIR_MARK}*"
    swept = [p for p in sorted(path.parent.glob(pattern)) if p.is_dir() and not p.is_symlink()]
    for leftover in swept:
        shutil.rmtree(leftover, ignore_errors=True)
    return swept
