"""``attnkit demo``: the guided tour (the README's first command).

1. Train three models on the multilingual date task with the shared :class:`~attnkit.train.Trainer`:
   the RNN with additive (Bahdanau) attention, the same RNN without attention (its context is
   the encoder's last state), and the Transformer. Print their held-out accuracy side by side
   and draw the alignment heatmaps of a few locales.
2. Load the shipped MiniLM (all-MiniLM-L6-v2), write the attention explorer for a sentence and
   the "flies" contextual-embedding comparison.
3. Write ``index.html`` linking everything, with a short explanation of each picture.

Time: each model trains for a fixed wall-clock budget (``DemoPlan``), about 4 minutes in all
by default and under a minute with ``--quick``.
"""

from __future__ import annotations

import copy
import datetime
import html
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ALIGNMENT_LOCALES = ("de_DE", "fr_FR", "ru_RU", "ar_EG", "hi_IN", "ja_JP")
SENTENCE = "The animal didn't cross the street because it was too tired."


@dataclass(frozen=True)
class ModelSpec:
    """One model of the comparison: a name (its folder), the architecture and attention."""

    name: str
    label: str
    arch: str
    attention: str


MODELS = (
    ModelSpec("rnn-attention", "RNN + additive attention", "rnn", "additive"),
    ModelSpec("rnn-no-attention", "RNN, no attention (last state only)", "rnn", "none"),
    ModelSpec("transformer", "Transformer", "transformer", "multi-head"),
)


@dataclass
class DemoPlan:
    """How much data and time the demo uses. ``budgets`` are training seconds per model."""

    n_train: int = 60_000
    n_test: int = 1_000
    budgets: dict[str, float] = field(default_factory=lambda: {
        "rnn-attention": 90.0, "rnn-no-attention": 45.0, "transformer": 90.0})
    batch_size: int = 64
    locales: tuple[str, ...] = ALIGNMENT_LOCALES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_train < self.batch_size or self.n_test < 1:
            raise ValueError(f"DemoPlan needs n_train >= batch_size and n_test >= 1, got "
                             f"n_train={self.n_train}, batch_size={self.batch_size}, n_test={self.n_test}")
        bad = {k: v for k, v in self.budgets.items() if not v > 0}
        if bad:
            raise ValueError(f"DemoPlan.budgets must be positive seconds, got {bad}")

    @classmethod
    def quick(cls) -> DemoPlan:
        """Under a minute on 2 cores: small data, a few seconds of training per model."""
        return cls(n_train=6_000, n_test=200, budgets={
            "rnn-attention": 12.0, "rnn-no-attention": 6.0, "transformer": 12.0},
            locales=("de_DE", "ar_EG", "ja_JP"))


@dataclass
class ModelResult:
    spec: ModelSpec
    model: Any
    steps: int
    seconds: float
    parameters: int
    metrics: dict[str, float]
    checkpoint: Path


def _calibrate_steps(model: Any, train: list, config: Any, budget: float) -> int:
    """Steps that fit in ``budget`` seconds, from timing a few steps on a copy of the model."""
    from attnkit.train import Trainer

    probe = Trainer(copy.deepcopy(model), train, None, config)
    probe.train_step(0)  # warm-up (allocations, first-call overheads)
    start, n = time.perf_counter(), 8  # batches differ in length: average over several
    for step in range(1, n + 1):
        probe.train_step(step)
    per_step = (time.perf_counter() - start) / n
    return max(20, int(0.9 * budget / max(per_step, 1e-4)))


def train_models(plan: DemoPlan, out: Path, console: Any) -> tuple[Any, list[ModelResult]]:
    """Generate the date task and train every model of :data:`MODELS` within its budget."""
    from attnkit.data import encode_pairs, load_task
    from attnkit.train import (
        TRAIN_DEFAULTS,
        TrainConfig,
        Trainer,
        build_model,
        evaluate,
        keep_freed_memory,
    )

    keep_freed_memory()  # no page faults on every step's activations (see its docstring)
    with console.status("generating the multilingual date task (CLDR data via babel)"):
        task = load_task("dates", n_train=plan.n_train, n_test=plan.n_test, seed=plan.seed)
        vocab = task.tokenizer
        train, test = encode_pairs(vocab, task.train), encode_pairs(vocab, task.test)
    info = task.info
    console.print(f"date task: {len(train):,} training and {len(test):,} held-out examples, "
                  f"{len(info['locales'])} locales, vocabulary of {len(vocab)} characters")
    results = []
    for spec in MODELS:
        budget = plan.budgets[spec.name]
        console.rule(f"[bold]{spec.label}[/bold] ({budget:.0f} s)")
        torch.manual_seed(plan.seed)
        model = build_model(spec.arch, len(vocab), attention=spec.attention if spec.arch == "rnn" else "additive",
                            pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id)
        defaults = TRAIN_DEFAULTS[spec.arch]
        settings = {"batch_size": plan.batch_size, "lr": defaults["lr"], "seed": plan.seed,
                    "length_group": defaults.get("length_group", 0)}
        steps = _calibrate_steps(model, train, TrainConfig(steps=10, progress=False, warmup_steps=1,
                                                           **settings), budget)
        config = TrainConfig(steps=steps, warmup_steps=min(defaults["warmup_steps"], steps // 5),
                             eval_every=steps, time_budget=budget, **settings)
        folder = out / "models" / spec.name
        meta = {"task": "dates", "task_options": {"seed": plan.seed, "n_test": plan.n_test,
                                                  "n_train": plan.n_train},
                "arch": spec.arch, "max_len": max(len(t) for _, t in train) + 8}
        trainer = Trainer(model, train, None, config, tokenizer=vocab, out_dir=folder, meta=meta)
        result = trainer.fit()
        with console.status(f"evaluating on {len(test)} held-out dates"):
            metrics = evaluate(model, test, batch_size=256)
        results.append(ModelResult(spec, model, result.step, result.seconds,
                                   sum(p.numel() for p in model.parameters()), metrics, folder))
        console.print(f"{spec.label}: exact match {100 * metrics['exact_match']:.1f}% "
                      f"after {result.step} steps ({result.seconds:.0f} s)")
    return task, results


def accuracy_table(results: list[ModelResult]) -> Any:
    """The side-by-side held-out accuracy as a rich Table."""
    from rich.table import Table

    n = int(results[0].metrics["n"]) if results else 0
    table = Table(title=f"Held-out accuracy on the multilingual date task ({n} dates never seen in training)")
    for col, justify in (("model", "left"), ("parameters", "right"), ("steps", "right"),
                         ("train s", "right"), ("exact match", "right"), ("char accuracy", "right")):
        table.add_column(col, justify=justify)
    for r in results:
        table.add_row(r.spec.label, f"{r.parameters:,}", str(r.steps), f"{r.seconds:.0f}",
                      f"{100 * r.metrics['exact_match']:.1f}%", f"{100 * r.metrics['char_accuracy']:.1f}%")
    return table


def _example_date() -> datetime.date:
    """A held-out date (never seen in training) to draw alignments for."""
    from attnkit.data.dates import DateTask

    day = datetime.date(2026, 11, 24)
    while not DateTask.is_test_date(day):
        day += datetime.timedelta(days=1)
    return day


@torch.inference_mode()
def write_alignments(task: Any, results: list[ModelResult], locales: tuple[str, ...], out: Path,
                     console: Any) -> list[dict[str, Any]]:
    """Heatmaps (input characters x output characters) of the attention models for each
    locale's long date, plus the Transformer's full cross-attention in the explorer."""
    from attnkit.data import pad_ids
    from attnkit.data.dates import DateTask
    from attnkit.models.seq2seq import generate
    from attnkit.viz.explorer import explorer
    from attnkit.viz.heatmap import heatmap

    vocab = task.tokenizer
    day = _example_date()
    dates = DateTask(locales)
    pictures: list[dict[str, Any]] = []
    attending = [r for r in results if r.spec.attention != "none"]
    for locale in locales:
        example = dates.render(day, locale, "long")
        ids = vocab.encode(example.source)
        src, mask = pad_ids([ids], pad_id=vocab.pad_id)  # (1, S)
        for r in attending:
            cfg = r.model.config
            tokens, attn = generate(r.model, src, src_mask=mask, max_len=len(example.target) + 4,
                                    return_attention=True)  # (1, T), (1, T, S)
            row = tokens[0].tolist()
            n_out = next((k + 1 for k, t in enumerate(row) if t == cfg.eos_id), len(row))
            prediction = vocab.decode(row)
            y = [vocab.decode([t], skip_special=False) if t != cfg.eos_id else "</s>" for t in row[:n_out]]
            mark = "correct" if prediction == example.target else f"expected {example.target}"
            name = f"alignments/{r.spec.name}-{locale}.png"
            heatmap(attn[0, :n_out, : len(ids)], vocab.tokenize(example.source), y, out / name,
                    title=f"{r.spec.label} ({locale})\n{example.source} -> {prediction} ({mark})")
            pictures.append({"path": name, "model": r.spec.label, "locale": locale,
                             "source": example.source, "prediction": prediction,
                             "correct": prediction == example.target})
    console.print(f"wrote {len(pictures)} alignment heatmaps to {out / 'alignments'}")

    transformer = next((r for r in results if r.spec.arch == "transformer"), None)
    if transformer is not None:
        example = dates.render(day, locales[0], "long")
        ids = vocab.encode(example.source)
        src = torch.tensor([ids])  # (1, S)
        cfg = transformer.model.config
        tokens = generate(transformer.model, src, max_len=len(example.target) + 4)  # (1, T)
        row = tokens[0].tolist()
        row = row[: next((k + 1 for k, t in enumerate(row) if t == cfg.eos_id), len(row))]
        tgt_in = torch.tensor([[cfg.bos_id, *row[:-1]]])  # (1, T): the decoder's inputs
        transformer.model.eval()
        _, maps = transformer.model.forward_with_weights(src, tgt_in)
        y = [vocab.decode([t], skip_special=False) if t != cfg.eos_id else "</s>" for t in row]
        explorer((y, vocab.tokenize(example.source)), maps["cross"], out / "transformer-cross.html",
                 title=f"Transformer cross-attention: {example.source} -> {vocab.decode(row)}")
    return pictures


def write_minilm(out: Path, console: Any, sentence: str = SENTENCE) -> tuple[Any, list[str]]:
    """The MiniLM explorer for ``sentence`` and the "flies" comparison (table + plot)."""
    from attnkit.models.bert import SentenceEncoder
    from attnkit.viz.contextual import similarity_table
    from attnkit.viz.explorer import explorer

    with console.status("loading all-MiniLM-L6-v2"):
        encoder = SentenceEncoder.from_pretrained()
    tokens, weights = encoder.attentions(sentence)  # (layers, heads, T, T)
    explorer(tokens, weights, out / "minilm-explorer.html", title=f"all-MiniLM-L6-v2: {sentence}")
    flies = similarity_table(encoder, path=out / "flies.png", console=console)
    return flies, tokens


def run_demo(out: str | Path = "attnkit-demo", *, quick: bool = False, console: Any = None,
             plan: DemoPlan | None = None) -> Path:
    """Run the whole tour into ``out`` and return the path of its ``index.html``."""
    from rich.console import Console

    from attnkit.models.bert import resolve_model_folder

    console = console or Console()
    plan = plan or (DemoPlan.quick() if quick else DemoPlan())
    resolve_model_folder("all-MiniLM-L6-v2")  # part 2 needs the model package: say so before training
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "alignments").is_dir():
        shutil.rmtree(out / "alignments")  # stale pictures of an earlier run
    start = time.perf_counter()

    console.rule("[bold]1. Alignment: encoder-decoder attention on dates in 48 locales[/bold]")
    task, results = train_models(plan, out, console)
    table = accuracy_table(results)
    console.print(table)
    pictures = write_alignments(task, results, plan.locales, out, console)

    console.rule("[bold]2. A pretrained Transformer: MiniLM's heads and contextual embeddings[/bold]")
    flies, _ = write_minilm(out, console)

    console.rule("[bold]3. The tour[/bold]")
    index = write_index(out, results, pictures, flies, quick=quick)
    console.print(f"done in {time.perf_counter() - start:.0f} s. Open [bold]{index.resolve()}[/bold]")
    return index


# ----------------------------------------------------------------------------- index.html


def write_index(out: Path, results: list[ModelResult], pictures: list[dict[str, Any]], flies: Any,
                *, quick: bool = False) -> Path:
    """``index.html`` linking every file of the demo, with a short explanation of each."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(r.spec.label)}</td><td>{r.parameters:,}</td><td>{r.steps}</td>"
        f"<td>{r.seconds:.0f} s</td><td>{100 * r.metrics['exact_match']:.1f}%</td>"
        f"<td>{100 * r.metrics['char_accuracy']:.1f}%</td>"
        f"<td><code>{e(r.checkpoint.relative_to(out).as_posix())}</code></td></tr>"
        for r in results
    )
    figures = "".join(
        f'<figure><a href="{e(p["path"])}"><img src="{e(p["path"])}" alt="{e(p["model"])} alignment, '
        f'{e(p["locale"])}" loading="lazy"></a><figcaption>{e(p["model"])}, <b>{e(p["locale"])}</b>: '
        f'{e(p["source"])} &rarr; {e(p["prediction"])} {"&#10003;" if p["correct"] else "&#10007;"}'
        f"</figcaption></figure>"
        for p in pictures
    )
    flies_rows = "".join(
        f"<tr><td>{e(name)}</td><td>{a:.3f}</td><td>{b:.3f}</td><td>{c:.3f}</td></tr>"
        for name, a, b, c in flies.rows()
    )
    first = results[0].checkpoint.as_posix() if results else "attnkit-demo/models/rnn-attention"
    has_cross = (out / "transformer-cross.html").is_file()
    cross_link = (
        '<li><a href="transformer-cross.html">Transformer cross-attention explorer</a>: every '
        "layer and head of the trained Transformer's decoder looking at the input date "
        "(left: output characters, right: input characters).</li>" if has_cross else ""
    )
    quick_note = ("<p class=note>This was a <code>--quick</code> run (seconds of training): "
                  "run <code>attnkit demo</code> for the full version.</p>" if quick else "")
    page = _INDEX.format(
        quick_note=quick_note, rows=rows, figures=figures, flies_rows=flies_rows,
        s1=e(flies.sentences[0]), s2=e(flies.sentences[1]), word=e(flies.word),
        first=e(first), cross_link=cross_link, sentence=e(SENTENCE),
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


_INDEX = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>attnkit demo: seeing attention</title>
<style>
body {{ margin: 0 auto; padding: 20px 28px 60px; max-width: 1200px;
  font: 15px/1.5 system-ui, "Noto Sans", "DejaVu Sans", sans-serif; color: #1d2330; }}
h1 {{ font-size: 26px; margin-bottom: 4px; }} h2 {{ margin-top: 34px; font-size: 20px; }}
p, li {{ max-width: 62em; }} .note {{ background: #fff6d6; padding: 6px 10px; border-radius: 6px; }}
table {{ border-collapse: collapse; margin: 10px 0; }}
td, th {{ border-bottom: 1px solid #dde1e8; padding: 4px 12px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 14px; }}
figure {{ margin: 0; }} figure img {{ width: 100%; border: 1px solid #dde1e8; border-radius: 4px; }}
figcaption {{ font-size: 13px; color: #4a5263; }}
code {{ background: #f1f3f7; padding: 0 4px; border-radius: 3px; }}
</style>
</head>
<body>
<h1>attnkit demo: seeing attention</h1>
<p>Attention lets a model decide, for every output, which inputs to look at. This page shows it
three ways: alignments learned by a translation model, the heads of a pretrained Transformer,
and how self-attention turns a word's fixed vector into a contextual one.</p>
{quick_note}

<h2>1. Learning to align: dates in 48 locales</h2>
<p>Three models learned to rewrite dates written in 48 locales and 18 scripts (month names,
native digits, every CLDR format) as ISO <code>YYYY-MM-DD</code>. Held-out accuracy on dates
never seen in training:</p>
<table>
<tr><th>model</th><th>parameters</th><th>steps</th><th>training</th><th>exact match</th>
<th>char accuracy</th><th>checkpoint</th></tr>
{rows}
</table>
<p>The RNN without attention must squeeze the whole input into its last hidden state; with
attention, every output step looks back at all input characters. Try a checkpoint:
<code>attnkit translate {first} "24. November 2026" --alignment out.png</code>.</p>

<h3>Alignment heatmaps</h3>
<p>Each row is an output character, each column an input character; a bright cell is where the
model looked while writing that character. A good alignment puts the year digits on the year,
the month digits on the month word (whatever its script or position) and the day on the day.
The same date is shown in several locales, so you can see the alignment follow the word order.</p>
<div class="grid">{figures}</div>

<h2>2. Inside a pretrained Transformer (all-MiniLM-L6-v2)</h2>
<ul>
<li><a href="minilm-explorer.html">MiniLM attention explorer</a>: <i>{sentence}</i>
The <b>head view</b> draws a line from each token (left) to the tokens it attends to (right),
one colour per head; pick a layer, switch heads on and off, hover a token to isolate its lines.
The <b>model view</b> shows all 6 layers x 12 heads at once; click a square to enlarge it. Look
for heads that attend to the previous or next token, to <code>[SEP]</code>, or from
<i>it</i> to <i>animal</i>.</li>
{cross_link}
</ul>

<h2>3. Self-attention makes embeddings contextual</h2>
<p>"{word}" is the same token in <i>{s1}</i> (a verb) and <i>{s2}</i> (a noun). At the embedding
layer both occurrences have the same vector (cosine 1); every self-attention layer mixes in the
neighbours, so the two vectors drift apart and away from the static word embedding.</p>
<figure><a href="flies.png"><img src="flies.png" alt="cosine similarity per layer"
 style="max-width: 760px"></a></figure>
<table>
<tr><th>layer</th><th>A vs B</th><th>A vs static</th><th>B vs static</th></tr>
{flies_rows}
</table>
<p>A = <i>{s1}</i>, B = <i>{s2}</i>.</p>
<p>Make your own: <code>attnkit show "your sentence" --out view.html --png figures/</code>.</p>
</body>
</html>
"""


# ----------------------------------------------------------------------------- attnkit show


def show_command(text: str, *, model: str = "all-MiniLM-L6-v2", out: str | Path = "view.html",
                 png: str | Path | None = None, title: str | None = None) -> tuple[Path, list[Path]]:
    """``attnkit show``: the explorer of a pretrained encoder's self-attention over ``text``
    and, with ``png``, one heatmap per layer (the mean over its heads) in that folder."""
    from attnkit.models.bert import SentenceEncoder
    from attnkit.viz.explorer import explorer
    from attnkit.viz.heatmap import heatmap

    encoder = SentenceEncoder.from_pretrained(model)
    tokens, weights = encoder.attentions(text)  # (layers, heads, T, T)
    path = explorer(tokens, weights, out, title=title or f"{Path(str(model)).name}: {text}")
    pngs: list[Path] = []
    if png is not None:
        folder = Path(png)
        n_layers, n_heads = weights.shape[:2]
        for layer in range(n_layers):
            target = folder / f"layer-{layer + 1}.png"
            heatmap(weights[layer].mean(0), tokens, tokens, target,
                    title=f"layer {layer + 1}: mean of {n_heads} heads",
                    x_label="attended to", y_label="attending")
            pngs.append(target)
    return path, pngs
