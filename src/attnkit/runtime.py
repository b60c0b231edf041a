"""The CPU inference runtime: what attnkit knows about the machine it runs on, in one room.

- :data:`DISPATCH` — the thresholds that choose between kernels, in one table with the figures
  that chose them (the layers read them here, so a test or a user may change them in one place);
- :func:`native_bf16` and :func:`resolve_dtype` — native-bf16 detection and the ``"auto"`` dtype
  policy (``"auto"`` is bfloat16 only where the CPU multiplies it in hardware);
- :func:`linear` — a linear layer's inference forward: oneDNN's fused bfloat16 linear with the
  weight reordered once into oneDNN's layout, kept on the module that owns the weight
  (:func:`prepared`) and remade when the weight changes;
- :class:`BufferPool` and :func:`scratch` — typed scratch buffers (:class:`Role`) that a kernel
  reuses from call to call instead of allocating;
- :class:`ReturnedMemory` and :func:`returned_memory` — memory for large tensors a call hands
  back (attention weights), reused once the caller has dropped every tensor on it;
- the one C library loader (:func:`libc`): transparent huge pages for large buffers
  (:func:`advise_huge_pages`), the allocator policy (:func:`keep_freed_memory`,
  :func:`release_freed_memory`) and the atomic exchange of two paths (:func:`exchange_paths`).

This module imports nothing of attnkit: it is the floor the kernels stand on. Nothing here
changes the process-wide thread count.
"""

from __future__ import annotations

import ast
import ctypes
import ctypes.util
import enum
import functools
import math
import os
import platform
import re
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "DISPATCH",
    "DTYPES",
    "BufferPool",
    "DerivedValues",
    "DispatchTable",
    "Int8Forms",
    "Int8Linear",
    "ReturnedMemory",
    "RowBlockedLinear",
    "Role",
    "activate",
    "advise_huge_pages",
    "calibration_texts",
    "drop_int8",
    "exchange_paths",
    "int8_current",
    "int8_engine",
    "is_int8",
    "keep_freed_memory",
    "libc",
    "linear",
    "native_bf16",
    "prepared",
    "quantize_int8",
    "release_freed_memory",
    "resolve_dtype",
    "returned_memory",
    "scratch",
]


# --------------------------------------------------------------------------- dispatch table


@dataclass
class DispatchTable:
    """Every size at which attnkit switches kernels, with the measurement that chose it.

    - ``explicit_max_len`` (128): CPU inference runs packed sequences up to this length through
      the explicit path of :mod:`attnkit.varlen` (scores -> softmax -> weighted sum, in float32)
      instead of the fused kernel, whose per-block overhead dominates short sequences. Measured
      on an AVX512-BF16 EPYC, 2 threads, all-MiniLM's 12 heads x 32 dims: the embedding
      benchmark ran 7-16% faster in bfloat16 and 5-6% in float32 than with the fused kernel at
      every length; over 2,048-token blocks of one length the explicit path took 1.5 against
      3.0 ms at L=16 and broke even near L=128. Longer runs stay fused (memory O(L) per row).
    - ``explicit_max_scores_per_call`` (2^22): the explicit packed path scores at most this many
      entries at once (a run is split by sequences), bounding its scratch memory.
    - ``train_explicit_max_scores`` (48 x 48): training on short sequences takes the explicit
      path of :func:`attnkit.functional.scaled_dot_product_attention` (two batched matmuls and
      one softmax), which beat the fused CPU kernel forward + backward up to about 48 x 48
      scores a head (2 cores, 64 items x 4 heads, d=32: 2.9 against 4.3 ms at 26 x 26, 7.6
      against 9.6 at 48 x 48; slower at 64 x 64).
    - ``prefix_min_scores`` (2^18): the weights path scores a padded batch item by item (only
      each item's real keys) where an item holds at least this many scores; below it the
      per-item calls (~55 us each) cost more than the padding skipped (64 items of 4 x 26 x 26:
      4.4 ms against 0.65 ms padded).
    - ``causal_block`` (64): the weights path scores a causal call (``L <= S``) in blocks of this
      many query rows over every head at once, each block against only the keys it may see, so it
      skips the future as the fused kernel does. At 1 thread on a shared 2-core Ice Lake Xeon
      (B=4 H=12 L=S=512 d=64 fp32, thread CPU time, min of 20, interleaved) the weights took
      1.40x the fused causal time in 64-row blocks against 1.65x (32 rows: more calls), 1.47x
      (128), 1.58x (256), 1.56x (one block) and 1.68x before blocking; with torch held to AVX2
      1.23x against 1.43x, 1.25x, 1.39x, 1.53x and 1.58x.
    - ``huge_page_bytes`` (32 MiB): buffers from this size are marked for transparent huge
      pages; a fresh 50 MB score matrix took 28 ms to fault in with 4 KiB pages against 9 ms
      with huge pages.
    - ``returned_min_bytes`` (1 MiB) and ``returned_keep_bytes`` (512 MiB): a returned tensor
      (the weights of :func:`attnkit.functional.scaled_dot_product_attention`) of at least
      ``returned_min_bytes`` takes its memory from :func:`returned_memory`, which keeps at most
      ``returned_keep_bytes`` for reuse. A 6-layer Llama (8 heads, 4 x 512 tokens) with
      ``output_attentions`` ran its forward in 653 ms against 865 ms with fresh memory for every
      layer's 32 MiB of weights (sdpa without weights: 585 ms; 2 threads, Ice Lake Xeon).
    """

    explicit_max_len: int = 128
    explicit_max_scores_per_call: int = 1 << 22
    train_explicit_max_scores: int = 48 * 48
    prefix_min_scores: int = 1 << 18
    causal_block: int = 64
    huge_page_bytes: int = 1 << 25
    returned_min_bytes: int = 1 << 20
    returned_keep_bytes: int = 1 << 29


DISPATCH = DispatchTable()


# --------------------------------------------------------------------------- dtype policy

DTYPES = ("auto", "float32", "bfloat16", "int8")


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX), asked once.

    Elsewhere PyTorch emulates bfloat16 matmuls, several times slower than float32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


@functools.cache
def _warn_slow_bf16() -> None:
    warnings.warn(
        "bfloat16 was asked for, but this CPU has no native bfloat16 matmul (AVX512-BF16/AMX): "
        "it will be several times slower than float32 (dtype='auto' picks float32 here)",
        stacklevel=3,
    )


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"auto"`` | ``"float32"`` | ``"bfloat16"`` | ``"int8"`` (or the torch dtype) -> the torch dtype.

    ``"auto"`` is bfloat16 where :func:`native_bf16`, else float32: it never picks int8, which
    changes the numbers (see :func:`quantize_int8`) and is what a user asks for. Asking for
    bfloat16 on a CPU without native support warns once that it will be slow; asking for int8
    where torch has no CPU int8 engine (:func:`int8_engine`) is a ``ValueError``.
    """
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8,
             torch.float32: torch.float32, torch.bfloat16: torch.bfloat16, torch.int8: torch.int8}
    if dtype == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    if not isinstance(dtype, (str, torch.dtype)) or dtype not in names:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if names[dtype] == torch.bfloat16 and not native_bf16():
        _warn_slow_bf16()
    if names[dtype] == torch.int8 and int8_engine() is None:
        raise ValueError(
            f"dtype='int8': torch {torch.__version__} has no CPU int8 engine on this machine "
            f"(engines: {torch.backends.quantized.supported_engines}; int8 needs x86 with AVX2 or "
            f"better); use dtype='float32'"
        )
    return names[dtype]


# --------------------------------------------------------------------------- prepared weights


def _fingerprint(sources: tuple[Tensor | None, ...]) -> tuple:
    """Identity of some weights: their storage and in-place version (None stays None). Tensors
    made under ``torch.inference_mode`` have no version counter: their storage alone counts."""
    return tuple(None if t is None else (t.data_ptr(), None if t.is_inference() else t._version, t.dtype,
                                         tuple(t.shape)) for t in sources)


class DerivedValues(dict):
    """A dict of values derived from a module's weights and remade on demand (prepared weight
    layouts, converted copies of a model), kept as a plain attribute of the module: a deep copy
    or a pickle of it is empty. So ``copy.deepcopy``, ``pickle`` and ``torch.save`` of the module
    neither copy what would be remade nor meet oneDNN's opaque tensors, which have no storage to
    copy."""

    def __deepcopy__(self, memo: dict) -> DerivedValues:
        return type(self)()

    def __reduce__(self) -> tuple:
        return (type(self), ())


def prepared(owner: nn.Module, key: str, sources: tuple[Tensor | None, ...], make: Callable[[], Any]) -> Any:
    """A value derived from ``sources`` (weights of ``owner``) by ``make()``, kept on ``owner``
    and remade when any source changes (new storage, an in-place update, another dtype).

    For inference (no autograd): the kept value carries no graph. It is made as a normal tensor
    even under ``torch.inference_mode``, so it may be read in any mode later. The cache is a plain
    attribute (``owner._prepared``, a :class:`DerivedValues`), not a buffer: it is not in the
    state dict, not moved by ``.to()`` (a moved weight is a new storage, so the value is remade on
    the next call), and empty in a copy or a pickle of ``owner``.
    """
    cache = owner.__dict__.get("_prepared")
    if cache is None:
        cache = owner.__dict__.setdefault("_prepared", DerivedValues())
    stamp = _fingerprint(sources)
    entry = cache.get(key)
    if entry is None or entry[0] != stamp:
        with torch.inference_mode(False), torch.no_grad():
            entry = cache[key] = (stamp, make())
    return entry[1]


# --------------------------------------------------------------------------- linears

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}
_IN_PLACE = {"relu": torch.relu_, "gelu": torch.ops.aten.gelu_}


def activate(h: Tensor, activation: str | None) -> Tensor:
    """``activation(h)`` (``"relu"``, exact ``"gelu"`` or None), in place where no autograd graph
    needs ``h``."""
    if activation is None:
        return h
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if torch.is_grad_enabled() and h.requires_grad:
        return ACTIVATIONS[activation](h)
    return _IN_PLACE[activation](h)


@functools.cache
def _onednn_bf16_linear() -> bool:
    """Whether oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``) serves bfloat16
    here: a CPU with native bf16 matmul and a torch build that has the op."""
    return native_bf16() and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_weight(weight: Tensor, rows: int) -> Tensor:
    """``weight`` reordered into the blocked layout oneDNN's matmul reads (the plain weight
    where the reorder op is missing). Linears with it ran 10-20% faster in isolation than with
    the plain weight, which oneDNN reorders on every call (measured on an AVX512-BF16 EPYC,
    all-MiniLM's shapes at 300-2,048 rows)."""
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    except (AttributeError, RuntimeError):
        return weight


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, *, owner: nn.Module, key: str = "weight",
    activation: str | None = None,
) -> Tensor:
    """``activation(x @ weight.T + bias)`` for ``x (..., in)``; ``owner`` is the module the
    weight belongs to (it keeps the weight's oneDNN layout, see :func:`prepared`, or its int8
    form, see :func:`quantize_int8`).

    An owner quantised by :func:`quantize_int8` runs its :class:`Int8Linear` (inference only:
    an ``x`` that requires grad under grad mode is a ``ValueError``, as is an owner whose weights
    changed after it was quantised, see :class:`Int8Forms`).

    bfloat16 inference on a CPU with native bf16 matmul takes oneDNN's linear with the bias and
    activation fused into the matmul (one pass over the output instead of two; 8-20% faster
    embedding than ``addmm`` on AMX). Everywhere else ``F.linear``, then the activation in place
    where no graph needs it.
    """
    recorder = getattr(_local, "int8_recorder", None)
    if recorder is not None:
        recorder.observe(owner, key, x, weight, bias)
    forms = owner.__dict__.get("_int8")
    if forms is not None and key in forms:
        return forms.run(owner, key, x, activation)
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    fused = x.dtype == torch.bfloat16 and x.device.type == "cpu" and _onednn_bf16_linear() and not grad
    if not fused:
        return activate(F.linear(x, weight, bias), activation)
    if activation not in (None, *ACTIVATIONS):
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)} or None, got {activation!r}")
    packed = prepared(owner, f"onednn:{key}", (weight,), lambda: _onednn_weight(weight, 1024))
    rows = x.reshape(-1, x.shape[-1])  # (N, in)
    # "none": exact (erf) GELU
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, activation or "none", [], "none")
    return out.view(*x.shape[:-1], weight.shape[0])


# --------------------------------------------------------------------------- int8 linears


@functools.cache
def int8_engine() -> str | None:
    """The CPU int8 engine torch has on this machine (``"x86"``, ``"onednn"`` or ``"fbgemm"``;
    torch lists only the engines the CPU can run), or None: not an x86 CPU, or a torch without
    oneDNN's int8 linear, which :class:`Int8Linear` calls."""
    engines = torch.backends.quantized.supported_engines
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None  # oneDNN's int8 linear is x86 code (VNNI, AVX2)
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        return None
    return next((e for e in ("x86", "onednn", "fbgemm") if e in engines), None)


# SmoothQuant's migration strength: the smoothing scale of input channel j is
# amax|x_j|^alpha / amax|W_:,j|^(1 - alpha) (Xiao et al. 2023, alpha = 0.5 for BERT-sized models).
SMOOTH_ALPHA = 0.5
# One input channel in this many (those with the largest calibration activations) stays float32:
# 8 of all-MiniLM's 384, 32 of its 1,536 feed-forward channels. Each choice measured on all-MiniLM
# (64 calibration texts, min cosine to float32 over 300 docstrings): everything int8, symmetric,
# no smoothing 0.9947; + smoothing 0.9978; + per-token ranges and float32 outlier channels 0.9996.
OUTLIER_SHARE = 48


@dataclass(frozen=True)
class Int8Linear:
    """A linear layer in int8: ``y = act(s_x * s_w * (q_x @ Q_w^T) + lo_x * sum Q_w s_w + x_o @ W_o^T + b)``.

    - weights: ``Q_w = round(W m / s_w)`` in [-127, 127], one scale per output channel ``s_w``;
    - ``m`` (``1 / inv_smooth``): SmoothQuant's per-input-channel migration, so that channels
      whose activations run large are divided down before quantising (the weight's matching
      columns multiplied up) and one per-token scale fits every channel;
    - activations: one dynamic scale per token (row) over its own range, ``x / m = lo_x + s_x q_x``
      with ``q_x`` in [0, 255] (uint8, the operand VNNI multiplies natively; [0, 127] on AVX2,
      see :func:`_activation_levels`), so a one-sided activation (GELU's) loses no bit to the
      side it never reaches; with ``passes=2`` each token's rounding residual is quantised too;
    - ``outliers``: the few input channels with the largest calibration activations stay float32
      (``inv_smooth`` is 0 there and their product ``x_o @ W_o^T`` is added in float32), as in
      LLM.int8().

    The matmul is oneDNN's int8 linear (``torch.ops.onednn.qlinear_pointwise``, VNNI where the
    CPU has it, AVX2 elsewhere) on the weight prepacked once, with int32 accumulation and the
    per-channel scale applied in the kernel; the float32 outlier channels are one small matmul, and
    the rest (per-token scale and offset, bias, activation) one elementwise pass.

    Every tensor is its own (none shares memory with the float weights it was made from). A copy
    or a pickle carries ``qweight`` and prepacks it again: the prepacked weight is an opaque
    oneDNN tensor, which has no storage to copy.
    """

    qweight: Tensor  # (out, in) int8: Q_w
    weight_scale: Tensor  # (out,) float32
    zero_points: Tensor  # (out,) long zeros: the weights are symmetric
    inv_smooth: Tensor  # (in,) float32, 0 at the outlier channels
    outliers: Tensor  # (k,) long
    outlier_weight: Tensor  # (k, out) float32: W[:, outliers]^T
    column_sums: Tensor  # (out,) float32: sum_j Q_w[:, j] s_w, what lo_x multiplies
    bias: Tensor  # (out,) float32 (zeros where the linear has none)
    passes: int = 1  # 2: the rounding residual of each token is quantised again (~16-bit activations)
    packed: Tensor = field(init=False, repr=False, compare=False)  # oneDNN's prepacked qweight

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed", torch.ops.onednn.qlinear_prepack(self.qweight, None))

    def __reduce__(self) -> tuple:
        return (type(self), tuple(getattr(self, f.name) for f in fields(self) if f.init))

    @classmethod
    def from_float(cls, weight: Tensor, bias: Tensor | None, input_amax: Tensor | None,
                   alpha: float = SMOOTH_ALPHA, keep: int | None = None, passes: int = 1) -> Int8Linear:
        """Quantise ``weight (out, in)``; ``input_amax (in,)`` (the largest ``|x_j|`` seen on
        calibration text) turns on smoothing and keeps the ``keep`` channels with the largest
        inputs in float32 (default ``in // OUTLIER_SHARE``); None leaves both off."""
        w = weight.detach().float()  # (out, in)
        n_out, n_in = w.shape
        keep = n_in // OUTLIER_SHARE if keep is None else keep
        inv_smooth, outliers = torch.ones(n_in), torch.zeros(0, dtype=torch.long)
        if input_amax is not None:
            outliers = input_amax.float().topk(keep).indices.sort().values  # (k,)
            amax = input_amax.float().index_fill(0, outliers, 0.0)
            w_amax = w.abs().amax(0).clamp_min(1e-5)  # (in,)
            smooth = (amax.clamp_min(1e-5) ** alpha / w_amax ** (1 - alpha)).clamp(1e-2, 1e2)  # (in,)
            inv_smooth = (1.0 / smooth).index_fill_(0, outliers, 0.0)
        w_int8 = w / inv_smooth.clamp_min(1e-30) * (inv_smooth > 0)  # (out, in): W m, 0 at the outliers
        scale = (w_int8.abs().amax(1) / 127.0).clamp_min(1e-12)  # (out,)
        q = torch.round(w_int8 / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (out, in)
        bias = torch.zeros(n_out) if bias is None else bias.detach().to(torch.float32, copy=True)
        return cls(q, scale.contiguous(), torch.zeros(n_out, dtype=torch.long),
                   inv_smooth.contiguous(), outliers, w[:, outliers].t().contiguous(),
                   (q.float().sum(1) * scale).contiguous(), bias.contiguous(), passes)

    def __call__(self, x: Tensor, activation: str | None = None) -> Tensor:
        """``x (..., in)`` float -> ``activation(x @ W^T + b) (..., out)`` float32."""
        if activation not in (None, *ACTIVATIONS):
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        rows = x.reshape(-1, x.shape[-1]).float()  # (N, in)
        levels = _activation_levels()  # 255, or 127 where the kernel sums u8 x s8 pairs in int16
        codes, lo, step = _int8_kernels().quantize(rows, self.inv_smooth, levels, self.passes)
        y = torch.ops.onednn.qlinear_pointwise(  # (passes*N, out) float32: (q_x @ Q_w^T) * s_w, both passes in one matmul
            codes, 1.0, 0, self.packed, self.weight_scale, self.zero_points, None, 1.0, 0, torch.float32, "none", [], "")
        x_out = rows.index_select(1, self.outliers)  # (N, k): the float32 channels
        y = _int8_kernels().dequantize(y, x_out, self.outlier_weight, lo, step, self.column_sums, self.bias, levels,
                                       self.passes, activation)
        return y.view(*x.shape[:-1], y.shape[-1])


@dataclass(frozen=True)
class RowBlockedLinear:
    """A float32 linear computed in fixed blocks of ``rows`` rows (the last block zero-padded),
    so that every matmul has one shape: a token's result then has the same bits alone or in any
    batch (a plain matmul's kernel and summation order change with its number of rows, and in
    an int8 model such a last-bit change moves the next linear's rounding). The float32 linears
    of an int8 model (``keep_float`` of :func:`quantize_int8`) run this way; inference only."""

    weight: Tensor  # (out, in) float32
    bias: Tensor | None  # (out,)
    rows: int = 128

    @classmethod
    def from_float(cls, weight: Tensor, bias: Tensor | None) -> RowBlockedLinear:
        """A row-blocked linear on float32 copies of ``weight (out, in)`` and ``bias (out,)``
        (no memory shared with them)."""
        return cls(weight.detach().to(torch.float32, copy=True),
                   None if bias is None else bias.detach().to(torch.float32, copy=True))

    def __call__(self, x: Tensor, activation: str | None = None) -> Tensor:
        """``x (..., in)`` float -> ``activation(x @ W^T + b) (..., out)`` float32."""
        flat = x.reshape(-1, x.shape[-1]).float()  # (N, in)
        n, rows = flat.shape[0], self.rows
        whole = n - n % rows
        out = flat.new_empty(whole + (rows if whole < n else 0), self.weight.shape[0])  # (N rounded up, out)
        w_t = self.weight.t()
        for i in range(0, out.shape[0], rows):
            block = flat[i:i + rows]
            if block.shape[0] < rows:  # the last, partial block: zero-padded to the block shape
                block = torch.cat([block, block.new_zeros(rows - block.shape[0], block.shape[1])])
            if self.bias is None:
                torch.mm(block, w_t, out=out[i:i + rows])
            else:
                torch.addmm(self.bias, block, w_t, out=out[i:i + rows])
        return activate(out[:n], activation).view(*x.shape[:-1], out.shape[-1])


def _quantize_rows(rows: Tensor, inv_smooth: Tensor, levels: int, passes: int) -> tuple[Tensor, Tensor, Tensor]:
    """``rows (N, in)`` -> ``(codes (passes*N, in) uint8, lo (N, 1), step (N, 1))`` with
    ``rows * inv_smooth = lo + step * q`` per token (``q`` the codes, rounded to nearest, in
    ``[0, levels]``); with ``passes=2`` rows ``N..2N`` hold each token's rounding residual
    ``r = -1/2 + q_r / levels`` steps, quantised again."""
    xs = rows * inv_smooth  # (N, in)
    lo, hi = xs.amin(-1, keepdim=True), xs.amax(-1, keepdim=True)  # (N, 1) x2
    step = (hi - lo).clamp_min(1e-12) * (1.0 / levels)  # (N, 1)
    scaled = (xs - lo) / step + 0.5  # in [0.5, levels + 0.5]
    q = scaled.to(torch.uint8)  # truncating x + 0.5: rounded to nearest
    if passes == 1:
        return q, lo, step
    residual = ((scaled - q.float()) * levels + 0.5).to(torch.uint8)  # (N, in): q_r in [0, levels]
    return torch.cat([q, residual]), lo, step


def _dequantize_rows(y: Tensor, x_out: Tensor, outlier_weight: Tensor, lo: Tensor, step: Tensor, column_sums: Tensor,
                     bias: Tensor, levels: int, passes: int, activation: str | None) -> Tensor:
    """The matmul's ``y (passes*N, out) = codes @ (Q_w^T s_w)`` -> ``activation(x @ W^T + b) (N, out)``:
    ``step * y + lo * column_sums + bias + x_out @ outlier_weight`` (``x_out (N, k)``: the
    float32 outlier channels, a few; see :class:`Int8Linear`). Written as elementwise products
    and a sum over the ``k`` channels, so that it compiles into one loop."""
    n = x_out.shape[0]
    if passes == 2:  # x / m = (lo - step / 2) + step * (q_x + q_r / levels)
        y = y[:n] + y[n:] * (1.0 / levels)
        lo = lo - 0.5 * step
    fp32 = (x_out.unsqueeze(-1) * outlier_weight).sum(1)  # (N, k, 1) * (k, out) -> (N, out)
    out = y * step + lo * column_sums + bias + fp32  # (N, out)
    return out if activation is None else ACTIVATIONS[activation](out)


@dataclass(frozen=True)
class _Int8Kernels:
    quantize: Callable[..., tuple[Tensor, Tensor, Tensor]]
    dequantize: Callable[..., Tensor]


@functools.cache
def _int8_kernels() -> _Int8Kernels:
    """:func:`_quantize_rows` and :func:`_dequantize_rows` compiled by ``torch.compile``
    (inductor's C++ backend fuses each into one or two vectorised loops: the per-token
    quantisation was ten eager passes, 4x the time of the int8 matmul itself), or the eager
    functions where compiling fails (no C++ compiler) or ``ATTNKIT_INT8_COMPILE=0``.

    Shapes are dynamic, so one compile (about 10-40 s, then cached on disk by torch) serves every
    batch; each activation, pass count and model shape class compiles once more, and past
    torch's recompile limit a new one runs eagerly. A token's result never depends on the other
    rows of the batch in either form."""
    eager = _Int8Kernels(_quantize_rows, _dequantize_rows)
    if os.environ.get("ATTNKIT_INT8_COMPILE", "1") == "0":
        return eager
    compiled = _Int8Kernels(torch.compile(_quantize_rows, dynamic=True), torch.compile(_dequantize_rows, dynamic=True))
    try:
        wrong = _kernels_disagree(compiled, eager)  # compiles now, so that any failure falls back here
    except Exception as err:  # noqa: BLE001 - any compiler failure means: run eager
        wrong = f"{type(err).__name__}: {err}"
    if wrong:
        warnings.warn(f"int8: the quantiser compiled by torch.compile is not usable here ({wrong}); running it "
                      f"eagerly (the same results, about 2x slower)", stacklevel=2)
        return eager
    return compiled


def _kernels_disagree(compiled: _Int8Kernels, eager: _Int8Kernels) -> str:
    """What differs between ``compiled`` and ``eager`` on random cases of both pass counts
    ('' when nothing does): compiled code is checked once against the eager functions
    it is made from, since a C++ compiler or vector-ISA mismatch could give wrong numbers, not
    an error. Codes may differ by one step at a rounding tie."""
    g = torch.Generator().manual_seed(0)
    n, k_in, k_out, k_fp32 = 37, 100, 52, 3  # odd sizes: the vector loops' tails run too
    rows, smooth = torch.randn(n, k_in, generator=g) * 3, torch.rand(k_in, generator=g) + 0.5
    with torch.inference_mode():
        for passes in (1, 2):
            got, want = compiled.quantize(rows, smooth, _activation_levels(), passes), eager.quantize(
                rows, smooth, _activation_levels(), passes)
            off = (got[0].int() - want[0].int()).abs()
            if off.max() > 1 or (off > 0).float().mean() > 1e-2:
                return f"quantise: {int((off > 0).sum())} codes of {off.numel()} differ"
            if not torch.allclose(got[1], want[1]) or not torch.allclose(got[2], want[2]):
                return "quantise: the per-token ranges differ"
            activation = None if passes == 1 else "gelu"  # each variant compiles anew: two of them
            args = (torch.randn(passes * n, k_out, generator=g), torch.randn(n, k_fp32, generator=g),
                    torch.randn(k_fp32, k_out, generator=g), want[1], want[2], torch.randn(k_out, generator=g),
                    torch.randn(k_out, generator=g), _activation_levels(), passes, activation)
            if not torch.allclose(compiled.dequantize(*args), eager.dequantize(*args), rtol=1e-4, atol=1e-4):
                return f"dequantise ({activation or 'no activation'}, {passes} passes) differs"
    return ""


def calibration_texts(count: int = 64) -> list[str]:
    """Text the package carries, for int8 calibration: ``count`` paragraphs evenly spread over
    the first paragraphs of the docstrings in attnkit's own source (modules, classes, functions;
    about 500, read with ``ast``, nothing imported), in a fixed order: English of mixed length,
    none of it from the benchmark's corpora (the standard library's docstrings)."""
    root = Path(__file__).resolve().parent
    texts: list[str] = []
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            text = " ".join(re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0].split()) if doc else ""
            if len(text) >= 20 and text not in seen:
                seen.add(text)
                texts.append(text)
    step = max(1, len(texts) // max(count, 1))
    return texts[::step][:count]


@functools.cache
def _activation_levels() -> int:
    """How many steps an activation's range is cut into: 255 (uint8) where oneDNN's int8 linear
    accumulates exactly (VNNI, AMX), 127 where it adds pairs of u8 x s8 products in int16 with
    saturation (AVX2's ``vpmaddubsw``: 255 * 127 * 2 overflows, 127 * 127 * 2 does not), as
    fbgemm's ``reduce_range`` does. Asked of the kernel once, on the case that saturates."""
    k, n = 64, 16
    packed = torch.ops.onednn.qlinear_prepack(torch.full((n, k), 127, dtype=torch.int8), None)
    x = torch.full((1, k), 255, dtype=torch.uint8)
    y = torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, packed, torch.ones(n), torch.zeros(n, dtype=torch.long),
                                           None, 1.0, 0, torch.float32, "none", [], "")
    return 255 if bool((y == 255 * 127 * k).all()) else 127


class _Int8Recorder:
    """What a calibration forward passes through :func:`linear`: for every ``(owner, key)``, the
    weight, bias and the largest ``|x_j|`` of each input channel seen."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str], tuple[nn.Module, Tensor, Tensor | None, Tensor]] = {}

    def observe(self, owner: nn.Module, key: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
        if x.numel() == 0:  # no token: nothing to learn about the ranges
            return
        amax = x.detach().reshape(-1, x.shape[-1]).abs().amax(0).float()  # (in,)
        entry = self.seen.get((id(owner), key))
        if entry is not None:
            amax = torch.maximum(amax, entry[3])
        self.seen[(id(owner), key)] = (owner, weight, bias, amax)


def _version(t: Tensor) -> int | None:
    """``t``'s in-place version (None for a tensor made under ``torch.inference_mode``: it has none)."""
    return None if t.is_inference() else t._version


class Int8Forms(dict):
    """The int8 forms of one owner's linears (key -> :class:`Int8Linear` or :class:`RowBlockedLinear`),
    kept as ``owner._int8``, with the parameters of ``owner`` (its own and its submodules') they
    were made from and a fingerprint of them then: their identity, storage and in-place version.

    The forms hold their own copies of the weights, so they go stale when the float weights
    change (an optimizer step, ``load_state_dict``, ``.to()``): :meth:`run` then refuses rather
    than run the old weights. A deep copy or a pickle of the owner copies the forms with its
    parameters and fingerprints the copies anew.
    """

    def __init__(self, sources: tuple[tuple[nn.Module, str, Tensor], ...], forms: dict[str, Any]) -> None:
        super().__init__(forms)
        self.sources = sources  # (module, name, parameter) for every parameter of the owner
        self.stamp = tuple((p.data_ptr(), _version(p)) for _, _, p in sources)

    @classmethod
    def of(cls, owner: nn.Module, forms: dict[str, Any]) -> Int8Forms:
        """``forms`` of ``owner``, made from its parameters as they are now."""
        sources = tuple((m, name, p) for m in owner.modules() for name, p in m._parameters.items() if p is not None)
        return cls(sources, forms)

    def __reduce__(self) -> tuple:
        return (type(self), (self.sources, dict(self)))

    def current(self) -> bool:
        """Whether the owner's parameters are those the forms were made from, unchanged."""
        return (all(m._parameters.get(name) is p for m, name, p in self.sources)
                and tuple((p.data_ptr(), _version(p)) for _, _, p in self.sources) == self.stamp)

    def run(self, owner: nn.Module, key: str, x: Tensor, activation: str | None) -> Tensor:
        """The int8 form ``key`` on ``x (..., in)`` -> ``(..., out)`` float32 (see :func:`linear`)."""
        if torch.is_grad_enabled() and x.requires_grad:
            raise ValueError(
                f"{type(owner).__name__}'s linear ({key!r}) runs in int8, which is for inference only, and its input "
                f"requires grad: run the int8 model under torch.inference_mode() or torch.no_grad(), or use the "
                f"float32 model for gradients")
        if not self.current():
            raise ValueError(
                f"the weights of {type(owner).__name__} changed after they were quantised to int8 (in place, by "
                f"load_state_dict or .to()), so its int8 form is out of date: quantise the model again from its "
                f"float weights (e.g. BertEncoder.with_dtype('int8', calibration=...))")
        return self[key](x, activation)


def quantize_int8(model: nn.Module, calibrate: Callable[[], object], *, smooth: bool = True,
                  keep_float: Collection[nn.Module] = (), passes: int | None = None) -> int:
    """Give every linear that ``calibrate()`` (a float32 forward of ``model`` over calibration
    text) passes through :func:`linear` an :class:`Int8Linear`, kept on its owner (an
    :class:`Int8Forms`, valid while the owner's weights stay as they are now); from then on
    :func:`linear` runs those in int8 (inference only). Returns the number of linears quantised.

    The weights are quantised here, once; activations are quantised per token at run time.
    ``smooth`` turns on SmoothQuant's migration (scales from the calibration activations);
    the linears of the modules in ``keep_float`` stay float32 (as a :class:`RowBlockedLinear`,
    so that a token's result never depends on its batch); ``passes=2`` quantises each
    token's rounding residual too (see :class:`Int8Linear`). ``None``: one pass where the kernel
    takes 8-bit activations (VNNI, AMX), two where it takes 7 (AVX2, see
    :func:`_activation_levels`), whose one pass kept one-word texts under cosine 0.999.

    Int8 forms ``model`` already has are dropped first (the calibration runs in float). A
    ``calibrate()`` that passes no token through any linear is a ``ValueError``.
    """
    if passes is None:
        passes = 1 if _activation_levels() == 255 else 2
    drop_int8(model)
    recorder = _local.int8_recorder = _Int8Recorder()
    try:
        with torch.inference_mode():
            calibrate()
    finally:
        _local.int8_recorder = None
    if not recorder.seen:
        raise ValueError("int8 calibration passed no token through any linear of the model: calibrate on at "
                         "least one non-empty sequence")
    skip = {id(m) for m in keep_float}
    quantised = 0
    forms: dict[int, tuple[nn.Module, dict[str, Int8Linear | RowBlockedLinear]]] = {}
    for owner, key, weight, bias, amax in ((e[0], k[1], *e[1:]) for k, e in recorder.seen.items()):
        if id(owner) in skip:
            form: Int8Linear | RowBlockedLinear = RowBlockedLinear.from_float(weight, bias)
        else:
            form = Int8Linear.from_float(weight, bias, amax if smooth else None, passes=passes)
            quantised += 1
        forms.setdefault(id(owner), (owner, {}))[1][key] = form
    for owner, owned in forms.values():
        owner.__dict__["_int8"] = Int8Forms.of(owner, owned)
    return quantised


def is_int8(model: nn.Module) -> bool:
    """Whether :func:`quantize_int8` gave some linear of ``model`` an int8 form."""
    return any("_int8" in m.__dict__ for m in model.modules())


def int8_current(model: nn.Module) -> bool:
    """Whether every int8 form of ``model`` was made from its weights as they are now (True
    where it has none; see :meth:`Int8Forms.current`)."""
    return all(m.__dict__["_int8"].current() for m in model.modules() if "_int8" in m.__dict__)


def drop_int8(model: nn.Module) -> None:
    """Remove every int8 form from ``model``'s modules, in place: its linears compute in float again."""
    for m in model.modules():
        m.__dict__.pop("_int8", None)


# --------------------------------------------------------------------------- scratch buffers


class Role(enum.Enum):
    """What a scratch buffer holds (one buffer per role and dtype in a :class:`BufferPool`)."""

    GATHERED_Q = "gathered q"
    GATHERED_K = "gathered k"
    GATHERED_V = "gathered v"
    WIDE_Q = "q in the compute dtype"
    WIDE_K = "k in the compute dtype"
    WIDE_V = "v in the compute dtype"
    SCORES = "scores"
    RUN_OUTPUT = "outputs in run order"
    TOKEN_OUTPUT = "outputs in token order"


class BufferPool:
    """Scratch buffers reused from call to call, one per :class:`Role` and dtype, grown to the
    largest request seen. A buffer is valid until the next request for its role: a kernel takes
    what it needs, uses it, and copies its result out before it returns.

    Fresh multi-megabyte tensors per call cost page faults whenever the C allocator hands freed
    memory back to the OS between batches (~200,000 minor faults per pass over the embedding
    benchmark's corpus, pass times varying by 30%, measured).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[Role, torch.dtype, torch.device], Tensor] = {}

    def take(self, role: Role, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A contiguous ``shape`` view of the buffer for ``role``."""
        if not isinstance(role, Role):
            raise ValueError(f"role must be a runtime.Role, got {role!r}")
        n = math.prod(shape)
        key = (role, dtype, torch.device(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
                buf = self._buffers[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        self._buffers.clear()


_local = threading.local()


def scratch() -> BufferPool:
    """This thread's :class:`BufferPool` (each thread has its own, so concurrent inference
    never shares a buffer)."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = BufferPool()
    return pool


class ReturnedMemory:
    """Memory for the large tensors that a call hands back and its caller drops soon after, the
    attention weights of ``output_attentions`` above all: a block is handed out again once every
    tensor on it is gone, so a model's next forward writes its weights into pages already mapped
    instead of faulting in (and having the kernel zero) fresh ones for every layer.

    Each tensor is made with ``torch.from_numpy`` from a fresh numpy view of a block the pool
    owns. That view lives exactly as long as the tensor's storage: the tensor, its views and
    anything sharing its memory (``.numpy()``) hold it. The block is free when the view has died
    (a weak reference tells), so memory that any tensor still uses is never handed out twice.
    Blocks are 64-byte aligned and marked for transparent huge pages. At most
    ``DISPATCH.returned_keep_bytes`` are kept; past that a request gets a plain ``torch.empty``,
    as does a request larger than that budget alone (it drops no kept block).
    Thread-safe (one lock); :meth:`clear` and :func:`release_freed_memory` hand the free blocks back.
    """

    _ALIGN = 64

    def __init__(self) -> None:
        self._blocks: list[tuple[Any, Any]] = []  # (numpy uint8 block, weakref to the view in use or None)
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """An uninitialised contiguous CPU tensor of ``shape`` and ``dtype`` (``torch.empty``'s
        contract), on reused memory where a free block of at least its size (and under twice it)
        is kept; ``torch.empty`` below ``DISPATCH.returned_min_bytes`` or past the budget."""
        nbytes = math.prod(shape) * dtype.itemsize
        t = self._reused(shape, dtype, nbytes) if nbytes >= DISPATCH.returned_min_bytes else None
        return advise_huge_pages(torch.empty(shape, dtype=dtype) if t is None else t)

    def _reused(self, shape: tuple[int, ...], dtype: torch.dtype, nbytes: int) -> Tensor | None:
        """``shape`` on a kept block (a free one, or a new one within the budget); None past it."""
        import numpy as np

        with self._lock:
            free = [i for i, (block, ref) in enumerate(self._blocks)
                    if _unused(ref) and nbytes <= block.nbytes - self._ALIGN < 2 * nbytes]
            if free:
                i = min(free, key=lambda j: self._blocks[j][0].nbytes)
                block = self._blocks[i][0]
            else:
                if nbytes + self._ALIGN > DISPATCH.returned_keep_bytes:
                    return None  # larger than the whole budget: a plain tensor, the kept blocks stay
                self._drop_free(DISPATCH.returned_keep_bytes - nbytes - self._ALIGN)
                if self.nbytes() + nbytes + self._ALIGN > DISPATCH.returned_keep_bytes:
                    return None
                block = np.empty(nbytes + self._ALIGN, dtype=np.uint8)
                i = len(self._blocks)
                self._blocks.append((block, None))
            start = -block.ctypes.data % self._ALIGN
            view = block[start:start + nbytes]
            self._blocks[i] = (block, weakref.ref(view))
            return torch.from_numpy(view).view(dtype).view(shape)

    def _drop_free(self, keep: int) -> None:
        """Drop free blocks, largest first, until at most ``keep`` bytes are kept (or none is free)."""
        total, dropped = self.nbytes(), set()
        for i in sorted(range(len(self._blocks)), key=lambda j: -self._blocks[j][0].nbytes):
            if total <= keep:
                break
            block, ref = self._blocks[i]
            if _unused(ref):
                total -= block.nbytes
                dropped.add(i)
        self._blocks = [b for j, b in enumerate(self._blocks) if j not in dropped]

    def nbytes(self) -> int:
        """Bytes kept, in use or free."""
        return sum(block.nbytes for block, _ in self._blocks)

    def clear(self) -> None:
        """Hand back every free block (blocks in use stay until their tensors are gone)."""
        with self._lock:
            self._drop_free(0)


def _unused(ref: Any) -> bool:
    """Whether a block whose view is ``ref`` (a weak reference, or None: never handed out) is free."""
    return ref is None or ref() is None


_returned = ReturnedMemory()


def returned_memory() -> ReturnedMemory:
    """The process's :class:`ReturnedMemory` (one for all threads: a tensor returned on one
    thread may be dropped on another)."""
    return _returned


# --------------------------------------------------------------------------- the C library


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, loaded once (None where it cannot be: Windows, or no libc found)."""
    if sys.platform.startswith("win"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _libc_function(name: str) -> Callable | None:
    lib = libc()
    return getattr(lib, name, None) if lib is not None else None


def advise_huge_pages(t: Tensor) -> Tensor:
    """Mark a large CPU tensor's memory for transparent huge pages (``madvise(MADV_HUGEPAGE)``,
    a hint the kernel may ignore) so it faults in 512x fewer pages; returns ``t``. Tensors below
    :data:`DISPATCH` ``.huge_page_bytes``, and systems other than Linux, are left alone."""
    nbytes = t.numel() * t.element_size()
    madvise = _libc_function("madvise") if sys.platform.startswith("linux") else None
    if madvise is not None and t.device.type == "cpu" and nbytes >= DISPATCH.huge_page_bytes:
        page, madv_hugepage = 4096, 14
        start = (t.data_ptr() + page - 1) // page * page  # whole pages inside the block only
        madvise(ctypes.c_void_p(start), ctypes.c_size_t((t.data_ptr() + nbytes - start) // page * page), madv_hugepage)
    return t


def keep_freed_memory() -> bool:
    """Ask the C allocator (glibc's ``mallopt``) to keep freed memory for reuse instead of
    handing it back to the operating system, for the rest of this process.

    A training step allocates and frees the same activation buffers every time; by default
    glibc serves blocks above 128 KiB with fresh ``mmap`` pages and trims the heap after
    frees, so every step page-faults its activations in again: ~500 minor faults per step
    of the date-task Transformer, 12% of its time (58 -> 51 ms/step measured on 2 cores).
    This is what PyTorch's CPU performance guides get with ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` or jemalloc. ``attnkit train`` and ``attnkit demo`` call it;
    the cost is that up to 1 GiB of freed memory stays with the process. Returns False (and
    does nothing) where the C library is not glibc.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def release_freed_memory() -> bool:
    """Hand the allocator's freed memory back to the OS (glibc's ``malloc_trim``), and the free
    blocks of :func:`returned_memory`; False where there is no ``malloc_trim``. Between chunks
    of a long embedding job it keeps RSS flat (without it glibc kept a chunk's freed arenas
    fragmented and RSS crept up ~4 MiB a chunk: 482 -> 547 MiB over 19 chunks; with it 374 ->
    381 MiB, measured)."""
    returned_memory().clear()
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    renameat2 = _libc_function("renameat2") if sys.platform.startswith("linux") else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
