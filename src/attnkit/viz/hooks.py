"""Queries, keys and values of a model's attention layers, captured with forward hooks.

The neuron view (a token's query, the keys, ``q ⊙ k``, ``q·k/√d`` and the softmax) and the
value-norm view need what each attention layer computed inside. Nothing is patched or copied:
:class:`Capture` registers forward hooks on the model's own projection modules for the length
of one forward pass and removes them afterwards.

Where the projections live is one table, :data:`FAMILIES` (Hugging Face ``model_type`` ->
module names). attnkit's own :class:`~attnkit.MultiHeadAttention` computes self-attention's
q/k/v in one fused matmul without calling ``q_proj``/``k_proj``, so it is hooked one level up:
a pre-hook takes the module's inputs and applies its ``q_proj``/``k_proj``/``v_proj`` (and its
rotary embedding) to them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

KINDS = ("encoder", "decoder", "cross")
CAUSAL_KINDS = ("decoder",)  # decoder self-attention: query i sees keys 0..i


@dataclass(frozen=True)
class Family:
    """Where one model family keeps its attention projections.

    ``blocks`` maps an attention kind to the regular expression of an attention module's name
    (group 1: the layer index; any prefix such as ``bert.`` or ``model.`` is allowed). ``q``,
    ``k``, ``v``, ``o`` name the projections below that module; ``q == k == v`` is one fused
    projection whose output is split in three (GPT-2's ``c_attn``). ``scaled``: scores are
    ``q·k/√d`` (T5's are ``q·k``). ``position_bias``: the module returns the bias it adds to the
    scores as its second output (T5's relative position bias).
    """

    blocks: dict[str, str]
    q: str
    k: str
    v: str
    o: str
    scaled: bool = True
    position_bias: bool = False


_BART = Family({"encoder": r"encoder\.layers\.(\d+)\.self_attn", "decoder": r"decoder\.layers\.(\d+)\.self_attn",
                "cross": r"decoder\.layers\.(\d+)\.encoder_attn"}, "q_proj", "k_proj", "v_proj", "out_proj")
_BERT = Family({"encoder": r"encoder\.layer\.(\d+)\.attention"}, "self.query", "self.key", "self.value",
               "output.dense")

FAMILIES: dict[str, Family] = {
    "bert": _BERT,
    "roberta": _BERT,
    "distilbert": Family({"encoder": r"transformer\.layer\.(\d+)\.attention"}, "q_lin", "k_lin", "v_lin", "out_lin"),
    "gpt2": Family({"decoder": r"h\.(\d+)\.attn"}, "c_attn", "c_attn", "c_attn", "c_proj"),
    "bart": _BART,
    "marian": _BART,
    "t5": Family({"encoder": r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention",
                  "decoder": r"decoder\.block\.(\d+)\.layer\.0\.SelfAttention",
                  "cross": r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention"},
                 "q", "k", "v", "o", scaled=False, position_bias=True),
}
# attnkit's models (Transformer, BertEncoder/SentenceEncoder): MultiHeadAttention modules named
ATTNKIT_BLOCKS = {"encoder": r"encoder\.layers\.(\d+)\.self_attn", "decoder": r"decoder\.layers\.(\d+)\.self_attn",
                  "cross": r"decoder\.layers\.(\d+)\.cross_attn"}

SUPPORTED = "attnkit's Transformer and BERT encoders, " + ", ".join(sorted(set(FAMILIES)))


@dataclass
class Projections:
    """One attention kind's captured projections, every layer.

    ``q (L, H, Tq, d)``, ``k (L, H, Tk, d)``, ``v (L, H, Tk, d)`` (``x W + b`` split into heads;
    grouped kv heads repeated to ``H``), ``out_proj_weight (L, E, H*d)`` (``nn.Linear`` layout),
    ``scale`` per layer, ``bias (L, H, Tq, Tk)`` added to the scores (T5's relative position
    bias) or None, and ``causal`` (future keys masked).
    """

    q: Tensor
    k: Tensor
    v: Tensor
    out_proj_weight: Tensor
    scale: list[float]
    bias: Tensor | None
    causal: bool

    def scores(self) -> Tensor:
        """``q·k × scale (+ bias)`` with future keys at ``-inf`` when causal: ``(L, H, Tq, Tk)``."""
        s = torch.einsum("lhqd,lhkd->lhqk", self.q.float(), self.k.float())
        s = s * torch.tensor(self.scale, dtype=s.dtype)[:, None, None, None]
        if self.bias is not None:
            s = s + self.bias.float()
        if self.causal:
            tq, tk = s.shape[-2:]
            future = torch.ones(tq, tk, dtype=torch.bool).triu(tk - tq + 1)  # key j > i + Tk - Tq
            s = s.masked_fill(future, float("-inf"))
        return s

    def softmax(self) -> Tensor:
        """The attention these projections give: ``softmax(scores())`` ``(L, H, Tq, Tk)``."""
        return torch.softmax(self.scores(), dim=-1)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    # (T, heads*d) -> (heads, T, d)
    return x.unflatten(-1, (heads, -1)).transpose(0, 1)


def _linear_weight(module: nn.Module) -> Tensor:
    """The weight of a projection in ``nn.Linear`` layout ``(out, in)`` (HF's Conv1D stores ``(in, out)``)."""
    weight = module.weight.detach()
    return weight.t() if type(module).__name__ == "Conv1D" else weight


class Capture:
    """Forward hooks that record q, k, v (and T5's position bias) during one forward pass.

    ``with Capture(model, model_type) as cap: model(...)``, then :meth:`projections` with the
    weights the model reported. ``cap.supported`` is False (and ``cap.note`` says why) for a
    model whose projections this module cannot name; the forward pass then runs unhooked.
    """

    def __init__(self, model: nn.Module, model_type: str | None = None) -> None:
        from attnkit.attention import MultiHeadAttention

        self.model, self.model_type = model, model_type
        self.family = FAMILIES.get(model_type or "")
        self.attnkit = any(isinstance(m, MultiHeadAttention) for m in model.modules())
        self._mha = MultiHeadAttention
        self._handles: list[Any] = []
        self.records: dict[tuple[str, int], dict[str, Any]] = {}
        self.note = ""
        if not self.attnkit and self.family is None:
            self.note = f"neuron view supports: {SUPPORTED} (this model is {model_type or type(model).__name__!r})"

    @property
    def supported(self) -> bool:
        return not self.note

    # -- hooks -------------------------------------------------------------------------

    def _blocks(self, patterns: dict[str, str]) -> list[tuple[str, int, nn.Module]]:
        compiled = {kind: re.compile(r"(?:.*\.)?" + p) for kind, p in patterns.items()}
        found = []
        for name, module in self.model.named_modules():
            for kind, pattern in compiled.items():
                m = pattern.fullmatch(name)
                if m:
                    found.append((kind, int(m.group(1)), module))
        return found

    def __enter__(self) -> Capture:
        if not self.supported:
            return self
        if self.attnkit:
            for kind, layer, module in self._blocks(ATTNKIT_BLOCKS):
                if isinstance(module, self._mha):
                    self._hook_mha(kind, layer, module)
        else:
            for kind, layer, block in self._blocks(self.family.blocks):
                self._hook_hf(kind, layer, block)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook_hf(self, kind: str, layer: int, block: nn.Module) -> None:
        f = self.family
        rec = self.records.setdefault((kind, layer), {})
        q_mod = block.get_submodule(f.q)
        parent = block.get_submodule(f.q.rpartition(".")[0]) if "." in f.q else block
        rec["scaling"] = getattr(parent, "scaling", None)
        rec["out"] = _linear_weight(block.get_submodule(f.o)).cpu()

        def keep(*names: str):
            def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
                out = output.detach()[0].cpu()  # (T, width) of batch item 0
                parts = out.chunk(len(names), dim=-1) if len(names) > 1 else (out,)
                rec.update(zip(names, parts, strict=True))
            return hook

        if f.q == f.k == f.v:
            self._handles.append(q_mod.register_forward_hook(keep("q", "k", "v")))
        else:
            for name, sub in (("q", f.q), ("k", f.k), ("v", f.v)):
                self._handles.append(block.get_submodule(sub).register_forward_hook(keep(name)))
        if f.position_bias:
            def bias_hook(module: nn.Module, args: tuple, output: tuple) -> None:
                rec["bias"] = output[1].detach()[0].cpu()  # (H, Tq, Tk): the bias this layer added
            self._handles.append(block.register_forward_hook(bias_hook))

    def _hook_mha(self, kind: str, layer: int, mha: nn.Module) -> None:
        rec = self.records.setdefault((kind, layer), {})
        rec["scaling"] = mha.head_dim**-0.5
        rec["out"] = mha.out_proj.weight.detach().cpu()

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            query = args[0]
            key = args[1] if len(args) > 1 else kwargs.get("key")
            value = args[2] if len(args) > 2 else kwargs.get("value")
            self_attn = key is None
            key = query if key is None else key
            value = key if value is None else value
            with torch.no_grad():
                q = mha.q_proj(query[:1]).unflatten(-1, (mha.num_heads, -1)).transpose(1, 2)  # (1, H, L, d)
                k = mha.k_proj(key[:1]).unflatten(-1, (mha.kv_heads, -1)).transpose(1, 2)  # (1, Hkv, S, d)
                v = mha.v_proj(value[:1]).unflatten(-1, (mha.kv_heads, -1)).transpose(1, 2)
                rotary = getattr(mha, "rotary", None)
                if rotary is not None and self_attn:
                    q, k = rotary(q, 0), rotary(k, 0)
                group = mha.num_heads // mha.kv_heads  # query head h uses kv head h // group
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            rec.update(q=q[0].cpu(), k=k[0].cpu(), v=v[0].cpu(), split=True)

        self._handles.append(mha.register_forward_pre_hook(hook, with_kwargs=True))

    # -- results -----------------------------------------------------------------------

    def projections(self, weights: dict[str, Tensor]) -> dict[str, Projections]:
        """Assemble what was captured for each kind of ``weights`` (kind -> ``(L, H, Tq, Tk)``).

        A kind whose layers were not all captured is left out (and named in :attr:`note`).
        """
        out: dict[str, Projections] = {}
        missing = []
        for kind, w in weights.items():
            n_layers, n_heads = w.shape[:2]
            recs = [self.records.get((kind, layer), {}) for layer in range(n_layers)]
            if not all("q" in r and "k" in r and "v" in r for r in recs):
                missing.append(kind)
                continue
            q, k, v = ([r[n] if r.get("split") else _split_heads(r[n], n_heads) for r in recs] for n in "qkv")
            d = q[0].shape[-1]
            family_scaled = self.family.scaled if self.family is not None else True
            scale = [float(r["scaling"]) if r.get("scaling") is not None else (d**-0.5 if family_scaled else 1.0)
                     for r in recs]
            bias = torch.stack([r["bias"].expand(n_heads, -1, -1) for r in recs]) if "bias" in recs[0] else None
            if bias is not None and not bias.any():
                bias = None  # T5's cross-attention adds a bias of zeros
            out[kind] = Projections(
                q=torch.stack(q).float(), k=torch.stack(k).float(), v=torch.stack(v).float(),
                out_proj_weight=torch.stack([r["out"] for r in recs]).float(), scale=scale,
                bias=None if bias is None else bias.float(), causal=kind in CAUSAL_KINDS,
            )
        if missing and self.supported:
            self.note = f"could not capture the projections of the {', '.join(missing)} attention"
        return out
