"""AttnLRP's rules as a modified backward pass (Achtibat et al., ICML 2024).

Layer-wise relevance propagation can be run as *gradient × input* once each nonlinear operation's
backward is changed so that ``input * grad_input`` equals the relevance its rule sends down
(the way the ``lxt`` package computes it; this is a separate implementation). Inside
:class:`AttnLRP` (a :class:`torch.overrides.TorchFunctionMode`, active for one forward pass) the
model's own operations are intercepted; nothing in the model is patched or copied:

- linear maps and sums: the plain gradient, which is the epsilon rule (epsilon -> 0; biases keep
  the relevance they receive);
- softmax: the plain gradient; with ``x`` the scores and ``s`` the weights, ``x * grad`` is the
  paper's softmax rule ``R_in = x ⊙ (R_out - s Σ R_out)``;
- products of two tensors that both depend on the input (``q·kᵀ``, ``attention·v``, gates): the
  *uniform* rule: each factor receives half of the product's relevance (the gradient to each
  factor is halved);
- LayerNorm and RMSNorm: the *identity* rule for the normalisation: the standard deviation (or
  ``rsqrt`` of the variance) is treated as a constant, so the norm is linear in its input;
- elementwise activations (GELU, SiLU, tanh): the *identity* rule, ``R_in = R_out`` (the
  gradient is ``f(x)/x``);
- fused attention (``F.scaled_dot_product_attention``) runs as the explicit softmax and two
  products, so the rules above apply to it.

The mode only changes gradients: the forward values are the model's own (LayerNorm, written out
with its standard deviation a constant, rounds differently: ~1e-7 relative in float32).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


class _Half(torch.autograd.Function):
    """Identity forward; the gradient is halved (the uniform rule's share of one factor)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad * 0.5


class _Identity(torch.autograd.Function):
    """``y = f(x)`` with the identity rule: the gradient to ``x`` is ``grad * y / x`` (``f'(0)``
    where ``x`` is 0), so ``x * grad_x = y * grad_y``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, slope0: float) -> Tensor:
        ctx.save_for_backward(x, y)
        ctx.slope0 = slope0
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x, y = ctx.saved_tensors
        tiny = torch.finfo(x.dtype).tiny ** 0.5
        safe = x.abs() > tiny
        ratio = torch.where(safe, y / torch.where(safe, x, torch.ones_like(x)), torch.full_like(x, ctx.slope0))
        return grad * ratio, None, None


def uniform(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both factors of a product with halved gradients when both carry a graph; else unchanged."""
    if _graph(a) and _graph(b):
        return _Half.apply(a), _Half.apply(b)
    return a, b


def identity_rule(x: Tensor, y: Tensor, slope0: float) -> Tensor:
    """``y`` (the value ``f(x)``) whose gradient flows to ``x`` by the identity rule."""
    if not _graph(x):
        return y
    return _Identity.apply(x, y.detach(), slope0)


def _graph(t: Any) -> bool:
    return isinstance(t, Tensor) and t.requires_grad and torch.is_grad_enabled()


# ----------------------------------------------------------------------------- the handlers


def _product(func: Any, args: tuple, kwargs: dict) -> Tensor:
    a, b, *rest = args
    a, b = uniform(a, b)
    return func(a, b, *rest, **kwargs)


def _einsum(func: Any, args: tuple, kwargs: dict) -> Tensor:
    equation, *operands = args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if len(operands) == 2:
        operands = list(uniform(*operands))
    return func(equation, *operands, **kwargs)


def _layer_norm(func: Any, args: tuple, kwargs: dict) -> Tensor:
    x, shape, *rest = args
    weight = rest[0] if len(rest) > 0 else kwargs.get("weight")
    bias = rest[1] if len(rest) > 1 else kwargs.get("bias")
    eps = rest[2] if len(rest) > 2 else kwargs.get("eps", 1e-5)
    dims = tuple(range(-len(shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    std = torch.sqrt(centred.pow(2).mean(dim=dims, keepdim=True) + eps)
    y = centred / std.detach()  # identity rule: the normalisation is a constant
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _rms_norm(func: Any, args: tuple, kwargs: dict) -> Tensor:
    x, shape, *rest = args
    weight = rest[0] if len(rest) > 0 else kwargs.get("weight")
    eps = rest[1] if len(rest) > 1 else kwargs.get("eps")
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    dims = tuple(range(-len(shape), 0))
    y = x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps).detach()
    return y if weight is None else y * weight


def _detached(func: Any, args: tuple, kwargs: dict) -> Tensor:
    return func(*args, **kwargs).detach()


def _activation(slope0: float):
    def handler(func: Any, args: tuple, kwargs: dict) -> Tensor:
        return identity_rule(args[0], func(*args, **kwargs), slope0)
    return handler


def _sdpa(func: Any, args: tuple, kwargs: dict) -> Tensor:
    """``F.scaled_dot_product_attention`` written out, so the softmax and product rules apply."""
    names = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    q, k, v, *rest = args
    opts = dict(zip(names, rest, strict=False)) | kwargs
    L, S = q.shape[-2], k.shape[-2]
    scale = opts.get("scale") or q.shape[-1] ** -0.5
    if opts.get("enable_gqa") and k.shape[-3] != q.shape[-3]:
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    qa, ka = uniform(q, k)
    scores = qa @ ka.transpose(-2, -1) * scale  # (..., L, S)
    mask = opts.get("attn_mask")
    if opts.get("is_causal"):
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=q.device).tril(S - L), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # a row with no key: zero weights, zero output
    wa, va = uniform(weights, v)
    return wa @ va


_HANDLERS: dict[Any, Any] = {
    torch.matmul: _product, Tensor.matmul: _product, Tensor.__matmul__: _product, torch.bmm: _product,
    Tensor.bmm: _product, torch.mul: _product, Tensor.mul: _product, Tensor.__mul__: _product,
    Tensor.__rmul__: _product, torch.einsum: _einsum,
    F.layer_norm: _layer_norm, torch.layer_norm: _layer_norm,
    torch.rsqrt: _detached, Tensor.rsqrt: _detached,
    F.gelu: _activation(0.5), F.silu: _activation(0.5), torch.tanh: _activation(1.0),
    Tensor.tanh: _activation(1.0), torch.sigmoid: _activation(0.5), Tensor.sigmoid: _activation(0.5),
    F.scaled_dot_product_attention: _sdpa,
}
if hasattr(F, "rms_norm"):
    _HANDLERS[F.rms_norm] = _rms_norm


class AttnLRP(TorchFunctionMode):
    """While active, a forward pass builds the graph whose gradient × input is AttnLRP relevance.

    ``with AttnLRP(): out = model(x_leaf)``; then ``(x_leaf * grad(out_i, x_leaf)).sum(-1)``.
    Activation *modules* whose forward is a formula (GPT-2's tanh-approximated GELU) are given the
    identity rule as a whole by :func:`activation_modules` hooks (see :mod:`.subjects`).
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is None or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        return handler(func, args, kwargs)


# Hugging Face activation modules that compute their formula from several tensor operations (the
# products inside must not be split by the uniform rule): they get the identity rule as a whole.
_FORMULA_ACTIVATIONS = ("NewGELUActivation", "GELUTanh", "FastGELUActivation", "QuickGELUActivation",
                        "GELUActivation", "SiLUActivation", "PytorchGELUTanh", "GELUTanhActivation",
                        "AccurateGELUActivation", "MishActivation", "GELU", "SiLU", "Tanh", "ReLU")


def hook_activations(model: torch.nn.Module) -> list[Any]:
    """Forward hooks giving every activation module of ``model`` the identity rule as a whole, and
    every ``nn.GRU``/``nn.LSTM`` the gated-cell rule (:func:`recurrent_rule`).

    Returns the handles (remove them after the pass). The activation hook replaces the module's
    output by the same values whose gradient flows straight to the module's input as
    ``grad * y / x``; the recurrent hook replaces the fused kernel's output by the same values
    computed step by step under the rules.
    """
    handles = []
    for module in model.modules():
        if type(module).__name__ in _FORMULA_ACTIVATIONS:
            handles.append(module.register_forward_hook(_activation_hook))
        elif isinstance(module, (torch.nn.GRU, torch.nn.LSTM)) and not getattr(module, "proj_size", 0):
            handles.append(module.register_forward_hook(_recurrent_hook, with_kwargs=True))
    return handles


def _activation_hook(module: torch.nn.Module, args: tuple, output: Tensor) -> Tensor:
    if not args or not isinstance(output, Tensor) or output.shape != args[0].shape:
        return output
    return identity_rule(args[0], output, 1.0 if type(module).__name__ == "Tanh" else 0.5)


# ----------------------------------------------------------------------------- recurrent cells


def _recurrent_hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    if not torch.is_grad_enabled() or not args:
        return output
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    return recurrent_rule(module, args[0], hx)


def recurrent_rule(rnn: torch.nn.Module, x: Any, hx: Any = None) -> Any:
    """``rnn(x, hx)`` for an ``nn.GRU``/``nn.LSTM`` (eval mode), computed one step at a time so that
    its gradient × input is LRP's rule for gated cells, *signal-take-all* (Arras et al., "Explaining
    recurrent neural network predictions in sentiment analysis", 2017; the variant their 2019
    evaluation of recurrent explanations found most faithful): every gate (GRU ``r``, ``z``; LSTM
    ``i``, ``f``, ``o``) is a constant, so a gated product sends all its relevance to the signal and
    none to the gate; the candidate's and the LSTM cell output's ``tanh`` take the identity rule;
    the linear maps the epsilon rule (ε → 0). The values are the fused kernel's (to rounding).

    ``x`` is ``(B, T, I)`` (``(T, B, I)`` unless ``batch_first``) or a ``PackedSequence``;
    returns what the module returns.
    """
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

    lstm = isinstance(rnn, torch.nn.LSTM)
    packed = isinstance(x, PackedSequence)
    if packed:
        x, lengths = pad_packed_sequence(x, batch_first=True)  # (B, T, I), original order
    elif not rnn.batch_first:
        x = x.transpose(0, 1)
    unbatched = x.dim() == 2
    if unbatched:
        x = x[None]
    B, T = x.shape[:2]
    if not packed:
        lengths = torch.full((B,), T, dtype=torch.long)
    valid = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    D, L, H = 2 if rnn.bidirectional else 1, rnn.num_layers, rnn.hidden_size
    if hx is None:
        zeros = x.new_zeros(L * D, B, H)
        hx = (zeros, zeros) if lstm else zeros
    elif unbatched:
        hx = tuple(h[:, None] for h in hx) if lstm else hx[:, None]
    h0, c0 = hx if lstm else (hx, None)
    finals_h, finals_c = [], []
    layer_in = x
    for layer in range(L):
        outs = []
        for d in range(D):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(rnn, "weight_ih" + suffix), getattr(rnn, "weight_hh" + suffix)
            b_ih = getattr(rnn, "bias_ih" + suffix, None)
            b_hh = getattr(rnn, "bias_hh" + suffix, None)
            k = layer * D + d
            h, c = h0[k], (c0[k] if lstm else None)
            steps: list[Tensor] = [None] * T  # type: ignore[list-item]
            for t in (range(T - 1, -1, -1) if d else range(T)):
                gi = F.linear(layer_in[:, t], w_ih, b_ih)
                gh = F.linear(h, w_hh, b_hh)
                if lstm:
                    i, f, g, o = (gi + gh).chunk(4, -1)
                    i, f, o = (torch.sigmoid(v).detach() for v in (i, f, o))
                    c_new = f * c + i * torch.tanh(g)
                    h_new = o * torch.tanh(c_new)
                else:
                    i_r, i_z, i_n = gi.chunk(3, -1)
                    h_r, h_z, h_n = gh.chunk(3, -1)
                    r = torch.sigmoid(i_r + h_r).detach()
                    z = torch.sigmoid(i_z + h_z).detach()
                    h_new = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
                    c_new = None
                keep = valid[:, t, None]  # padded steps leave the state as it was
                h = torch.where(keep, h_new, h)
                if lstm:
                    c = torch.where(keep, c_new, c)
                steps[t] = torch.where(keep, h_new, torch.zeros_like(h_new))
            outs.append(torch.stack(steps, 1))  # (B, T, H)
            finals_h.append(h)
            finals_c.append(c)
        layer_in = torch.cat(outs, -1) if D == 2 else outs[0]  # (B, T, D * H)
    h_n = torch.stack(finals_h)  # (L * D, B, H)
    state: Any = (h_n, torch.stack(finals_c)) if lstm else h_n
    out = layer_in
    if unbatched:
        out = out[0]
        state = tuple(s[:, 0] for s in state) if lstm else state[:, 0]
    if packed:
        out = pack_padded_sequence(out, lengths, batch_first=True, enforce_sorted=False)
    elif not rnn.batch_first and not unbatched:
        out = out.transpose(0, 1)
    return out, state
