"""Sentence embeddings: attnkit's packed SentenceEncoder vs sentence-transformers and a
naively padded transformers.BertModel, on real text, in one process, CPU fp32.

Corpus: the first paragraph of every public docstring (module, public functions and classes,
their public methods) of 50 standard-library modules, about 900 English texts, built here.

Rows:
- texts/s of ``SentenceEncoder.embed(batch_size=32)`` vs ``SentenceTransformer.encode(batch_size=32)``
  (target 1.7x);
- texts/s vs ``transformers.BertModel`` on batches of 256 texts in corpus order, each padded
  to its longest text, plus mean pooling (target 8x);
- achieved GFLOP/s over the real tokens (2 x non-embedding parameters x real tokens) of both
  sentence encoders, against a 2048x2048 fp32 matmul timed in the same rounds (the roofline:
  the median over rounds of 4 back-to-back matmuls into one output; goal 75%).

Run: ``python benchmarks/embedding.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

BENCH = "embedding"
MODULES = """abc argparse base64 calendar collections contextlib copy csv dataclasses datetime
difflib email enum fractions functools gettext glob gzip hashlib heapq hmac html io ipaddress
itertools json math operator os pathlib pickle pprint queue random re shlex shutil statistics
string subprocess tempfile textwrap threading time typing uuid warnings weakref zipfile zlib""".split()


def _first_paragraph(doc: str) -> str:
    par = re.split(r"\n\s*\n", inspect.cleandoc(doc).strip(), maxsplit=1)[0]
    return " ".join(par.split())


def docstring_corpus(modules: list[str] = MODULES) -> list[str]:
    """First paragraph of every public docstring of ``modules`` (deduplicated, in a fixed order)."""
    texts: list[str] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            module = importlib.import_module(name)
            objects: list[object] = [module]
            for attr, obj in sorted(vars(module).items()):
                if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                    continue
                if inspect.isclass(obj) or inspect.isroutine(obj):
                    objects.append(obj)
                if inspect.isclass(obj):
                    objects += [m for n, m in sorted(vars(obj).items()) if not n.startswith("_") and inspect.isroutine(m)]
            for obj in objects:
                doc = getattr(obj, "__doc__", None)
                text = _first_paragraph(doc) if isinstance(doc, str) else ""
                if text and text not in seen:
                    seen.add(text)
                    texts.append(text)
    return texts


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    from attnkit.models.sentence_encoder import SentenceEncoder, resolve_model_folder

    folder = resolve_model_folder("all-MiniLM-L6-v2")
    texts = docstring_corpus()
    if args.quick:
        texts = texts[::8]  # every 8th text: the same mix of lengths
    ours = SentenceEncoder.from_pretrained(folder)
    st = SentenceTransformer(str(folder), device="cpu")
    hf = BertModel.from_pretrained(str(folder), attn_implementation="sdpa").eval()
    hf_tok = st.tokenizer

    ids, _, _ = ours.tokenize(texts)
    real_tokens = sum(len(r) for r in ids)
    flops = 2.0 * ours.encoder.non_embedding_parameters() * real_tokens
    print(f"corpus: {len(texts)} texts from {len(MODULES)} modules, {real_tokens} real tokens "
          f"(mean {real_tokens / len(texts):.1f}, max {max(len(r) for r in ids)})", flush=True)

    @torch.inference_mode()
    def naive_hf(batch: int = 256, texts: list[str] = texts) -> None:
        for i in range(0, len(texts), batch):
            enc = hf_tok(texts[i : i + batch], padding=True, truncation=True, max_length=ours.max_seq_length,
                         return_tensors="pt")
            h = hf(**enc).last_hidden_state  # (b, T, E)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)

    def once(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def attnkit_embed() -> None:
        ours.embed(texts, batch_size=32)

    rounds = 2 if args.quick else 3
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    c = torch.empty(2048, 2048)
    reps = 4  # matmuls per round: one alone is too short a sample to be steady

    def matmul() -> None:
        for _ in range(reps):
            torch.mm(a, b, out=c)

    times = harness.timeit({"sentence-transformers": lambda: st.encode(texts, batch_size=32),
                            "attnkit": attnkit_embed, "matmul": matmul}, rounds=rounds, min_time=0.0, warmup=0)
    times["matmul"] /= reps
    # The naive padded peer computes ~8x more tokens than are real: run it fewer times, each
    # run next to a run of ours, and compare those pairs (same machine state).
    naive_hf(texts=texts[:16])  # warm-up
    pairs = [(once(naive_hf), once(attnkit_embed)) for _ in range(1)]
    times["transformers padded 256"] = statistics.median(p[0] for p in pairs)
    ours_beside_naive = statistics.median(p[1] for p in pairs)
    roof = 2 * 2048**3 / times.pop("matmul") / 1e9  # measured between the embedding runs
    rate = {k: len(texts) / t for k, t in times.items()}
    gflops = {k: flops / t / 1e9 for k, t in times.items()}
    harness.record(BENCH, f"embed {len(texts)} docstrings, batch 32, CPU fp32", "SentenceTransformer.encode",
                   rate["sentence-transformers"], rate["attnkit"], "texts/s", target=1.7)
    harness.record(BENCH, "vs naively padded batches of 256", "transformers.BertModel",
                   rate["transformers padded 256"], len(texts) / ours_beside_naive, "texts/s", target=8.0)
    harness.record(BENCH, "GFLOP/s over real tokens vs 2048^2 fp32 matmul", "matmul roofline",
                   roof, gflops["attnkit"], "GFLOP/s", target=0.75,
                   note=f"sentence-transformers: {gflops['sentence-transformers']:.1f} GFLOP/s "
                        f"({gflops['sentence-transformers'] / roof:.0%} of the roofline)")
    print(f"roofline {roof:.1f} GFLOP/s; attnkit {gflops['attnkit']:.1f} ({gflops['attnkit'] / roof:.0%}), "
          f"sentence-transformers {gflops['sentence-transformers']:.1f} "
          f"({gflops['sentence-transformers'] / roof:.0%})", flush=True)
    if not args.no_save and not args.quick:
        harness.save(BENCH, extra={"texts": len(texts), "real_tokens": real_tokens, "roofline_gflops": roof,
                                   "seconds": times})


if __name__ == "__main__":
    main()
