"""`attnkit train / translate / evaluate` end to end on a small TSV corpus (fast), and the
error paths: one red line, exit code 2, nothing overwritten."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from attnkit.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny TSV: upper-casing three-letter words (the last 10% is the held-out split)."""
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(300):
        w = "".join(rng.choice("abcdef") for _ in range(3))
        lines.append(f"{w}\t{w.upper()}")
    path = tmp_path_factory.mktemp("tsv") / "pairs.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ck"
    r = run("train", "--task", f"tsv:{corpus}", "--arch", "rnn", "--attention", "general", "--out", str(out),
            "--steps", "12", "--eval-every", "6", "--batch-size", "16", "--hidden", "32", "--quiet")
    assert r.exit_code == 0, r.output
    assert "step 12" in r.output
    return out


def test_train_writes_a_checkpoint(trained):
    manifest = json.loads((trained / "config.json").read_text())
    assert manifest["model"] == "RNNSeq2Seq" and manifest["config"]["attention"] == "general"
    assert manifest["meta"]["step"] == 12
    assert (trained / "vocab.json").is_file() and (trained / "optimizer.safetensors").is_file()


def test_translate_args_stdin_beam_alignment(trained, tmp_path):
    r = run("translate", str(trained), "abc", "fed")
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) == 2
    r2 = run("translate", str(trained), "-", input="abc\nfed\n")
    assert r2.exit_code == 0 and r2.output == r.output
    r3 = run("translate", str(trained), "abc", "--beam", "3", "--alignment", str(tmp_path / "a.png"))
    assert r3.exit_code == 0, r3.output
    assert (tmp_path / "a.png").stat().st_size > 1000
    run("translate", str(trained), "abc", "fed", "--alignment", str(tmp_path / "b.png"))
    assert (tmp_path / "b-1.png").is_file() and (tmp_path / "b-2.png").is_file()


def test_evaluate_json(trained, corpus):
    r = run("evaluate", str(trained), "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert set(m) == {"exact_match", "char_accuracy", "n"} and m["n"] == 30
    assert 0 <= m["exact_match"] <= m["char_accuracy"] <= 1
    r = run("evaluate", str(trained), "--task", f"tsv:{corpus}")
    assert r.exit_code == 0 and "exact match" in r.output


def test_resume_continues_and_refuses_mismatch(trained, corpus, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(trained, ck)
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    r = run("train", "--task", f"tsv:{corpus}", "--arch", "rnn", "--attention", "dot", "--out", str(ck), "--resume")
    assert r.exit_code == 2 and "attention" in " ".join(r.output.split())
    r = run("train", "--task", f"tsv:{corpus}", "--arch", "rnn", "--attention", "general", "--out", str(ck),
            "--steps", "12", "--quiet")
    assert r.exit_code == 2 and "--resume" in " ".join(r.output.split())
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    r = run("train", "--task", f"tsv:{corpus}", "--arch", "rnn", "--attention", "general", "--out", str(ck),
            "--resume", "--steps", "16", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((ck / "config.json").read_text())["meta"]["step"] == 16


def test_resume_refuses_options_that_differ_from_the_checkpoint(trained, corpus, tmp_path):
    """Options given with --resume that would change the run are refused, naming both values;
    the same values, or only --steps, are fine."""
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(trained, ck)
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    saved = json.loads((ck / "trainer_state.json").read_text())["train_config"]
    base = ["train", "--task", f"tsv:{corpus}", "--arch", "rnn", "--attention", "general", "--out", str(ck),
            "--resume", "--quiet"]
    for extra, words in ((["--lr", "0.5"], "--lr 0.5 (the checkpoint's: "),
                         (["--batch-size", str(saved["batch_size"] + 1), "--seed", "7"], "--seed 7")):
        r = run(*base, "--steps", "16", *extra)
        assert r.exit_code == 2 and words in " ".join(r.output.split()), r.output
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    r = run(*base, "--steps", "16", "--batch-size", str(saved["batch_size"]), "--lr", str(saved["lr"]))
    assert r.exit_code == 0, r.output


def test_dtype_bfloat16_trains_and_a_resume_keeps_it(corpus, tmp_path):
    """--dtype bfloat16 trains under autocast and is saved; a resume in another dtype is refused."""
    out = tmp_path / "ck"
    r = run("train", "--task", f"tsv:{corpus}", "--arch", "transformer", "--out", str(out), "--steps", "4",
            "--eval-every", "4", "--batch-size", "16", "--hidden", "32", "--dtype", "bfloat16", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "trainer_state.json").read_text())["train_config"]["dtype"] == "bfloat16"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run("train", "--task", f"tsv:{corpus}", "--arch", "transformer", "--out", str(out), "--resume",
            "--steps", "6", "--dtype", "float32", "--quiet")
    assert r.exit_code == 2 and "--dtype bfloat16, not float32" in " ".join(r.output.split())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


#: A run that ends in seconds, should a bad option be let through.
CHEAP = ["--steps", "1", "--n-train", "50", "--hidden", "8"]


@pytest.mark.parametrize("args, words", [
    (["translate", "{missing}", "abc"], "does not exist"),
    (["translate", "{plain}", "abc"], "not an attnkit checkpoint"),
    (["evaluate", "{missing}"], "does not exist"),
    (["train", "--task", "bogus", "--out", "{new}", "--steps", "2"], "unknown task"),
    (["train", "--task", "copy", "--arch", "lstm", "--out", "{new}"], "--arch"),
    (["train", "--task", "copy", "--out", "{plain}", "--resume"], "not an attnkit checkpoint"),
    (["train", "--task", "copy", "--out", "{new}", "--dtype", "float16", "--steps", "1"], "'float16'"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--lr", "-1e-3"], "--lr must be"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--lr", "nan"], "--lr must be"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--time-budget", "inf"], "--time-budget must be"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--time-budget", "nan"], "--time-budget must be"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--time-budget", "0"], "--time-budget must be"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--threads", "-1"], "--threads must be >= 1, got -1"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--threads", "0"], "--threads must be >= 1, got 0"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--seed", "99999999999999999999"], "--seed must be between 0"),
    (["train", "--task", "copy", "--out", "{new}", *CHEAP, "--seed", "-1"], "--seed must be between 0"),
    (["train", "--task", "copy", "--out", "{plain}/x.txt/sub", *CHEAP], "x.txt is not a folder"),
    (["train", "--task", "copy", "--out", "{plain}/x.txt/sub/deeper", *CHEAP], "x.txt is not a folder"),
    (["translate", "{plain}", "abc", "--max-len", "0"], "--max-len must be >= 1, got 0"),
])
def test_errors_are_one_red_line(tmp_path, args, words):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.txt").write_text("keep me")
    paths = {"missing": str(tmp_path / "missing"), "plain": str(plain), "new": str(tmp_path / "new")}
    r = run(*[a.format(**paths) for a in args])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())  # rich wraps at the (narrow) test terminal's width
    assert text.startswith("error:") and text.count("error:") == 1 and "Traceback" not in text
    assert words in text
    assert (plain / "x.txt").read_text() == "keep me"


@pytest.mark.parametrize("out, words", [
    (".", "is the current folder"),
    ("..", "is an ancestor of the current folder"),
    ("/", "--out /"),
])
def test_out_that_cannot_be_renamed_is_refused_before_training(tmp_path, monkeypatch, out, words):
    """The checkpoint is written beside --out and renamed to it: the current folder or one of
    its ancestors is refused before any training."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    r = run("train", "--task", "reverse", "--n-train", "200", "--hidden", "16", "--batch-size", "8", "--steps", "2",
            "--quiet", "--out", out)
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert text.startswith("error:") and text.count("error:") == 1 and words in text
    assert list(here.iterdir()) == []


def test_translate_refuses_a_non_integer_max_len_in_config_json(trained, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(trained, ck)
    manifest = json.loads((ck / "config.json").read_text())
    manifest["meta"]["max_len"] = "abc"
    (ck / "config.json").write_text(json.dumps(manifest))
    r = run("translate", str(ck), "abc")
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert text.startswith("error:") and "config.json: meta.max_len" in text and "'abc'" in text


def test_explicit_lr_and_batch_size_are_used(corpus, tmp_path):
    """--lr and --batch-size given on the command line are saved as given, not replaced by the defaults."""
    out = tmp_path / "ck"
    r = run("train", "--task", f"tsv:{corpus}", "--out", str(out), "--steps", "1", "--batch-size", "3",
            "--lr", "0.0123", "--hidden", "8", "--quiet")
    assert r.exit_code == 0, r.output
    config = json.loads((out / "trainer_state.json").read_text())["train_config"]
    assert config["batch_size"] == 3 and config["lr"] == 0.0123


def test_tsv_bad_lines_strict_and_skipped(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("abc\tABC\nno tab here\n" + "".join(f"ab{c}\tAB{c.upper()}\n" for c in "cdefghij"), encoding="utf-8")
    r = run("train", "--task", f"tsv:{bad}", "--out", str(tmp_path / "s"), "--steps", "1", "--batch-size", "2",
            "--strict", "--quiet")
    assert r.exit_code == 2 and ":2" in " ".join(r.output.split())
    assert not (tmp_path / "s").exists()
    r = run("train", "--task", f"tsv:{bad}", "--out", str(tmp_path / "ok"), "--steps", "1", "--batch-size", "2",
            "--hidden", "8", "--quiet")
    assert r.exit_code == 0, r.output
    assert "skipped 1" in " ".join(r.output.split())


def test_time_budget_sets_the_schedule(corpus, tmp_path):
    """--time-budget without --steps: training ends by the budget, and the schedule's fitted
    length (saved in the checkpoint) is within a tenth of the step it ended at, so the cosine
    was (nearly) complete. The last re-estimate is a few seconds before the end: a step time
    that drifts after it (a busy machine) leaves a few steps of the fitted length unrun."""
    out = tmp_path / "ck"
    r = run("train", "--task", f"tsv:{corpus}", "--arch", "rnn", "--out", str(out), "--time-budget", "4",
            "--eval-every", "1000", "--batch-size", "16", "--hidden", "32", "--quiet")
    assert r.exit_code == 0, r.output
    assert "(time_budget," in r.output, r.output
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["train_config"]["steps"] is None and state["train_config"]["time_budget"] == 4
    length, step = state["budget"]["length"], state["step"]
    assert step > 20 and 0.9 * length <= step <= length, (step, length)
    assert state["elapsed"] <= 4.5


def test_a_tsv_task_is_found_from_any_folder_and_a_changed_file_is_refused_on_resume(corpus, tmp_path, monkeypatch):
    """The checkpoint records the TSV's absolute path and its bytes' sha256: evaluate and resume
    work from another folder; after the file changed, resume is refused (exit 2, the checkpoint
    untouched) and evaluate warns."""
    import shutil
    import warnings

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(corpus, data / "pairs.tsv")
    monkeypatch.chdir(data)
    ck = tmp_path / "ck"
    common = ["--arch", "rnn", "--attention", "general", "--out", str(ck), "--quiet"]
    r = run("train", "--task", "tsv:pairs.tsv", *common, "--steps", "4", "--batch-size", "16", "--hidden", "16")
    assert r.exit_code == 0, r.output
    assert json.loads((ck / "config.json").read_text())["meta"]["task"] == f"tsv:{(data / 'pairs.tsv').resolve()}"
    monkeypatch.chdir(tmp_path)  # the relative path no longer names the file
    r = run("evaluate", str(ck), "--json")
    assert r.exit_code == 0, r.output
    r = run("train", "--task", f"tsv:{data / 'pairs.tsv'}", *common, "--resume", "--steps", "6")
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(data)  # the path as first typed names the same task
    r = run("train", "--task", "tsv:pairs.tsv", *common, "--resume", "--steps", "8")
    assert r.exit_code == 0, r.output

    with (data / "pairs.tsv").open("a", encoding="utf-8") as f:
        f.write("xyz\tXYZ\n")
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    r = run("train", "--task", "tsv:pairs.tsv", *common, "--resume", "--steps", "10")
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and text.startswith("error:") and "pairs.tsv changed since the checkpoint" in text, r.output
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run("evaluate", str(ck), "--json")
    assert r.exit_code == 0, r.output
    assert any("changed since the checkpoint" in str(w.message) for w in caught)


@pytest.mark.parametrize("option, value, words", [
    ("--steps", "0", "--steps must be >= 1, got 0"),
    ("--n-train", "0", "--n-train must be >= 1, got 0"),
    ("--hidden", "-4", "--hidden must be >= 1, got -4"),
    ("--eval-every", "0", "--eval-every must be >= 1, got 0"),
    ("--checkpoint-every", "-1", "--checkpoint-every must be >= 0, got -1"),
    ("--target", "1.5", "--target is a held-out exact match in (0, 1], got 1.5"),
])
def test_out_of_range_options_are_one_line_naming_the_option(tmp_path, option, value, words):
    r = run("train", "--task", "reverse", "--out", str(tmp_path / "new"), "--quiet", option, value)
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert text.startswith("error:") and text.count("error:") == 1 and words in text
    assert not (tmp_path / "new").exists()


def test_a_one_pair_tsv_names_the_file(tmp_path):
    path = tmp_path / "one.tsv"
    path.write_text("a\tb\n", encoding="utf-8")
    r = run("train", "--task", f"tsv:{path}", "--out", str(tmp_path / "new"), "--quiet")
    assert r.exit_code == 2 and "one.tsv: need at least 2 pairs" in " ".join(r.output.split()), r.output
