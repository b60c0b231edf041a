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

__version__ = "0.1.0"

__all__ = [
    "AdditiveAttention",
    "AttentionHead",
    "DotAttention",
    "GeneralAttention",
    "KVCache",
    "MultiHeadAttention",
    "causal_mask",
    "padding_mask",
    "scaled_dot_product_attention",
]
