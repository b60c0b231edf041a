"""The explanation page: the attention explorer with a relevance view on top.

:func:`relevance_data` turns explanations (:class:`~attnkit.relevance.api.Explanation`, one per
method, same text and outputs) into the view's data; :func:`write_page` runs :func:`attnkit.viz.explore` on the same input (for the
attention views, :func:`explore_explained`) and writes one offline page holding both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

NOTES = {
    "attnlrp": "AttnLRP (Achtibat et al. 2024): relevance through softmax, q\u00b7k, attention\u00b7v and norms",
    "grad_rollout": "gradient-weighted attention rollout (Chefer et al. 2021)",
    "flow": "attention flow (Abnar & Zuidema 2020): max-flow through the layers",
    "rollout": "attention rollout (Abnar & Zuidema 2020)",
    "attention": "last layer's attention, mean over heads",
    "input_x_gradient": "gradient \u00d7 input at the token embeddings",
    "integrated_gradients": "integrated gradients (zero baseline)",
}


@runtime_checkable
class Explained(Protocol):
    """What this page reads of an explanation: :class:`~attnkit.relevance.api.Explanation` has
    it (not imported here: api imports this module for the inline view, and a cycle is refused)."""

    @property
    def tokens(self) -> list[str]: ...
    @property
    def target_tokens(self) -> list[str] | None: ...
    @property
    def relevance(self) -> Tensor: ...  # (T_out, T_in)
    @property
    def query(self) -> str | None: ...
    @property
    def signed(self) -> bool: ...
    @property
    def zero_rows(self) -> list[int]: ...
    @property
    def layout(self) -> str: ...  # "seq2seq", "decoder" or "encoder"


def relevance_data(explanations: Mapping[str, Explained]) -> dict[str, Any]:
    """The relevance view's data: tokens, output tokens and each method's ``(T_out, T_in)`` map."""
    if not explanations:
        raise ValueError("relevance_data needs at least one explanation")
    first = next(iter(explanations.values()))
    methods = {}
    for name, e in explanations.items():
        if e.relevance.shape[1] != len(first.tokens) or e.relevance.shape[0] != first.relevance.shape[0]:
            raise ValueError(f"the {name} explanation is {tuple(e.relevance.shape)}, the first "
                             f"{tuple(first.relevance.shape)}: explanations of one page share their tokens")
        methods[name] = {
            "values": [[float(f"{v:.4g}") for v in row] for row in e.relevance.tolist()],
            "zeroRows": e.zero_rows, "signed": e.signed, "note": NOTES.get(name, ""),
        }
    return {"tokens": first.tokens, "targets": first.target_tokens, "query": first.query,
            "methods": methods, "order": list(explanations)}


def explore_explained(explanations: Mapping[str, Explained], source: Any, text: str, target: str | None = None,
                      tokenizer: Any = None, max_new_tokens: int = 32) -> Any:
    """:func:`attnkit.viz.explore` of what ``explanations`` explained (no page written): an
    encoder-decoder decodes ``target`` (or its greedy output, at most ``max_new_tokens`` tokens, as
    :func:`~attnkit.relevance.explain` did); a decoder-only model and a classifier show their
    attention over the input tokens, the relevance map's columns (their ``target`` is an output
    that explore() does not run). ``text`` is read from the first explanation's ``source`` where it
    has one (the input as the model read it: cut where it did not fit). Returns the
    :class:`~attnkit.viz.Exploration`."""
    from attnkit.viz import explore

    if not explanations:
        raise ValueError("explore_explained needs at least one explanation")
    first = next(iter(explanations.values()))
    ran = getattr(first, "source", None)
    text = ran[1] if ran is not None else text
    if first.layout in ("decoder", "encoder"):
        target = None
    return explore(source, text, target=target, path=None, tokenizer=tokenizer, max_new_tokens=max_new_tokens)


def write_page(explanations: Mapping[str, Explained], path: str | os.PathLike, *, source: Any, text: str,
               target: str | None = None, title: str | None = None, tokenizer: Any = None,
               max_new_tokens: int = 32) -> Path:
    """One offline page: the relevance view of ``explanations`` above the attention explorer of
    ``source`` on ``text`` (:func:`explore_explained`: ``target`` and ``max_new_tokens`` as given to
    :func:`~attnkit.relevance.explain`; ``tokenizer`` for a loaded model). Returns the page's path."""
    from attnkit.viz.any_model import _write_page

    att = explore_explained(explanations, source, text, target, tokenizer, max_new_tokens)
    att.path = _write_page(att, path, title=title or _title(source, text), relevance=relevance_data(explanations))
    return att.path


def explanation_html(explanations: Mapping[str, Explained], source: Any, text: str, target: str | None = None,
                     tokenizer: Any = None, max_new_tokens: int = 32) -> str:
    """The page of :func:`write_page` as one inline notebook view (isolated, offline), within
    :data:`attnkit.viz.notebook.INLINE_MAX_BYTES` as the explorer's inline view is."""
    from attnkit.viz.any_model import MAX_PAGE_BYTES, _explorer_data
    from attnkit.viz.explorer import _render_page
    from attnkit.viz.notebook import exploration_html

    att = explore_explained(explanations, source, text, target, tokenizer, max_new_tokens)
    relevance = relevance_data(explanations)

    def render(neuron: bool | None, max_bytes: int) -> str:
        data = _explorer_data(att, title=_title(source, text), neuron=neuron, max_bytes=max_bytes)
        return _render_page({**data, "relevance": relevance})

    return exploration_html(None, render, MAX_PAGE_BYTES)


def _title(source: Any, text: str) -> str:
    name = Path(str(source)).name if isinstance(source, (str, os.PathLike)) else type(source).__name__
    return f"{name}: {text}"
