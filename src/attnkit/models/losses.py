"""The training loss of every seq2seq model: token cross-entropy with label smoothing."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["label_smoothed_cross_entropy"]


def label_smoothed_cross_entropy(
    logits: Tensor, target: Tensor, *, smoothing: float = 0.1, ignore_index: int | None = 0,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy over non-ignored positions with label smoothing: their mean
    (``reduction="mean"``) or sum (``"sum"``: data-parallel training weights tokens itself).

    ``logits (B, T, V)`` (or ``(N, V)``), ``target (B, T)`` (or ``(N,)``). The smoothed target puts
    ``1 - smoothing`` on the true class and spreads ``smoothing`` uniformly over all ``V``
    classes; positions equal to ``ignore_index`` (the pad id) count for nothing. The loss is
    computed in float32 whatever the logits' dtype.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
        ignore_index=-100 if ignore_index is None else ignore_index, label_smoothing=smoothing,
        reduction=reduction,
    )
