"""Complete models: seq2seq (Transformer and RNN, one ``generate``), their loss, checkpoints,
and the pretrained BERT encoder behind sentence embeddings."""

from attnkit.models.checkpoint import load, save_model
from attnkit.models.generation import Generation, beam_search, generate, greedy_search, output_ids
from attnkit.models.losses import label_smoothed_cross_entropy
from attnkit.models.rnn_seq2seq import RNNSeq2Seq
from attnkit.models.transformer_seq2seq import Recompute, TransformerSeq2Seq

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
    "output_ids",
    "save_model",
]
