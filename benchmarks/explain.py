"""Faithfulness and cost of ``attnkit.explain``'s methods (issue 24).

(a) Why a document matches: all-MiniLM-L6-v2, query-document pairs made from the package's own
    docstrings (benchmarks/embedding.py's corpus: each paragraph of 20-120 tokens is a document,
    its query the first sentence of the most similar *other* paragraph). For every method:
    deletion AOPC (delete the document's top-k tokens, k = 1..10, mean drop of the cosine),
    insertion (top-k tokens put back into an empty document, normalised area), time per pair,
    bootstrap 95% intervals; random order is the floor.
(b) The date pointing game: the demo's Transformer and the additive-attention RNN trained by
    the recipe ``attnkit train --task dates`` uses (its steps: 2,400 and 2,000; ``--train-seconds 90``
    is the demo's budget, which leaves the Transformer undertrained at one thread), 2,000 held-out
    dates over the 48 locales; for each output digit of the year, month and day, is the most
    relevant input character inside that field's span in the source (the locale tag is not a
    character and is not a candidate)? Reported per method, per field and per kind of output
    digit: ``digit`` (a digit the source writes), ``pad0`` (the leading zero of a one-digit day or
    month), ``century`` (the first two digits of a two-digit year), ``word`` (a month written as a
    word); the last three are decided by the field's length or meaning, which the characters around
    it can carry. ``occlusion`` (the largest drop of the logit when one source embedding is zeroed)
    is a causal reference, not a candidate for the best method; nor are the issue's baselines,
    raw attention and rollout (:data:`BASELINES`).
(c) Agreement with the reference: ``lxt`` 2.1's AttnLRP on tiny random Llama and GPT-2 models
    (Pearson per example); lxt's BERT module does not import under transformers 5, so BERT is
    compared with a float64 direct implementation of the paper's rules instead (two layers).
Speed: AttnLRP against one forward + backward of MiniLM; attention flow on 128 tokens x 12 layers.

``--quick`` runs small sizes; ``--pairs``/``--dates`` set the sizes; ``--parts`` picks parts.
lxt: ``pip install --no-deps --target DIR lxt==2.1 zennit`` and ``LXT_PATH=DIR`` (its full
dependency set pulls torchvision and bitsandbytes; the efficient rules need neither).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from attnkit.progress import progress_bar  # noqa: E402
from attnkit.relevance import METHODS, explain_subject  # noqa: E402
from attnkit.relevance import faithfulness as ff  # noqa: E402
from attnkit.relevance.subjects import subject  # noqa: E402

BENCH = "explain"
K = 10
BASELINES = ("attention", "rollout")  # the baselines: never the "best faithful" method
extra: dict[str, str] = {}


def args_() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--dates", type=int, default=2000)
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--ig-dates", type=int, default=200, help="integrated gradients on the first N dates only")
    p.add_argument("--train-seconds", type=float, default=None,
                   help="training budget per date model (the demo's is 90); default: the recipe's steps")
    p.add_argument("--train-steps", type=int, default=None, help="train both date models for this many steps")
    p.add_argument("--checkpoints", default=None, help="folder of the date models: reused when there, else written")
    p.add_argument("--parts", default="speed,agreement,conservation,minilm,dates")
    p.add_argument("--name", default=BENCH, help="results/<name>.json (run parts in parallel under two names)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    return p.parse_args()


# ----------------------------------------------------------------------------- (a) MiniLM


def make_pairs(encoder, n: int) -> list[tuple[str, str]]:
    from embedding import docstring_corpus, one_liner_corpus

    paragraphs = docstring_corpus()
    ids, _, _ = encoder.tokenize(paragraphs)
    docs = [p for p, row in zip(paragraphs, ids, strict=True) if 20 <= len(row) <= 120]
    firsts = one_liner_corpus(docs)
    first_of = {d: one_liner_corpus([d])[0] for d in docs}
    doc_vecs = encoder.embed(docs, dtype="float32")
    q_vecs = encoder.embed(firsts, dtype="float32")
    sims = doc_vecs @ q_vecs.T  # (docs, queries)
    pairs = []
    for i, d in enumerate(docs):
        order = sims[i].argsort(descending=True).tolist()
        q = next(firsts[j] for j in order if firsts[j] != first_of[d])
        pairs.append((q, d))
    random.Random(0).shuffle(pairs)
    return pairs[:n]


def deletion_scores(encoder, ids: list[int], order: list[int], q: torch.Tensor) -> tuple[list[float], list[float]]:
    """Cosines with the top-k (k = 1..K) tokens deleted, and with only them inserted."""
    inner = ids[1:-1]
    variants = []
    for k in range(1, K + 1):
        top = set(order[:k])
        variants.append([ids[0]] + [t for j, t in enumerate(inner, 1) if j not in top] + [ids[-1]])
    for k in range(1, K + 1):
        top = set(order[:k])
        variants.append([ids[0]] + [t for j, t in enumerate(inner, 1) if j in top] + [ids[-1]])
    vecs = encoder.embed_ids(variants, dtype="float32")
    cos = (vecs @ q).tolist()
    return cos[:K], cos[K:]


def bench_minilm(a: argparse.Namespace) -> None:
    from attnkit import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained()
    n = min(a.pairs, 6) if a.quick else a.pairs
    pairs = make_pairs(encoder, n)
    methods = [m for m in METHODS if m != "flow"] + ["flow"]
    aopc = {m: [] for m in [*methods, "random"]}
    ins = {m: [] for m in [*methods, "random"]}
    secs = {m: [] for m in methods}
    rng = random.Random(0)
    with progress_bar("MiniLM pairs", total=len(pairs)) as bar:
        for query, doc in pairs:
            s = subject(encoder, doc, target=None, query=query)
            ids = encoder.tokenize([doc])[0][0]
            q = encoder.embed([query], dtype="float32")[0]
            base = float(encoder.embed_ids([ids], dtype="float32")[0] @ q)
            empty = float(encoder.embed_ids([[ids[0], ids[-1]]], dtype="float32")[0] @ q)
            cands = list(range(1, len(ids) - 1))
            for m in methods:
                t = time.perf_counter()
                e = explain_subject(s, m, steps=a.ig_steps, query=query)
                secs[m].append(time.perf_counter() - t)
                dels, inserts = deletion_scores(encoder, ids, ff.deletion_order(e.relevance[0], cands), q)
                aopc[m].append(ff.aopc(base, dels))
                ins[m].append(ff.insertion_auc(base, empty, inserts))
            order = cands[:]
            rng.shuffle(order)
            dels, inserts = deletion_scores(encoder, ids, order, q)
            aopc["random"].append(ff.aopc(base, dels))
            ins["random"].append(ff.insertion_auc(base, empty, inserts))
            bar.update(advance=1)
    ci = {m: ff.bootstrap_ci(v) for m, v in aopc.items()}
    lines = []
    for m in aopc:
        mean, lo, hi = ci[m]
        i_mean, i_lo, i_hi = ff.bootstrap_ci(ins[m])
        t = f", {1000 * sum(secs[m]) / len(secs[m]):.0f} ms/pair" if m in secs else ""
        lines.append(f"{m} {mean:.4f} [{lo:.4f}, {hi:.4f}], insertion {i_mean:.3f} [{i_lo:.3f}, {i_hi:.3f}]{t}")
    extra[f"(a) MiniLM deletion AOPC k=1..{K}, {len(pairs)} pairs (mean [95% CI])"] = "; ".join(lines)
    ours = ci["attnlrp"]
    for m in ("rollout", "attention", "random", "grad_rollout", "flow"):
        sep = ours[1] > ci[m][2]
        harness.record(BENCH, f"MiniLM deletion AOPC: attnlrp vs {m}", m, ci[m][0], ours[0], "AOPC",
                       target=1.0, note=f"CIs attnlrp [{ours[1]:.4f}, {ours[2]:.4f}], {m} [{ci[m][1]:.4f}, "
                                        f"{ci[m][2]:.4f}]; non-overlapping: {'yes' if sep else 'no'}")
    harness.record(BENCH, "MiniLM deletion AOPC: attnlrp / integrated gradients", "integrated_gradients",
                   ci["integrated_gradients"][0], ours[0], "AOPC", target=0.9)
    t_lrp, t_ig = (sum(secs[m]) / len(secs[m]) for m in ("attnlrp", "integrated_gradients"))
    harness.record(BENCH, f"MiniLM time per pair: attnlrp vs integrated gradients ({a.ig_steps} steps)",
                   "integrated_gradients", t_ig, t_lrp, "s", higher_is_better=False, target=10.0)


# ----------------------------------------------------------------------------- (b) dates


def char_columns(tokens: list[str], source: str) -> list[tuple[int, int]] | None:
    """Character span of each token in ``source`` (None when the tokens do not spell it)."""
    spans, pos = [], 0
    for t in tokens:
        if source[pos:pos + len(t)] != t:
            return None
        spans.append((pos, pos + len(t)))
        pos += len(t)
    return spans if pos == len(source) else None


DIGIT_KINDS = ("digit", "pad0", "century", "word")


def digit_kind(ex, name: str, row: int) -> str:
    """What decides output digit ``row`` (of the ISO target) of field ``name`` in ``ex.source``:
    ``digit`` (a digit the source writes), ``pad0`` (the leading zero of a one-digit day/month),
    ``century`` (the first two digits of a two-digit year), ``word`` (a month without digits)."""
    from attnkit.data.dates import TARGET_SPANS

    f0, f1 = getattr(ex, f"{name}_span")
    digits = sum(ch.isdigit() for ch in ex.source[f0:f1])
    if not digits:
        return "word"
    width, k = TARGET_SPANS[name][1] - TARGET_SPANS[name][0], row - TARGET_SPANS[name][0]
    if name == "year" and digits == 2 and k < 2:
        return "century"
    return "pad0" if k < width - digits else "digit"


def occlusion(s, src_ids: list[int], row: list[int]) -> torch.Tensor:
    """``(T_out, T_in)``: the drop of each explained logit when one source token's embedding is
    zeroed (one batched forward pass of ``T_in + 1`` rows, row 0 intact); ``row``: the target ids, EOS last."""
    model, c = s.model, s.model.config
    emb = s.embeddings[0]
    S, n = len(src_ids), len(src_ids) + 1
    keep = torch.ones(n, S, 1)
    keep[torch.arange(1, n), torch.arange(S)] = 0.0
    calls: list[int] = []

    def hook(module, args, out):  # the source's embedding: the first call (the encoder runs first)
        calls.append(1)
        return out * keep if len(calls) == 1 else out

    handle = emb.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(torch.tensor([src_ids] * n), torch.tensor([[c.bos_id, *row[:-1]]] * n))  # (n, T, V)
    finally:
        handle.remove()
    picked = logits[:, torch.arange(len(row)), torch.tensor(row)]  # (n, T_out)
    return (picked[:1] - picked[1:]).T


def bench_dates(a: argparse.Namespace) -> None:
    from attnkit.data import dates as D
    from attnkit.training import TRAIN_DEFAULTS, date_data, evaluate, train_date_model

    data = date_data(n_train=6_000 if a.quick else 60_000, n_test=200, seed=0)
    vocab = data.tokenizer
    examples = D.generate(min(a.dates, 20) if a.quick else a.dates, seed=1, split="test")
    methods = ["attnlrp", "input_x_gradient", "grad_rollout", "rollout", "flow", "attention", "integrated_gradients"]
    for arch in ("transformer", "rnn"):
        folder = None if a.checkpoints is None else Path(a.checkpoints) / arch
        if folder is not None and (folder / "config.json").is_file():
            from attnkit.models import load

            model = load(folder).eval()
            steps = json.loads((folder / "trainer_state.json").read_text()).get("step", "reused") \
                if (folder / "trainer_state.json").is_file() else "reused"
        else:
            if a.quick:
                budget = {"steps": None, "time_budget": 10.0}
            elif a.train_steps or a.train_seconds:
                budget = {"steps": a.train_steps, "time_budget": None} if a.train_steps else {
                    "steps": None, "time_budget": a.train_seconds}
            else:
                budget = {"steps": TRAIN_DEFAULTS[arch]["steps"], "time_budget": None}
            model, result = train_date_model(arch, data, attention="additive", seed=0, validate=False,
                                             out_dir=folder, **budget)
            steps = result.step
        model.eval()
        exact = evaluate(model, data.test, batch_size=256)["exact_match"]
        names = [*methods, "occlusion"]
        hits = {m: [] for m in names}
        by = {(m, k): [] for m in names for k in (*D.TARGET_SPANS, *DIGIT_KINDS)}
        kinds_of = {m: [] for m in names}  # the kind of each of hits[m]
        secs = {m: 0.0 for m in names}
        n_ig = min(len(examples), a.ig_dates)
        with progress_bar(f"pointing game ({arch})", total=len(examples)) as bar:
            for i, ex in enumerate(examples):
                s = subject(model, ex.source, target=ex.target, query=None, tokenizer=vocab)
                spans = char_columns(s.tokens, ex.source)
                if spans is None:
                    bar.update(advance=1)
                    continue
                cands = [j for j, (b, e) in enumerate(spans) if e - b == 1]  # characters, not the tag
                fields = D.field_spans(ex)
                for m in names:
                    if m == "integrated_gradients" and i >= n_ig:
                        continue
                    t = time.perf_counter()
                    rel = occlusion(s, vocab.encode(ex.source), [*vocab.encode(ex.target), model.config.eos_id]) if m == "occlusion" else explain_subject(s, m, steps=a.ig_steps).relevance
                    secs[m] += time.perf_counter() - t
                    for name, (t0, t1) in D.TARGET_SPANS.items():
                        f0, f1 = fields[name]
                        inside = [j for j in cands if f0 <= spans[j][0] < f1]
                        for row in range(t0, t1):
                            hit = ff.pointing_game(rel[row], inside, candidates=cands)
                            hits[m].append(hit)
                            kinds_of[m].append(digit_kind(ex, name, row))
                            by[(m, name)].append(hit)
                            by[(m, digit_kind(ex, name, row))].append(hit)
                bar.update(advance=1)
        acc = {m: sum(h) / max(1, len(h)) for m, h in hits.items()}

        def pct(v: list) -> str:
            return f"{100 * sum(v) / len(v):.1f}%" if v else "-"

        head = (f"(b) date pointing game, {arch} ({steps} steps, held-out exact match {100 * exact:.1f}% on "
                f"{len(data.test)}; {len(examples)} held-out dates; integrated_gradients ({a.ig_steps} steps) "
                f"on the first {n_ig})")
        extra[head] = ", ".join(f"{m} {100 * v:.1f}% (n={len(hits[m])}, {1000 * secs[m] / max(1, len(examples) if m != 'integrated_gradients' else n_ig):.0f} ms/date)"
                                for m, v in acc.items())
        n_kind = {k: len(by[("attention", k)]) for k in (*D.TARGET_SPANS, *DIGIT_KINDS)}
        extra[f"(b) {arch} per field and kind of digit (" + ", ".join(f"{k} n={v}" for k, v in n_kind.items()) + ")"] = \
            "; ".join(f"{m}: " + " ".join(f"{k} {pct(by[(m, k)])}" for k in (*D.TARGET_SPANS, *DIGIT_KINDS))
                      for m in names)
        best = max((m for m in methods if m not in BASELINES), key=acc.get)
        harness.record(BENCH, f"date pointing game, {arch}: best faithful ({best}) vs raw cross-attention",
                       "attention", acc["attention"], acc[best], "accuracy", target=1.0,
                       note=f"attnlrp {100 * acc['attnlrp']:.1f}%, occlusion (causal reference) "
                            f"{100 * acc['occlusion']:.1f}%")
        harness.record(BENCH, f"date pointing game, {arch}: best faithful ({best}) vs the 95% target", "target 0.95",
                       0.95, acc[best], "accuracy", target=1.0,
                       note=f"without the pad0 digits (leading zeros; for information): {best} "
                            f"{pct([h for h, k in zip(hits[best], kinds_of[best], strict=True) if k != 'pad0'])}")


# ----------------------------------------------------------------------------- (c) agreement


def _lxt():
    path = os.environ.get("LXT_PATH")
    if path:
        sys.path.append(path)
    for name, attr in (("bert", "modeling_bert"), ("vit_torch", "vision_transformer")):
        # lxt 2.1's BERT module copies transformers 4's BERT (does not import under 5) and its
        # ViT needs torchvision: stand-ins keep lxt.efficient importable for Llama and GPT-2
        stub = types.ModuleType(f"lxt.efficient.models.{name}")
        setattr(stub, attr, types.ModuleType(attr))
        stub.attnLRP, stub.cp_LRP = {}, {}
        sys.modules.setdefault(f"lxt.efficient.models.{name}", stub)
    from lxt.efficient import monkey_patch

    return monkey_patch


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def ours_hf(model, ids: torch.Tensor) -> torch.Tensor:
    from attnkit.relevance.rules import AttnLRP, hook_activations

    x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    hs = hook_activations(model)
    try:
        with AttnLRP():
            out = model(inputs_embeds=x, use_cache=False).logits[0, -1]
    finally:
        for h in hs:
            h.remove()
    (g,) = torch.autograd.grad(out.max(), x)
    return (x * g).sum(-1)[0].detach()


def bench_agreement(a: argparse.Namespace) -> None:
    import transformers as tf

    try:
        monkey_patch = _lxt()
    except ImportError as exc:
        extra["(c) lxt"] = f"not importable ({exc}); set LXT_PATH"
        monkey_patch = None
    torch.manual_seed(0)
    cfgs = {
        "llama": (tf.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 attn_implementation="eager"), tf.LlamaForCausalLM, "llama"),
        "gpt2": (tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                               attn_implementation="eager"), tf.GPT2LMHeadModel, "gpt2"),
    }
    n = 5 if a.quick else 20
    inputs = [torch.randint(3, 100, (1, 16)) for _ in range(n)]
    ours = {}
    models = {}
    for name, (cfg, cls, _) in cfgs.items():
        m = cls(cfg).eval().double()
        for p in m.parameters():
            p.requires_grad_(False)
        models[name] = m
        ours[name] = [ours_hf(m, ids) for ids in inputs]
    if monkey_patch is not None:
        import importlib

        for name, (cfg, cls, module) in cfgs.items():
            mod = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
            keep = mod.ALL_ATTENTION_FUNCTIONS
            monkey_patch(mod)
            mod.ALL_ATTENTION_FUNCTIONS = keep  # transformers 5 asks it .get_interface(impl, eager_attention_forward)
            m = cls(cfg).double()
            m.load_state_dict(models[name].state_dict())
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
            rs = []
            for ids, r_ours in zip(inputs, ours[name], strict=True):
                x = m.get_input_embeddings()(ids).detach().requires_grad_(True)
                out = m(inputs_embeds=x, use_cache=False).logits[0, -1]
                (g,) = torch.autograd.grad(out.max(), x)
                rs.append(_pearson(r_ours, (x * g).sum(-1)[0]))
            harness.record(BENCH, f"AttnLRP agreement with lxt 2.1, tiny {name} (min Pearson of {n})", "target 0.99",
                           0.99, min(rs), "Pearson", target=1.0, note=f"mean {sum(rs) / len(rs):.6f}")
    # BERT: a float64 direct implementation of the rules on attnkit's two-layer BERT layers
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from lrp_reference import direct_encoder_relevance

    from attnkit.relevance.rules import AttnLRP
    from attnkit.transformer import EncoderLayer, LayerSettings

    torch.manual_seed(0)
    settings = LayerSettings(embed_dim=32, num_heads=4, ff_dim=64, dropout=0.0, activation="gelu", norm_first=False)
    layers = torch.nn.ModuleList([EncoderLayer(settings) for _ in range(2)]).double().eval()
    for p in layers.parameters():
        p.requires_grad_(False)
    rs = []
    for _ in range(n):
        x = torch.randn(12, 32, dtype=torch.float64)
        c = torch.randn(32, dtype=torch.float64)
        leaf = x.clone().requires_grad_(True)
        with AttnLRP():
            h = leaf[None]
            for layer in layers:
                h, _ = layer(h)
        (g,) = torch.autograd.grad(c @ h[0, 0], leaf)
        rs.append(_pearson((leaf * g).sum(-1), direct_encoder_relevance(layers, x, 0, c)))
    harness.record(BENCH, f"AttnLRP vs a float64 direct implementation, two post-LN GELU layers (min Pearson of {n})",
                   "target 0.99", 0.99, min(rs), "Pearson", target=1.0)


# ----------------------------------------------------------------------------- conservation


def bench_conservation(a: argparse.Namespace) -> None:
    """How closely AttnLRP's relevance sums to the explained output, per model family: the sum over
    every embedding the model read (input and, for a decoder, its own earlier tokens) / the output.
    MiniLM (trained) on the docstring pairs; tiny random Hugging Face and attnkit models otherwise."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from viz_support import TARGET, TEXT, build, build_checkpoint

    from attnkit import SentenceEncoder

    rows = {}
    encoder = SentenceEncoder.from_pretrained()
    pairs = make_pairs(encoder, 10 if a.quick else 50)
    vals = [float(explain_subject(subject(encoder, d, target=None, query=q), "attnlrp").conservation[0])
            for q, d in pairs]
    rows["MiniLM (trained), cosine"] = vals
    root = Path(tempfile.mkdtemp())
    for family in ("bert", "gpt2", "bart", "t5"):
        folder = build(family, root / family)
        kw = {"query": "a cat on a mat"} if family == "bert" else {"target": TARGET if family != "gpt2" else " on the mat"}
        s = subject(folder, TEXT, max_new_tokens=8, **{"target": None, "query": None, **kw})
        rows[f"tiny random {family}"] = explain_subject(s, "attnlrp").conservation.tolist()
    for kind in ("transformer", "rnn"):
        folder = build_checkpoint(kind, root / kind)
        s = subject(folder, TEXT, target=TARGET, query=None)
        rows[f"tiny random attnkit {kind}"] = explain_subject(s, "attnlrp").conservation.tolist()
    text = []
    for name, v in rows.items():
        t = torch.tensor(v)
        text.append(f"{name}: median {t.median():.3f}, IQR [{t.quantile(0.25):.3f}, {t.quantile(0.75):.3f}] (n={len(v)})")
    extra["AttnLRP conservation (sum of relevance / output)"] = "; ".join(text)


# ----------------------------------------------------------------------------- speed


def bench_speed(a: argparse.Namespace) -> None:
    from attnkit import SentenceEncoder
    from attnkit.relevance import graphs

    encoder = SentenceEncoder.from_pretrained()
    doc = ("Attention weights show where a head looks, not why the model decides; relevance methods "
           "propagate the output back to the input tokens through every layer of the network.")
    s = subject(encoder, doc, target=None, query="why attention is not explanation")

    def fwd_bwd() -> None:
        p = s.run()
        torch.autograd.grad(p.outputs[0], p.leaves[0])

    times = harness.timeit({"fb": fwd_bwd, "attnlrp": lambda: explain_subject(s, "attnlrp")}, rounds=5)
    harness.record(BENCH, f"attnlrp vs one forward + backward (MiniLM, {len(s.tokens)} tokens)", "3 x forward+backward",
                   3 * times["fb"], times["attnlrp"], "s", higher_is_better=False, target=1.0,
                   note=f"forward+backward {1000 * times['fb']:.1f} ms, attnlrp {1000 * times['attnlrp']:.1f} ms")
    g = torch.Generator().manual_seed(0)
    layers = [torch.softmax(torch.randn(128, 128, generator=g) * 3, -1) for _ in range(12)]
    t = time.perf_counter()
    graphs.flow({"encoder": layers}, "encoder", rows=[64])
    flow_s = time.perf_counter() - t
    harness.record(BENCH, "attention flow, 128 tokens x 12 layers, one output (128 exact max-flows)", "2 s budget",
                   2.0, flow_s, "s", higher_is_better=False, target=1.0,
                   note=f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> None:
    global BENCH
    a = args_()
    BENCH = a.name
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    parts = a.parts.split(",")
    extra["CPU"] = f"{harness.machine()} (Intel Ice Lake Xeon, AVX-512 + VNNI, no bf16), shared with other jobs"
    for name, fn in (("speed", bench_speed), ("agreement", bench_agreement), ("conservation", bench_conservation),
                     ("minilm", bench_minilm), ("dates", bench_dates)):
        if name in parts:
            t = time.perf_counter()
            fn(a)
            print(f"[{BENCH}] {name} took {time.perf_counter() - t:.0f} s", flush=True)
            if not a.no_save and not a.quick:
                harness.save(BENCH, extra)
    if not a.no_save and not a.quick:
        print(f"wrote {harness.save(BENCH, extra)}")
    for k, v in extra.items():
        print(f"- {k}: {v}")


if __name__ == "__main__":
    main()
