"""Token strings as a reader expects them, whatever the tokenizer's own markers.

Tokenizers mark word boundaries in three ways: byte-level BPE (GPT-2, RoBERTa, BART) spells a
space as ``Ġ`` and every byte as a printable stand-in (``Ã©`` is ``é``); SentencePiece (T5,
Marian) spells a space as ``▁``; WordPiece (BERT) marks a piece that continues a word with
``##``. :func:`readable_tokens` brings all three to one form: the token's own text, where a
leading space means "starts a word" and no leading space means "continues the previous one"
(``["[CLS]", " time", " fl", "ies", "[SEP]"]``). The explorer draws that leading space as a
faint ``·``. Special tokens (``[CLS]``, ``</s>``, ``<|endoftext|>``) are kept as they are.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from functools import cache
from typing import Any

SCHEMES = ("byte_level", "sentencepiece", "wordpiece", "plain")


@cache
def _byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet: printable stand-in character -> the byte it spells (GPT-2's
    ``bytes_to_unicode``: printable Latin-1 bytes are themselves, the others map to U+0100...)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = dict(zip(keep, keep, strict=True)), 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


def token_scheme(tokenizer: Any) -> str:
    """How ``tokenizer`` marks words: one of :data:`SCHEMES`, read from its decoder.

    Works for a Hugging Face fast tokenizer (``backend_tokenizer``) and a ``tokenizers.Tokenizer``;
    anything else (attnkit's character and BPE tokenizers, which give plain text) is ``"plain"``.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    to_str = getattr(backend, "to_str", None)
    if to_str is None:
        return "plain"
    decoder = json.dumps(json.loads(to_str()).get("decoder"))
    for marker, scheme in (('"ByteLevel"', "byte_level"), ('"Metaspace"', "sentencepiece"),
                           ('"WordPiece"', "wordpiece")):
        if marker in decoder:
            return scheme
    return "plain"


def readable_tokens(tokens: Sequence[str], scheme: str | None = None, *,
                    special: Collection[str] = ()) -> list[str]:
    """``tokens`` as text: a leading space where a word starts, markers gone (module docstring).

    Args:
        tokens: the tokenizer's strings (``convert_ids_to_tokens``).
        scheme: one of :data:`SCHEMES` (see :func:`token_scheme`); None guesses from the
            tokens (``Ġ`` -> byte level, ``▁`` -> SentencePiece, ``##`` -> WordPiece).
        special: tokens to keep as they are (``tokenizer.all_special_tokens``).

    A byte-level piece that is only part of a character (a split UTF-8 sequence) shows its bytes
    as ``\\xNN``.
    """
    tokens = [str(t) for t in tokens]
    if scheme is None:
        joined = "".join(tokens)
        scheme = ("byte_level" if "Ġ" in joined or "Ċ" in joined else "sentencepiece" if "▁" in joined
                  else "wordpiece" if any(t.startswith("##") for t in tokens) else "plain")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    special = set(special)
    decoder = _byte_decoder()
    out = []
    for tok in tokens:
        if tok in special or scheme == "plain":
            out.append(tok)
        elif scheme == "byte_level" and all(c in decoder for c in tok):
            out.append(bytes(decoder[c] for c in tok).decode("utf-8", errors="backslashreplace"))
        elif scheme == "sentencepiece":
            out.append(tok.replace("▁", " "))
        elif scheme == "wordpiece":
            out.append(tok[2:] if tok.startswith("##") and len(tok) > 2 else " " + tok)
        else:
            out.append(tok)
    return out
