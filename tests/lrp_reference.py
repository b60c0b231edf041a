"""AttnLRP's rules written out in float64 without autograd (the direct reference for tests and
benchmarks/explain.py): relevance flows backward layer by layer by the paper's formulas.

- linear ``z = W x + b``: epsilon rule (epsilon 0, the bias in the denominator):
  ``R_x[e] = Σ_n x[e] W[n, e] R_z[n] / z[n]``;
- residual ``z = x + a``: ``R_x = x / z ⊙ R_z``, ``R_a = a / z ⊙ R_z``;
- LayerNorm, identity rule for the normalisation: the linear map ``x -> (x - mean x) / σ ⊙ w``
  with ``σ`` a constant, then the bias; epsilon rule over it;
- elementwise activation: identity rule ``R_x = R_y``;
- products ``A·V`` and ``Q·Kᵀ``: uniform rule (half of each term's relevance to each factor);
- softmax: ``R_s = s ⊙ (R_A - A Σ_j R_A)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def eps_linear(weight: Tensor, x: Tensor, z: Tensor, R: Tensor) -> Tensor:
    """``R_x`` for ``z = x Wᵀ (+ b)`` with ``x (T, in)``, ``z``/``R (T, out)``."""
    return x * ((R / z) @ weight)


def layer_norm(norm: nn.LayerNorm, x: Tensor, R: Tensor) -> Tensor:
    """``R_x`` of ``y = norm(x)`` (``x (T, E)``) with the standard deviation a constant."""
    E = x.shape[-1]
    sigma = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)  # (T, 1)
    y = norm(x)
    # y[t, n] = sum_e M[t, n, e] x[t, e] + b[n] with M = w[n] (δ_ne - 1/E) / σ_t
    M = norm.weight[None, :, None] * (torch.eye(E, dtype=x.dtype) - 1.0 / E)[None] / sigma[:, :, None]
    return torch.einsum("tne,te,tn->te", M, x, R / y)


def attention(mha: nn.Module, x: Tensor, R_out: Tensor) -> Tensor:
    """``R_x (T, E)`` of self-attention ``out = mha(x)`` for the output relevance ``R_out (T, E)``."""
    T, E = x.shape
    H, d = mha.num_heads, mha.head_dim

    def lin(m: nn.Linear, inp: Tensor) -> Tensor:
        return inp @ m.weight.T + m.bias

    Q, K, V = lin(mha.q_proj, x), lin(mha.k_proj, x), lin(mha.v_proj, x)  # (T, E)

    def split(t: Tensor) -> Tensor:
        return t.view(T, H, d).transpose(0, 1)  # (H, T, d)

    def merge(t: Tensor) -> Tensor:
        return t.transpose(0, 1).reshape(T, E)

    q, k, v = split(Q), split(K), split(V)
    S = q @ k.transpose(-1, -2) * d**-0.5  # (H, T, T)
    A = torch.softmax(S, -1)
    z = A @ v  # (H, T, d)
    out = lin(mha.out_proj, merge(z))
    R_z = split(eps_linear(mha.out_proj.weight, merge(z), out, R_out))
    share = A[..., None] * v[:, None, :, :] * (R_z / z)[:, :, None, :]  # (H, Tq, Tk, d)
    R_A, R_v = 0.5 * share.sum(-1), 0.5 * share.sum(1)
    R_S = S * (R_A - A * R_A.sum(-1, keepdim=True))
    share = q[:, :, None, :] * k[:, None, :, :] * d**-0.5 * (R_S / S)[..., None]  # (H, Tq, Tk, d)
    R_q, R_k = 0.5 * share.sum(2), 0.5 * share.sum(1)
    return (eps_linear(mha.q_proj.weight, x, Q, merge(R_q)) + eps_linear(mha.k_proj.weight, x, K, merge(R_k))
            + eps_linear(mha.v_proj.weight, x, V, merge(R_v)))


def encoder_layer(layer: nn.Module, x: Tensor, R_out: Tensor) -> Tensor:
    """``R_x`` of a post-LN attnkit ``EncoderLayer`` (GELU or ReLU feed-forward) on ``x (T, E)``."""
    a, _ = layer.self_attn(x[None])
    a = a[0]
    z1 = x + a
    h = layer.norm1(z1)
    f1 = layer.ff.linear1(h)
    g = torch.nn.functional.gelu(f1) if layer.ff.activation == "gelu" else torch.relu(f1)
    f = layer.ff.linear2(g)
    z2 = h + f
    R_z2 = layer_norm(layer.norm2, z2, R_out)
    R_h, R_f = h / z2 * R_z2, f / z2 * R_z2
    R_g = eps_linear(layer.ff.linear2.weight, g, f, R_f)
    R_h = R_h + eps_linear(layer.ff.linear1.weight, h, f1, R_g)  # identity rule: R_f1 = R_g
    R_z1 = layer_norm(layer.norm1, z1, R_h)
    R_x, R_a = x / z1 * R_z1, a / z1 * R_z1
    return R_x + attention(layer.self_attn, x, R_a)


@torch.no_grad()
def direct_encoder_relevance(layers, x: Tensor, row: int, c: Tensor) -> Tensor:
    """Token relevance ``(T,)`` explaining ``c · h[row]`` of the stack ``layers`` on ``x (T, E)``."""
    hs = [x]
    for layer in layers:
        hs.append(layer(hs[-1][None])[0][0])
    R = torch.zeros_like(hs[-1])
    R[row] = c * hs[-1][row]
    for layer, h in zip(reversed(list(layers)), reversed(hs[:-1]), strict=True):
        R = encoder_layer(layer, h, R)
    return R.sum(-1)


@torch.no_grad()
def direct_attention_relevance(mha: nn.Module, x: Tensor, row: int, c: Tensor) -> Tensor:
    """Token relevance ``(T,)`` explaining ``c · mha(x)[row]``."""
    out, _ = mha(x[None])
    R = torch.zeros_like(out[0])
    R[row] = c * out[0, row]
    return attention(mha, x, R).sum(-1)
