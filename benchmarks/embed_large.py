"""Streaming ``attnkit embed`` on a large generated corpus: flat memory, throughput against the
in-memory ``SentenceEncoder.embed``, and 2 ranks under torchrun against one process.

Cases (``--case``, default all):

- ``rss``: a generated corpus of ``--lines`` short lines (default 1,000,000; 1-6 words each) is
  embedded by ``attnkit embed`` in a child process while a sampler thread reads its RSS with
  psutil 4 times a second and the lines finished so far from the job's chunk records. Reports
  the peak RSS (target <= 1.5 GB) and the RSS at 10% of the run against the RSS at 100% (target:
  within 10%); RSS swings with each chunk (read, embed, write, free), so whole chunk cycles are
  compared: the highest RSS while the chunk after the 10% mark is embedded, and while the last
  full chunk is (the assembly of the output, after it, is reported apart). ``--max-seconds S`` kills the run after S seconds
  (SIGKILL) so a long job can be measured in slices: run the same command again and it resumes
  the job (``--resume``) and keeps sampling; the figures are printed when the job is complete.
  The work folder (``--workdir``, default ``/tmp/attnkit-embed-large``) keeps the corpus, the
  samples and the job between slices. ``--model standin`` uses a random 1-layer BERT of the same
  width (384) and tokenizer, which embeds the whole corpus within minutes: the engine and the
  (n, 384) output are the same, only the model is cheaper.
- ``throughput``: in one process, with the model loaded once: ``embed_file`` (streaming, chunks
  of 4,096 lines, writing a .npy) against ``SentenceEncoder.embed`` on the same texts plus
  ``np.save`` (the one-shot path), interleaved rounds, median (target >= 0.95).
- ``ranks``: ``torchrun --nproc_per_node=2`` (1 thread per rank: cores / local ranks on 2 cores)
  against one process with ``--threads 2``, wall clock of the whole command (target >= 0.9);
  the outputs are compared bit for bit (and by cosine when they differ).

Run: ``python benchmarks/embed_large.py --case rss --lines 1000000 --model standin`` (``--quick``
for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

BENCH = "embed_large"
DEFAULT_CHUNK_LINES = 65_536  # attnkit embed's default --chunk-lines
ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the cat sat on a mat attention weights show which tokens matter dog ran far quick brown fox jumps "
         "over lazy river city night light green old new small data model train test line word page").split()


def corpus_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 6))) for _ in range(n)]


def write_corpus(path: Path, n: int) -> Path:
    if not path.exists():
        with path.open("w", encoding="utf-8") as f:
            for start in range(0, n, 100_000):
                f.write("\n".join(corpus_lines(min(100_000, n - start), seed=start)) + "\n")
    return path


def standin_model(folder: Path) -> Path:
    """all-MiniLM-L6-v2's tokenizer, pooling and width (384) on a random 1-layer BERT."""
    if (folder / "model.safetensors").is_file():
        return folder
    sys.path.insert(0, str(ROOT / "tests"))
    from embed_support import tiny_model

    return tiny_model(folder, hidden=384, layers=1)


def cli() -> list[str]:
    script = Path(sys.executable).with_name("attnkit")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from attnkit.cli import main; main()"]


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *([e["PYTHONPATH"]] if e.get("PYTHONPATH") else [])])
    return e


def mib(b: float) -> float:
    return b / 2**20


def model_of(args: argparse.Namespace) -> str:
    """The model folder or name to run: ``standin`` is built in the work folder."""
    return str(standin_model(Path(args.workdir) / "standin")) if args.model == "standin" else args.model


def save(args: argparse.Namespace, extra: dict | None = None) -> None:
    """Merge this run's rows into results/embed_large.json (the cases run as separate commands)."""
    if args.no_save:
        return
    path = harness.RESULTS_DIR / f"{BENCH}.json"
    old = json.loads(path.read_text()) if path.is_file() else {"rows": [], "extra": {}}
    new = [r for r in harness._rows if r["bench"] == BENCH]
    cases = {r["case"] for r in new}
    harness._rows[:] = [r for r in old["rows"] if r["case"] not in cases] + new
    harness.save(BENCH, {**old.get("extra", {}), **(extra or {})})


# --------------------------------------------------------------------------- rss


def _lines_done(parts: Path) -> int:
    total = 0
    for rec in parts.glob("chunk-*.json") if parts.is_dir() else []:
        try:
            total += json.loads(rec.read_text())["lines"]
        except (OSError, ValueError):
            pass
    return total


def _sample(proc: subprocess.Popen, parts: Path, out: Path, n: int, log: Path, stop: threading.Event) -> None:
    """Append ``{t, rss, lines}`` of ``proc`` (and its children) to ``log`` 4 times a second."""
    import psutil

    p = psutil.Process(proc.pid)
    last_count, lines = 0.0, 0
    with log.open("a") as f:
        while not stop.is_set():
            try:
                rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
            except psutil.Error:
                break
            now = time.time()
            if now - last_count > 1.0:  # reading the records is cheap, but not free
                lines, last_count = (n if out.exists() else _lines_done(parts)), now
            f.write(json.dumps({"t": now, "rss": rss, "lines": lines}) + "\n")
            f.flush()
            stop.wait(0.25)


def case_rss(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    n = args.lines
    src = write_corpus(work / f"corpus-{n}.txt", n)
    model = model_of(args)
    out = work / f"emb-{n}-{Path(model).name}.npy"
    parts, log = out.with_name(out.name + ".parts"), out.with_name(out.name + ".samples.jsonl")
    if out.exists() and not parts.exists():
        print(f"{out} is complete; remove it (and {log.name}) to measure again")
    else:
        cmd = [*cli(), "embed", str(src), "--out", str(out), "--model", model, "--quiet", "--resume"]
        print("running:", " ".join(cmd), flush=True)
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env())
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(proc, parts, out, n, log, stop), daemon=True)
        sampler.start()
        try:
            proc.wait(timeout=args.max_seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        stop.set()
        sampler.join()
        print(f"slice: {time.time() - t0:.0f} s, exit code {proc.returncode}, "
              f"{_lines_done(parts) if parts.exists() else n} of {n} lines done", flush=True)
    if not out.exists() or parts.exists():
        print("the job is not complete: run the same command again to resume it")
        return
    samples = [json.loads(line) for line in log.read_text().splitlines()]
    peak = max(s["rss"] for s in samples)
    # RSS swings with each chunk (read, embed, write, free): compare whole chunk cycles, the
    # highest RSS while the chunk after the 10% mark was embedded against the highest while the
    # last chunk was; the assembly (all lines done) is reported apart
    done = sorted({s["lines"] for s in samples})
    mark10 = next(v for v in done if v >= 0.1 * n)
    full = [v for v in done if v + DEFAULT_CHUNK_LINES <= n]  # a last, shorter chunk needs less
    last = max(full or [v for v in done if v < n])
    at10 = {"rss": max(s["rss"] for s in samples if s["lines"] == mark10)}
    at100 = {"rss": max(s["rss"] for s in samples if s["lines"] == last)}
    assembly = max(s["rss"] for s in samples if s["lines"] == n)
    seconds = sum(b["t"] - a["t"] for a, b in zip(samples, samples[1:], strict=False) if b["t"] - a["t"] < 5)
    print(f"{n} lines -> {out.name} ({out.stat().st_size / 1e9:.2f} GB), {len(samples)} RSS samples over "
          f"{seconds:.0f} s of runs: peak {mib(peak):.0f} MiB; highest while embedding the chunk after "
          f"{mark10} lines {mib(at10['rss']):.0f} MiB, the last full chunk {mib(at100['rss']):.0f} MiB; "
          f"assembling {mib(assembly):.0f} MiB")
    name = "standin (1 layer, 384 wide)" if args.model == "standin" else Path(model).name
    harness.record(BENCH, f"peak RSS, {n} lines, {name}", "target 1.5 GB", 1536.0, mib(peak), "MiB",
                   higher_is_better=False, target=1.0)
    change = at100["rss"] / at10["rss"] - 1
    harness.record(BENCH, f"RSS at 100% vs at 10% of the run, {n} lines, {name}", "RSS at 10%", mib(at10["rss"]),
                   mib(at100["rss"]), "MiB", higher_is_better=False, target=round(1 / 1.1, 3),
                   note=f"change {change:+.1%} (target: within 10%)")
    save(args, {f"rss, {n} lines, {name}": f"peak {mib(peak):.0f} MiB, at 10% {mib(at10['rss']):.0f} MiB, at 100% "
                f"{mib(at100['rss']):.0f} MiB ({change:+.1%}), {seconds:.0f} s of runs, {len(samples)} samples"})


# --------------------------------------------------------------------------- throughput


def case_throughput(args: argparse.Namespace) -> None:
    import torch

    from attnkit.embedding import embed_file
    from attnkit.models.sentence_encoder import SentenceEncoder

    n = 2048 if args.quick else 16_384
    texts = corpus_lines(n, seed=1)
    enc = SentenceEncoder.from_pretrained(model_of(args))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.txt"
        src.write_text("\n".join(texts) + "\n", encoding="utf-8")

        def in_memory() -> None:
            np.save(Path(tmp) / "mem.npy", enc.embed(texts).numpy())

        def streaming() -> None:
            embed_file(src, Path(tmp) / "stream.npy", model=model_of(args), encoder=enc, chunk_lines=4096,
                       progress=False, overwrite=True)

        times = harness.timeit({"in-memory": in_memory, "streaming": streaming}, rounds=2 if args.quick else 3,
                               min_time=0.0, warmup=0)
        same = np.abs(np.load(Path(tmp) / "mem.npy") - np.load(Path(tmp) / "stream.npy")).max()
    print(f"{n} texts, {torch.get_num_threads()} threads: in-memory {times['in-memory']:.1f} s, streaming "
          f"{times['streaming']:.1f} s; max |difference| of the rows {same:.2e}")
    harness.record(BENCH, f"lines/s, streaming (chunks of 4096) vs in-memory embed, {n} lines",
                   "SentenceEncoder.embed + np.save", n / times["in-memory"], n / times["streaming"], "lines/s",
                   target=0.95, note=f"rows differ by at most {same:.1e} (other packing per chunk)")
    save(args)


# --------------------------------------------------------------------------- ranks


def case_ranks(args: argparse.Namespace) -> None:
    n = 2048 if args.quick else 16_384
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "in.txt"
        src.write_text("\n".join(corpus_lines(n, seed=2)) + "\n", encoding="utf-8")
        common = ["--model", model_of(args), "--chunk-lines", str(n // 8), "--quiet", "--overwrite"]
        runs = {
            "one process, 2 threads": [*cli(), "embed", str(src), "--out", str(tmp / "one.npy"), *common,
                                       "--threads", "2"],
            "2 ranks x 1 thread": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node=2", "--no-python", *cli(), "embed", str(src), "--out",
                                   str(tmp / "two.npy"), *common],
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(1 if args.quick else 2):
            for name, cmd in runs.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env(), check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
        single = subprocess.run([*cli(), "embed", str(src), "--out", str(tmp / "one1.npy"), *common, "--threads",
                                 "1"], env=env(), check=True, capture_output=True)
        assert single.returncode == 0
        a, b, c = (np.load(tmp / f) for f in ("one.npy", "two.npy", "one1.npy"))
        same2 = (tmp / "one.npy").read_bytes() == (tmp / "two.npy").read_bytes()
        same1 = (tmp / "one1.npy").read_bytes() == (tmp / "two.npy").read_bytes()
        cos = float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
        del c
    med = {k: statistics.median(v) for k, v in times.items()}
    note = (f"2 ranks vs 1 process x 2 threads: bitwise {'equal' if same2 else 'different'} (min cosine {cos:.7f}); "
            f"vs 1 process x 1 thread: bitwise {'equal' if same1 else 'different'}")
    print(f"{n} lines: " + ", ".join(f"{k} {v:.1f} s" for k, v in med.items()) + f"; {note}")
    harness.record(BENCH, f"wall clock, 2 ranks x 1 thread vs 1 process x 2 threads, {n} lines",
                   "1 process, 2 threads", med["one process, 2 threads"], med["2 ranks x 1 thread"], "s",
                   higher_is_better=False, target=0.9, note=note)
    save(args, {"ranks output": note})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=["rss", "throughput", "ranks", "all"], default="all")
    p.add_argument("--lines", type=int, default=1_000_000, help="rss: corpus lines")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="model name or folder; 'standin' (rss only): a "
                   "random 1-layer BERT of the same width")
    p.add_argument("--max-seconds", type=float, default=None, help="rss: kill the run after this long (resume "
                   "with the same command)")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "attnkit-embed-large"))
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--no-save", action="store_true", help="print only; do not write results/")
    args = p.parse_args()
    if args.quick and args.case in ("rss", "all"):
        args.lines = min(args.lines, 20_000)
    for case in (["rss", "throughput", "ranks"] if args.case == "all" else [args.case]):
        {"rss": case_rss, "throughput": case_throughput, "ranks": case_ranks}[case](args)


if __name__ == "__main__":
    main()
