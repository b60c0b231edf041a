"""Ring attention (attnkit.distributed) vs single-process attention, CPU fp32, H=8 d=64 B=1.

Memory: peak resident memory (VmHWM) per rank of a ring attention forward on 4 ranks at 8k,
16k and 32k tokens (it should grow linearly: each rank holds its n = N/4 shard plus one kv block
in flight), against the single-process math path (scores -> softmax -> values) at 8k, whose
(8, 8k, 8k) score matrix alone is 2 GiB (target: ring <= 1/3 of it, ratio >= 3). At 16k/32k
the math path cannot run here (8 and 32 GiB of scores): those rows compare against the size of
the score matrix alone, marked "estimated".

Speed: output tokens/s per core of ring attention on 2 ranks (one thread each) against the
fused path (F.scaled_dot_product_attention) in one process on one thread, at 16k tokens
(target >= 0.8: the ring costs at most 20% over perfect 2x scaling; communication hidden).
Both are measured inside the same two processes, interleaved round by round (the fused run
happens on rank 0 while rank 1 waits), median of the rounds. Also measured there: one kv
block's transfer time vs one block's compute, the compute/communication ratio docs/scaling.md
uses for its scaling estimate. The wall-clock ratio needs two free cores: on a shared, loaded
machine the two ranks compete with other work while the single fused thread needs only one
core, so a third row reports the CPU seconds of both sides, which other load does not move.

Every rank is a separate process (gloo on 127.0.0.1, torch threads = 1). ``--quick`` runs 2k/4k.
"""

from __future__ import annotations

import datetime
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import attnkit as ak  # noqa: E402
import attnkit.distributed as akd  # noqa: E402

BENCH = "ring"
H, D = 8, 64
MIB = 1024 * 1024


# ----------------------------------------------------------------------------- memory probes


def _reset_peak() -> None:
    """Reset VmHWM (Linux: write 5 to clear_refs) so the next reading is this phase's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_mib() -> tuple[float, float]:
    """(peak RSS since the last reset, current RSS) in MiB."""
    return _status_kib("VmHWM") / 1024, _status_kib("VmRSS") / 1024


# ----------------------------------------------------------------------------- workers


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=10))


def _memory_worker(rank: int, world: int, port: int, N: int, out: dict) -> None:
    """Ring forward at N tokens in fresh processes (so no earlier run's freed memory is reused);
    record (peak, baseline) RSS of this rank."""
    _init(rank, world, port)
    n = N // world
    g = torch.Generator().manual_seed(rank)
    with torch.inference_mode():  # warm up gloo and the kernel on a small problem first
        akd.ring_attention(*(torch.randn(1, H, 64, D, generator=g) for _ in range(3)))
    dist.barrier()
    _reset_peak()
    base = _peak_mib()[1]
    q, k, v = (torch.randn(1, H, n, D, generator=g) for _ in range(3))  # (1, H, N/P, d)
    with torch.inference_mode():
        akd.ring_attention(q, k, v)
    peak, _ = _peak_mib()
    out[(N, rank)] = (peak, base)
    dist.destroy_process_group()


def _math_worker(N: int, out: dict) -> None:
    """Single process, math path (explicit scores) at N tokens."""
    torch.set_num_threads(1)
    _reset_peak()
    base = _peak_mib()[1]
    q, k, v = (torch.randn(1, H, N, D) for _ in range(3))  # (1, H, N, d)
    with torch.inference_mode():
        o, w = ak.scaled_dot_product_attention(q, k, v, return_weights=True)
    peak, _ = _peak_mib()
    out["math"] = (peak, base)
    del o, w


def _speed_worker(rank: int, world: int, port: int, N: int, rounds: int, out: dict) -> None:
    """Interleave: ring forward on all ranks / fused single-thread forward on rank 0 alone."""
    _init(rank, world, port)
    n = N // world
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(1, H, N, D, generator=g) for _ in range(3)]  # same on every rank
    shards = [akd.shard(t) for t in full]
    zigzag = [akd.shard(t, layout="zigzag") for t in full]
    samples: dict[str, list[float]] = {"ring": [], "fused": [], "ring_causal": [], "fused_causal": []}
    cpu: dict[str, list[float]] = {name: [] for name in samples}

    def timed(fn, name: str) -> float:
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        c1 = time.process_time()
        dist.barrier()  # the ring is done when the slowest rank is
        samples[name].append(time.perf_counter() - t0)
        used = torch.tensor([c1 - c0], dtype=torch.float64)
        dist.all_reduce(used)  # CPU seconds of all ranks together
        cpu[name].append(float(used))

    with torch.inference_mode():
        akd.ring_attention(*shards)  # warm-up
        for _ in range(rounds):
            timed(lambda: akd.ring_attention(*shards), "ring")
            timed(lambda: rank == 0 and F.scaled_dot_product_attention(*full), "fused")
            timed(lambda: akd.ring_attention(*zigzag, causal=True, layout="zigzag"), "ring_causal")
            timed(lambda: rank == 0 and F.scaled_dot_product_attention(*full, is_causal=True), "fused_causal")
        # compute vs communication of one ring step (one n x n block, one kv block transfer)
        ring = akd._Ring(None)
        comp, comm = [], []
        for _ in range(max(3, rounds)):
            dist.barrier()
            t0 = time.perf_counter()
            ak.functional.attention_and_lse(*shards, causal=False, scale=D ** -0.5)
            comp.append(time.perf_counter() - t0)
            dist.barrier()
            t0 = time.perf_counter()
            ring.exchange(shards[1:], 0).wait()
            comm.append(time.perf_counter() - t0)
    if rank == 0:
        out.update({name: statistics.median(s) for name, s in samples.items()})
        out.update({f"cpu_{name}": statistics.median(s) for name, s in cpu.items()})
        out["block_compute"], out["block_comm"] = statistics.median(comp), statistics.median(comm)
        out["block_bytes"] = 2 * shards[1].numel() * shards[1].element_size()
        out["n"] = n
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(fn, nprocs: int, *args) -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        if nprocs == 0:  # one plain process, no process group
            p = mp.get_context("spawn").Process(target=fn, args=(*args, out))
            p.start()
            p.join()
            if p.exitcode:
                raise RuntimeError(f"{fn.__name__} exited with {p.exitcode}")
        else:
            mp.spawn(fn, args=(nprocs, _free_port(), *args, out), nprocs=nprocs, join=True)
        return dict(out)


def _k(N: int) -> str:
    return f"{N // 1024}k"


def main() -> None:
    args = harness.parse_args(__doc__)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from attnkit.progress import progress_bar

    sizes = [2048, 4096] if args.quick else [8192, 16384, 32768]
    speed_N = 4096 if args.quick else 16384
    rounds = 2 if args.quick else 3
    load = os.getloadavg()[0]
    extra: dict = {"load average at start": f"{load:.1f} on {os.cpu_count()} cores"}

    with progress_bar("ring benchmark", len(sizes) + 2) as bar:
        mem: dict = {}
        for N in sizes:
            mem.update(_run(_memory_worker, 4, N))
            bar.update(advance=1)
        math = _run(_math_worker, 0, sizes[0])["math"]
        bar.update(advance=1)
        speed = _run(_speed_worker, 2, speed_N, rounds)
        bar.update(advance=1)

    # memory: worst rank per size
    peaks = {N: max(mem[(N, r)][0] for r in range(4)) for N in sizes}
    deltas = {N: max(mem[(N, r)][0] - mem[(N, r)][1] for r in range(4)) for N in sizes}
    harness.record(BENCH, f"peak RSS per rank, 4 ranks, N={_k(sizes[0])}", "math path, 1 process",
                   math[0], peaks[sizes[0]], "MiB", higher_is_better=False, target=3.0,
                   note="whole-process peak RSS, interpreter included")
    for N in sizes[1:]:
        scores = H * N * N * 4 / MIB
        harness.record(BENCH, f"peak RSS per rank, 4 ranks, N={_k(N)}", "math path (estimated: score matrix alone)",
                       scores, peaks[N], "MiB", higher_is_better=False, note="math path cannot run here")
    growth = ", ".join(f"{_k(N)}: +{deltas[N]:.1f} MiB" for N in sizes)
    extra["ring peak RSS above the process baseline, worst rank"] = growth
    extra["math path peak above baseline"] = f"{math[0] - math[1]:.0f} MiB at {_k(sizes[0])}"
    print(f"[{BENCH}] ring peak RSS over baseline per rank: {growth}")

    # speed: tokens/s per core
    fused_pc = speed_N / speed["fused"]  # 1 thread = 1 core
    ring_pc = speed_N / speed["ring"] / 2  # 2 ranks x 1 thread
    harness.record(BENCH, f"throughput per core, N={_k(speed_N)}, non-causal, 2 ranks x 1 thread",
                   "F.scaled_dot_product_attention, 1 process, 1 thread", fused_pc, ring_pc, "tokens/s/core",
                   target=0.8)
    harness.record(BENCH, f"throughput per core, N={_k(speed_N)}, causal zigzag, 2 ranks x 1 thread",
                   "F.scaled_dot_product_attention(is_causal), 1 thread", speed_N / speed["fused_causal"],
                   speed_N / speed["ring_causal"] / 2, "tokens/s/core")
    harness.record(BENCH, f"CPU seconds per call (all ranks), N={_k(speed_N)}, non-causal",
                   "F.scaled_dot_product_attention, 1 thread", speed["cpu_fused"], speed["cpu_ring"], "CPU s",
                   higher_is_better=False, note="insensitive to other processes competing for the cores")
    ratio = speed["block_compute"] / speed["block_comm"]
    extra["one ring step"] = (
        f"n={speed['n']} tokens/rank: block compute {speed['block_compute'] * 1e3:.1f} ms, kv transfer of "
        f"{speed['block_bytes'] / MIB:.1f} MiB {speed['block_comm'] * 1e3:.1f} ms (gloo, loopback): "
        f"compute/comm = {ratio:.0f}"
    )
    print(f"[{BENCH}] {extra['one ring step']}")
    if load > os.cpu_count():
        extra["caution"] = "machine was shared and loaded: wall-clock figures are pessimistic, the ring more so"
    if not (args.no_save or args.quick):
        harness.save(BENCH, extra)


if __name__ == "__main__":
    main()
