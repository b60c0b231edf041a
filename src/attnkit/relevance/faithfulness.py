"""Measures of how faithful a relevance map is (pure functions on plain numbers).

- :func:`deletion_order`: the columns by decreasing relevance (ties: left first);
- :func:`aopc`: area over the perturbation curve: the mean drop ``f(x) - f(x without the top k)``
  over ``k = 1..K`` (Samek et al. 2017); :func:`insertion_auc`: the mean of ``f`` as the top
  tokens are put back into an empty input, normalised by ``f(x)``;
- :func:`pointing_game`: whether the most relevant column falls inside the true span;
- :func:`bootstrap_ci`: a percentile bootstrap interval of a mean;
- :func:`rank_correlation` and :func:`cascading_randomisation`: Adebayo et al.'s (NeurIPS 2018)
  model-randomisation check: re-initialise the layers from the top down and see whether a
  method's map changes (a low rank correlation with the original map).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def deletion_order(relevance: Tensor, candidates: Sequence[int] | None = None) -> list[int]:
    """Columns of ``relevance (T,)`` from the most to the least relevant (only ``candidates``)."""
    cols = list(range(relevance.shape[-1])) if candidates is None else list(candidates)
    values = relevance.detach().double().tolist()
    return sorted(cols, key=lambda j: (-values[j], j))


def aopc(base: float, curve: Sequence[float]) -> float:
    """``mean_k (base - curve[k])`` over the ``K`` perturbation steps (``curve[k-1]``: the score
    with the top ``k`` tokens deleted)."""
    if not curve:
        raise ValueError("aopc needs at least one perturbation step")
    return float(sum(base - c for c in curve) / len(curve))


def insertion_auc(full: float, empty: float, curve: Sequence[float]) -> float:
    """Mean of the insertion curve (score with the top ``k`` tokens inserted into the empty
    input), rescaled so the empty input is 0 and the full input 1."""
    if not curve:
        raise ValueError("insertion_auc needs at least one step")
    span = full - empty
    if abs(span) < 1e-12:
        return 0.0
    return float(sum((c - empty) / span for c in curve) / len(curve))


def pointing_game(relevance: Tensor, span: Sequence[int] | range, candidates: Sequence[int] | None = None) -> bool:
    """True when the most relevant column of ``relevance (T,)`` (among ``candidates``) is in ``span``."""
    return deletion_order(relevance, candidates)[0] in set(span)


def bootstrap_ci(values: Sequence[float], *, n: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its percentile bootstrap interval."""
    x = torch.as_tensor(list(values), dtype=torch.float64)
    if x.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n, x.numel()), generator=g)
    means = x[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return float(x.mean()), lo, hi


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two maps (flattened; ties broken by position)."""
    a, b = a.flatten().double(), b.flatten().double()
    if a.numel() < 2:
        return 1.0
    ra = torch.empty_like(a)
    rb = torch.empty_like(b)
    ra[a.argsort()] = torch.arange(a.numel(), dtype=torch.float64)
    rb[b.argsort()] = torch.arange(b.numel(), dtype=torch.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else 0.0


def cascading_randomisation(layers: Sequence[nn.Module], explain_map: Callable[[], Tensor], *, seed: int = 0,
                            ) -> list[float]:
    """Re-initialise ``layers`` one at a time, from the first given (the top) down, and return the
    rank correlation of ``explain_map()`` with the original map after each. The weights are
    restored afterwards."""
    original = explain_map().detach()
    saved = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in layers]
    g = torch.Generator().manual_seed(seed)
    out = []
    try:
        for m in layers:
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (p.std() if p.numel() > 1 else 1.0))
            out.append(rank_correlation(original, explain_map().detach()))
    finally:
        for m, state in zip(layers, saved, strict=True):
            m.load_state_dict(state)
    return out
