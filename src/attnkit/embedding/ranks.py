"""``attnkit embed`` under ``torchrun``: joining the ranks, the thread count of each, and a
heartbeat that carries progress and notices a lost rank.

- :func:`join` joins the process group ``torchrun`` describes (:func:`attnkit.distributed.init_distributed`).
  :func:`default_threads` is the thread count a rank should use (cores ÷ local ranks, so the
  workers of one machine never oversubscribe its CPU); the command sets it, a library call never does.
- :meth:`Ranks.share` sends rank 0's plan (the job, which chunks are left) to every rank.
- :class:`Heartbeat` is a thread that all-reduces ``[lines, tokens, finished, failed]`` of every
  rank twice a second on a gloo group of its own: rank 0 draws the whole job's progress bar from
  it, every rank learns when all are finished, and a rank that died (its sockets close) or hung
  (past ``ATTNKIT_DIST_TIMEOUT`` seconds, default 300) or failed stops the others within a
  moment, with a clear error, instead of leaving them waiting. The main thread never runs a
  collective while the heartbeat runs, so a chunk may take any time.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from attnkit.distributed import PeerLostError, init_distributed, peer_guard

__all__ = ["Heartbeat", "Ranks", "default_threads", "join"]


def default_threads(local_world: int) -> int | None:
    """Intra-op threads of one of ``local_world`` processes on this machine: the usable cores
    ÷ ``local_world`` (at least 1); None for a single process (torch's own default)."""
    if local_world <= 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // local_world)


@dataclass
class Ranks:
    """This process's place in the job: ``rank`` of ``world`` (``local_world`` on this machine),
    and two gloo groups of all ranks (None for a single process): ``group`` for the plan,
    ``beat_group`` for the :class:`Heartbeat` (its own communicator, used from its thread)."""

    rank: int = 0
    world: int = 1
    local_world: int = 1
    group: Any = None
    beat_group: Any = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def name(self) -> str:
        return f"rank {self.rank} of {self.world}"

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a pickled broadcast; identity for one process)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        with peer_guard(self.rank, self.world, 0):
            dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def join() -> Ranks:
    """Join the ``torchrun`` process group when there is one (a single process otherwise)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if not init_distributed():
        return Ranks()
    import torch.distributed as dist

    group = dist.new_group(backend="gloo")  # CPU tensors and objects, whatever the default backend
    beat_group = dist.new_group(backend="gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_world, group, beat_group)


class Heartbeat:
    """The all-reduce thread of a distributed job (see the module docstring).

    The main thread calls :meth:`add` after each piece of work, :meth:`check` to learn whether
    to stop, and :meth:`finish` (or :meth:`fail`) at the end. ``totals`` holds ``(lines,
    tokens)`` summed over all ranks at the last beat (for a progress bar).
    """

    def __init__(self, ranks: Ranks, *, interval: float = 0.5) -> None:
        self.ranks, self.interval = ranks, interval
        self.lines = self.tokens = 0
        self.totals = (0, 0)
        self._finished = self._failed = False
        self.lost: BaseException | None = None
        self.failed_ranks: list[int] = []
        self._stop, self._done, self._wake = threading.Event(), threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="attnkit-embed-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def add(self, lines: int, tokens: int) -> None:
        self.lines += lines
        self.tokens += tokens

    def _run(self) -> None:
        import torch
        import torch.distributed as dist

        world, rank = self.ranks.world, self.ranks.rank
        while True:
            state = torch.zeros(2 + 2 * world, dtype=torch.float64)
            state[0], state[1] = self.lines, self.tokens
            state[2 + rank] = float(self._finished)
            state[2 + world + rank] = float(self._failed)
            try:
                dist.all_reduce(state, group=self.ranks.beat_group)
            except Exception as exc:  # a rank died, hung past the timeout, or lost its network
                self.lost = exc
                self._stop.set()
                return
            self.totals = (int(state[0]), int(state[1]))
            failed = [r for r in range(world) if state[2 + world + r] > 0]
            if failed:
                self.failed_ranks = failed
                self._stop.set()
                return
            if all(state[2 + r] > 0 for r in range(world)):
                self._done.set()
                return
            self._wake.wait(self.interval)
            self._wake.clear()

    def check(self) -> None:
        """Raise when the job must stop: another rank was lost (``PeerLostError``) or failed."""
        if not self._stop.is_set():
            return
        if self.lost is not None:
            first = (str(self.lost).strip().splitlines() or [""])[0][:300]
            raise PeerLostError(f"{self.ranks.name}: lost contact with another rank while embedding (a process "
                                f"died, hung past the timeout, or lost its network: {type(self.lost).__name__}: "
                                f"{first})")
        others = [r for r in self.failed_ranks if r != self.ranks.rank]
        raise ValueError(f"{self.ranks.name}: stopped because rank {', '.join(map(str, others))} failed "
                         f"(its error is printed above)")

    def finish(self) -> None:
        """Say this rank is done, and wait until every rank is (or raise like :meth:`check`)."""
        self._finished = True
        self._wake.set()
        while not self._done.is_set():
            self.check()
            self._done.wait(0.1)
        self._thread.join()

    def fail(self, timeout: float = 10.0) -> None:
        """Tell the other ranks that this one failed, so they stop too (best effort: waits up to
        ``timeout`` seconds for the beat that carries it)."""
        self._failed = True
        self._wake.set()
        self._thread.join(timeout)
