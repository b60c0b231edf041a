"""The command line against the bad input a real user gives: one red line naming the bad value, exit
code 2, no traceback, nothing written; Ctrl-C exits 130 without a traceback."""

from __future__ import annotations

import signal
import subprocess
import time
from types import SimpleNamespace

import pytest
from embed_support import attnkit_command, cli_env
from typer.testing import CliRunner

from attnkit.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

UNWRITABLE = "/proc/attnkit-cannot-be-here"  # /proc refuses new files, even to root


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line(result, *words: str) -> str:
    """The result is one `error:` line holding ``words``, exit code 2, no traceback."""
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert text.startswith("error:") and text.count("error:") == 1, result.output
    for w in words:
        assert w in text, (w, result.output)
    return text


@pytest.fixture
def folder(tmp_path):
    """A folder holding one file, ``file.txt`` (a file in the way of a folder-to-be)."""
    (tmp_path / "file.txt").write_text("x")
    return tmp_path


def _nothing_new(folder) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["file.txt"]


@pytest.mark.parametrize("case", ["out-is-folder", "out-below-file", "out-empty", "out-unwritable",
                                  "svg-is-file", "png-empty", "svg-unwritable"])
def test_explain_bad_paths_are_one_line_before_the_model_runs(case, tiny_checkpoint, folder) -> None:
    """`attnkit explain` with a bad --out/--svg/--png: these were tracebacks (IsADirectoryError,
    FileExistsError, OSError 'Device or resource busy' for --out ''), a line naming a temp file
    (/proc), or an empty --png silently ignored, after the model ran."""
    out = str(folder / "e.html")
    extra = {"out-is-folder": ["--out", str(folder)],
             "out-below-file": ["--out", str(folder / "file.txt" / "e.html")],
             "out-empty": ["--out", ""],
             "out-unwritable": ["--out", f"{UNWRITABLE}.html"],
             "svg-is-file": ["--out", out, "--svg", str(folder / "file.txt")],
             "png-empty": ["--out", out, "--png", ""],
             "svg-unwritable": ["--out", out, "--svg", UNWRITABLE]}[case]
    r = run("explain", "abc", "--model", str(tiny_checkpoint("rnn")), *extra)
    one_line(r, f"error: {extra[-2]}", extra[-1])
    _nothing_new(folder)


@pytest.mark.parametrize("case", ["out-unwritable", "png-empty", "svg-unwritable"])
def test_show_unwritable_or_empty_paths_name_the_option(case, tiny_checkpoint, folder) -> None:
    """`attnkit show --out /proc/...` named a temp file ('/proc/.v.html.x.tmp'), --svg /proc/...
    failed after the page was written, and --png '' was silently ignored."""
    out = str(folder / "v.html")
    extra = {"out-unwritable": ["--out", f"{UNWRITABLE}.html"],
             "png-empty": ["--out", out, "--png", ""],
             "svg-unwritable": ["--out", out, "--svg", UNWRITABLE]}[case]
    r = run("show", "abc", "--model", str(tiny_checkpoint("rnn")), *extra)
    one_line(r, f"error: {extra[-2]}", extra[-1])
    _nothing_new(folder)


@pytest.mark.parametrize("case", ["folder", "below-file", "empty", "unwritable", "format"])
def test_translate_bad_alignment_is_one_line_before_decoding(case, tiny_checkpoint, folder) -> None:
    """`attnkit translate --alignment`: a folder wrote FOLDER.png beside it, a path below a file was
    a FileExistsError traceback, '' was "PosixPath('.') has an empty name", /proc named a temp file;
    now each is one line naming --alignment, checked before the model runs."""
    value = {"folder": str(folder), "below-file": str(folder / "file.txt" / "a.png"), "empty": "",
             "unwritable": f"{UNWRITABLE}.png", "format": str(folder / "a.xyz")}[case]
    r = run("translate", str(tiny_checkpoint("rnn")), "abc", "--alignment", value)
    one_line(r, "error: --alignment", value)
    _nothing_new(folder)
    assert not folder.with_name(folder.name + ".png").exists()


def test_evaluate_beam_names_the_option(tiny_checkpoint) -> None:
    one_line(run("evaluate", str(tiny_checkpoint("rnn")), "--beam", "0"), "--beam", "0")


@pytest.mark.parametrize(("args", "words"), [
    (["--arch", "transformer", "--cell", "foo"], ["--cell", "'foo'"]),
    (["--arch", "transformer", "--attention", "Dot"], ["--attention", "'Dot'"]),
    (["--tokenizer", "BPE"], ["--tokenizer", "'BPE'"]),
    (["--hidden", "300000000"], ["--hidden 300000000", "memory"]),
])
def test_train_bad_choice_or_size_is_one_line(args, words, tmp_path) -> None:
    """A misspelt --cell/--attention/--tokenizer that the run would not use was silently ignored (the
    run trained), one it used was 'RNNConfig.attention must be...'; an --hidden too big for memory was
    a RuntimeError traceback (exit 1)."""
    out = tmp_path / "ck"
    r = run("train", "--task", "reverse", "--n-train", "64", "--steps", "1", "--batch-size", "8", "--quiet",
            "--out", str(out), *args)
    one_line(r, *words)
    assert not out.exists()


def test_embed_resume_with_overwrite_is_refused(tmp_path) -> None:
    """--resume (finish the job) with --overwrite (discard it) did whichever the library chose."""
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    r = run("embed", str(src), "--out", str(tmp_path / "e.npy"), "--resume", "--overwrite")
    one_line(r, "--resume", "--overwrite")


@pytest.mark.parametrize("model", ["", "empty-folder"])
def test_embed_model_that_cannot_load_leaves_no_job(model, tmp_path) -> None:
    """A --model that cannot be loaded ('' or a folder without a model) left OUT.parts behind, and the
    next run with a good model said 'holds an unfinished job ... pass --resume'."""
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    if model:
        (tmp_path / model).mkdir()
        model = str(tmp_path / model)
    r = run("embed", str(src), "--out", str(tmp_path / "e.npy"), "--model", model, "--quiet")
    one_line(r, "--model is empty" if not model else model)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.txt", *(["empty-folder"] if model else [])])


def test_embed_unwritable_out_names_the_option(tmp_path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("a\n")
    one_line(run("embed", str(src), "--out", f"{UNWRITABLE}.npy"), "error: --out", f"{UNWRITABLE}.npy")


@pytest.mark.parametrize("case", ["file", "below-file", "empty", "unwritable"])
def test_demo_bad_out_is_one_line(case, folder) -> None:
    """`attnkit demo --out FILE` was a FileExistsError traceback; --out '' ran the whole tour into the
    current folder (deleting an `alignments/` folder there)."""
    value = {"file": str(folder / "file.txt"), "below-file": str(folder / "file.txt" / "d"), "empty": "",
             "unwritable": UNWRITABLE}[case]
    one_line(run("demo", "--quick", "--out", value), "error: --out", value)
    _nothing_new(folder)


def test_demo_ctrl_c_stops_the_tour(tmp_path, monkeypatch) -> None:
    """Ctrl-C during a model's training stopped only that model: the tour went on to the next
    models and exited 0. Now it stops with one line and exit code 130."""
    import attnkit.training as training

    trained = []

    def fake_train(arch, data, *, attention, out_dir, **_):
        trained.append(arch)
        return object(), SimpleNamespace(stopped="SIGINT", step=3, seconds=0.1)

    monkeypatch.setattr(training, "date_data", lambda **_: SimpleNamespace(
        train=[], test=[], tokenizer=[], task=SimpleNamespace(info={"locales": []})))
    monkeypatch.setattr(training, "train_date_model", fake_train)
    r = run("demo", "--quick", "--out", str(tmp_path / "d"))
    assert r.exit_code == 130, r.output
    assert "stopped by SIGINT" in " ".join(r.output.split()) and "Traceback" not in r.output
    assert trained == ["rnn"] and not (tmp_path / "d" / "index.html").exists()


def test_embed_ctrl_c_exits_130_and_keeps_finished_chunks(tmp_path) -> None:
    """SIGINT during `attnkit embed` printed its one line but exited 2 (a user error), not 130."""
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line {i} of a text that is long enough to take a moment\n" for i in range(20_000)))
    out, parts = tmp_path / "e.npy", tmp_path / "e.npy.parts"
    proc = subprocess.Popen([*attnkit_command(), "embed", str(src), "--out", str(out), "--chunk-lines", "200",
                             "--quiet", "--threads", "1"], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not any(parts.glob("chunk-*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "stopped by SIGINT" in output, output
    assert not out.exists() and any(parts.glob("chunk-*.json"))
