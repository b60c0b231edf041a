"""Bahdanau et al. (2015), Figure 2: quality against input length, with and without attention.

One fixed vector is a bottleneck: an encoder-decoder whose decoder only sees the encoder's
last state (``RNNConfig(attention="none")``, the Cho et al. RNN encoder-decoder) has to
squeeze the whole input into it, so its accuracy falls as inputs grow; with additive
attention (Bahdanau) the decoder looks back at every encoder state and holds its accuracy.

Task: ``reverse`` (attnkit.data.synthetic) with inputs of 10..80 tokens (26 letters). Both
models have the same size and hyper-parameters except the attention, and train for the
same wall-clock budget (``--budget`` seconds each; batches grouped by length so padding
costs little; a constant rate after 50 warm-up steps, because the attention model's
accuracy jumps once it has learned to find positions, and a decaying rate can stall it
just before that). Exact match is measured per input-length bucket on the
held-out split (sequences never seen in training) and written as a table (rows below,
ratio = attention / no attention) and a plot, ``benchmarks/length.png``.

The date task (attnkit.data.dates, 48 locales) is trained the same way with both models
(``--dates-budget`` seconds each) and its held-out exact match is reported beside them.

Rows: ``peer`` = RNN without attention, ``attnkit`` = RNN with additive attention; unit %
exact match; when the peer got 0 examples right its figure is floored at one example
(100/n %) for the ratio, so that ratio is a lower bound (the note says so).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import attnkit as ak  # noqa: E402
from attnkit.data import Task, encode_pairs, load_task, synthetic  # noqa: E402
from attnkit.rnn import RNNConfig  # noqa: E402
from attnkit.training import (  # noqa: E402
    TRAIN_DEFAULTS,
    TrainConfig,
    Trainer,
    TrainResult,
    build_model,
    evaluate,
)

BENCH = "length"
HERE = Path(__file__).resolve().parent
BUCKETS = [(10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 80)]
MODELS = {"attention": "additive", "no attention": "none"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small budgets and test sets (smoke test)")
    p.add_argument("--no-save", action="store_true", help="print only; write neither results/ nor the plot")
    p.add_argument("--budget", type=float, default=None, help="seconds of reverse-task training per model")
    p.add_argument("--dates-budget", type=float, default=None, help="seconds of date-task training per model")
    p.add_argument("--hidden", type=int, default=128, help="RNN hidden size (both models)")
    p.add_argument("--attention-dim", type=int, default=32, help="additive attention hidden size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--schedule", default="constant", choices=("constant", "cosine"),
                   help="reverse task: constant after warm-up (attention has to find the positions "
                        "before the rate decays) or cosine fitted to the budget")
    p.add_argument("--per-bucket", type=int, default=None, help="held-out examples per length bucket")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest for these small per-step ops on a shared machine)")
    return p.parse_args()


def calibrate_steps(model: torch.nn.Module, data: list, config: TrainConfig, budget: float) -> int:
    """Steps that fit in ``budget`` seconds, timed on a copy of ``model`` (so the cosine
    schedule ends about when the budget does; the budget still stops training)."""
    probe = Trainer(copy.deepcopy(model), data, None, config)
    probe.train_step(0)  # warm-up
    start, n = time.perf_counter(), 6
    for step in range(1, n + 1):
        probe.train_step(step)
    per_step = (time.perf_counter() - start) / n
    return max(50, int(0.95 * budget / per_step))


def train(name: str, task: Task, model: torch.nn.Module, budget: float, *, batch_size: int,
          lr: float, warmup: int = 100, schedule: str = "cosine") -> tuple[torch.nn.Module, TrainResult]:
    """Train ``model`` on ``task`` for ``budget`` seconds (warm-up, then ``schedule``; no
    validation during training: all of the budget goes to optimisation)."""
    data = encode_pairs(task.tokenizer, task.train)
    # batches of similar length (runs of 50 batches sorted by length): padding costs little
    settings = {"batch_size": batch_size, "lr": lr, "seed": 0, "length_group": 50}
    if schedule == "constant":
        steps = 10**7  # the budget stops it
    else:
        steps = calibrate_steps(model, data, TrainConfig(steps=100, warmup_steps=1, progress=False, **settings),
                                budget)
    tcfg = TrainConfig(steps=steps, warmup_steps=min(warmup, steps // 5), schedule=schedule,
                       time_budget=budget, eval_every=steps, **settings)
    print(f"-- {task.name}: RNN, {name} ({sum(p.numel() for p in model.parameters()):,} parameters), "
          f"{budget:.0f} s, " + (f"about {steps} steps" if steps < 10**7 else "constant rate"), flush=True)
    result = Trainer(model, data, None, tcfg).fit()
    print(f"   {result.step} steps in {result.seconds:.0f} s, stopped by {result.stopped}", flush=True)
    return model, result


def rnn_config(vocab_size: int, attention: str, args: argparse.Namespace) -> RNNConfig:
    return RNNConfig(src_vocab_size=vocab_size, embed_dim=64, hidden_dim=args.hidden, attention=attention,
                     attention_dim=args.attention_dim if attention == "additive" else None)


def plot(exact: dict[str, list[float]], chars: dict[str, list[float]], path: Path, budget: float) -> None:
    """Exact match (left) and character accuracy (right) per input-length bucket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mids = [(lo + hi) / 2 for lo, hi in BUCKETS]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0), dpi=120)
    for ax, rows, label in zip(axes, (exact, chars), ("exact match", "character accuracy"), strict=True):
        for (name, values), style in zip(rows.items(), ("o-", "s--"), strict=False):
            ax.plot(mids, values, style, label=f"RNN, {name}")
        ax.set_xlabel("input length (tokens)")
        ax.set_ylabel(f"{label} on held-out inputs (%)")
        ax.set_ylim(-3, 103)
        ax.set_xticks([lo for lo, _ in BUCKETS] + [80])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Reversing sequences: attention vs one fixed vector ({budget:.0f} s of training each)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    load0 = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    budget = args.budget or (20.0 if args.quick else 480.0)
    dates_budget = args.dates_budget or (10.0 if args.quick else 180.0)
    per_bucket = args.per_bucket or (20 if args.quick else 100)
    n_train = 20_000 if args.quick else 200_000

    # ---------------------------------------------------------------- reverse, 10..80 tokens
    task = load_task("reverse", n_train=n_train, n_test=200, seed=0, lengths=(10, 80))
    buckets = {b: synthetic.generate("reverse", per_bucket, seed=1, split="test", lengths=b) for b in BUCKETS}
    results: dict[str, list[float]] = {}
    char_acc: dict[str, list[float]] = {}
    steps: dict[str, int] = {}
    for name, attention in MODELS.items():
        torch.manual_seed(0)
        model = ak.RNNSeq2Seq(rnn_config(len(task.tokenizer), attention, args))
        model, result = train(name, task, model, budget, batch_size=args.batch_size, lr=args.lr,
                              warmup=50, schedule=args.schedule)
        steps[name] = result.step
        results[name], char_acc[name] = [], []
        for b, pairs in buckets.items():
            m = evaluate(model, encode_pairs(task.tokenizer, pairs), max_len=b[1] + 2)
            results[name].append(100 * m["exact_match"])
            char_acc[name].append(100 * m["char_accuracy"])
        print("   exact match per bucket: " + ", ".join(
            f"{lo}-{hi}: {v:.0f}%" for (lo, hi), v in zip(BUCKETS, results[name], strict=True))
            + "; character accuracy: " + ", ".join(f"{v:.0f}%" for v in char_acc[name]), flush=True)

    floor = 100 / per_bucket
    for (lo, hi), ours, peer in zip(BUCKETS, results["attention"], results["no attention"], strict=True):
        note = f"n={per_bucket}" + (f"; peer 0/{per_bucket}, ratio vs a 1-example floor (lower bound)"
                                    if peer == 0 else "")
        harness.record(BENCH, f"reverse, inputs {lo}-{hi} tokens", "RNN, no attention", max(peer, floor),
                       ours, "% exact match", note=note)

    # ---------------------------------------------------------------- dates
    dates = load_task("dates", n_train=n_train, n_test=1000 if not args.quick else 200, seed=0)
    dates_em: dict[str, float] = {}
    defaults = TRAIN_DEFAULTS["rnn"]  # the date model of `attnkit train --arch rnn`
    for name, attention in MODELS.items():
        torch.manual_seed(0)
        model = build_model("rnn", len(dates.tokenizer), attention=attention)
        model, _ = train(name, dates, model, dates_budget, batch_size=defaults["batch_size"],
                         lr=defaults["lr"], warmup=defaults["warmup_steps"])
        m = evaluate(model, encode_pairs(dates.tokenizer, dates.test), max_len=12)
        dates_em[name] = 100 * m["exact_match"]
        print(f"   dates held-out exact match: {dates_em[name]:.1f}%", flush=True)
    peer = dates_em["no attention"]
    harness.record(BENCH, f"dates, 48 locales, held-out (n={len(dates.test)})", "RNN, no attention",
                   max(peer, 100 / len(dates.test)), dates_em["attention"], "% exact match",
                   note=f"{dates_budget:.0f} s training each")

    header = "| input tokens | " + " | ".join(f"{lo}-{hi}" for lo, hi in BUCKETS) + " |"
    table = [header, "|---" * (len(BUCKETS) + 1) + "|"]
    for name, values in results.items():
        table.append(f"| RNN, {name} ({steps[name]} steps) | " + " | ".join(f"{v:.0f}%" for v in values) + " |")
    print("\n".join(table))
    extra = {
        "setup": (f"reverse task, {n_train:,} training sequences of 10-80 letters; GRU bi-encoder, hidden "
                  f"{args.hidden}, additive attention dim {args.attention_dim}; batch {args.batch_size}, "
                  f"lr {args.lr}, 50 warm-up steps then {args.schedule}; {budget:.0f} s of training per model, "
                  f"{torch.get_num_threads()} thread(s); dates: `attnkit train --arch rnn` defaults"),
        "load average (1 min) at start / end": f"{load0:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        **{f"exact match by input length, RNN {name} ({steps[name]} steps)":
           ", ".join(f"{lo}-{hi}: {v:.0f}%" for (lo, hi), v in zip(BUCKETS, values, strict=True))
           for name, values in results.items()},
        **{f"character accuracy by input length, RNN {name}":
           ", ".join(f"{lo}-{hi}: {v:.0f}%" for (lo, hi), v in zip(BUCKETS, values, strict=True))
           for name, values in char_acc.items()},
        "dates held-out exact match": ", ".join(f"{k} {v:.1f}%" for k, v in dates_em.items())
        + f" ({dates_budget:.0f} s each)",
        "plot": "benchmarks/length.png",
    }
    if not args.no_save:
        plot(results, char_acc, HERE / "length.png", budget)
        harness.save(BENCH, extra)
        print(f"wrote {HERE / 'length.png'}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"length benchmark: {time.perf_counter() - t0:.0f} s")
