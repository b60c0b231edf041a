"""attnkit: attention you can trust, run fast, train and see.

Scaled dot-product and multi-head attention, the RNN encoder-decoder attention that learns
alignments, and the Transformer built from them, checked against PyTorch and Hugging Face.
Mask convention: a boolean mask is True where attention is allowed.
"""

from attnkit.attention import (
    AdditiveAttention,
    AttentionHead,
    DotAttention,
    GeneralAttention,
    KVCache,
    MultiHeadAttention,
)
from attnkit.functional import causal_mask, padding_mask, scaled_dot_product_attention
from attnkit.hf.sentence import HFSentenceEncoder
from attnkit.models.bert import BertConfig, BertEncoder
from attnkit.models.checkpoint import load, save_model
from attnkit.models.generation import generate
from attnkit.models.losses import label_smoothed_cross_entropy
from attnkit.models.rnn_seq2seq import RNNSeq2Seq
from attnkit.models.sentence_encoder import FOLDER_LOADERS, SentenceEncoder
from attnkit.models.transformer_seq2seq import TransformerConfig, TransformerSeq2Seq
from attnkit.rnn import AttentionDecoder, RNNConfig, RNNEncoder
from attnkit.transformer import (
    Decoder,
    DecoderLayer,
    Embeddings,
    Encoder,
    EncoderLayer,
    FeedForward,
    LayerSettings,
)

__version__ = "0.1.0"

# SentenceEncoder.from_pretrained loads the folders of every family but BERT through attnkit.hf, a
# layer above models/ that models/ may not import: the package, imported before any of its
# modules, hands the loader down (see attnkit.models.sentence_encoder). transformers itself is
# imported only when such a folder is loaded.
FOLDER_LOADERS["transformers"] = HFSentenceEncoder.from_pretrained


def __getattr__(name: str):
    """``attnkit.explain`` / ``attnkit.Explanation`` load :mod:`attnkit.relevance` on first use."""
    if name in ("explain", "Explanation"):
        from attnkit import relevance

        return getattr(relevance, name)
    raise AttributeError(f"module 'attnkit' has no attribute {name!r}")


__all__ = [
    "AdditiveAttention",
    "AttentionDecoder",
    "AttentionHead",
    "BertConfig",
    "BertEncoder",
    "Decoder",
    "DecoderLayer",
    "DotAttention",
    "Embeddings",
    "Encoder",
    "EncoderLayer",
    "Explanation",
    "FeedForward",
    "GeneralAttention",
    "KVCache",
    "LayerSettings",
    "MultiHeadAttention",
    "RNNConfig",
    "RNNEncoder",
    "RNNSeq2Seq",
    "SentenceEncoder",
    "TransformerConfig",
    "TransformerSeq2Seq",
    "causal_mask",
    "explain",
    "generate",
    "label_smoothed_cross_entropy",
    "load",
    "padding_mask",
    "save_model",
    "scaled_dot_product_attention",
]
