"""Data-parallel training under ``torchrun``: token-weighted DDP loss and agreeing on when to
stop. Joining the process group and turning a lost peer into a clear error live in
:mod:`attnkit.distributed`, which embedding uses too.

The :class:`~attnkit.training.trainer.Trainer` uses these when ``torch.distributed`` is
initialised; a single process never calls a collective. See docs/scaling.md.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["agree_min", "ddp_token_loss", "sync_stop"]


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
