"""Whole folders in :mod:`attnkit.io`: one temp-folder name (``.NAME.tmp-*``), publishing and
removing a folder in one rename, and the sweep of what a kill left. A kill is simulated in the
process by making ``os.replace`` or ``shutil.rmtree`` raise at one exact moment (nothing after
it runs, as with SIGKILL); then the sweep must leave nothing but the folder."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

import attnkit.io as aio
from attnkit.io import publish_dir, remove_dir, sweep_temp_dirs, temp_dir_beside
from attnkit.runtime import exchange_paths


class _Killed(BaseException):
    """Stands for SIGKILL at one exact moment (nothing after it runs)."""


def _fill(folder: Path, text: str) -> Path:
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(text)
    (folder / "sub" / "data.bin").write_bytes(text.encode() * 3)
    return folder


def _text(folder: Path) -> str:
    return (folder / "manifest.json").read_text()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_temp_dir_beside_is_a_new_hidden_folder_with_the_one_name(tmp_path) -> None:
    target = tmp_path / "deep" / "ck"
    a, b = temp_dir_beside(target), temp_dir_beside(target)
    assert a != b and a.parent == b.parent == target.parent  # the parent was made
    for tmp in (a, b):
        assert tmp.is_dir() and not any(tmp.iterdir())
        assert tmp.name.startswith(".ck.tmp-") and len(tmp.name) > len(".ck.tmp-")
    assert not target.exists()


def test_publish_dir_makes_the_folder_appear_whole(tmp_path) -> None:
    target = tmp_path / "ck"
    tmp = _fill(temp_dir_beside(target), "new")
    assert publish_dir(tmp, target) == target
    assert _text(target) == "new" and (target / "sub" / "data.bin").is_file()
    assert _names(tmp_path) == ["ck"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_published_folder_has_the_mode_mkdir_gives(tmp_path, umask) -> None:
    """Not mkdtemp's 0700, nor more open than the user's umask allows (embeddings of a private
    corpus stay private)."""
    old = os.umask(umask)
    try:
        made = tmp_path / "made"
        made.mkdir()
        target = tmp_path / "ck"
        publish_dir(_fill(temp_dir_beside(target), "new"), target)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(made.stat().st_mode) == 0o777 & ~umask


@pytest.mark.parametrize("exchange", [None, exchange_paths, lambda a, b: False],
                         ids=["two-renames", "renameat2", "exchange-unsupported"])
def test_publish_dir_swaps_an_existing_folder_and_removes_the_previous(tmp_path, exchange) -> None:
    target = tmp_path / "ck"
    publish_dir(_fill(temp_dir_beside(target), "old"), target)
    (target / "only-in-old").write_text("x")
    publish_dir(_fill(temp_dir_beside(target), "new"), target, exchange=exchange)
    assert _text(target) == "new" and not (target / "only-in-old").exists()
    assert _names(tmp_path) == ["ck"]  # the previous folder is gone, no temp folder is left


def test_a_kill_before_the_publishing_rename_leaves_only_a_temp_folder(tmp_path, monkeypatch) -> None:
    target = tmp_path / "ck"
    tmp = _fill(temp_dir_beside(target), "new")
    real_replace = aio.os.replace

    def killed(src, dst):
        if Path(dst) == target:
            raise _Killed
        real_replace(src, dst)

    monkeypatch.setattr(aio.os, "replace", killed)
    with pytest.raises(_Killed):
        publish_dir(tmp, target)
    monkeypatch.setattr(aio.os, "replace", real_replace)
    assert not target.exists() and _names(tmp_path) == [tmp.name]
    assert sweep_temp_dirs(target) == [tmp]
    assert _names(tmp_path) == []


def test_a_kill_between_the_two_renames_keeps_the_previous_folder_under_a_temp_name(tmp_path, monkeypatch) -> None:
    """The fallback swap: ``path`` -> ``tmp.old``, then ``tmp`` -> ``path``. Killed between them,
    no ``path`` exists and the previous folder is whole in ``.NAME.tmp-*.old`` (which is why a
    caller sweeps only beside a whole folder)."""
    target = tmp_path / "ck"
    publish_dir(_fill(temp_dir_beside(target), "old"), target)
    tmp = _fill(temp_dir_beside(target), "new")
    real_replace = aio.os.replace

    def killed(src, dst):
        if Path(src) == tmp:
            raise _Killed
        real_replace(src, dst)

    monkeypatch.setattr(aio.os, "replace", killed)
    with pytest.raises(_Killed):
        publish_dir(tmp, target)
    monkeypatch.setattr(aio.os, "replace", real_replace)
    old = tmp.with_name(tmp.name + ".old")
    assert not target.exists() and _text(old) == "old" and _text(tmp) == "new"
    assert sorted(sweep_temp_dirs(target)) == sorted([tmp, old])  # a sweep finds both names


@pytest.mark.parametrize("exchange", [None, exchange_paths], ids=["two-renames", "renameat2"])
def test_a_kill_while_the_previous_folder_is_deleted_leaves_it_to_the_sweep(tmp_path, monkeypatch, exchange) -> None:
    target = tmp_path / "ck"
    publish_dir(_fill(temp_dir_beside(target), "old"), target)
    real_rmtree = aio.shutil.rmtree

    def killed(path, *a, **k):
        if Path(path).is_dir() and _text(Path(path)) == "old":
            raise _Killed
        real_rmtree(path, *a, **k)

    monkeypatch.setattr(aio.shutil, "rmtree", killed)
    with pytest.raises(_Killed):
        publish_dir(_fill(temp_dir_beside(target), "new"), target, exchange=exchange)
    monkeypatch.setattr(aio.shutil, "rmtree", real_rmtree)
    assert _text(target) == "new"
    (left,) = [p for p in tmp_path.iterdir() if p != target]
    assert left.name.startswith(".ck.tmp-") and _text(left) == "old"
    sweep_temp_dirs(target)
    assert _names(tmp_path) == ["ck"] and _text(target) == "new"


def test_remove_dir_removes_the_folder_and_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "ck"
    target.mkdir()
    _fill(target, "x")
    (tmp_path / "other").mkdir()
    remove_dir(target)
    assert _names(tmp_path) == ["other"]
    remove_dir(target)  # a folder that is not there: nothing to do
    assert _names(tmp_path) == ["other"]


def test_a_kill_at_any_step_of_remove_dir_leaves_the_folder_whole_or_a_temp_folder(tmp_path, monkeypatch) -> None:
    target = tmp_path / "ck"
    target.mkdir()
    _fill(target, "x")
    real_replace, real_rmtree = aio.os.replace, aio.shutil.rmtree

    def killed_renaming(src, dst):  # the temp folder is made, the folder not yet renamed into it
        if Path(src) == target:
            raise _Killed
        real_replace(src, dst)

    monkeypatch.setattr(aio.os, "replace", killed_renaming)
    with pytest.raises(_Killed):
        remove_dir(target)
    monkeypatch.setattr(aio.os, "replace", real_replace)
    assert _text(target) == "x" and (target / "sub" / "data.bin").is_file()  # still whole
    sweep_temp_dirs(target)  # the empty temp folder
    assert _names(tmp_path) == ["ck"]

    def killed_deleting(path, *a, **k):  # renamed aside, not yet deleted
        if (Path(path) / "ck").is_dir():
            raise _Killed
        real_rmtree(path, *a, **k)

    monkeypatch.setattr(aio.shutil, "rmtree", killed_deleting)
    with pytest.raises(_Killed):
        remove_dir(target)
    monkeypatch.setattr(aio.shutil, "rmtree", real_rmtree)
    assert not target.exists()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".ck.tmp-") and _text(left / "ck") == "x"
    assert sweep_temp_dirs(target) == [left]
    assert _names(tmp_path) == []


def test_sweep_removes_only_this_folders_temp_folders(tmp_path) -> None:
    target = tmp_path / "a[1]*"  # glob characters in the name are taken literally
    target.mkdir()
    ours = [tmp_path / ".a[1]*.tmp-abc123", tmp_path / ".a[1]*.tmp-def456.old"]
    for p in ours:
        p.mkdir()
        _fill(p, "left")
    keep = [".a1.tmp-x", ".a[1]*x.tmp-y", ".b.tmp-z", "a[1]*.tmp-w"]
    for name in keep:
        (tmp_path / name).mkdir()
    (tmp_path / ".a[1]*.tmp-file").write_text("a file, not a folder")
    assert sorted(sweep_temp_dirs(target)) == sorted(ours)
    assert _names(tmp_path) == sorted([*keep, ".a[1]*.tmp-file", "a[1]*"])
    assert sweep_temp_dirs(tmp_path / "nothing" / "here") == []


def test_io_stays_on_the_floor() -> None:
    """io.py imports neither torch nor any module of attnkit (DESIGN.md: the lowest layer)."""
    tree = ast.parse(Path(aio.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"torch", "attnkit", "numpy", ""}


def test_an_error_between_the_fallback_renames_puts_the_previous_folder_back(tmp_path, monkeypatch) -> None:
    """An OSError (not a kill) on the second rename of the two-rename swap leaves the previous
    folder at its name, not only under a temp name that the next sweep would delete."""
    target = tmp_path / "ck"
    publish_dir(_fill(temp_dir_beside(target), "old"), target)
    tmp = _fill(temp_dir_beside(target), "new")
    real = os.replace

    def second_fails(src, dst):
        if Path(src) == tmp:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(aio.os, "replace", second_fails)
    with pytest.raises(OSError, match="Input/output"):
        publish_dir(tmp, target)
    assert _text(target) == "old"


def test_json_text_keeps_text_and_escapes_only_what_utf8_cannot_hold() -> None:
    import json

    assert aio.json_text({"t": "naïve 日本"}) == '{"t": "naïve 日本"}'
    lone = {"id": "a\udc80", "t": "é"}
    text = aio.json_text(lone, indent=0)
    text.encode("utf-8")  # writable as UTF-8
    assert json.loads(text) == lone and "\\udc80" in text
