"""Shared benchmark harness: peer vs attnkit in one process, results as JSON rows.

Each ``benchmarks/<name>.py`` script calls :func:`record` once per case and :func:`save`
at the end; ``benchmarks/run_all.py`` (``make bench``) runs every script and regenerates
``benchmarks/RESULTS.md`` from ``benchmarks/results/*.json``.

Timing: :func:`timeit` interleaves peer and ours over several rounds and takes the median,
so a noisy neighbour hurts both sides alike. Figures are ratios; tests never assert them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

_rows: list[dict] = []


def parse_args(description: str) -> argparse.Namespace:
    """Common flags: ``--quick`` (smoke run, smaller sizes, not saved unless --save)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke test)")
    p.add_argument("--no-save", action="store_true", help="print only; do not write results/")
    return p.parse_args()


def machine() -> str:
    """CPU model, core count and torch version, for the results table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def timeit(fns: dict[str, Callable[[], object]], *, rounds: int = 7, min_time: float = 0.2, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, measured interleaved (round-robin)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    reps = {}
    for name, fn in fns.items():  # calibrate repeats so one round lasts ~min_time
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        reps[name] = max(1, int(min_time / max(dt, 1e-9)))
    samples: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / reps[name])
    return {n: statistics.median(s) for n, s in samples.items()}


def record(bench: str, case: str, peer: str, peer_value: float, ours_value: float, unit: str,
           *, higher_is_better: bool = True, target: float | None = None, note: str = "") -> dict:
    """Add one row. ``ratio`` is always "how many times better attnkit is" (>1 = we win)."""
    ratio = ours_value / peer_value if higher_is_better else peer_value / ours_value
    row = dict(bench=bench, case=case, peer=peer, peer_value=peer_value, ours_value=ours_value,
               unit=unit, ratio=ratio, target=target, met=None if target is None else ratio >= target,
               note=note, machine=machine())
    _rows.append(row)
    flag = "" if target is None else ("  OK" if ratio >= target else f"  BELOW target {target}")
    print(f"[{bench}] {case}: peer({peer})={peer_value:.4g} {unit}, attnkit={ours_value:.4g} {unit}, "
          f"ratio={ratio:.3f}{flag}", flush=True)
    return row


def save(bench: str, extra: dict | None = None) -> Path:
    """Write this script's rows to ``benchmarks/results/<bench>.json``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{bench}.json"
    data = {"bench": bench, "rows": [r for r in _rows if r["bench"] == bench], "extra": extra or {},
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.write_text(json.dumps(data, indent=1))
    return path
