"""The ``attnkit`` command (Typer).

Every command turns a ``ValueError``/``FileNotFoundError`` into one red line on stderr and
exit code 2, with no traceback. Heavy imports (matplotlib, tokenizers, training) happen
inside the commands, so ``attnkit --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="attnkit",
    help="Attention you can trust, run fast, train and see.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """attnkit: attention you can trust, run fast, train and see."""


def fail(message: str) -> None:
    """Print one red line and exit with code 2."""
    err_console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


# --------------------------------------------------------------------------- commands
# Each issue adds its commands below: demo, train, translate, evaluate, embed, show, bench.


@app.command()
def bench(
    names: list[str] = typer.Argument(None, help="benchmark scripts to run (e.g. attention embedding); default all"),
    quick: bool = typer.Option(False, "--quick", help="small sizes, few repeats (smoke run; results not saved)"),
) -> None:
    """Run the peer-vs-attnkit benchmarks of a source checkout and regenerate benchmarks/RESULTS.md."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    if not (root / "run_all.py").is_file():
        fail(f"no benchmarks/ folder next to the package ({root}); run from a source checkout (pip install -e .)")
    args = ["--quick", "--no-save"] if quick else []
    if names:
        scripts = [root / f"{n.removesuffix('.py')}.py" for n in names]
        missing = [s.name for s in scripts if not s.is_file()]
        if missing:
            known = sorted(p.stem for p in root.glob("*.py") if p.stem not in ("harness", "run_all"))
            fail(f"unknown benchmark(s) {', '.join(missing)}; available: {', '.join(known)}")
        rc = max(subprocess.call([sys.executable, str(s), *args]) for s in scripts)
        if not quick:
            subprocess.call([sys.executable, "-c", "import run_all; print('wrote', run_all.write_results())"], cwd=root)
    else:
        rc = subprocess.call([sys.executable, str(root / "run_all.py"), *args])
    raise typer.Exit(code=rc)


# ---- train / translate / evaluate (RNN/training engineer) ---------------------------------


@app.command()
def train(
    task: str = typer.Option("dates", "--task", help="dates | reverse | copy | tsv:PATH"),
    arch: str = typer.Option("rnn", "--arch", help="rnn | transformer"),
    attention: str = typer.Option("additive", "--attention", help="RNN attention: additive | general | dot | none"),
    out: str = typer.Option(..., "--out", help="checkpoint directory (written atomically)"),
    steps: int = typer.Option(None, "--steps", help="optimizer steps, the schedule length [default: rnn 1000, transformer 2000]"),
    time_budget: float = typer.Option(None, "--time-budget", help="stop after this many seconds (validation included)"),
    resume: bool = typer.Option(False, "--resume", help="continue the checkpoint in --out (same result as one run)"),
    target: float = typer.Option(None, "--target", help="stop once validation exact match reaches this (0-1)"),
    batch_size: int = typer.Option(None, "--batch-size", help="examples per step"),
    lr: float = typer.Option(None, "--lr", help="peak learning rate"),
    hidden: int = typer.Option(None, "--hidden", help="RNN hidden size / Transformer embedding size"),
    cell: str = typer.Option("gru", "--cell", help="RNN cell: gru | lstm"),
    n_train: int = typer.Option(100_000, "--n-train", help="generated training examples (dates/reverse/copy)"),
    tokenizer: str = typer.Option("char", "--tokenizer", help="tsv: char | bpe"),
    strict: bool = typer.Option(False, "--strict", help="tsv: fail on the first bad line (default: skip and count)"),
    eval_every: int = typer.Option(250, "--eval-every", help="validate every N steps"),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every", help="checkpoint every N steps (0 = end only)"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Train a seq2seq model (RNN with attention, or Transformer) and save a checkpoint in --out."""
    try:
        from attnkit.train import train_command

        result = train_command(task=task, arch=arch, attention=attention, out=out, steps=steps,
                               time_budget=time_budget, resume=resume, target=target, batch_size=batch_size,
                               lr=lr, hidden=hidden, cell=cell, n_train=n_train, tokenizer=tokenizer, strict=strict,
                               eval_every=eval_every, checkpoint_every=checkpoint_every, seed=seed,
                               threads=threads, progress=not quiet, console=console)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    except RuntimeError as exc:  # under torchrun: another rank died (message names the checkpoint)
        from attnkit.distributed import PeerLostError

        if not isinstance(exc, PeerLostError):
            raise
        fail(str(exc))
    import torch.distributed as dist

    m = result.metrics
    acc = f"exact match {100 * m['exact_match']:.2f}%, char accuracy {100 * m['char_accuracy']:.2f}%" if m else "no validation"
    if not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):  # rank 0 reports
        console.print(f"step {result.step} ({result.stopped}, {result.seconds:.0f} s): {acc} -> {out}", highlight=False)
    if result.stopped in ("SIGINT", "SIGTERM"):
        raise typer.Exit(code=130 if result.stopped == "SIGINT" else 143)


@app.command()
def translate(
    checkpoint: str = typer.Argument(..., help="checkpoint directory written by `attnkit train`"),
    texts: list[str] = typer.Argument(..., help="inputs to translate; `-` reads one per line from stdin"),
    beam: int = typer.Option(1, "--beam", help="beam size (1 = greedy)"),
    alignment: str = typer.Option(None, "--alignment", help="write the attention heatmap (input x output characters) here"),
    max_len: int = typer.Option(None, "--max-len", help="longest output in tokens"),
) -> None:
    """Translate inputs with a trained checkpoint: `attnkit translate DIR "24. November 2026"` -> 2026-11-24."""
    try:
        from attnkit.train import translate_command

        if "-" in texts:
            stdin = [line.rstrip("\r\n") for line in sys.stdin]
            texts = [t for x in texts for t in (stdin if x == "-" else [x])]
        outputs = translate_command(checkpoint, texts, beam=beam, alignment=alignment, max_len=max_len)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for line in outputs:
        typer.echo(line)


@app.command()
def evaluate(
    checkpoint: str = typer.Argument(..., help="checkpoint directory written by `attnkit train`"),
    task: str = typer.Option(None, "--task", help="dates | reverse | copy | tsv:PATH (default: the checkpoint's task)"),
    beam: int = typer.Option(1, "--beam", help="beam size (1 = greedy)"),
    as_json: bool = typer.Option(False, "--json", help='print one JSON object {"exact_match", "char_accuracy", "n"}'),
) -> None:
    """Exact match and character accuracy on the task's held-out split (a TSV's last 10%)."""
    import json as _json

    try:
        from attnkit.train import evaluate_command

        metrics = evaluate_command(checkpoint, task=task, beam=beam, progress=not as_json)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(_json.dumps(metrics))
    else:
        console.print(f"exact match {100 * metrics['exact_match']:.2f}%  char accuracy "
                      f"{100 * metrics['char_accuracy']:.2f}%  (n={metrics['n']})", highlight=False)


# ---- show / demo (viz engineer) --------------------------------------------------------


@app.command()
def show(
    text: str = typer.Argument(..., help="the text whose self-attention to show"),
    model: str = typer.Option("all-MiniLM-L6-v2", "--model", help="sentence-transformers BERT folder or known name"),
    out: str = typer.Option("view.html", "--out", help="the explorer page to write (one offline HTML file)"),
    png: str = typer.Option(None, "--png", help="also write one heatmap per layer (mean over heads) to this folder"),
) -> None:
    """Write the attention explorer (head view + model view) of a pretrained encoder for TEXT."""
    try:
        from attnkit.demo import show_command

        path, pngs = show_command(text, model=model, out=out, png=png)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(f"wrote {path}" + (f" and {len(pngs)} heatmaps in {png}" if pngs else ""), highlight=False)


@app.command()
def demo(
    out: str = typer.Option("attnkit-demo", "--out", help="folder for the pictures, models and index.html"),
    quick: bool = typer.Option(False, "--quick", help="a smoke run in under a minute (tiny training budgets)"),
) -> None:
    """The guided tour: train three date translators, draw their alignments, explore MiniLM's heads."""
    try:
        from attnkit.demo import run_demo

        run_demo(out, quick=quick, console=console)  # prints the path of index.html
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


# ---- embed (BERT engineer) --------------------------------------------------------------


@app.command()
def embed(
    input_file: str = typer.Argument(..., metavar="INPUT.txt", help="UTF-8 text file, one text per line"),
    out: str = typer.Option(..., "--out", help="output: .npy (float32 matrix) or .jsonl ({text, embedding} per line)"),
    model: str = typer.Option("all-MiniLM-L6-v2", "--model", help="sentence-transformers BERT folder or known name"),
    batch_size: int = typer.Option(32, "--batch-size", help="texts per batch on the padded path"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Embed each line of INPUT.txt with a pretrained sentence encoder (packed: no compute on padding)."""
    try:
        from attnkit.models.bert import embed_file

        n, cut, dim = embed_file(input_file, out, model=model, batch_size=batch_size, progress=not quiet)
    except (ValueError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
    note = f", {cut} truncated to the model's max_seq_length" if cut else ""
    console.print(f"embedded {n} lines ({dim} dims{note}) -> {out}", highlight=False)


def main() -> None:
    """Entry point: run the app, mapping user errors to one red line and exit code 2."""
    try:
        app()
    except (ValueError, FileNotFoundError, NotADirectoryError, UnicodeDecodeError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
