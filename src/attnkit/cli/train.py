"""``attnkit train``, ``attnkit translate`` and ``attnkit evaluate``: a seq2seq model from a
task to a checkpoint, and back to answers and accuracies.

The ``*_command`` functions are the workflows (usable from Python); the Typer commands below
only parse options and print.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from attnkit.cli.console import check_file_path, console, file_in_the_way, user_errors, write_failed

__all__ = ["evaluate", "evaluate_command", "train", "train_command", "translate", "translate_command"]


# ----------------------------------------------------------------------------- workflows


def train_command(
    *, task: str, arch: str, attention: str, out: str | Path, steps: int | None = None,
    time_budget: float | None = None, resume: bool = False, target: float | None = None,
    batch_size: int | None = None, lr: float | None = None, hidden: int | None = None, cell: str = "gru",
    n_train: int = 100_000, n_test: int = 2_000, tokenizer: str = "char", strict: bool = False,
    eval_every: int = 250, checkpoint_every: int = 1000, seed: int = 0, threads: int | None = None,
    dtype: str | None = None, progress: bool = True,
) -> Any:
    """``attnkit train``: build (or, with ``resume``, reload) the model and task, train, save.

    Without ``resume`` an existing checkpoint in ``out`` is an error (nothing is touched);
    with ``resume`` the task, architecture and attention must match the checkpoint's, and
    the saved training settings are reused (``steps``/``time_budget``/``target`` may be
    changed; the rest would change the result, and one given that differs is a ValueError). ``dtype`` is the training compute dtype
    (``TrainConfig.dtype``: ``"float32"``, the default of a new run, or ``"bfloat16"`` autocast); a
    resume keeps the checkpoint's and refuses another. Returns the :class:`~attnkit.training.TrainResult`."""
    import torch

    from attnkit.data import canonical_task, load_task, load_tokenizer
    from attnkit.distributed import init_distributed
    from attnkit.models.checkpoint import (
        is_checkpoint,
        load_trainer_state,
        new_model,
        read_manifest,
    )
    from attnkit.runtime import keep_freed_memory
    from attnkit.training import (
        ARCHS,
        TRAIN_DEFAULTS,
        TrainConfig,
        Trainer,
        build_model,
        encode_task,
        task_from_meta,
    )
    from attnkit.training.trainer import TRAIN_DTYPES, check_resume

    _check_train_options(out=out, resume=resume, time_budget=time_budget, batch_size=batch_size, lr=lr,
                         seed=seed, threads=threads, steps=steps, target=target, hidden=hidden, n_train=n_train,
                         eval_every=eval_every, checkpoint_every=checkpoint_every)
    _check_choices(attention=attention, cell=cell, tokenizer=tokenizer)
    if threads is not None:
        torch.set_num_threads(threads)
    keep_freed_memory()
    init_distributed()  # under torchrun: join its process group (gloo on CPU, nccl on GPU); else no-op
    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {ARCHS}, got {arch!r}")
    if dtype not in (None, *TRAIN_DTYPES):
        raise ValueError(f"--dtype must be one of {TRAIN_DTYPES}, got {dtype!r}")
    out = Path(out)
    overrides = {k: v for k, v in {"steps": steps, "time_budget": time_budget, "target_accuracy": target}.items()
                 if v is not None}
    budget_only = {"steps": None} if time_budget is not None and steps is None else {}  # the budget sets the length
    if resume:
        manifest = read_manifest(out)  # every file hashed, once
        meta = dict(manifest["meta"])
        saved_task = meta.get("task")
        same_task = saved_task is not None and canonical_task(task) == canonical_task(saved_task)
        asked = {"task": saved_task if same_task else task, "arch": arch,
                 **({"attention": attention} if arch == "rnn" else {})}
        try:
            check_resume(out, manifest, expected=asked, dtype=dtype)
        except ValueError as exc:
            raise ValueError(f"--resume: {exc}") from None
        state = load_trainer_state(out, manifest=manifest)
        _check_resume_options(manifest, state["train_config"], arch=arch, given={
            "batch_size": batch_size, "lr": lr, "hidden": hidden, "cell": cell, "n_train": n_train,
            "eval_every": eval_every, "checkpoint_every": checkpoint_every, "seed": seed})
        config = TrainConfig(**{**state["train_config"], **overrides, "progress": progress})
        data = encode_task(task_from_meta(meta, task), load_tokenizer(out))
        trainer = Trainer(new_model(manifest), data.train, data.test, config, tokenizer=data.tokenizer, out_dir=out,
                          meta=meta)
        trainer.resume(manifest=manifest)
        return trainer.fit()

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        hint = "; pass --resume to continue it" if is_checkpoint(out) else ""
        raise ValueError(f"--out {out} already exists and is not empty{hint}; nothing was overwritten")
    options: dict[str, Any] = {"seed": seed, "n_test": n_test}
    if not task.startswith("tsv:"):
        options["n_train"] = n_train
    else:
        options.update(tokenizer=tokenizer, strict=strict)
    task_obj = load_task(task, **options)
    if task_obj.info.get("report"):
        console.print(f"[yellow]{task_obj.info['report']}[/yellow]", highlight=False)
    data = encode_task(task_obj)
    tok = data.tokenizer
    longest = max(max(len(s), len(t)) for s, t in [*data.train, *data.test])
    sizes: dict[str, Any] = {}
    if hidden is not None:
        sizes["hidden_dim" if arch == "rnn" else "embed_dim"] = hidden
    if arch == "rnn":
        sizes["cell"] = cell
    torch.manual_seed(seed)
    try:
        model = build_model(arch, len(tok), attention=attention, pad_id=tok.pad_id, bos_id=tok.bos_id,
                            eos_id=tok.eos_id, max_len=max(512, longest + 8), **sizes)
    except (MemoryError, RuntimeError) as exc:  # torch's CPU allocator raises RuntimeError
        if not _out_of_memory(exc):
            raise
        raise ValueError(f"--hidden {hidden}: the model does not fit in memory ({_out_of_memory(exc)})") from None
    defaults = TRAIN_DEFAULTS[arch]
    config = TrainConfig(**{
        **defaults, "batch_size": defaults["batch_size"] if batch_size is None else batch_size,
        "lr": defaults["lr"] if lr is None else lr, "eval_every": eval_every,
        "checkpoint_every": checkpoint_every, "seed": seed, "dtype": dtype or "float32", "progress": progress,
        **overrides, **budget_only,
    })
    meta = {"task": canonical_task(task), "task_options": {k: v for k, v in options.items() if k not in ("tokenizer", "strict")}, "arch": arch,
            "max_len": max(len(t) for _, t in data.train) + 8, "task_info": task_obj.info}
    trainer = Trainer(model, data.train, data.test, config, tokenizer=tok, out_dir=out, meta=_jsonable(meta))
    return trainer.fit()


def _check_resume_options(manifest: dict[str, Any], train_config: dict[str, Any], *, arch: str,
                          given: dict[str, Any]) -> None:
    """A resume keeps the checkpoint's settings: an option given with ``--resume`` (``given``:
    :func:`train_command`'s parameter -> value; one not at that parameter's default) that differs
    from the checkpoint's is a ValueError naming both values (``--steps``, ``--time-budget`` and
    ``--target`` may change)."""
    config, options = manifest["config"], manifest["meta"].get("task_options", {})
    unset = {name: p.default for name, p in inspect.signature(train_command).parameters.items()}
    saved = {"batch_size": train_config.get("batch_size"), "lr": train_config.get("lr"),
             "hidden": config.get("hidden_dim" if arch == "rnn" else "embed_dim"),
             "cell": config.get("cell", unset["cell"]) if arch == "rnn" else unset["cell"],
             "n_train": options.get("n_train", unset["n_train"]),
             "eval_every": train_config.get("eval_every"), "checkpoint_every": train_config.get("checkpoint_every"),
             "seed": train_config.get("seed")}
    changed = [f"--{name.replace('_', '-')} {value} (the checkpoint's: {saved[name]})" for name, value in given.items()
               if value != unset[name] and value != saved[name]]
    if changed:
        raise ValueError(f"--resume continues the checkpoint's run with its own settings; these differ: "
                         f"{', '.join(changed)}. Leave them out (only --steps, --time-budget and --target may "
                         f"change), or start a new run in another --out")


def _check_choices(*, attention: str, cell: str, tokenizer: str) -> None:
    """ValueError naming the option for a value that is not one of its choices (case matters; the
    RNN's attention and cell are checked for a Transformer too: a misspelt value is an error, not
    silently unused)."""
    from attnkit.data.tsv import TOKENIZERS
    from attnkit.rnn import _ATTENTIONS, _CELLS

    for option, value, choices in (("--attention", attention, _ATTENTIONS), ("--cell", cell, _CELLS),
                                   ("--tokenizer", tokenizer, TOKENIZERS)):
        if value not in choices:
            raise ValueError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def _out_of_memory(exc: BaseException) -> str | None:
    """What an allocation failure says (``MemoryError``, torch's "can't allocate memory"), else None."""
    text = str(exc)
    if isinstance(exc, MemoryError):
        return text or "out of memory"
    if "can't allocate memory" in text or "out of memory" in text.lower():
        return text.split("can't allocate memory: ")[-1].split(". Error code")[0]
    if "size calculation overflowed" in text:  # a tensor of more bytes than an int64 counts
        return "a weight would hold more bytes than memory can address"
    return None


#: The largest seed torch accepts (a signed 64-bit integer).
MAX_SEED = 2**63 - 1


def _check_train_options(*, out: str | Path, resume: bool, time_budget: float | None, batch_size: int | None,
                         lr: float | None, seed: int, threads: int | None, steps: int | None = None,
                         target: float | None = None, hidden: int | None = None, n_train: int = 1,
                         eval_every: int = 1, checkpoint_every: int = 0) -> None:
    """Raise ``ValueError`` (one line naming the option and its value) for an option that would
    fail, or be ignored, only once the task is built or training has started or ended."""
    for name, value, least in (("--steps", steps, 1), ("--hidden", hidden, 1), ("--n-train", n_train, 1),
                               ("--eval-every", eval_every, 1), ("--checkpoint-every", checkpoint_every, 0)):
        if value is not None and value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if target is not None and not 0 < target <= 1:
        raise ValueError(f"--target is a held-out exact match in (0, 1], got {target}")
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise ValueError(f"--time-budget must be a finite number of seconds > 0, got {time_budget}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {lr}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    _check_out(Path(out), resume=resume)


def _check_out(out: Path, *, resume: bool) -> None:
    """Refuse an ``--out`` the checkpoint cannot be renamed into: the current folder, one of its
    ancestors, or a path below a file (the checkpoint is written beside ``out`` and renamed to it)."""
    target = Path(os.path.realpath(out))
    cwd = Path(os.path.realpath(Path.cwd()))
    if target == cwd or target in cwd.parents:
        where = "the current folder" if target == cwd else "an ancestor of the current folder"
        raise ValueError(f"--out {out} is {where}; name a folder below it")
    if resume:
        return  # the checkpoint exists: read_manifest reports a missing or wrong one
    if (blocker := file_in_the_way(target)) is not None:
        raise ValueError(f"--out {out}: {blocker} is not a folder")


def _jsonable(obj: Any) -> Any:
    """``obj`` with anything JSON cannot hold turned into a string."""
    return json.loads(json.dumps(obj, default=str))


def translate_command(checkpoint: str | Path, texts: Sequence[str], *, beam: int = 1,
                      alignment: str | Path | None = None, max_len: int | None = None) -> list[str]:
    """``attnkit translate``: decode ``texts`` with a checkpoint; with ``alignment`` also
    write the attention heatmap (input x output tokens) of each input (``out.png``, or
    ``out-1.png``, ``out-2.png``, ... for several inputs)."""
    from attnkit.data import load_tokenizer
    from attnkit.models.checkpoint import load, read_manifest
    from attnkit.viz.alignment import align, draw

    if not texts:
        raise ValueError("nothing to translate: give one or more inputs, or - to read stdin")
    if beam < 1:
        raise ValueError(f"--beam must be >= 1, got {beam}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"--max-len must be >= 1, got {max_len}")
    if alignment is not None:
        _check_alignment(alignment)
    manifest = read_manifest(checkpoint)
    if max_len is None:
        max_len = manifest["meta"].get("max_len", 64)
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"{Path(checkpoint) / 'config.json'}: meta.max_len must be an integer >= 1, "
                             f"got {max_len!r}")
    model = load(checkpoint, manifest=manifest)
    tok = load_tokenizer(checkpoint)
    alignments = align(model, tok, texts, max_len=max_len, beam_size=beam)
    if alignment is not None:
        path = Path(alignment)
        for i, a in enumerate(alignments):
            try:
                draw(a, path if len(texts) == 1 else path.with_name(f"{path.stem}-{i + 1}{path.suffix}"))
            except OSError as exc:  # a full disk, a folder that became unwritable
                raise ValueError(write_failed(exc, "--alignment", alignment)) from None
    return [a.prediction for a in alignments]


def _check_alignment(alignment: str | Path) -> None:
    """ValueError naming ``--alignment`` unless it is a picture file that can be written (not a
    folder, not below a file, a format matplotlib writes), before any model runs."""
    from matplotlib.figure import Figure

    check_file_path("--alignment", alignment, what="picture file (e.g. align.png)")
    fmt = Path(alignment).suffix[1:].lower()
    known = Figure().canvas.get_supported_filetypes()
    if fmt and fmt not in known:
        raise ValueError(f"--alignment {alignment}: unknown picture format {fmt!r}; use one of "
                         f"{', '.join(sorted(known))}")


def evaluate_command(checkpoint: str | Path, *, task: str | None = None, beam: int = 1,
                     progress: bool = True) -> dict[str, float]:
    """``attnkit evaluate``: exact match and character accuracy of a checkpoint on the
    held-out split of its task (or of ``task``)."""
    from attnkit.data import encode_pairs, load_tokenizer
    from attnkit.models.checkpoint import load, read_manifest
    from attnkit.progress import progress_bar
    from attnkit.training import evaluate as evaluate_model
    from attnkit.training import task_from_meta

    if beam < 1:
        raise ValueError(f"--beam must be >= 1, got {beam}")
    manifest = read_manifest(checkpoint)
    model = load(checkpoint, manifest=manifest)
    tok = load_tokenizer(checkpoint)
    data = encode_pairs(tok, task_from_meta(manifest["meta"], task, train=False).test)
    if not data:
        raise ValueError(f"the held-out split of task {task or manifest['meta'].get('task')!r} is empty")
    with progress_bar("evaluate", len(data), enabled=progress, transient=True) as bar:
        return evaluate_model(model, data, beam_size=beam, progress=lambda n: bar.update(advance=n))


# ----------------------------------------------------------------------------- commands


@user_errors
def train(
    task: str = typer.Option("dates", "--task", help="dates | reverse | copy | tsv:PATH"),
    arch: str = typer.Option("rnn", "--arch", help="rnn | transformer"),
    attention: str = typer.Option("additive", "--attention", help="RNN attention: additive | general | dot | none"),
    out: str = typer.Option(..., "--out", help="checkpoint directory (written atomically)"),
    steps: int = typer.Option(None, "--steps", help="optimizer steps, the schedule length [default: rnn 2000, transformer 2400; with --time-budget: no limit]"),
    time_budget: float = typer.Option(None, "--time-budget", help="train this many seconds (validation included): the learning-rate schedule is fitted to end then"),
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
    dtype: str = typer.Option(None, "--dtype", help="compute dtype: float32 | bfloat16 (autocast; weights and optimizer stay float32) [default: float32, or the checkpoint's with --resume]"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Train a seq2seq model (RNN with attention, or Transformer) and save a checkpoint in --out."""
    import torch.distributed as dist

    result = train_command(task=task, arch=arch, attention=attention, out=out, steps=steps,
                           time_budget=time_budget, resume=resume, target=target, batch_size=batch_size,
                           lr=lr, hidden=hidden, cell=cell, n_train=n_train, tokenizer=tokenizer, strict=strict,
                           eval_every=eval_every, checkpoint_every=checkpoint_every, seed=seed,
                           threads=threads, dtype=dtype, progress=not quiet)
    m = result.metrics
    acc = f"exact match {100 * m['exact_match']:.2f}%, char accuracy {100 * m['char_accuracy']:.2f}%" if m else "no validation"
    if not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):  # rank 0 reports
        console.print(f"step {result.step} ({result.stopped}, {result.seconds:.0f} s): {acc} -> {out}", highlight=False)
    if result.stopped in ("SIGINT", "SIGTERM"):
        raise typer.Exit(code=130 if result.stopped == "SIGINT" else 143)


@user_errors
def translate(
    checkpoint: str = typer.Argument(..., help="checkpoint directory written by `attnkit train`"),
    texts: list[str] = typer.Argument(..., help="inputs to translate; `-` reads one per line from stdin"),
    beam: int = typer.Option(1, "--beam", help="beam size (1 = greedy)"),
    alignment: str = typer.Option(None, "--alignment", help="write the attention heatmap (input x output characters) to this picture file (.png, .svg, .pdf, ...; several inputs: NAME-1.png, NAME-2.png, ...)"),
    max_len: int = typer.Option(None, "--max-len", help="longest output in tokens"),
) -> None:
    """Translate inputs with a trained checkpoint: `attnkit translate DIR "24. November 2026"` -> 2026-11-24."""
    if "-" in texts:
        stdin = [line.rstrip("\r\n") for line in sys.stdin]
        texts = [t for x in texts for t in (stdin if x == "-" else [x])]
    for line in translate_command(checkpoint, texts, beam=beam, alignment=alignment, max_len=max_len):
        typer.echo(line)


@user_errors
def evaluate(
    checkpoint: str = typer.Argument(..., help="checkpoint directory written by `attnkit train`"),
    task: str = typer.Option(None, "--task", help="dates | reverse | copy | tsv:PATH (default: the checkpoint's task)"),
    beam: int = typer.Option(1, "--beam", help="beam size (1 = greedy)"),
    as_json: bool = typer.Option(False, "--json", help='print one JSON object {"exact_match", "char_accuracy", "n"}'),
) -> None:
    """Exact match and character accuracy on the task's held-out split (a TSV's last 10%)."""
    metrics = evaluate_command(checkpoint, task=task, beam=beam, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        console.print(f"exact match {100 * metrics['exact_match']:.2f}%  char accuracy "
                      f"{100 * metrics['char_accuracy']:.2f}%  (n={metrics['n']})", highlight=False)
