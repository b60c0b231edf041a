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
    """Forward hooks giving every activation module of ``model`` the identity rule as a whole.

    Returns the handles (remove them after the pass). The hook replaces the module's output by
    the same values whose gradient flows straight to the module's input as ``grad * y / x``.
    """
    handles = []
    for module in model.modules():
        if type(module).__name__ in _FORMULA_ACTIVATIONS:
            handles.append(module.register_forward_hook(_activation_hook))
    return handles


def _activation_hook(module: torch.nn.Module, args: tuple, output: Tensor) -> Tensor:
    if not args or not isinstance(output, Tensor) or output.shape != args[0].shape:
        return output
    return identity_rule(args[0], output, 1.0 if type(module).__name__ == "Tanh" else 0.5)
