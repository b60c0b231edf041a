"""Data-parallel training under ``torchrun``: joining the process group, token-weighted DDP
loss, agreeing on when to stop, and turning a lost peer into a clear error.

The :class:`~attnkit.training.trainer.Trainer` uses these when ``torch.distributed`` is
initialised; a single process never calls a collective. See docs/scaling.md.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["PeerLostError", "agree_min", "ddp_token_loss", "default_backend", "init_distributed", "peer_guard", "sync_stop"]


class PeerLostError(RuntimeError):
    """A collective failed on this rank because another rank died, hung past the process-group
    timeout, or lost its network. The message says which step and where the last checkpoint
    is; ``checkpoint`` is that folder (None when training wrote none)."""

    def __init__(self, message: str, checkpoint: str | Path | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def default_backend() -> str:
    """``"nccl"`` when CUDA is available (one GPU per process), ``"gloo"`` on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def init_distributed(*, backend: str | None = None, timeout_s: float | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), once.

    The backend is :func:`default_backend` unless given (nccl also selects GPU ``LOCAL_RANK``).
    ``timeout_s`` (default ``$ATTNKIT_DIST_TIMEOUT`` or 300) bounds how long a rank waits for a
    hung peer before failing. The group is destroyed at interpreter exit. Returns True when this
    process is one of several ranks (an already initialised group counts), False for a plain run.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return False
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout_s = float(os.environ.get("ATTNKIT_DIST_TIMEOUT", "300")) if timeout_s is None else timeout_s
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(_destroy)
    return True


def _is_peer_failure(exc: BaseException) -> bool:
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return any(m in text for m in ("gloo", "nccl", "connection", "peer", "timed out", "timeout", "broken pipe"))


@contextlib.contextmanager
def peer_guard(rank: int, world_size: int, step: int, checkpoint: str | Path | None = None) -> Iterator[None]:
    """Turn a failed collective inside the block into a :class:`PeerLostError` that names this
    rank, the step and the last checkpoint. A no-op for a single process."""
    if world_size <= 1:
        yield
        return
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, PeerLostError) or not _is_peer_failure(exc):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        where = (f"the last checkpoint in {checkpoint} is intact and resumes on any number of processes"
                 if checkpoint is not None else "no checkpoint directory was set")
        raise PeerLostError(
            f"rank {rank} of {world_size}: lost contact with another rank during step {step} "
            f"(a process died, hung past the timeout, or lost its network: {type(exc).__name__}: {first}); {where}",
            checkpoint,
        ) from exc


def ddp_token_loss(loss_sum: Tensor, n_tokens: int) -> tuple[Tensor, float, int]:
    """Token-weighted loss under DistributedDataParallel.

    DDP *averages* gradients over ranks, so backpropagating each rank's mean loss weights a
    token by 1/(its rank's token count). Instead this returns ``loss_sum * world / T`` with ``T``
    the token count of all ranks: the averaged gradient is then exactly the gradient of the mean
    over every token of the global batch, as one process with the whole batch computes it.

    Returns ``(loss to backpropagate, global mean loss (for logging), T)``.
    """
    world = dist.get_world_size()
    stats = torch.tensor([float(loss_sum.detach()), float(n_tokens)], dtype=torch.float64, device=loss_sum.device)
    dist.all_reduce(stats)
    total_loss, total_tokens = stats.tolist()
    return loss_sum * (world / total_tokens), total_loss / total_tokens, int(total_tokens)


_SIGNALS = (None, "SIGINT", "SIGTERM")


def sync_stop(over_time: bool, signal_name: str | None) -> tuple[bool, str | None]:
    """Agree on stopping across ranks: every rank stops when any rank ran out of time or got a
    signal (otherwise the ones that carry on would wait forever in the next collective)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flags = torch.tensor([int(over_time), _SIGNALS.index(signal_name) if signal_name in _SIGNALS else 2],
                         dtype=torch.int64, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    over, sig = flags.tolist()
    return bool(over), signal_name or _SIGNALS[sig]


def agree_min(value: int) -> int:
    """The smallest ``value`` over all ranks (every rank must call it at the same step)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
