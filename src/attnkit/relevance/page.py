"""The explanation page: the attention explorer with a relevance view on top.

:func:`relevance_data` turns explanations (one per method, same text and outputs) into the
view's data; :func:`write_page` runs :func:`attnkit.viz.explore` on the same input (for the
attention views) and writes one offline page holding both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnkit.relevance.api import SIGNED, Explanation

NOTES = {
    "attnlrp": "AttnLRP (Achtibat et al. 2024): relevance through softmax, q\u00b7k, attention\u00b7v and norms",
    "grad_rollout": "gradient-weighted attention rollout (Chefer et al. 2021)",
    "flow": "attention flow (Abnar & Zuidema 2020): max-flow through the layers",
    "rollout": "attention rollout (Abnar & Zuidema 2020)",
    "attention": "last layer's attention, mean over heads",
    "input_x_gradient": "gradient \u00d7 input at the token embeddings",
    "integrated_gradients": "integrated gradients (zero baseline)",
}


def relevance_data(explanations: Mapping[str, Explanation]) -> dict[str, Any]:
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
            "zeroRows": e.zero_rows, "signed": name in SIGNED, "note": NOTES.get(name, ""),
        }
    return {"tokens": first.tokens, "targets": first.target_tokens, "query": first.query,
            "methods": methods, "order": list(explanations)}


def write_page(explanations: Mapping[str, Explanation], path: str | os.PathLike, *, source: Any, text: str,
               target: str | None = None, title: str | None = None, tokenizer: Any = None) -> Path:
    """One offline page: the relevance view of ``explanations`` above the attention explorer of
    ``source`` on ``text`` (``target`` for an encoder-decoder; ``tokenizer`` for a loaded attnkit
    model). Returns the page's path."""
    from attnkit.viz import explore
    from attnkit.viz.any_model import _write_page

    att = explore(source, text, target=target, path=None, tokenizer=tokenizer)
    name = Path(str(source)).name if isinstance(source, (str, os.PathLike)) else type(source).__name__
    att.path = _write_page(att, path, title=title or f"{name}: {text}", relevance=relevance_data(explanations))
    return att.path
