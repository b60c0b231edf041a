"""Views beyond the raw attention weights: the field's accepted corrections.

A head's weights say where it looks, not what flows through: the residual stream carries each
token past every layer, and a weight on a token whose transformed value is tiny moves little.

- :func:`rollout` (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): the
  residual is added as an identity, ``A_l = 0.5·mean_h(W_l) + 0.5·I`` with rows renormalised,
  and the layers are chained, ``Ã_l = A_l·Ã_{l−1}``: how much of layer ``l``'s token ``i`` comes
  from input token ``j``.
- :func:`value_norm_attention` (Kobayashi et al. 2020, "Attention is Not Only a Weight"):
  ``‖α_ij · f_h(x_j)‖`` with ``f_h(x) = (x W_V + b_V) W_O^h`` per head (``W_O^h`` the head's
  slice of the output projection): the size of what head ``h`` moves from ``j`` to ``i``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _as_float(weights: Tensor) -> Tensor:
    weights = torch.as_tensor(weights)
    if not weights.is_floating_point():
        raise ValueError(f"attention weights must be a float tensor, got {weights.dtype}")
    return weights


def rollout(weights: Tensor) -> Tensor:
    """Attention rollout of self-attention ``weights (layers, heads, T, T)`` -> ``(layers, T, T)``.

    Entry ``[l, i, j]`` is ``Ã_l[i, j]``: the share of token ``i``'s state after layer ``l + 1``
    that comes from input token ``j`` (rows sum to 1). Computed in float64, returned in the
    weights' dtype.

    Raises:
        ValueError: the weights are not ``(layers, heads, T, T)`` with square matrices.
    """
    w = _as_float(weights)
    if w.dim() != 4 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"rollout needs self-attention weights (layers, heads, T, T), got shape {tuple(w.shape)}")
    n_layers, _, T, _ = w.shape
    eye = torch.eye(T, dtype=torch.float64, device=w.device)
    out = torch.empty(n_layers, T, T, dtype=w.dtype, device=w.device)
    acc = eye
    for layer in range(n_layers):  # one layer at a time: float64 (T, T), never (L, H, T, T)
        a = 0.5 * w[layer].double().mean(dim=0) + 0.5 * eye  # attention plus the residual
        a = a / a.sum(dim=-1, keepdim=True)  # rows renormalised (a row of zeros becomes the identity's)
        acc = a @ acc  # Ã_l = A_l · Ã_{l-1}
        out[layer] = acc
    return out


def value_norm_attention(weights: Tensor, values: Tensor, out_proj_weight: Tensor) -> Tensor:
    """Value-norm-weighted attention ``‖α_ij · f_h(x_j)‖`` (Kobayashi et al. 2020).

    Args:
        weights: ``α``, ``(layers, heads, T_query, T_key)``.
        values: ``x W_V + b_V`` split into heads, ``(layers, heads, T_key, head_dim)`` (what the
            value projection returns for each key token).
        out_proj_weight: the output projection's weight in ``nn.Linear`` layout,
            ``(layers, embed_dim, heads * head_dim)`` (``y = o @ W.T``); head ``h`` uses columns
            ``h * head_dim : (h + 1) * head_dim``. Its bias is shared by all tokens and left out.

    Returns:
        ``(layers, heads, T_query, T_key)``: ``α_ij · ‖f_h(x_j)‖`` (``α >= 0``), in float32.

    Raises:
        ValueError: the shapes do not fit together (the message names them).
    """
    w, v, o = _as_float(weights), _as_float(values), _as_float(out_proj_weight)
    check_value_norm_shapes(w, v, o)
    n_layers = w.shape[0]
    out = torch.empty(w.shape, dtype=torch.float32, device=w.device)
    for layer in range(n_layers):  # one layer at a time: no float copy of all the weights
        out[layer] = value_norm_layer(w[layer], v[layer], o[layer])
    return out


def check_value_norm_shapes(weights: Tensor, values: Tensor, out_proj_weight: Tensor) -> None:
    """ValueError (naming the shapes) unless :func:`value_norm_attention`'s arguments fit together."""
    w, v, o = weights, values, out_proj_weight
    if w.dim() != 4 or v.dim() != 4 or o.dim() != 3:
        raise ValueError(
            f"value_norm_attention needs weights (L, H, Tq, Tk), values (L, H, Tk, d) and "
            f"out_proj_weight (L, E, H*d); got {tuple(w.shape)}, {tuple(v.shape)}, {tuple(o.shape)}"
        )
    n_layers, n_heads, _, tk = w.shape
    d = v.shape[-1]
    if v.shape[:3] != (n_layers, n_heads, tk) or o.shape[0] != n_layers or o.shape[2] != n_heads * d:
        raise ValueError(
            f"shapes do not fit: weights {tuple(w.shape)} (L, H, Tq, Tk), values {tuple(v.shape)} "
            f"(L, H, Tk, d), out_proj_weight {tuple(o.shape)} (L, E, H*d)"
        )


def value_norm_layer(weights: Tensor, values: Tensor, out_proj_weight: Tensor) -> Tensor:
    """:func:`value_norm_attention` of one layer: ``weights (H, Tq, Tk)``, ``values (H, Tk, d)``,
    ``out_proj_weight (E, H*d)`` -> ``(H, Tq, Tk)`` float32 (shapes unchecked)."""
    n_heads, d = values.shape[0], values.shape[-1]
    w_o = out_proj_weight.float().unflatten(-1, (n_heads, d))  # (E, H, d)
    f = torch.einsum("hkd,ehd->hke", values.float(), w_o)  # (H, Tk, E): f_h(x_j)
    return weights.float() * f.norm(dim=-1)[:, None, :]  # (H, Tq, Tk)
