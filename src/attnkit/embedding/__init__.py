"""Embedding at scale as a library: a text file in, one sentence embedding per line out,
streamed in chunks, resumable after a kill, sharded over ``torchrun`` ranks.

- :func:`embed_file` — the whole job (``attnkit embed`` calls it);
- :mod:`.corpus` — scanning the input into chunks (line offsets, bad lines);
- :mod:`.job` — the work folder, its manifest and resume;
- :mod:`.writers` — each chunk's ``.npy``/``.jsonl`` rows and the final assembly;
- :mod:`.ranks` — ranks, threads and the heartbeat under ``torchrun``.
"""

from attnkit.embedding.file import (
    DEFAULT_CHUNK_LINES,
    EMBED_FORMATS,
    EmbedStopped,
    EmbedSummary,
    embed_chunk,
    embed_file,
)

__all__ = ["DEFAULT_CHUNK_LINES", "EMBED_FORMATS", "EmbedStopped", "EmbedSummary", "embed_chunk", "embed_file"]
