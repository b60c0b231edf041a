"""Seeing attention: alignment heatmaps, the HTML attention explorer, contextual embeddings.

Imports are lazy (matplotlib and rich load on first use), so ``import attnkit.viz`` is cheap.

- :func:`heatmap` — one attention matrix as a matplotlib figure (PNG/SVG).
- :func:`explorer` — a self-contained offline HTML page: head view and model view.
- :func:`similarity_table` — how a word's contextual vectors drift apart layer by layer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["contextual_similarity", "explorer", "heatmap", "similarity_table"]

_WHERE = {
    "heatmap": "attnkit.viz.heatmap",
    "explorer": "attnkit.viz.explorer",
    "similarity_table": "attnkit.viz.contextual",
    "contextual_similarity": "attnkit.viz.contextual",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'attnkit.viz' has no attribute {name!r}")
