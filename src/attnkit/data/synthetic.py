"""Synthetic sequence tasks: ``reverse`` and ``copy`` of random token strings.

Each token is one character drawn uniformly from :data:`ALPHABET` (26 lowercase letters),
so the :class:`~attnkit.data.tokenizers.CharVocab` has 30 entries and a length-``L`` source is
``L`` encoder steps. Lengths are uniform in ``[min_len, max_len]`` (default 10..80, the
range of the Bahdanau et al. (2015) length experiment, see ``benchmarks/length.py``)::

    reverse:  "qwerty..."  ->  "...ytrewq"
    copy:     "qwerty..."  ->  "qwerty..."

Splits: a sequence belongs to the test split iff a fixed hash of it (CRC32) falls in 10%
of the range, so train and test never share a sequence, for every seed.
``generate("reverse", n, seed=s, split="train")`` is deterministic for ``s``.
"""

from __future__ import annotations

import itertools
import random
import string
import zlib

from attnkit.data.base import Pair, Task
from attnkit.data.tokenizers import CharVocab

ALPHABET = string.ascii_lowercase
TASKS = ("reverse", "copy")
LENGTHS = (10, 80)


def is_test_sequence(seq: str) -> bool:
    """True if ``seq`` belongs to the held-out split (the same for every seed)."""
    return zlib.crc32(seq.encode()) % 10 == 0


def _split_has_sequences(split: str, lengths: tuple[int, int], alphabet: str, limit: int = 100_000) -> bool:
    """False when no string of these lengths over ``alphabet`` falls in ``split`` (checked only
    when there are at most ``limit`` strings: a larger space always has some of each split)."""
    lo, hi = lengths
    k, total = len(alphabet), 0
    for n in range(lo, hi + 1):
        total += k**n
        if total > limit:
            return True
    want_test = split == "test"
    return any(is_test_sequence("".join(chars)) == want_test
               for n in range(lo, hi + 1) for chars in itertools.product(alphabet, repeat=n))


def _target(task: str, seq: str) -> str:
    return seq[::-1] if task == "reverse" else seq


def generate(task: str, n: int, *, seed: int = 0, split: str = "train",
             lengths: tuple[int, int] = LENGTHS, alphabet: str = ALPHABET) -> list[Pair]:
    """``n`` pairs of ``task`` ("reverse"/"copy") for ``split`` ("train"/"test")."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    lo, hi = lengths
    if not 1 <= lo <= hi:
        raise ValueError(f"lengths must be (min, max) with 1 <= min <= max, got {lengths}")
    if len(set(alphabet)) != len(alphabet) or len(alphabet) < 2:
        raise ValueError(f"alphabet must hold at least 2 distinct characters, got {alphabet!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n and not _split_has_sequences(split, lengths, alphabet):
        raise ValueError(f"no string of length {lo}..{hi} over {alphabet!r} falls in the {split} split "
                         "(a fixed 10% of them are held out): allow longer strings or a larger alphabet")
    rng = random.Random(f"attnkit.{task}:{seed}:{split}")
    want_test = split == "test"
    out: list[Pair] = []
    while len(out) < n:
        seq = "".join(rng.choices(alphabet, k=rng.randint(lo, hi)))
        if is_test_sequence(seq) == want_test:
            out.append(Pair(seq, _target(task, seq)))
    return out


def make_task(task: str, n_train: int = 100_000, n_test: int = 2_000, *, seed: int = 0,
              lengths: tuple[int, int] = LENGTHS, alphabet: str = ALPHABET) -> Task:
    """Train/test pairs of ``task`` and a character vocabulary over ``alphabet``."""
    train = generate(task, n_train, seed=seed, split="train", lengths=lengths, alphabet=alphabet)
    test = generate(task, n_test, seed=seed, split="test", lengths=lengths, alphabet=alphabet)
    vocab = CharVocab.build([alphabet], tags=False)
    info = {"lengths": list(lengths), "alphabet": alphabet, "seed": seed}
    return Task(task, train, test, vocab, info)
