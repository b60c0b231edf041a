"""Spawning CPU process groups for the multi-process tests (gloo on 127.0.0.1, a free port,
one thread per rank)."""

from __future__ import annotations

import datetime
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(rank: int, world: int, port: int, timeout_s: float = 60.0) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def _entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    init_group(rank, world, port)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args, timeout: float = 150.0) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes; re-raise a worker's error."""
    ctx = mp.spawn(_entry, args=(fn, world, free_port(), args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{fn.__name__} on {world} ranks did not finish within {timeout} s")
