"""``attnkit demo``: the guided tour (the README's first command).

1. Train three models on the multilingual date task with the shared recipe
   (:func:`attnkit.training.train_date_model`): the RNN with additive (Bahdanau) attention,
   the same RNN without attention (its context is the encoder's last state), and the
   Transformer. Print their held-out accuracy side by side and draw the alignment heatmaps of
   a few locales.
2. Load the shipped MiniLM (all-MiniLM-L6-v2), write the attention explorer for a sentence and
   the "flies" contextual-embedding comparison.
3. Write ``index.html`` (from ``cli/assets/demo_index.html``) linking everything, with a short
   explanation of each picture.

Time: each model trains for a fixed wall-clock budget (``DemoPlan``), about 4 minutes in all
by default and under a minute with ``--quick``.
"""

from __future__ import annotations

import datetime
import html
import shutil
import string
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import typer

from attnkit.cli.console import SIGNAL_EXIT, check_folder_path, stopped_by_signal, user_errors
from attnkit.cli.console import console as default_console

__all__ = ["MODELS", "DemoPlan", "ModelResult", "demo", "run_demo"]

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
    locales: tuple[str, ...] = ALIGNMENT_LOCALES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_train < 64 or self.n_test < 1:
            raise ValueError(f"DemoPlan needs n_train >= 64 (a batch) and n_test >= 1, got "
                             f"n_train={self.n_train}, n_test={self.n_test}")
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


def train_models(plan: DemoPlan, out: Path, console: Any) -> tuple[Any, list[ModelResult]]:
    """Generate the date task and train every model of :data:`MODELS` within its budget."""
    from attnkit.runtime import keep_freed_memory
    from attnkit.training import date_data, evaluate, train_date_model

    keep_freed_memory()  # no page faults on every step's activations (see its docstring)
    with console.status("generating the multilingual date task (CLDR data via babel)"):
        data = date_data(n_train=plan.n_train, n_test=plan.n_test, seed=plan.seed)
    vocab, info = data.tokenizer, data.task.info
    console.print(f"date task: {len(data.train):,} training and {len(data.test):,} held-out examples, "
                  f"{len(info['locales'])} locales, vocabulary of {len(vocab)} characters")
    results = []
    for spec in MODELS:
        budget = plan.budgets[spec.name]
        console.rule(f"[bold]{spec.label}[/bold] ({budget:.0f} s)")
        attention = spec.attention if spec.arch == "rnn" else "additive"
        folder = out / "models" / spec.name
        # `attnkit train`'s recipe with the schedule fitted to the budget (warm-up at most a fifth
        # of it); no validation on the way
        model, result = train_date_model(spec.arch, data, attention=attention, seed=plan.seed, out_dir=folder,
                                         validate=False, steps=None, time_budget=budget)
        if result.stopped in SIGNAL_EXIT:  # Ctrl-C / SIGTERM stops the tour, not just this model
            stopped_by_signal(result.stopped, f"stopped by {result.stopped} while training {spec.label} "
                                              f"(step {result.step}); the tour was not finished")
        with console.status(f"evaluating on {len(data.test)} held-out dates"):
            metrics = evaluate(model, data.test, batch_size=256)
        results.append(ModelResult(spec, model, result.step, result.seconds,
                                   sum(p.numel() for p in model.parameters()), metrics, folder))
        console.print(f"{spec.label}: exact match {100 * metrics['exact_match']:.1f}% "
                      f"after {result.step} steps ({result.seconds:.0f} s)")
    return data.task, results


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


def example_date() -> datetime.date:
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
    locale's long date, plus the Transformer's encoder, decoder and cross-attention in the
    explorer (and its decoder alone)."""
    from attnkit.data.dates import DateTask
    from attnkit.viz import explore
    from attnkit.viz.alignment import align, draw

    vocab = task.tokenizer
    day = example_date()
    dates = DateTask(locales)
    pictures: list[dict[str, Any]] = []
    attending = [r for r in results if r.spec.attention != "none"]
    for locale in locales:
        example = dates.render(day, locale, "long")
        for r in attending:
            [a] = align(r.model, vocab, [example.source], max_len=len(example.target) + 4)
            mark = "correct" if a.prediction == example.target else f"expected {example.target}"
            name = f"alignments/{r.spec.name}-{locale}.png"
            draw(a, out / name, title=f"{r.spec.label} ({locale})\n{example.source} -> {a.prediction} ({mark})")
            pictures.append({"path": name, "model": r.spec.label, "locale": locale, "source": example.source,
                             "prediction": a.prediction, "correct": a.prediction == example.target})
    console.print(f"wrote {len(pictures)} alignment heatmaps to {out / 'alignments'}")

    transformer = next((r for r in results if r.spec.arch == "transformer"), None)
    if transformer is not None:
        example = dates.render(day, locales[0], "long")
        # every kind of the trained Transformer (decoder side: its own greedy output), and its
        # decoder's causal self-attention on a page of its own, as a decoder-only model shows it
        att = explore(transformer.model, example.source, tokenizer=vocab, path=out / "transformer-explorer.html",
                      title=f"Transformer: {example.source}")
        att.save(out / "transformer-decoder.html", kinds=["decoder"],
                 title=f"Transformer decoder (causal self-attention) writing {example.target}")
    return pictures


def write_explanation(task: Any, results: list[ModelResult], locales: tuple[str, ...], out: Path,
                      console: Any) -> Path | None:
    """The Transformer's date alignment explained: AttnLRP beside its raw cross-attention (one page)."""
    from attnkit.data.dates import DateTask
    from attnkit.relevance import explain
    from attnkit.relevance.page import write_page

    transformer = next((r for r in results if r.spec.arch == "transformer"), None)
    if transformer is None:
        return None
    example = DateTask(locales).render(example_date(), locales[0], "long")
    maps = {m: explain(transformer.model, example.source, target=example.target, method=m, tokenizer=task.tokenizer)
            for m in ("attnlrp", "attention")}
    path = write_page(maps, out / "transformer-explain.html", source=transformer.model, text=example.source,
                      target=example.target, tokenizer=task.tokenizer,
                      title=f"Transformer: which characters of {example.source} made {example.target}")
    console.print(f"wrote {path} (AttnLRP beside the raw cross-attention)")
    return path


def write_minilm(out: Path, console: Any, sentence: str = SENTENCE) -> tuple[Any, list[str]]:
    """The MiniLM explorer for ``sentence`` and the "flies" comparison (table + plot)."""
    from attnkit.models.sentence_encoder import SentenceEncoder
    from attnkit.viz import explore
    from attnkit.viz.contextual import similarity_table

    with console.status("loading all-MiniLM-L6-v2"):
        encoder = SentenceEncoder.from_pretrained()
    att = explore(encoder, sentence, path=out / "minilm-explorer.html", title=f"all-MiniLM-L6-v2: {sentence}")
    flies = similarity_table(encoder, path=out / "flies.png", console=console)
    return flies, att.tokens


def run_demo(out: str | Path = "attnkit-demo", *, quick: bool = False, console: Any = None,
             plan: DemoPlan | None = None) -> Path:
    """Run the whole tour into ``out`` and return the path of its ``index.html``."""
    from attnkit.models.sentence_encoder import resolve_model_folder

    console = console or default_console
    plan = plan or (DemoPlan.quick() if quick else DemoPlan())
    check_folder_path("--out", out)  # before anything runs: a bad folder is one line
    resolve_model_folder("all-MiniLM-L6-v2")  # part 2 needs the model package: say so before training
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "alignments").is_dir():
        shutil.rmtree(out / "alignments")  # stale pictures of an earlier run
    start = time.perf_counter()

    console.rule("[bold]1. Alignment: encoder-decoder attention on dates in 48 locales[/bold]")
    task, results = train_models(plan, out, console)
    console.print(accuracy_table(results))
    pictures = write_alignments(task, results, plan.locales, out, console)
    write_explanation(task, results, plan.locales, out, console)

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
    from attnkit.io import atomic_write
    from attnkit.viz.fonts import web_font_css

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
        f'{e(p["source"])} &rarr; {e(p["prediction"])} {"&#10003;" if p["correct"] else "&times;"}'
        f"</figcaption></figure>"
        for p in pictures
    )
    flies_rows = "".join(
        f"<tr><td>{e(name)}</td><td>{a:.3f}</td><td>{b:.3f}</td><td>{c:.3f}</td></tr>"
        for name, a, b, c in flies.rows()
    )
    first = results[0].checkpoint.as_posix() if results else "attnkit-demo/models/rnn-attention"
    has_transformer = (out / "transformer-explorer.html").is_file()
    assets = resources.files("attnkit.cli") / "assets"
    cross_link = (assets / "demo_transformer.html").read_text("utf-8") if has_transformer else ""
    quick_note = ("<p class=note>This was a <code>--quick</code> run (seconds of training): "
                  "run <code>attnkit demo</code> for the full version.</p>" if quick else "")
    template = string.Template((assets / "demo_index.html").read_text("utf-8"))
    fields = dict(
        quick_note=quick_note, rows=rows, figures=figures, flies_rows=flies_rows,
        s1=e(flies.sentences[0]), s2=e(flies.sentences[1]), word=e(flies.word),
        first=e(first), cross_link=cross_link, sentence=e(SENTENCE),
    )
    # The glyphs of every character the page shows outside ASCII (its captions are in 18 scripts).
    shown = html.unescape(template.substitute(fields, fonts=""))
    page = template.substitute(fields, fonts=web_font_css([shown]))
    return atomic_write(out / "index.html", page)


# ----------------------------------------------------------------------------- the command


@user_errors
def demo(
    out: str = typer.Option("attnkit-demo", "--out", help="folder for the pictures, models and index.html"),
    quick: bool = typer.Option(False, "--quick", help="a smoke run in under a minute (tiny training budgets)"),
) -> None:
    """The guided tour: train three date translators, draw their alignments, explore MiniLM's heads."""
    run_demo(out, quick=quick)  # prints the path of index.html
