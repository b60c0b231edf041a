"""Seeing attention: alignment heatmaps, the HTML attention explorer, contextual embeddings.

- :func:`heatmap` — one attention matrix as a matplotlib figure (PNG/SVG).
- :func:`explorer` — a self-contained offline HTML page: head view and model view.
- :func:`similarity_table` — how a word's contextual vectors drift apart layer by layer.

Importing this package is light: matplotlib, rich and the pretrained model load on first use.
The functions are bound here eagerly (not lazily), because the submodules ``heatmap`` and
``explorer`` share their function's name and would otherwise shadow it once imported.
"""

from __future__ import annotations

from attnkit.viz.contextual import contextual_similarity, similarity_table
from attnkit.viz.explorer import explorer
from attnkit.viz.heatmap import heatmap

__all__ = ["contextual_similarity", "explorer", "heatmap", "similarity_table"]
