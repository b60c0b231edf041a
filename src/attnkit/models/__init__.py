"""Complete models: seq2seq (RNN and Transformer, one ``generate``), checkpoints, pretrained."""

from attnkit.models.checkpoint import load, save_model
from attnkit.models.rnn_seq2seq import RNNSeq2Seq

__all__ = ["RNNSeq2Seq", "load", "save_model"]
