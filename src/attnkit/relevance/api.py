"""``attnkit.explain``: which input tokens made each output, by one of seven methods.

``explain(model_or_folder, text, *, target=None, query=None, method="attnlrp")`` returns an
:class:`Explanation` with ``relevance (T_out, T_in)``: row ``i`` explains output token ``i`` (the
target's ``i``-th token, EOS last) or the one scalar output; columns are the input tokens,
special tokens included. Methods (:data:`METHODS`):

- ``"attnlrp"``: AttnLRP (Achtibat et al., ICML 2024), gradient × input under the rules of
  :mod:`.rules`, read at the input token embeddings (summed over the embedding dimension);
- ``"input_x_gradient"``: plain gradient × input at the same place;
- ``"integrated_gradients"``: Sundararajan et al. 2017, zero baseline, ``steps`` midpoints;
- ``"grad_rollout"``: Chefer et al. 2021 (:func:`.graphs.chefer`);
- ``"rollout"``, ``"flow"``: Abnar & Zuidema 2020 (:func:`.graphs.rollout`, :func:`.graphs.flow`);
- ``"attention"``: the last layer's attention, mean over heads (the cross-attention of an
  encoder-decoder; the explained positions' rows of a self-attention model).

Signed methods (the three gradient ones and AttnLRP) keep their sign: negative relevance spoke
against the output. A map is never NaN; an all-zero row is reported by :attr:`Explanation.zero_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from attnkit.relevance import graphs
from attnkit.relevance.subjects import Pass, Subject, subject

METHODS = ("attnlrp", "grad_rollout", "flow", "rollout", "attention", "input_x_gradient", "integrated_gradients")
ATTENTION_METHODS = ("grad_rollout", "flow", "rollout", "attention")
SIGNED = ("attnlrp", "input_x_gradient", "integrated_gradients")


@dataclass
class Explanation:
    """What :func:`explain` found.

    ``tokens``: the input's tokens (the model's own, specials included); ``target_tokens``: the
    explained outputs (the target's tokens, EOS last; a classifier's label; None for a
    similarity); ``relevance (T_out, T_in)`` float32; ``method``; ``outputs (T_out,)`` the
    explained scalars (logits, a cosine); ``conservation (T_out,)`` for AttnLRP and the gradient
    methods: the sum of the relevance over every embedding the model read (input, and a
    decoder's own previous tokens) divided by the output.
    """

    tokens: list[str]
    target_tokens: list[str] | None
    relevance: Tensor
    method: str
    model_type: str = ""
    outputs: Tensor | None = None
    conservation: Tensor | None = None
    query: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: How the model reads the input (:data:`~attnkit.relevance.subjects.LAYOUTS`): ``"seq2seq"``,
    #: ``"decoder"`` (decoder-only) or ``"encoder"`` (a classifier, a sentence encoder).
    layout: str = ""
    #: What :func:`explain` ran: ``(model_or_folder, text, target, tokenizer, max_new_tokens)`` (``text``
    #: as the model read it: cut where it did not fit), for the inline view and the page.
    source: tuple[Any, str, str | None, Any, int] | None = field(default=None, repr=False, compare=False)
    #: The inline view, rendered on first display (it runs the model again: explore()).
    _view: str | None = field(default=None, init=False, repr=False, compare=False)

    def _repr_html_(self) -> str | None:
        """In a notebook: the explanation page inline (the relevance view above the attention
        explorer of the same input; :mod:`attnkit.viz.notebook`), rendered once and kept: a
        notebook asks again on every redisplay. None (plain repr) for an explanation made
        without a model to show it with (:func:`explain_subject`)."""
        if self.source is None:
            return None
        if self._view is None:
            from attnkit.relevance.page import explanation_html

            self._view = explanation_html({self.method: self}, *self.source)
        return self._view

    @property
    def signed(self) -> bool:
        """Whether negative relevance is meaningful (:data:`SIGNED` methods)."""
        return self.method in SIGNED

    @property
    def zero_rows(self) -> list[int]:
        """Rows whose relevance is all zero (drawn and labelled as such)."""
        return [i for i, row in enumerate(self.relevance) if not bool(row.abs().gt(0).any())]


def explain(
    model_or_folder: Any,
    text: str,
    *,
    target: str | None = None,
    query: str | None = None,
    method: str = "attnlrp",
    tokenizer: Any = None,
    steps: int = 32,
    max_new_tokens: int = 32,
) -> Explanation:
    """Relevance of the input tokens of ``text`` for each output of the model (see the module).

    Args:
        model_or_folder: what :func:`attnkit.viz.explore` takes (a folder, a loaded Hugging Face
            model, an attnkit seq2seq model with ``tokenizer``, a ``SentenceEncoder``).
        text: the input (a decoder-only model's prompt; the document for ``query``).
        target: the output to explain (an encoder-decoder's or decoder's text, a classifier's
            label); None explains the greedy output (at most ``max_new_tokens`` tokens).
        query: for a sentence encoder: explain the cosine similarity of ``text`` to ``query``.
        method: one of :data:`METHODS`.
        steps: integrated gradients' number of steps.

    Raises:
        ValueError: empty text, an unknown method, a method the model cannot support (an
            attention method on a model without attention), a target the tokenizer cannot
            encode, a query for a model that is not an encoder (one line each).
        FileNotFoundError: a folder that does not exist or holds no model.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if target is not None and (not isinstance(target, str) or not target.strip()):
        raise ValueError(f"target must be a non-empty string or None, got {target!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    subj = subject(model_or_folder, text, target=target, query=query, tokenizer=tokenizer,
                   max_new_tokens=max_new_tokens)
    result = explain_subject(subj, method, steps=steps, query=query)
    result.source = (model_or_folder, subj.text or text, target, tokenizer, max_new_tokens)
    return result


def explain_subject(subj: Subject, method: str, *, steps: int = 32, query: str | None = None) -> Explanation:
    """:func:`explain` for a prepared :class:`Subject` (benchmarks reuse one subject per method)."""
    if method in ATTENTION_METHODS and not subj.has_attention:
        raise ValueError(f"method {method!r} needs attention weights, and this {subj.model_type} model has none "
                         f"(attention='none'); use attnlrp, input_x_gradient or integrated_gradients")
    conservation = None
    if method in SIGNED:
        relevance, outputs, conservation = _gradient_method(subj, method, steps)
    else:
        relevance, outputs = _attention_method(subj, method)
    relevance = torch.nan_to_num(relevance.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    return Explanation(tokens=subj.tokens, target_tokens=subj.target_tokens, relevance=relevance, method=method,
                       model_type=subj.model_type, layout=subj.layout, outputs=outputs.detach().float(),
                       conservation=None if conservation is None else conservation.float(), query=query)


def _token_relevance(leaf: Tensor, grad: Tensor | None) -> Tensor:
    """Relevance of each token: ``(leaf * grad).sum(-1)`` -> ``(T,)`` float64."""
    if grad is None:
        return torch.zeros(leaf.shape[0], dtype=torch.float64)
    return (leaf.double() * grad.double()).sum(-1)


def _gradient_method(subj: Subject, method: str, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """AttnLRP / input × gradient / integrated gradients -> ``(relevance, outputs, conservation)``."""
    n = subj.n_inputs
    if method == "integrated_gradients":
        base, zero = subj.run(), subj.run(alpha=0.0)
        x = base.leaves[0].detach()
        total = torch.zeros(base.outputs.shape[0], *x.shape, dtype=torch.float64)  # (T_out, T, E)
        for s in range(steps):
            p = subj.run(alpha=(s + 0.5) / steps)
            total += torch.stack([_dense(row[0], x) for row in _grads(p, leaves=[0])])
        rel = (x.double() * total / steps).sum(-1)  # (T_out, T)
        outputs = base.outputs.detach().double()
        conservation = rel.sum(-1) / _safe(outputs - zero.outputs.detach().double())  # completeness
        return rel[:, :n], outputs, conservation
    p = subj.run(lrp=method == "attnlrp")
    grads = _grads(p, leaves=range(len(p.leaves)))
    rel = torch.stack([_token_relevance(p.leaves[0], row[0]) for row in grads])  # (T_out, T)
    everything = torch.stack([sum(_token_relevance(leaf, g).sum() for leaf, g in zip(p.leaves, row, strict=True))
                              for row in grads])
    outputs = p.outputs.detach().double()
    return rel[:, :n], outputs, everything / _safe(outputs)


def _dense(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like, dtype=torch.float64) if g is None else g.double()


def _safe(x: Tensor) -> Tensor:
    return torch.where(x.abs() > 1e-12, x, torch.full_like(x, 1e-12))


def _grads(p: Pass, leaves) -> list[list[Tensor | None]]:
    """For each output ``i``: the gradients of ``outputs[i]`` w.r.t. the chosen leaves."""
    return _per_output(p.outputs, [p.leaves[i] for i in leaves])


def _per_output(outputs: Tensor, inputs: list[Tensor]) -> list[list[Tensor | None]]:
    """``[[d outputs[i] / d x for x in inputs] for i]``: one vmapped backward pass over the rows of
    an identity (``is_grads_batched``), or one pass per output where vmap cannot run the graph."""
    n = outputs.shape[0]
    try:
        batched = torch.autograd.grad(outputs, inputs, grad_outputs=torch.eye(n, dtype=outputs.dtype),
                                      retain_graph=True, allow_unused=True, is_grads_batched=True)
        return [[None if g is None else g[i] for g in batched] for i in range(n)]
    except RuntimeError:
        return [list(torch.autograd.grad(outputs[i], inputs, retain_graph=True, allow_unused=True))
                for i in range(n)]


def _attention_method(subj: Subject, method: str) -> tuple[Tensor, Tensor]:
    """The attention-graph methods -> ``(relevance (T_out, T_in), outputs)``."""
    p = subj.run(need_weights=True)
    maps = {k: [_heads(w.detach()[0]) for w in v] for k, v in p.weights.items()}  # (H, Tq, Tk)
    if not maps:
        raise ValueError(f"method {method!r} needs attention weights, and the {subj.model_type} model reported none")
    n = subj.n_inputs
    if method == "grad_rollout":
        rows = []
        all_grads = _weight_grads(p, maps)
        for o in range(p.outputs.shape[0]):
            grads = all_grads[o]
            full = graphs.chefer(maps, grads, subj.layout)
            rows.append(_pick(subj, full, o))
        return torch.stack(rows)[:, :n], p.outputs
    mean = {k: [w.double().mean(0) for w in v] for k, v in maps.items()}  # (Tq, Tk) per layer
    if method == "flow":
        if subj.layout == "encoder":
            return graphs.flow(mean, subj.layout, [], readout=subj.readout)[:, :n], p.outputs
        rows = subj.rows if subj.layout == "decoder" else list(range(p.outputs.shape[0]))
        return graphs.flow(mean, subj.layout, rows)[:, :n], p.outputs
    if method == "rollout":
        full = graphs.rollout(mean, subj.layout)
    else:  # attention: the last layer
        kind = "cross" if subj.layout == "seq2seq" else ("encoder" if "encoder" in mean else "decoder")
        full = mean[kind][-1]
    return torch.stack([_pick(subj, full, o) for o in range(p.outputs.shape[0])])[:, :n], p.outputs


def _weight_grads(p: Pass, maps: dict[str, list[Tensor]]) -> list[dict[str, list[Tensor]]]:
    """For each output: its gradient w.r.t. every attention map, kind -> per-layer ``(H, Tq, Tk)``.

    Raises:
        ValueError: a map that no output depends on (no gradient for any output: the weights the
            model returned are not the ones its output was computed from).
    """
    if p.steps is not None:  # the RNN: one cross map made of T step tensors (1, S)
        grads = _checked_grads(p.outputs, p.steps, [f"cross step {t}" for t in range(len(p.steps))])
        return [{"cross": [torch.stack([gi[0] for gi in row])[None].detach()]} for row in grads]
    names = [(k, i) for k, v in p.weights.items() for i in range(len(v))]
    grads = _checked_grads(p.outputs, [p.weights[k][i] for k, i in names], [f"{k} layer {i}" for k, i in names])
    out = []
    for row in grads:
        per_kind: dict[str, list[Tensor]] = {k: [] for k in maps}
        for (k, _), gi in zip(names, row, strict=True):
            per_kind[k].append(_heads(gi.detach()[0]))
        out.append(per_kind)
    return out


def _checked_grads(outputs: Tensor, weights: list[Tensor], names: list[str]) -> list[list[Tensor]]:
    """``[[d outputs[i] / d w for w in weights] for i]`` with every gradient a tensor: an output
    that does not reach a map (a later RNN step) gets zeros; a map that no output reaches raises
    ValueError naming it."""
    lost = [n for n, w in zip(names, weights, strict=True) if not w.requires_grad]
    grads = _per_output(outputs, weights) if not lost else []
    lost += [n for j, n in enumerate(names) if grads and all(row[j] is None for row in grads)]
    if lost:
        raise ValueError(f"grad_rollout: the output does not depend on the attention weights the model returned "
                         f"({', '.join(lost)}); the model reports weights other than the ones it computed with")
    return [[torch.zeros_like(w) if g is None else g for w, g in zip(weights, row, strict=True)] for row in grads]


def _heads(w: Tensor) -> Tensor:
    """``(H, Tq, Tk)``; a single-head map ``(Tq, Tk)`` (the RNN's) gets its head dim."""
    return w[None] if w.dim() == 2 else w


def _pick(subj: Subject, full: Tensor, o: int) -> Tensor:
    """Row ``o`` of the explained outputs from a token-to-token matrix."""
    if subj.layout == "encoder":
        return subj.readout.to(full.dtype) @ full
    if subj.layout == "decoder":
        return full[subj.rows[o]]
    return full[o]

