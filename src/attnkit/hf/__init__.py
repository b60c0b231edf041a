"""attnkit's attention inside Hugging Face models: ``attn_implementation="attnkit"``.

- :mod:`attnkit.hf.attention`: :func:`register` (the attention and mask functions transformers
  calls), :func:`check`, and the packed (padding-free) format, :func:`pack` / :func:`unpack`;
- :mod:`attnkit.hf.sentence`: :class:`HFSentenceEncoder`, sentence embeddings of any
  sentence-transformers folder whose transformer is a family with the interface (XLM-R,
  RoBERTa, ModernBERT, ...), on packed rows.

``transformers`` is imported only when one of these is called (``pip install 'attnkit[hf]'``).
"""

from attnkit.hf.attention import (
    NAME,
    attention_forward,
    attention_mask,
    check,
    pack,
    register,
    unpack,
)
from attnkit.hf.sentence import HFSentenceEncoder

__all__ = ["NAME", "register", "check", "pack", "unpack", "attention_forward", "attention_mask", "HFSentenceEncoder"]
