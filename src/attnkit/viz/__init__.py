"""Seeing attention: alignment heatmaps, the HTML attention explorer, contextual embeddings.

- :func:`explore` — the one verb to compute: any model (a Hugging Face folder, an attnkit
  checkpoint, a sentence-transformers BERT) on a text: one offline page with the encoder /
  decoder / cross attention, rollout and value-norm views, the neuron view and SVG/PNG export;
  returns an :class:`Exploration`, whose ``save(path, svg=DIR, png=DIR)`` writes the page and
  the head and model views as SVG/PNG files (without a browser).
- :func:`rollout`, :func:`value_norm_attention` — attention rollout (Abnar & Zuidema 2020) and
  value-norm-weighted attention (Kobayashi et al. 2020).
- :func:`heatmap` — one attention matrix as a matplotlib figure (PNG/SVG).
- :func:`explorer` — the low-level page writer, for given tokens and weights: head view and model view.
- :func:`similarity_table` — how a word's contextual vectors drift apart layer by layer.

Importing this package is light: matplotlib, rich, transformers and the pretrained model load on
first use. The functions are bound here eagerly (not lazily), because the submodules ``heatmap``
and ``explorer`` share their function's name and would otherwise shadow it once imported.
"""

from __future__ import annotations

from attnkit.viz.any_model import Exploration, explore
from attnkit.viz.contextual import contextual_similarity, similarity_table
from attnkit.viz.explorer import explorer
from attnkit.viz.heatmap import heatmap
from attnkit.viz.tokens import readable_tokens
from attnkit.viz.views import rollout, value_norm_attention

__all__ = [
    "Exploration",
    "contextual_similarity",
    "explore",
    "explorer",
    "heatmap",
    "readable_tokens",
    "rollout",
    "similarity_table",
    "value_norm_attention",
]
