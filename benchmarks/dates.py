"""The date task's training targets: held-out exact match after a fixed wall-clock budget.

The targets: an RNN with additive attention reaches >= 99% exact match on the held-out split of
the multilingual date task (48 locales, native digits, ``attnkit.data.dates``) within 3
minutes of training on 2 CPU cores; the Transformer seq2seq model >= 99.5%.

Each model trains with :func:`attnkit.training.train_date_model` (the Trainer) for ``--budget`` seconds (validation
included; the cosine schedule is sized to end near the budget on a quiet machine), then
decodes the whole held-out split greedily (dates never seen in training, every locale and
format). Rows: ``peer`` = the target, ``attnkit`` = the measured exact match (%),
ratio >= 1 = target met. Also printed: steps, steps/s, the second at which the validation
subset first reached the target, and the machine's load average, because on a shared
machine the same budget buys fewer steps (the figures are then pessimistic).

    python benchmarks/dates.py                 # both models, 180 s each
    python benchmarks/dates.py --models rnn    # one model
    python benchmarks/dates.py --quick         # smoke run: 15 s each, small data
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from attnkit.training import date_data, evaluate, keep_freed_memory, train_date_model  # noqa: E402

BENCH = "dates"

# name -> (arch, target exact match in %): the models `attnkit train --task dates` builds
MODELS: dict[str, tuple[str, float]] = {"rnn": ("rnn", 99.0), "transformer": ("transformer", 99.5)}
LABELS = {"rnn": "RNN + additive attention", "transformer": "Transformer seq2seq"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="15 s per model, small data (smoke test)")
    p.add_argument("--no-save", action="store_true", help="print only; do not write results/")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    p.add_argument("--budget", type=float, default=None, help="training seconds per model (default 180)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the target is 2 CPU cores)")
    p.add_argument("--n-train", type=int, default=None, help="training examples (default 100,000)")
    p.add_argument("--steps", type=int, default=None, help="schedule length in steps (default per model)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `attnkit train` does
    budget = args.budget or (15.0 if args.quick else 180.0)
    n_train = args.n_train or (5_000 if args.quick else 100_000)
    n_test = 200 if args.quick else 2_000
    t0 = time.perf_counter()
    data = date_data(n_train=n_train, n_test=n_test, seed=0)
    test_data = data.test
    print(f"date task: {len(data.train):,} train / {len(test_data):,} held-out examples, vocabulary "
          f"{len(data.tokenizer)}, built in {time.perf_counter() - t0:.1f} s", flush=True)
    extra: dict[str, str] = {}
    for name in args.models:
        arch, target = MODELS[name]
        steps = {"steps": args.steps} if args.steps else {}
        load = os.getloadavg()[0]
        print(f"-- {LABELS[name]}: {budget:.0f} s budget, {args.threads} thread(s), load average {load:.1f} "
              f"on {os.cpu_count()} cores", flush=True)
        cpu0 = time.process_time()
        model, result = train_date_model(arch, data, seed=0, time_budget=budget, eval_every=250, eval_size=500,
                                         max_decode_len=12, progress=sys.stdout.isatty(), **steps)
        cpu_per_step = (time.process_time() - cpu0) / max(result.step, 1)
        first = next((h for h in result.history if 100 * h["exact_match"] >= target), None)
        reached = None if first is None else first["seconds"]
        metrics = evaluate(model, test_data, max_len=12)
        em, chars = 100 * metrics["exact_match"], 100 * metrics["char_accuracy"]
        when = (f"validation reached {target}% at step {first['step']}, {reached:.0f} s" if first is not None
                else f"validation never reached {target}%")
        when += f"; {cpu_per_step:.3f} CPU s/step (validation included)"
        summary = (f"{result.step} steps in {result.seconds:.0f} s ({result.step / result.seconds:.1f} steps/s, "
                   f"stopped by {result.stopped}); {when}; held-out char accuracy {chars:.2f}%; "
                   f"load average {load:.1f} at start, {args.threads} thread(s)")
        print(f"   held-out exact match {em:.2f}% (n={metrics['n']}); {summary}", flush=True)
        harness.record(BENCH, f"{LABELS[name]}, {budget:.0f} s training, held-out n={metrics['n']}",
                       "issue target", target, em, "% exact match", target=1.0, note=summary)
        extra[LABELS[name]] = summary
    if not args.no_save and not args.quick:
        harness.save(BENCH, extra)


if __name__ == "__main__":
    main()
