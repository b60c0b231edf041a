"""Greedy decoding with the KV cache vs recomputing the whole prefix at every step.

Cases (batch 8, 256 generated tokens, TransformerConfig defaults: E=256, 4 heads, 3+3 layers):
  * tokens/s of ``ak.generate`` with the cache vs the same model through ``Recompute`` (the
    O(t^2)-per-token way): target >= 5x;
  * per-token time at step 256 vs step 32 with the cache: the figure recorded is
    ``time(step 32) / time(step 256)``, target >= 0.5 (step 256 at most 2x step 32).

    .venv/bin/python benchmarks/decoding.py [--quick] [--no-save]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import attnkit as ak  # noqa: E402
from attnkit.models import Recompute, greedy_search  # noqa: E402
from attnkit.progress import progress_bar  # noqa: E402

BENCH = "decoding"


class NoEOS:
    """Protocol wrapper that forbids EOS, so every row decodes exactly ``max_len`` tokens."""

    def __init__(self, model) -> None:
        self.model, self.config = model, model.config

    def encode(self, src, src_mask=None):
        return self.model.encode(src, src_mask)

    def decode_step(self, state, tokens):
        logits, attention, state = self.model.decode_step(state, tokens)
        logits[:, self.config.eos_id] = float("-inf")
        return logits, attention, state

    def reorder_state(self, state, index):
        return self.model.reorder_state(state, index)


class StepTimer(NoEOS):
    """Records the wall time of every decode_step (step t = the t-th generated token)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.times: list[float] = []

    def decode_step(self, state, tokens):
        t0 = time.perf_counter()
        out = super().decode_step(state, tokens)
        self.times.append(time.perf_counter() - t0)
        return out


def per_token_times(model, src, steps: int, runs: int) -> list[list[float]]:
    out = []
    for _ in range(runs):
        timer = StepTimer(model)
        greedy_search(timer, src, max_len=steps)
        out.append(timer.times)
    return out


def window(times: list[list[float]], step: int, half: int = 4) -> float:
    """Median over runs of the mean time of steps ``step-half .. step+half`` (1-based step)."""
    lo, hi = max(0, step - 1 - half), min(len(times[0]), step + half)
    return statistics.median(statistics.fmean(run[lo:hi]) for run in times)


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    torch.manual_seed(0)
    steps, B, S = (64, 8, 32) if args.quick else (256, 8, 32)
    cfg = ak.TransformerConfig(1000, max_len=max(512, steps + 1), dropout=0.0)
    model = ak.TransformerSeq2Seq(cfg).eval()
    src = torch.randint(3, cfg.src_vocab_size, (B, S))
    cached, full = NoEOS(model), NoEOS(Recompute(model))

    with progress_bar("decoding benchmark", 2, transient=True) as bar:
        with torch.no_grad():  # recompute is slow (O(t^2) per row): one run; cached: median of 5
            t = harness.timeit({"recompute": lambda: greedy_search(full, src, max_len=steps)},
                               rounds=1, min_time=0.0, warmup=0)
            t |= harness.timeit({"cached": lambda: greedy_search(cached, src, max_len=steps)},
                                rounds=5, min_time=0.0, warmup=1)
        tokens = B * steps
        harness.record(BENCH, f"greedy {steps} tokens, batch {B}: tokens/s", "full recompute",
                       tokens / t["recompute"], tokens / t["cached"], "tokens/s", target=5.0,
                       note="ak.generate protocol, E=256, 4 heads, 3+3 layers, vocab 1000")
        bar.update(advance=1)

        early = 32 if not args.quick else 16
        with torch.no_grad():
            times = per_token_times(model, src, steps, runs=3 if args.quick else 5)
        harness.record(BENCH, f"cached per-token time, step {steps} vs step {early}", f"step {early}",
                       window(times, early) * 1e3, window(times, steps) * 1e3, "ms/token-step",
                       higher_is_better=False, target=0.5,
                       note="ratio = t(step early) / t(step late); >= 0.5 means late <= 2x early")
        bar.update(advance=1)
    if not args.no_save and not args.quick:
        print(f"saved {harness.save(BENCH, {'threads': torch.get_num_threads()})}")


if __name__ == "__main__":
    main()
