"""Contextual embeddings: self-attention makes a word's vector depend on its sentence.

"flies" in *time flies like an arrow* (a verb) and *fruit flies like a banana* (a noun) is
the same token with the same input vector. We follow its vector through the layers of a
pretrained BERT (all-MiniLM-L6-v2): at the embedding layer the two occurrences are
identical (same token, same position), and every self-attention layer mixes in the
neighbours, so the two vectors drift apart and away from the static (input) embedding.

``similarity_table()`` prints the cosine similarities per layer as a rich table and draws
them as a line plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnkit.viz.notebook import enable_figures

FLIES_SENTENCES: tuple[str, str] = ("time flies like an arrow", "fruit flies like a banana")


@torch.inference_mode()
def hidden_states(encoder: Any, input_ids: torch.Tensor, key_mask: torch.Tensor | None = None
                  ) -> list[torch.Tensor]:
    """Every layer's output of a ``BertEncoder``, like Hugging Face's ``output_hidden_states``.

    ``input_ids (B, T)`` -> ``[embedding output, layer 1, ..., layer N]``, each ``(B, T, E)``
    (``key_mask (B, T)`` True = real token). The last entry equals ``encoder(input_ids)[0]``.
    """
    x = encoder.embeddings(input_ids)  # (B, T, E)
    states = [x]
    for layer in encoder.layers:
        x, _ = layer(x, key_mask=key_mask)  # (B, T, E)
        states.append(x)
    return states


def _find(haystack: Sequence[int], needle: Sequence[int]) -> int:
    for start in range(len(haystack) - len(needle) + 1):
        if list(haystack[start:start + len(needle)]) == list(needle):
            return start
    return -1


@dataclass
class ContextualSimilarity:
    """Cosine similarities of one word across layers (index 0 = the embedding layer).

    ``between[l]``: the word's vector in sentence A vs in sentence B at layer ``l``;
    ``to_static[s][l]``: the word's vector in sentence ``s`` at layer ``l`` vs its static
    (input word-piece) embedding. A word split into several word pieces is their mean.
    """

    word: str
    sentences: tuple[str, str]
    pieces: list[str]
    layers: list[str]
    between: list[float]
    to_static: tuple[list[float], list[float]]

    def _repr_html_(self) -> str:
        """In a notebook: the table and the line plot (:func:`attnkit.viz.notebook.similarity_html`)."""
        from attnkit.viz.notebook import figure_png, similarity_html

        return similarity_html(self, figure_png(plot_similarity(self)))

    def rows(self) -> list[tuple[str, float, float, float]]:
        return [(name, self.between[i], self.to_static[0][i], self.to_static[1][i])
                for i, name in enumerate(self.layers)]


def contextual_similarity(
    encoder: Any = None,
    word: str = "flies",
    sentences: Sequence[str] = FLIES_SENTENCES,
) -> ContextualSimilarity:
    """Compute :class:`ContextualSimilarity` with a ``SentenceEncoder`` (default: MiniLM).

    Raises:
        ValueError: not exactly two sentences, or the word (as word pieces) is missing from one.
    """
    if len(sentences) != 2:
        raise ValueError(f"need exactly two sentences to compare, got {len(sentences)}")
    if encoder is None:
        from attnkit.models.sentence_encoder import SentenceEncoder

        encoder = SentenceEncoder.from_pretrained()
    bert = encoder.encoder
    piece_ids = encoder.tokenizer.encode(word, add_special_tokens=False).ids
    pieces = encoder.tokenizer.encode(word, add_special_tokens=False).tokens
    if not piece_ids:
        raise ValueError(f"the word {word!r} has no word pieces")
    ids, tokens, _ = encoder.tokenize(list(sentences), with_tokens=True)
    vectors: list[list[torch.Tensor]] = []
    for sentence, row, toks in zip(sentences, ids, tokens, strict=True):
        start = _find(row, piece_ids)
        if start < 0:
            raise ValueError(f"{word!r} (word pieces {pieces}) is not in {sentence!r} (tokens {toks})")
        states = hidden_states(bert, torch.tensor([row]))  # N+1 x (1, T, E)
        vectors.append([h[0, start:start + len(piece_ids)].mean(0) for h in states])  # (E,) each
    static = bert.embeddings.word_embeddings.weight[piece_ids].mean(0).detach()  # (E,)

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a.float(), b.float(), dim=0))

    a, b = vectors
    names = ["embeddings"] + [f"layer {i}" for i in range(1, len(a))]
    return ContextualSimilarity(
        word=word,
        sentences=(sentences[0], sentences[1]),
        pieces=list(pieces),
        layers=names,
        between=[cos(x, y) for x, y in zip(a, b, strict=True)],
        to_static=([cos(x, static) for x in a], [cos(y, static) for y in b]),
    )


def similarity_table(
    encoder: Any = None,
    word: str = "flies",
    sentences: Sequence[str] = FLIES_SENTENCES,
    *,
    path: str | Path | None = None,
    console: Any = None,
    result: ContextualSimilarity | None = None,
) -> ContextualSimilarity:
    """Print the per-layer cosine similarities of ``word`` in two sentences as a rich table,
    draw them as a line plot at ``path`` (PNG/SVG) when given, and return them.

    Pass ``result`` to show an already computed :class:`ContextualSimilarity`.
    """
    from rich.console import Console
    from rich.table import Table

    res = result if result is not None else contextual_similarity(encoder, word, sentences)
    s1, s2 = res.sentences
    table = Table(title=f'"{res.word}" in context: cosine similarity per layer',
                  caption=f'A = "{s1}", B = "{s2}"; static = the input word-piece embedding')
    table.add_column("layer")
    table.add_column("A vs B", justify="right")
    table.add_column("A vs static", justify="right")
    table.add_column("B vs static", justify="right")
    for name, between, st1, st2 in res.rows():
        table.add_row(name, f"{between:.3f}", f"{st1:.3f}", f"{st2:.3f}")
    (console or Console()).print(table)
    if path is not None:
        plot_similarity(res, path)
    return res


def plot_similarity(res: ContextualSimilarity, path: str | Path | None = None) -> Any:
    """Line plot of a :class:`ContextualSimilarity` (cosine against layer), saved at ``path``
    (PNG/SVG) when given; returns the Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from attnkit.viz.fonts import fonts_for
    from attnkit.viz.heatmap import _font_context, save_figure

    s1, s2 = res.sentences
    # the fonts of the word and sentences' scripts (the labels are in the sentences' language)
    with _font_context(fonts_for([res.word, s1, s2, *res.layers])):
        x = list(range(len(res.layers)))
        fig = Figure(figsize=(7.5, 4.2), dpi=120, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(x, res.between, "o-", lw=2.2, label=f'"{res.word}": sentence 1 vs sentence 2')
        ax.plot(x, res.to_static[0], "s--", label=f'"{s1}" vs static embedding')
        ax.plot(x, res.to_static[1], "^--", label=f'"{s2}" vs static embedding')
        ax.set_xticks(x, res.layers, rotation=30)
        ax.set_ylabel("cosine similarity")
        ax.set_ylim(min(0.0, *res.between, *res.to_static[0], *res.to_static[1]) - 0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        ax.set_title(f'Self-attention makes "{res.word}" contextual')
        if path is not None:
            save_figure(fig, path)
    enable_figures()  # in a notebook, the returned figure shows itself
    return fig
