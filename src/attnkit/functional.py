"""Pure attention functions: masks, score functions, softmax and scaled dot-product attention.

Shapes: query ``(..., L, d)``, key ``(..., S, d)``, value ``(..., S, dv)``. Leading dims
broadcast; key/value may carry fewer heads (dim -3) than the query when that number divides
the query's (grouped-query attention: query head ``h`` uses kv head ``h // (Hq // Hkv)``).

Mask convention, one rule everywhere: a **boolean mask is True where attention is allowed**
(``key_mask`` True = real token); a float mask is *added* to the scores. A query row with
nothing to attend to gets zero output and zero weights, never NaN, forward or backward.

Scaling: scores are ``q·k / sqrt(d_k)`` with ``d_k`` the key (head) dimension. The seed text
writes ``1/sqrt(n)``; that is a slip: the variance being normalised is that of a dot product
of ``d_k`` terms, so the factor depends on the vector size, not on the sequence length.

Two paths live side by side here. Without weights, :func:`scaled_dot_product_attention` calls
``torch.nn.functional.scaled_dot_product_attention`` (fused kernel, no score matrix kept),
except in training on short CPU sequences, where the explicit path below is faster.
With ``return_weights=True`` it runs the explicit math path (scores -> masked softmax ->
weighted sum of values), which is also the reference our tests read beside the formula; in
CPU inference the same formula runs in place, writing the score matrix once; where every row's
allowed keys are a prefix (a padded batch: a boolean key mask allowing a prefix of the keys;
causal, in blocks of query rows) it scores only that prefix and writes zeros for the rest.

:func:`attention_and_lse` (and its backward) is the one place that calls PyTorch's private CPU
flash-attention op, which also returns each row's log-sum-exp (ring attention merges blocks
with it); where the op does not apply it runs the same formula explicitly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.runtime import DISPATCH, Role, returned_memory, scratch

__all__ = [
    "causal_mask",
    "padding_mask",
    "merge_masks",
    "masked_softmax",
    "dot_scores",
    "scaled_dot_scores",
    "general_scores",
    "additive_scores",
    "scaled_dot_product_attention",
    "attention_and_lse",
    "attention_and_lse_backward",
]


# --------------------------------------------------------------------------- masks


def causal_mask(L: int, S: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(L, S)`` mask, True where query ``i`` may attend to key ``j``.

    The diagonal is aligned to the *end*: query ``i`` sees keys ``0 .. i + S - L``. With
    ``S == L`` this is the usual lower triangle; with ``S > L`` (a KV cache holding ``S - L``
    earlier steps) the last query sees every key.
    """
    S = L if S is None else S
    if L < 0 or S < 0:
        raise ValueError(f"causal_mask needs non-negative sizes, got L={L}, S={S}")
    return torch.ones(L, S, dtype=torch.bool, device=device).tril_(S - L)


def padding_mask(lengths: Tensor | list[int], max_len: int | None = None) -> Tensor:
    """Boolean ``(B, max_len)`` mask from sequence lengths, True at real tokens."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"padding_mask expects lengths of shape (B,), got {tuple(lengths.shape)}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"padding_mask got a negative length: {lengths.tolist()}")
    longest = int(lengths.max()) if lengths.numel() else 0
    max_len = longest if max_len is None else max_len
    if max_len < longest:
        raise ValueError(f"padding_mask: max_len={max_len} is shorter than the longest length {longest}")
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)


def merge_masks(*masks: Tensor | None) -> Tensor | None:
    """Combine masks that broadcast together into one.

    All boolean -> boolean AND (allowed only where every mask allows). Any float -> float:
    the float masks are summed and disallowed boolean positions become ``-inf``.
    """
    masks = tuple(m for m in masks if m is not None)
    if not masks:
        return None
    bools = [m for m in masks if m.dtype == torch.bool]
    floats = [m for m in masks if m.dtype != torch.bool]
    allowed = None
    for m in bools:
        allowed = m if allowed is None else allowed & m
    if not floats:
        return allowed
    out = floats[0]
    for m in floats[1:]:
        out = out + m
    if allowed is not None:
        out = out.masked_fill(~allowed, float("-inf"))
    return out


def _empty_rows(mask: Tensor) -> Tensor:
    """``(..., L, 1)`` True where a query row may attend to nothing."""
    if mask.dtype == torch.bool:
        return ~mask.any(dim=-1, keepdim=True)
    return torch.isneginf(mask).all(dim=-1, keepdim=True)


def _open_empty_rows(mask: Tensor, empty: Tensor) -> Tensor:
    """Let empty rows attend everywhere (their result is zeroed afterwards) so no NaN appears."""
    if mask.dtype == torch.bool:
        return mask | empty
    return mask.masked_fill(empty, 0.0)


# --------------------------------------------------------------------------- softmax & scores


def masked_softmax(scores: Tensor, mask: Tensor | None = None, dim: int = -1, *, inplace: bool = False) -> Tensor:
    """Softmax over ``dim`` that treats masked positions as absent.

    ``mask`` is boolean (True = keep) or float (added). Rows with nothing left give zeros,
    and their gradient is zero too. Half/bfloat16 scores are normalised in float32 and the
    result is returned in the input dtype. ``inplace=True`` lets a caller that owns a fresh
    float32/float64 score tensor, with no autograd graph through it, reuse its memory (the
    softmax of a 50 MB score matrix then costs no new allocation).
    """
    dtype = scores.dtype
    s = scores.float() if dtype in (torch.float16, torch.bfloat16) else scores
    inplace = inplace and not (torch.is_grad_enabled() and (s.requires_grad or (mask is not None and mask.requires_grad)))
    moved = dim not in (-1, s.dim() - 1)
    if moved:
        s = s.movedim(dim, -1)
        mask = None if mask is None else mask.movedim(dim, -1)
    empty = None
    if mask is not None:
        empty = _empty_rows(mask)  # (..., L, 1)
        mask = _open_empty_rows(mask, empty)
        if mask.dtype == torch.bool:
            s = s.masked_fill_(~mask, float("-inf")) if inplace else s.masked_fill(~mask, float("-inf"))
        else:
            s = s.add_(mask) if inplace and s.shape == torch.broadcast_shapes(s.shape, mask.shape) else s + mask
    if inplace and not moved and s.is_contiguous():
        w = torch.ops.aten._softmax.out(s, -1, False, out=s)
    else:
        w = torch.softmax(s, dim=-1)
    if empty is not None:
        w = w.masked_fill_(empty, 0.0) if inplace else w.masked_fill(empty, 0.0)
    if moved:
        w = w.movedim(-1, dim)
    return w.to(dtype)


def dot_scores(query: Tensor, keys: Tensor) -> Tensor:
    """Luong "dot": ``q · k``. query ``(..., L, d)``, keys ``(..., S, d)`` -> ``(..., L, S)``."""
    return query @ keys.transpose(-2, -1)


def scaled_dot_scores(query: Tensor, keys: Tensor, scale: float | None = None) -> Tensor:
    """``q · k / sqrt(d_k)`` (or ``* scale``) -> ``(..., L, S)``."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    return (query * scale) @ keys.transpose(-2, -1)


def general_scores(query: Tensor, keys: Tensor, weight: Tensor) -> Tensor:
    """Luong "general" (bilinear): ``q^T W k``. ``weight`` is ``(dk, dq)`` as in ``nn.Linear(dq, dk)``."""
    return (query @ weight.T) @ keys.transpose(-2, -1)


def additive_scores(
    query: Tensor, keys_proj: Tensor, w_query: Tensor, v: Tensor, b_query: Tensor | None = None
) -> Tensor:
    """Bahdanau: ``v^T tanh(W_q q + W_k k)``.

    ``keys_proj`` is ``W_k k`` already computed once per source ``(..., S, h)`` (it does not
    change from one decoder step to the next); ``query`` is ``(..., L, dq)``, ``w_query``
    ``(h, dq)``, ``v`` ``(h,)``. Returns ``(..., L, S)``.
    """
    q = F.linear(query, w_query, b_query)  # (..., L, h)
    hidden = torch.tanh(q.unsqueeze(-2) + keys_proj.unsqueeze(-3))  # (..., L, S, h)
    return hidden @ v  # (..., L, S)


# --------------------------------------------------------------------------- attention


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not torch.is_floating_point(t):
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims (..., len, dim), got shape {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"query and key must share their last dim: query {tuple(q.shape)}, key {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"key and value must have the same length (dim -2): key {tuple(k.shape)}, value {tuple(v.shape)}"
        )
    gqa = q.dim() >= 4 and k.dim() >= 4
    try:
        torch.broadcast_shapes(k.shape[:-2], v.shape[:-2])
        torch.broadcast_shapes(q.shape[:-3], k.shape[:-3])
        if not gqa:
            torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"leading dims of query {tuple(q.shape)}, key {tuple(k.shape)} and value "
            f"{tuple(v.shape)} do not broadcast"
        ) from None
    if gqa:
        hq, hk = q.shape[-3], k.shape[-3]
        if hq != hk and hk != 1 and hq % hk != 0:
            raise ValueError(
                f"query heads (dim -3) must equal or be a multiple of key heads: query "
                f"{tuple(q.shape)}, key {tuple(k.shape)}"
            )
    if mask is not None:
        L, S = q.shape[-2], k.shape[-2]
        if mask.dim() < 1 or mask.shape[-1] not in (1, S) or (mask.dim() >= 2 and mask.shape[-2] not in (1, L)):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to (..., L={L}, S={S})"
            )
        if not (mask.dtype == torch.bool or torch.is_floating_point(mask)):
            raise ValueError(f"mask must be bool (True = may attend) or float (added), got {mask.dtype}")


def _gqa_groups(q: Tensor, k: Tensor) -> int:
    """How many query heads share one kv head (1 when the head dims match or broadcast)."""
    if q.dim() < 4 or k.dim() < 4:  # heads live in dim -3 of (B, H, L, d)
        return 1
    hq, hk = q.shape[-3], k.shape[-3]
    return hq // hk if hk not in (1, hq) else 1


def _attention_math(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, dropout: float
) -> tuple[Tensor, Tensor]:
    """Explicit path: scores -> masked softmax -> weighted sum. Returns (out, weights)."""
    groups = _gqa_groups(q, k)
    if groups > 1:
        # (..., Hkv*G, L, d) -> (..., Hkv, G, L, d); keys get a broadcast group dim
        q = q.unflatten(-3, (k.shape[-3], groups))
        k, v = k.unsqueeze(-3), v.unsqueeze(-3)
        if mask is not None and mask.dim() >= 3:
            # a per-head mask splits like the query; a broadcast heads dim (1) gets a group dim,
            # so a (B, 1, L, S) mask keeps its batch dim aligned with the query's
            mask = mask.unflatten(-3, (k.shape[-4], groups)) if mask.shape[-3] != 1 else mask.unsqueeze(-3)
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    scores = scaled_dot_scores(q.to(compute_dtype), k.to(compute_dtype), scale)  # (..., L, S)
    weights = masked_softmax(scores, mask, inplace=True)  # (..., L, S), float32 for half inputs
    if groups > 1:
        # (..., Hkv, G, L, S) -> (..., H, L, S), and the output computed from that very tensor, so
        # that a gradient taken with respect to the returned weights reaches them
        weights = weights.flatten(-4, -3)
    attn = F.dropout(weights, p=dropout) if dropout > 0.0 else weights
    if groups > 1:
        attn = attn.unflatten(-3, (k.shape[-4], groups))  # (..., Hkv, G, L, S)
    out = attn @ v.to(compute_dtype)  # (..., L, dv)
    if groups > 1:
        out = out.flatten(-4, -3)
    return out.to(v.dtype), weights.to(q.dtype)


def _key_prefix_lengths(mask: Tensor | None, batch: tuple[int, ...], S: int) -> list[int] | None:
    """For a boolean key-padding mask ``(B or 1, 1, 1, S)`` over a ``(B, H)`` batch of ``S`` keys
    that allows a prefix of the keys in every batch row (all of them included: an unpadded
    batch's mask): each batch row's prefix length (``B`` ints). Else None (no mask, a mask that
    broadcasts over the keys, or another kind of mask)."""
    if (mask is None or mask.dtype != torch.bool or mask.dim() != 4 or len(batch) != 2
            or mask.shape[1:] != (1, 1, S) or mask.shape[0] not in (1, batch[0])):
        return None
    allowed = mask[:, 0, 0, :]  # (B or 1, S)
    n = allowed.sum(-1)  # (B or 1,)
    S = allowed.shape[-1]
    if not torch.equal(allowed, torch.arange(S, device=mask.device) < n[:, None]):
        return None
    return n.expand(batch[0]).tolist()


def _causal_prefix_lengths(mask: Tensor | None, batch: tuple[int, ...], L: int, S: int) -> list[int] | None:
    """For a boolean ``(B or 1, 1, L, S)`` mask over a ``(B, H)`` batch of ``L`` queries and ``S``
    keys that is exactly causal (:func:`causal_mask`, ``L <= S``) and a prefix of every batch
    row's keys (right padding, as a causal model's padded batch arrives from transformers): each
    batch row's prefix length (``B`` ints, none of them 0). Else None (a mask that broadcasts
    over the queries or keys included)."""
    if (mask is None or mask.dtype != torch.bool or mask.dim() != 4 or len(batch) != 2 or mask.shape[1] != 1
            or mask.shape[0] not in (1, batch[0]) or mask.shape[-2:] != (L, S) or L > S):
        return None
    n = mask[:, 0, -1, :].sum(-1)  # (B or 1,): the last query row sees every allowed key
    if not bool((n > 0).all()):
        return None
    keys = torch.arange(S, device=mask.device)
    expected = causal_mask(L, S, device=mask.device) & (keys < n[:, None, None])  # (B or 1, L, S)
    if not torch.equal(mask[:, 0], expected):
        return None
    return n.expand(batch[0]).tolist()


def _attention_math_inplace(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, causal: bool = False
) -> tuple[Tensor, Tensor]:
    """:func:`_attention_math` for inference: the score matrix is written once and becomes the
    weights in place (``baddbmm`` adds the mask and the scale, softmax overwrites it), so the
    only large allocation is the returned weights, on memory from
    :func:`attnkit.runtime.returned_memory` (the last call's, once its caller has dropped them:
    no fresh pages to fault in for every layer). No dropout, no autograd.

    Grouped-query heads are scored together: the ``G`` query heads of one kv head form one
    ``(G * L, d)`` matrix against that kv head's keys (one matmul per kv head, keys and values
    never repeated), as the weights ``(..., Hkv * G, L, S)`` already lie in memory.

    Where the allowed keys of every query row are a prefix of the keys, only that prefix is
    scored: a padded batch (a boolean key mask allowing a prefix, :func:`_key_prefix_lengths`,
    or a causal one whose rows also stop at a prefix, :func:`_causal_prefix_lengths`) item by
    item, items of one length together; ``causal`` (``L <= S``, the diagonal aligned to
    the end) in blocks of ``DISPATCH.causal_block`` query rows, block ``[r0, r1)`` against the keys
    ``[0, r1 + S - L)``, the block's future keys among them set to ``-inf`` by one table per
    call. Such a block is scored in a scratch buffer and copied into the weights, whose unscored
    entries are written as exact zeros; blocks of whole rows are scored in the weights themselves."""
    groups = _gqa_groups(q, k)
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    L, S, d, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    # (..., Hkv * G, L, d) -> (..., Hkv, G, L, d): query head h uses kv head h // G (G = 1: a dim of 1)
    qg = q.unflatten(-3, (k.shape[-3], groups)) if groups > 1 else q.unsqueeze(-3)
    kv_batch = torch.broadcast_shapes(qg.shape[:-3], k.shape[:-2], v.shape[:-2])  # (..., Hkv)
    batch = (*kv_batch[:-1], kv_batch[-1] * groups)  # (..., H): the weights' leading dims
    # -> (n, G, L, d), (n, S, d), (n, S, dv): one batched matmul over every kv head
    qf = qg.to(compute_dtype).expand(*kv_batch, groups, L, d).reshape(-1, groups, L, d)
    kf, vf = (t.to(compute_dtype).expand(*kv_batch, *t.shape[-2:]).reshape(-1, *t.shape[-2:]) for t in (k, v))
    weights = returned_memory().take((*batch, L, S), compute_dtype)  # (*batch, L, S): reused once dropped
    wg = weights.view(-1, groups, L, S)  # (n, G, L, S)
    n, heads = wg.shape[0], math.prod(batch[1:])
    lengths = _key_prefix_lengths(mask, batch, S) if heads * L * S >= DISPATCH.prefix_min_scores else None
    if lengths is None and not causal and heads * L * S >= DISPATCH.prefix_min_scores:
        lengths = _causal_prefix_lengths(mask, batch, L, S)  # causal and right-padded: the two prefixes
        causal = lengths is not None
    if mask is not None and lengths is None:  # any other mask: add it to every score
        empty = None
        if causal:  # the future joins the mask, which may leave a row nothing (left padding)
            mask = merge_masks(mask, causal_mask(L, S, device=mask.device))
            empty = _empty_rows(mask)  # (..., L, 1)
            mask, empty = (_open_empty_rows(mask, empty), empty) if bool(empty.any()) else (mask, None)
        bias = mask if mask.dtype != torch.bool else torch.zeros(mask.shape, dtype=compute_dtype,
                                                                   device=mask.device).masked_fill_(~mask, float("-inf"))
        weights.copy_(bias.expand_as(weights))  # the mask, added to the scores by baddbmm
        flat = weights.view(n, groups * L, S)  # (n, G * L, S)
        torch.baddbmm(flat, qf.reshape(n, groups * L, d), kf.transpose(-2, -1), alpha=scale, out=flat)
        torch.ops.aten._softmax.out(flat, -1, False, out=flat)
        out = torch.bmm(flat, vf).view(*batch, L, dv)  # (*batch, L, dv)
        if empty is not None:
            out.masked_fill_(empty, 0.0)
            weights.masked_fill_(empty, 0.0)
        return out.to(v.dtype), weights.to(q.dtype)
    # (first kv row, end kv row, real keys) spans: the whole batch, or runs of items of one length
    spans = [(0, n, S)]
    if lengths is not None:
        per_item, spans = heads // groups, []  # kv rows per batch item
        for b, m in enumerate(lengths):
            if spans and spans[-1][2] == m:
                spans[-1] = (spans[-1][0], (b + 1) * per_item, m)
            else:
                spans.append((b * per_item, (b + 1) * per_item, m))
    rows = min(DISPATCH.causal_block, L) if causal else L  # query rows per block
    if causal or lengths is not None:  # grow the blocks' scratch once to the largest, not block by block
        _block_scratch((1, 1, min(DISPATCH.explicit_max_scores_per_call, n * groups * rows * S)), compute_dtype)
    out = torch.empty(n, groups, L, dv, dtype=compute_dtype)  # (n, G, L, dv)
    futures: dict[tuple[int, int, int], Tensor] = {}  # (rows, columns, diagonal) -> the block's future table
    for lo, hi, m in spans:
        for r0 in range(0, L, rows):
            r1 = min(r0 + rows, L)
            h = r1 - r0
            e = min(m, r1 + S - L) if causal else m  # keys [0, e) hold every allowed key of the block
            whole = h == L  # whole rows: the G heads' rows lie together in q, the weights and out
            direct = e == S and (whole or (groups == 1 and hi - lo == 1))  # the block is contiguous in the weights
            step = hi - lo if direct else max(1, DISPATCH.explicit_max_scores_per_call // (groups * h * e))
            future = None  # -inf on the block's future keys, j > i + S - L (columns w0 .. e)
            if causal and r0 + S - L + 1 < e:
                w0 = max(r0 + S - L + 1, 0)
                key = (h, e - w0, r0 + S - L + 1 - w0)
                if key not in futures:  # -inf from the diagonal up, 0 below: a float add is 4x faster than a masked_fill_
                    futures[key] = torch.full(key[:2], float("-inf"), dtype=compute_dtype).triu_(key[2])
                future = futures[key]
            for a in range(lo, hi, step):
                b = min(a + step, hi)
                qb = qf[a:b, :, r0:r1].reshape(b - a, groups * h, d)  # a view for whole rows, else a small copy
                s = (wg[a:b, :, r0:r1].view(b - a, groups * h, S) if direct
                     else _block_scratch((b - a, groups * h, e), compute_dtype))  # (b - a, G * h, e)
                torch.baddbmm(s, qb, kf[a:b, :e].transpose(-2, -1), beta=0.0, alpha=scale, out=s)
                if future is not None:
                    s.view(b - a, groups, h, e)[..., w0:].add_(future)
                torch.ops.aten._softmax.out(s, -1, False, out=s)
                o = out[a:b, :, r0:r1]  # (b - a, G, h, dv)
                if whole or groups == 1:
                    torch.bmm(s, vf[a:b, :e], out=o.flatten(1, 2))
                else:
                    o.copy_(torch.bmm(s, vf[a:b, :e]).view(b - a, groups, h, dv))
                if not direct:
                    wg[a:b, :, r0:r1, :e].copy_(s.view(b - a, groups, h, e))
                    wg[a:b, :, r0:r1, e:].zero_()
    return out.view(*batch, L, dv).to(v.dtype), weights.to(q.dtype)


def _block_scratch(shape: tuple[int, int, int], dtype: torch.dtype) -> Tensor:
    """A contiguous ``shape`` buffer for one block's scores: the runtime's pooled buffer up to
    ``DISPATCH.explicit_max_scores_per_call`` entries (no page faults from call to call), a fresh
    one above (one query block of one head can exceed it; the pool never keeps a huge one)."""
    if math.prod(shape) <= DISPATCH.explicit_max_scores_per_call:
        return scratch().take(Role.SCORES, shape, dtype, torch.device("cpu"))
    return torch.empty(shape, dtype=dtype)


def _needs_graph(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether autograd will differentiate through this attention call."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))


def _explicit_is_faster(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether a call without weights takes the explicit path (``DISPATCH.train_explicit_max_scores``)."""
    L, S = q.shape[-2], k.shape[-2]
    return q.device.type == "cpu" and 1 < L and L * S <= DISPATCH.train_explicit_max_scores and _needs_graph(q, k, v)


def _in_place_ok(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float) -> bool:
    """Whether the weights come from the in-place path (CPU inference) rather than the reference."""
    return (
        not _needs_graph(q, k, v) and dropout == 0.0 and q.device.type == "cpu" and q.dim() >= 3 and k.dim() >= 3
        and (mask is None or not mask.requires_grad) and q.numel() > 0 and k.numel() > 0 and v.numel() > 0
    )


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout: float = 0.0,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention: ``softmax(q k^T / sqrt(d_k) + mask) v``.

    Args:
        q: query ``(..., L, d)``.
        k: key ``(..., S, d)``.
        v: value ``(..., S, dv)``.
        mask: boolean (True = may attend) or float (added to the scores), broadcastable to
            ``(..., L, S)``.
        causal: also forbid attending to the future; with ``L != S`` the diagonal is
            aligned to the end (query ``i`` sees keys ``0 .. i + S - L``).
        scale: score factor; default ``1/sqrt(d)``.
        dropout: dropout probability on the attention weights (pass 0.0 in eval).
        return_weights: also return the attention weights (explicit math path).

    Returns:
        ``out (..., L, dv)``, or ``(out, weights (..., L, S))`` when ``return_weights``.
        Rows with no allowed key give zero output and zero weights. Half/bfloat16 inputs
        come back in their dtype; their softmax is computed in float32.
    """
    _check_inputs(q, k, v, mask)
    L, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    explicit = return_weights or _explicit_is_faster(q, k, v)
    fast_causal = causal and mask is None and L == S and not explicit
    in_place = return_weights and _in_place_ok(q, k, v, mask, dropout)
    # the in-place weights path takes causal itself (it skips the future) where it adds no empty row
    causal_in_place = causal and in_place and L <= S
    if causal and not fast_causal and not causal_in_place:
        mask = merge_masks(mask, causal_mask(L, S, device=q.device))
    empty = None
    if mask is not None:
        empty = _empty_rows(mask)  # (..., L, 1)
        if bool(empty.any()):
            mask = _open_empty_rows(mask, empty)
        else:
            empty = None
    if in_place:
        out, weights = _attention_math_inplace(q, k, v, mask, scale, causal=causal_in_place)
    elif return_weights:
        out, weights = _attention_math(q, k, v, mask, scale, dropout)
    elif explicit:
        out = _attention_math(q, k, v, mask, scale, dropout)[0]
    else:
        if mask is not None and mask.is_floating_point() and mask.dtype not in (q.dtype, torch.float32):
            # the fused kernel takes a float mask in the queries' dtype or float32 only; the
            # explicit paths add any float mask to float32 (float64) scores
            mask = mask.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=fast_causal, scale=scale,
            enable_gqa=_gqa_groups(q, k) > 1,
        )
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
        if return_weights:  # in place where no graph goes through the weights (they are ours)
            weights = weights.masked_fill(empty, 0.0) if weights.requires_grad else weights.masked_fill_(empty, 0.0)
    return (out, weights) if return_weights else out


# --------------------------------------------------------------------------- attention + log-sum-exp

_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _flash_ok(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether PyTorch's fused CPU flash-attention op takes these (already head-expanded) inputs."""
    return (
        q.device.type == "cpu"
        and q.dtype in _FLASH_DTYPES
        and q.dtype == k.dtype == v.dtype
        and q.shape[-1] == v.shape[-1]
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
    )


def _expand_kv(q: Tensor, kv: Tensor) -> Tensor:
    """Repeat kv heads for grouped-query attention: ``(B, Hkv, S, d) -> (B, H, S, d)``."""
    groups = q.shape[1] // kv.shape[1]
    return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)


def _reduce_kv_grad(dkv: Tensor, kv_heads: int) -> Tensor:
    """Sum the gradients of repeated kv heads: ``(B, H, S, d) -> (B, Hkv, S, d)``."""
    H = dkv.shape[1]
    return dkv if H == kv_heads else dkv.unflatten(1, (kv_heads, H // kv_heads)).sum(2)


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _causal_scores(s: Tensor) -> Tensor:
    """Mask the strict upper triangle of square score blocks ``(..., L, L)`` with ``-inf``."""
    return s.masked_fill(~torch.ones_like(s, dtype=torch.bool).tril_(), float("-inf"))


def attention_and_lse(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Attention output and the log-sum-exp of every row's scaled scores, no mask but ``causal``.

    ``q (B, H, L, d)``, ``k``/``v`` ``(B, Hkv, S, d)`` (``Hkv`` divides ``H``) ->
    ``(out (B, H, L, dv), lse (B, H, L))``; ``lse`` is float32 (float64 for float64 inputs).
    ``causal`` needs ``L == S`` (a diagonal block). On CPU this is PyTorch's fused
    flash-attention op, which never materialises the scores; elsewhere (or ``dv != d``) the
    same formula runs explicitly on one ``(L, S)`` score matrix. No autograd: see
    :func:`attention_and_lse_backward`.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    k, v = _expand_kv(q, k), _expand_kv(q, v)
    if _flash_ok(q, k, v):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse.to(_acc_dtype(q))
    acc = _acc_dtype(q)
    s = (q.to(acc) * scale) @ k.to(acc).transpose(-2, -1)  # (B, H, L, S)
    if causal:
        s = _causal_scores(s)
    lse = s.logsumexp(-1)  # (B, H, L)
    out = torch.exp(s - lse.unsqueeze(-1)) @ v.to(acc)  # (B, H, L, dv)
    return out.to(q.dtype), lse


def attention_and_lse_backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *, causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`attention_and_lse` given the rows' ``out (B, H, L, dv)`` and
    ``lse (B, H, L)`` (which may be *global*, over more keys than these: ring attention):
    ``P = exp(s - lse)``, ``ds = P * (dout v^T - rowsum(dout * out))``.

    Returns ``(dq (B, H, L, d), dk (B, Hkv, S, d), dv (B, Hkv, S, dv))``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    kv_heads = k.shape[1]
    ke, ve = _expand_kv(q, k), _expand_kv(q, v)
    if _flash_ok(q, ke, ve):
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, ke, ve, out, lse.float() if q.dtype != torch.float64 else lse, 0.0, causal, scale=scale
        )
    else:
        acc = _acc_dtype(q)
        qa, ka, va, do = q.to(acc), ke.to(acc), ve.to(acc), dout.to(acc)
        s = (qa * scale) @ ka.transpose(-2, -1)  # (B, H, L, S)
        if causal:
            s = _causal_scores(s)
        p = torch.exp(s - lse.to(acc).unsqueeze(-1))  # (B, H, L, S)
        dv = p.transpose(-2, -1) @ do  # (B, H, S, dv)
        dp = do @ va.transpose(-2, -1)  # (B, H, L, S)
        delta = (do * out.to(acc)).sum(-1, keepdim=True)  # (B, H, L, 1)
        ds = p * (dp - delta) * scale
        dq, dk = ds @ ka, ds.transpose(-2, -1) @ qa
        dq, dk, dv = dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)
    return dq, _reduce_kv_grad(dk, kv_heads), _reduce_kv_grad(dv, kv_heads)
