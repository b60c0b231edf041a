"""Data for attnkit's seq2seq models: tasks, tokenizers and batching.

One entry point for the CLI's ``--task`` values::

    from attnkit.data import load_task, collate, encode_pairs
    task = load_task("dates", n_train=100_000, n_test=2_000, seed=0)   # or "reverse", "copy",
    task.train, task.test        # list[Pair] (.source, .target)     # "tsv:PATH"
    tok = task.tokenizer         # CharVocab or BPETokenizer; pad=0, bos=1, eos=2, unk=3
    enc = encode_pairs(tok, task.train)           # once per dataset
    batch = collate(enc[:64])    # Batch(src, src_mask, tgt_in, tgt_out, tgt_mask), masks True = real
    tok.save(checkpoint_dir); load_tokenizer(checkpoint_dir)

Modules: :mod:`~attnkit.data.base` (Pair, Task, special ids), :mod:`~attnkit.data.tokenizers`
(CharVocab, BPE via ``tokenizers``, load), :mod:`~attnkit.data.batching` (padding, seq2seq
batches), :mod:`~attnkit.data.tsv` (a user's TSV corpus), :mod:`~attnkit.data.dates`
(multilingual CLDR dates, via babel), :mod:`~attnkit.data.synthetic` (reverse/copy).
Importing this package does not import babel or tokenizers; the task modules load them when used.
"""

from __future__ import annotations

from pathlib import Path

from attnkit.data.base import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Pair, Task, Tokenizer
from attnkit.data.batching import Batch, batch_encode, collate, encode_pairs, pad_ids
from attnkit.data.tokenizers import BPETokenizer, CharVocab, load_tokenizer

TASK_NAMES = ("dates", "reverse", "copy", "tsv:PATH")


def load_task(spec: str, *, n_train: int = 100_000, n_test: int = 2_000, seed: int = 0,
              tokenizer: str = "char", vocab_size: int = 4000, strict: bool = False,
              holdout: float = 0.1, **options: object) -> Task:
    """Build the task named by ``spec``: ``dates``, ``reverse``, ``copy`` or ``tsv:PATH``.

    ``n_train``/``n_test``/``seed`` apply to generated tasks. For ``tsv:PATH`` the test split
    is the file's last ``holdout`` fraction, ``tokenizer`` is ``"char"`` or ``"bpe"``
    (``vocab_size`` BPE entries, trained on the train split) and ``strict`` makes the first
    bad line an error. Other ``options`` go to the task's ``make_task`` (e.g. ``locales``,
    ``lengths``).
    """
    if spec == "dates":
        from attnkit.data import dates

        return dates.make_task(n_train, n_test, seed=seed, **options)  # type: ignore[arg-type]
    if spec in ("reverse", "copy"):
        from attnkit.data import synthetic

        return synthetic.make_task(spec, n_train, n_test, seed=seed, **options)  # type: ignore[arg-type]
    if spec.startswith("tsv:"):
        from attnkit.data import tsv

        return tsv.make_task(spec[4:], tokenizer=tokenizer, vocab_size=vocab_size, strict=strict,
                               holdout=holdout, **options)  # type: ignore[arg-type]
    raise ValueError(f"unknown task {spec!r}; expected one of {', '.join(TASK_NAMES)}")


def canonical_task(spec: str) -> str:
    """``spec`` with a ``tsv:PATH``'s path made absolute (symlinks resolved), so that one file
    named from two folders is one task; other specs unchanged. What a checkpoint records."""
    if spec.startswith("tsv:"):
        return f"tsv:{Path(spec[4:]).expanduser().resolve()}"
    return spec


__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "TASK_NAMES",
    "UNK_ID",
    "BPETokenizer",
    "Batch",
    "CharVocab",
    "Pair",
    "Task",
    "Tokenizer",
    "batch_encode",
    "canonical_task",
    "collate",
    "encode_pairs",
    "load_task",
    "load_tokenizer",
    "pad_ids",
]
