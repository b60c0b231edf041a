"""attnkit's attention in Hugging Face models: the functions transformers calls, and packed rows.

:func:`register` adds one attention function and its mask function to ``transformers``
(``AttentionInterface`` / ``AttentionMaskInterface``, transformers >= 4.53); then

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attnkit.hf.register())
    model.set_attn_implementation("attnkit")        # or switch a loaded model

Every family whose modeling code dispatches through the interface (BERT, RoBERTa, XLM-R,
ELECTRA, DistilBERT, ModernBERT, GPT-2, GPT-NeoX, Llama, Qwen2/3, Mistral, Gemma 2/3, Phi-3,
BART, Marian, T5, Whisper, ...) then runs attnkit's engine with eager's semantics: the
module's ``scaling``, grouped-query heads, sliding windows and padding (both in the mask,
which is boolean: True = may attend), Gemma 2's logit soft-capping, T5's position bias (an
additive float mask), gpt-oss' sinks, and attention dropout in training (the weights path
runs there, so the dropout mask is eager's for the same seed).

Weights cost what they must: with ``output_attentions=True`` they come from attnkit's weights
path (:func:`attnkit.scaled_dot_product_attention` with ``return_weights=True``); without it
the fused path runs and no score matrix is kept, so plain inference costs what ``sdpa`` costs.

Rows with nothing to attend to (the query rows of left padding in a causal model) give zero
output and zero weights, never NaN. Eager differs there: its float mask uses the dtype's
minimum instead of -inf, so such a row is uniform over every key. Real tokens never read a
padded row, so logits at real tokens agree; padded positions do not, and need not.

Padding-free batches: one row whose ``position_ids`` restart at 0 for each sequence (what
``DataCollatorWithFlattening`` and :func:`pack` make), or the flash-attention kwargs
``cu_seq_lens_q/k`` and ``max_length_q/k``, run every sequence on its own through
:func:`attnkit.varlen.varlen_attention`: no attention across sequences, no padding computed.
:func:`unpack` puts the packed outputs back in the padded layout.

``transformers`` is imported only when one of these functions is called (``pip install
'attnkit[hf]'``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.functional import masked_softmax, merge_masks, scaled_dot_product_attention
from attnkit.varlen import lengths_from_cu_seqlens, varlen_attention

__all__ = ["NAME", "register", "check", "pack", "unpack", "attention_forward", "attention_mask"]

NAME = "attnkit"
MIN_TRANSFORMERS = "4.53"
HF_EXTRA = "pip install 'attnkit[hf]'"


# ----------------------------------------------------------------------------- registration


def _interfaces() -> tuple[Any, Any, Any]:
    """``(AttentionInterface, AttentionMaskInterface, sdpa_mask)`` of the installed transformers."""
    try:
        import transformers
    except ImportError:
        raise ValueError(f"attnkit.hf needs the transformers package: {HF_EXTRA}") from None
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        raise ValueError(
            f"attnkit.hf needs transformers >= {MIN_TRANSFORMERS} (AttentionInterface and AttentionMaskInterface); "
            f"found {transformers.__version__}: {HF_EXTRA}"
        ) from None
    return AttentionInterface, AttentionMaskInterface, sdpa_mask


def register() -> str:
    """Register attnkit's attention and mask functions with transformers; returns ``"attnkit"``.

    Idempotent. Raises ValueError (one line) when transformers is missing or too old.
    """
    attention_interface, mask_interface, _ = _interfaces()
    attention_interface.register(NAME, attention_forward)
    mask_interface.register(NAME, attention_mask)
    return NAME


def check(model: nn.Module, *, instead: str = "use 'eager' or 'sdpa'") -> nn.Module:
    """``model``, after checking that its family dispatches attention through transformers'
    ``AttentionInterface`` (else ``attn_implementation="attnkit"`` would silently never reach
    attnkit). ValueError naming the family otherwise (MPNet and DeBERTa-v2 do not dispatch),
    ending with ``instead``: what the caller can do."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", type(model).__name__)
    modules = {sys.modules.get(type(m).__module__) for m in model.modules()}
    if not any(getattr(mod, "ALL_ATTENTION_FUNCTIONS", None) is not None for mod in modules if mod is not None):
        raise ValueError(
            f"the {family} family ({type(model).__name__}) does not dispatch attention through transformers' "
            f"AttentionInterface, so attn_implementation={NAME!r} cannot reach it; {instead}"
        )
    return model


# ----------------------------------------------------------------------------- the mask function


def attention_mask(*args: Any, **kwargs: Any) -> Tensor | None:
    """The mask function registered with ``AttentionMaskInterface``: transformers' boolean
    ``(B, 1, L, S)`` mask, True = may attend (attnkit's convention), or None where the call can
    say ``causal`` instead (no padding, full causal) or needs no mask at all. Called with
    transformers' keywords (``batch_size``, ``q_length``, ``kv_length``, ``mask_function``, ...).

    A packed row (one row, no padding, tokens that do not see their neighbour: sequences that
    restart) is built block by block: the pattern is evaluated inside each sequence only and is
    False across them, where transformers would evaluate it on all ``N x N`` pairs."""
    sdpa_mask = _interfaces()[2]
    packed = None if args else _packed_mask(**kwargs)
    return packed if packed is not None else sdpa_mask(*args, **kwargs)


def _packed_mask(*, batch_size: int = 0, q_length: int = 0, kv_length: int = 0, q_offset: Any = 0,
                 kv_offset: Any = 0, mask_function: Any = None, attention_mask: Tensor | None = None,
                 use_vmap: bool = False, device: Any = "cpu", **_: Any) -> Tensor | None:
    """A packed row's ``(1, 1, N, N)`` mask built sequence by sequence, or None when the call is
    not one (several rows, padding, a cache offset, a custom pattern that needs vmap)."""
    if (mask_function is None or batch_size != 1 or attention_mask is not None or q_length != kv_length
            or q_length < 2 or not isinstance(q_offset, int) or q_offset or kv_offset or use_vmap):
        return None
    lengths = _mask_blocks(mask_function, q_length, device)
    if lengths is None:
        return None
    mask = torch.zeros(1, 1, q_length, kv_length, dtype=torch.bool, device=device)  # (1, 1, N, N)
    zero, start = torch.zeros((), dtype=torch.long, device=device), 0
    for n in lengths:
        idx = torch.arange(start, start + n, device=device)
        mask[0, 0, start:start + n, start:start + n] = mask_function(zero, zero, idx[:, None], idx[None, :])
        start += n
    return mask


def _mask_blocks(mask_function: Any, N: int, device: Any) -> list[int] | None:
    """The lengths of the runs of tokens that see their neighbour (token ``i`` sees ``i - 1`` or
    ``i - 1`` sees ``i``), when there are several; None when every token sees its neighbour."""
    idx = torch.arange(N, device=device)
    zero = torch.zeros(N - 1, dtype=torch.long, device=device)
    joined = mask_function(zero, zero, idx[1:], idx[:-1]) | mask_function(zero, zero, idx[:-1], idx[1:])  # (N-1,)
    if bool(joined.all()):
        return None
    bounds = [0, *(torch.nonzero(~joined).flatten() + 1).tolist(), N]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# ----------------------------------------------------------------------------- the attention function


def attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: Tensor | None = None,
    softcap: float | None = None,
    s_aux: Tensor | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """The function registered with ``AttentionInterface`` (transformers calls it).

    Args:
        module: the calling attention module (its ``is_causal``, ``training``, ``config``).
        query: ``(B, H, L, d)``.
        key: ``(B, Hkv, S, d)`` (``Hkv`` divides ``H``: query head ``h`` uses kv head ``h // (H // Hkv)``).
        value: ``(B, Hkv, S, dv)``.
        attention_mask: boolean ``(B or 1, 1, L, S)`` (True = may attend) from :func:`attention_mask`,
            a float mask (added), or None.
        dropout: attention dropout probability (transformers passes 0.0 in eval).
        scaling: score factor (default ``d ** -0.5``).
        is_causal: None reads ``module.is_causal``; causality is applied here only when there is no mask.
        position_bias: T5's ``(B or 1, H, L, S)`` float bias, added to the scores.
        softcap: Gemma 2's ``softcap * tanh(scores / softcap)`` before the mask.
        s_aux: gpt-oss' per-head sink logits ``(H,)``: one more softmax column that takes no value.
        kwargs: ``output_attentions``; packed batches: ``position_ids`` or ``cu_seq_lens_q/k``.

    Returns:
        ``(out (B, L, H, dv), weights (B, H, L, S) or None)``; weights only with ``output_attentions``.
    """
    want_weights = _weights_requested(module, kwargs)
    causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
    if s_aux is None:
        s_aux = kwargs.get("sinks")
    spec = _Spec(
        scaling=query.shape[-1] ** -0.5 if scaling is None else float(scaling),
        dropout=float(dropout) if module.training else 0.0,
        softcap=softcap, sinks=s_aux, weights=want_weights,
    )
    lengths = _packed_lengths(query, key, attention_mask, kwargs)
    if lengths is not None:
        out, weights = _packed(query, key, value, attention_mask, position_bias, lengths, causal, spec)
    else:
        L, S = query.shape[-2], key.shape[-2]
        causal = causal and attention_mask is None and L > 1
        if causal and S > L:  # an empty static cache at prefill: the keys past L are not written yet (as sdpa does)
            key, value = key[..., :L, :], value[..., :L, :]
            position_bias = None if position_bias is None else position_bias[..., :L]
        out, weights = _dense(query, key, value, attention_mask, position_bias, causal, spec)
    return out.transpose(1, 2).contiguous(), weights  # (B, L, H, dv)


def _weights_requested(module: nn.Module, kwargs: Mapping[str, Any]) -> bool:
    """Whether the caller asked for attention weights: ``output_attentions`` in the call or the
    config, or transformers' output recorder collecting some ``*attentions`` in this forward (some
    families, GPT-2 among them, drop the flag before the attention is called)."""
    if kwargs.get("output_attentions") or getattr(getattr(module, "config", None), "output_attentions", False):
        return True
    try:
        from transformers.utils.output_capturing import _active_collector

        collecting = _active_collector.get()
    except (ImportError, LookupError):
        return False
    return bool(collecting) and any(key.endswith("attentions") for key in collecting)


@dataclass(frozen=True)
class _Spec:
    """What one call asks besides q, k, v and the mask."""

    scaling: float
    dropout: float  # 0.0 outside training
    softcap: float | None
    sinks: Tensor | None  # (H,)
    weights: bool

    @property
    def plain(self) -> bool:
        """No soft-capping, no sinks: attnkit's scaled dot-product attention takes it as is."""
        return self.softcap is None and self.sinks is None


def _dense(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None, causal: bool,
           spec: _Spec) -> tuple[Tensor, Tensor | None]:
    """Padded-batch attention: ``q (B, H, L, d)``, ``k/v (B, Hkv, S, d)`` -> ``(out (B, H, L, dv), weights)``."""
    if bias is not None:  # T5: the bias and the mask become one float mask (-inf where not allowed)
        mask = merge_masks(mask, bias)
    if not spec.plain:
        return _explicit(q, k, v, mask, causal, spec)
    if spec.weights or spec.dropout > 0.0:  # the explicit path draws eager's dropout mask
        out, weights = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, scale=spec.scaling,
                                                    dropout=spec.dropout, return_weights=True)
        return out, weights if spec.weights else None
    return scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, scale=spec.scaling), None


def _explicit(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
              spec: _Spec) -> tuple[Tensor, Tensor | None]:
    """Soft-capped scores and/or sink columns, written out: scores -> cap -> mask -> softmax
    (over the keys and the sinks) -> dropout -> weighted sum. Rows with no key and no sink: zeros."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # (B, Hkv, S, d) -> (B, H, S, d)
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    L, S = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)).float() * spec.scaling  # (B, H, L, S)
    if spec.softcap is not None:
        scores = torch.tanh(scores / spec.softcap) * spec.softcap
    if causal:
        mask = merge_masks(mask, torch.ones(L, S, dtype=torch.bool, device=q.device).tril_(S - L))
    if spec.sinks is not None:  # one more column: the sink's logit, always allowed
        sink = spec.sinks.float().view(1, -1, 1, 1).expand(scores.shape[0], -1, L, 1)  # (B, H, L, 1)
        scores = torch.cat([scores, sink], dim=-1)  # (B, H, L, S + 1)
        if mask is not None:
            mask = torch.cat([mask.expand(*scores.shape[:-1], S), _allowed_column(mask, scores)], dim=-1)
    weights = masked_softmax(scores, mask)  # (B, H, L, S [+ 1]) float32
    if spec.sinks is not None:
        weights = weights[..., :S]
    weights = weights.to(q.dtype)
    attn = nn.functional.dropout(weights, p=spec.dropout) if spec.dropout > 0.0 else weights
    out = attn @ v  # (B, H, L, dv)
    return out, weights if spec.weights else None


def _allowed_column(mask: Tensor, scores: Tensor) -> Tensor:
    """A ``(B, H, L, 1)`` mask column that allows everything, in ``mask``'s kind (bool or float)."""
    shape = (*scores.shape[:-1], 1)
    if mask.dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool, device=mask.device)
    return torch.zeros(shape, dtype=mask.dtype, device=mask.device)


# ----------------------------------------------------------------------------- packed batches


def _packed_lengths(q: Tensor, k: Tensor, mask: Tensor | None, kwargs: Mapping[str, Any]) -> list[int] | None:
    """The sequence lengths of a packed self-attention call (one row holding several sequences),
    else None. Read from ``cu_seq_lens_q/k``, or from ``position_ids`` that restart (as
    flash-attention reads them, with or without a cache; transformers' own mask is block-diagonal
    only without one). Each sequence's diagonal block of the mask is its own mask either way."""
    if q.shape[0] != 1 or q.shape[-2] != k.shape[-2]:
        return None
    N = q.shape[-2]
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None:
        if int(cu_q[-1]) != N or not torch.equal(cu_q.cpu(), cu_k.cpu()):
            return None  # another call of the same forward (cross-attention, a cached step)
        lengths = lengths_from_cu_seqlens(cu_q.cpu()).tolist()
        return lengths if len(lengths) > 1 else None
    pos = kwargs.get("position_ids")
    if pos is None or pos.dim() != 2 or pos.shape[-1] != N or N < 2:
        return None
    pos = pos[0].cpu()  # (N,)
    starts = torch.nonzero(pos[1:] - pos[:-1] != 1).flatten() + 1  # where a new sequence begins
    if starts.numel() == 0:
        return None
    if mask is not None and (mask.dtype != torch.bool or not bool(mask[0, 0].diagonal().all())):
        return None  # a custom float mask, or padding (a token that does not see itself): not a packed row
    wrong = starts[pos[starts] != 0]
    if wrong.numel() or int(pos[0]) != 0:
        at = 0 if int(pos[0]) != 0 else int(wrong[0])
        raise ValueError(
            f"packed position_ids must restart at 0 for each sequence: the sequence starting at index {at} "
            f"begins at position {int(pos[at])}"
        )
    bounds = [0, *starts.tolist(), N]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _full_blocks(mask: Tensor | None, lengths: list[int], causal: bool) -> bool:
    """Whether every sequence's block of a packed mask is plain causal (or plain full): its last
    row sees every key of its sequence (no sliding window cuts it) and its first row sees only the
    first key (causal) or every key (full). Reads the 2N entries of those rows inside the blocks."""
    if mask is None:
        return True
    if mask.dtype != torch.bool:
        return False
    block = mask[0, 0]  # (N, N)
    sizes = torch.tensor(lengths, device=block.device)
    ends = sizes.cumsum(0)
    first_row = torch.repeat_interleave(ends - sizes, sizes)  # (N,) each token's sequence start
    cols = torch.arange(block.shape[-1], device=block.device)  # (N,)
    last = block[torch.repeat_interleave(ends - 1, sizes), cols]  # (N,) the last rows, inside their blocks
    first = block[first_row, cols]  # (N,) the first rows, inside their blocks
    return bool(last.all()) and bool((first == (cols == first_row)).all() if causal else first.all())


def _packed(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None, lengths: list[int],
            causal: bool, spec: _Spec) -> tuple[Tensor, Tensor | None]:
    """One packed row ``q (1, H, N, d)``, ``k/v (1, Hkv, N, d)``: each sequence on its own ->
    ``(out (1, H, N, dv), weights (1, H, N, N) or None)`` (zero across sequences, as eager's)."""
    if spec.plain and bias is None and not spec.weights and spec.dropout == 0.0 and _full_blocks(mask, lengths, causal):
        # (1, H, N, d) -> (N, H, d): views
        out = varlen_attention(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), lengths,
                               causal=causal, scale=spec.scaling)  # (N, H, dv)
        return out.transpose(0, 1).unsqueeze(0), None
    outs, blocks, start = [], [], 0
    for n in lengths:  # the general case (sliding windows, bias, soft-cap, sinks, weights): dense per sequence
        rows = slice(start, start + n)
        m = None if mask is None else mask[..., rows, rows]
        b = None if bias is None else bias[..., rows, rows]
        seq_causal = causal and m is None
        o, w = _dense(q[..., rows, :], k[..., rows, :], v[..., rows, :], m, b, seq_causal, spec)
        outs.append(o)
        blocks.append(w)
        start += n
    out = torch.cat(outs, dim=-2)  # (1, H, N, dv)
    return out, _block_weights(blocks) if spec.weights else None


def _block_weights(blocks: list[Tensor]) -> Tensor:
    """Per-sequence weights ``(1, H, n_i, n_i)`` -> ``(1, H, N, N)``, zero across sequences."""
    H = blocks[0].shape[1]
    return torch.stack([torch.block_diag(*(w[0, h] for w in blocks)) for h in range(H)]).unsqueeze(0)


def pack(batch: Mapping[str, Tensor]) -> dict[str, Tensor | int]:
    """A tokenizer's padded batch -> one packed row, the format ``DataCollatorWithFlattening`` makes.

    ``batch``: ``input_ids (B, T)`` and ``attention_mask (B, T)`` (1 = real token, each row's real
    tokens contiguous: left or right padding), plus any other ``(B, T)`` tensors (``token_type_ids``,
    ``labels``, ...; a per-row ``(B,)`` value such as the ``length`` of ``return_length=True`` has no
    place in one packed row and is left out, as ``DataCollatorWithFlattening`` leaves out what it
    does not pack). Returns the ``(B, T, ...)`` tensors as ``(1, N, ...)`` rows of the ``N`` real
    tokens in batch order, ``position_ids (1, N)`` restarting at 0 for each sequence, and the flash-attention kwargs
    ``cu_seq_lens_q/k (B + 1,)`` int32 and ``max_length_q/k``. A ``labels`` row gets -100 at each
    sequence's first token (no token predicts across a boundary). Call the model with it as is:
    ``model(**attnkit.hf.pack(batch))``; :func:`unpack` puts outputs back.
    """
    if "input_ids" not in batch or "attention_mask" not in batch:
        raise ValueError(f"pack needs input_ids and attention_mask (B, T); got keys {sorted(batch)}")
    real = torch.as_tensor(batch["attention_mask"]).bool()  # (B, T)
    if real.dim() != 2:
        raise ValueError(f"pack needs a 2-D attention_mask (B, T), got shape {tuple(real.shape)}")
    lengths = real.sum(1)  # (B,)
    if bool((lengths == 0).any()):
        raise ValueError(f"pack got an empty sequence (rows {torch.nonzero(lengths == 0).flatten().tolist()})")
    first = real.int().argmax(1)  # (B,) first real token
    span = torch.arange(real.shape[1]) - first[:, None]
    contiguous = (span >= 0) & (span < lengths[:, None])
    if not torch.equal(contiguous, real):
        bad = torch.nonzero((contiguous != real).any(1)).flatten().tolist()
        raise ValueError(f"pack needs each row's real tokens in one run (left or right padding); rows {bad} have gaps")
    packed: dict[str, Tensor | int] = {}
    for name, value in batch.items():
        if name == "attention_mask":
            continue
        value = torch.as_tensor(value)
        if value.shape == real.shape[:1]:
            continue  # (B,): one value per row, e.g. a tokenizer's `length`
        if value.shape[:2] != real.shape:
            raise ValueError(f"pack: {name} has shape {tuple(value.shape)}, neither (B, T) = {tuple(real.shape)} "
                             f"nor one value per row (B,)")
        packed[name] = value[real].unsqueeze(0)  # (1, N, ...)
    cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)  # (B + 1,)
    starts = torch.repeat_interleave(cu[:-1].long(), lengths)  # (N,)
    packed["position_ids"] = (torch.arange(int(cu[-1])) - starts).unsqueeze(0)  # (1, N)
    if "labels" in packed:
        labels = packed["labels"].clone()
        labels[0, cu[:-1].long()] = -100
        packed["labels"] = labels
    packed["cu_seq_lens_q"] = packed["cu_seq_lens_k"] = cu
    packed["max_length_q"] = packed["max_length_k"] = int(lengths.max())
    return packed


def unpack(output: Tensor, attention_mask: Tensor) -> Tensor:
    """A packed row's outputs ``(1, N, ...)`` -> the padded layout ``(B, T, ...)`` of the
    ``attention_mask (B, T)`` that was packed (left or right padding); padded positions are zero."""
    real = torch.as_tensor(attention_mask).bool()
    if output.dim() < 2 or output.shape[0] != 1 or output.shape[1] != int(real.sum()):
        raise ValueError(
            f"unpack: needs the packed row's output (1, N, ...) with N = {int(real.sum())} real tokens of "
            f"attention_mask {tuple(real.shape)}; got shape {tuple(output.shape)}"
        )
    rows = output[0]  # (N, ...)
    padded = rows.new_zeros(*real.shape, *rows.shape[1:])  # (B, T, ...)
    padded[real.to(rows.device)] = rows
    return padded
