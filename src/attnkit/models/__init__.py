"""Complete models: seq2seq (RNN and Transformer, one ``generate``), checkpoints, pretrained."""

from attnkit.models.checkpoint import load, save_model
from attnkit.models.rnn_seq2seq import RNNSeq2Seq
from attnkit.models.seq2seq import (
    Generation,
    Recompute,
    TransformerSeq2Seq,
    beam_search,
    generate,
    greedy_search,
    label_smoothed_cross_entropy,
)

__all__ = [
    "Generation",
    "RNNSeq2Seq",
    "Recompute",
    "TransformerSeq2Seq",
    "beam_search",
    "generate",
    "greedy_search",
    "label_smoothed_cross_entropy",
    "load",
    "save_model",
]
