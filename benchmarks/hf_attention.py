"""attnkit inside Hugging Face models (``attn_implementation="attnkit"``) vs transformers' own
``sdpa`` and ``eager``, same process, same random weights, CPU fp32, 2 threads.

Cases (ratio > 1 = attnkit better):
- a 6-layer Llama decoder (hidden 512, 8 heads, 2 key/value heads) on 4 x 512 tokens, forward:
  - attnkit with weights (output_attentions) vs sdpa without: at most 1.3x its time (ratio >= 0.77);
  - attnkit with weights vs eager with weights: faster (ratio >= 1.0);
  - attnkit without weights vs sdpa: at most 1.05x its time (ratio >= 0.95);
  - peak memory of a forward with weights, attnkit vs eager (growth of the peak RSS, median of 3
    fresh processes each): <= eager's (ratio >= 1.0);
- a BERT-family encoder (hidden 384, 6 layers, 12 heads) on a mixed-length corpus (128 texts of 8-256 tokens,
  batches of 32): attnkit on packed rows (``attnkit.hf.pack``) vs sdpa on padded batches, same
  outputs (ratio >= 1.5); the largest difference of the outputs is printed.

``ATTNKIT_BENCH_THREADS=1`` runs it on one thread (on a busy shared machine every barrier of
two threads waits for a descheduled one, and the 2-thread figures then count kernels, not work).

The interface needs transformers >= 4.53; the bench venv's peers pin an older one, so under it
this script runs itself again with ``$ATTNKIT_TEST_PYTHON`` (the test venv, which ``make bench``
names), and skips with one line when neither has it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

BENCH = "hf_attention"
THREADS = int(os.environ.get("ATTNKIT_BENCH_THREADS", "2"))  # 2 by the issue; 1 shows the work where cores are shared
MIB = 1024 * 1024


def _has_interface() -> bool:
    try:
        from transformers.masking_utils import AttentionMaskInterface  # noqa: F401
    except ImportError:
        return False
    return True


def _decoder(quick: bool):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=2 if quick else 6,
                            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024)
    model = tf.LlamaModel(config).eval()
    B, T = (2, 128) if quick else (4, 512)
    ids = torch.randint(3, config.vocab_size, (B, T))
    return model, {"input_ids": ids, "use_cache": False}


def _forward(model, impl: str, inputs, weights: bool):
    model.set_attn_implementation(impl)
    return model(**inputs, output_attentions=weights)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(impl: str, quick: bool) -> None:
    """In a fresh process: the peak RSS growth (MiB) of one forward with weights, printed."""
    import attnkit.hf

    attnkit.hf.register()
    torch.set_num_threads(THREADS)
    model, inputs = _decoder(quick)
    with torch.inference_mode():
        _forward(model, impl, {**inputs, "input_ids": inputs["input_ids"][:, :8]}, True)  # warm the code paths
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
        base = _status_kib("VmRSS")
        out = _forward(model, impl, inputs, True)
        peak = _status_kib("VmHWM")
    assert len(out.attentions) == model.config.num_hidden_layers
    print((peak - base) / 1024)


def _peak_mib(impl: str, quick: bool, runs: int = 3) -> float:
    """Median over ``runs`` fresh processes (one reading moved by up to 25% from run to run for eager)."""
    cmd = [sys.executable, __file__, "--peak-child", impl] + (["--quick"] if quick else [])
    return statistics.median(float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
                             for _ in range(runs))


def bench_decoder(quick: bool, rounds: int) -> dict[str, str]:
    model, inputs = _decoder(quick)
    shape = f"{model.config.num_hidden_layers} layers, {inputs['input_ids'].shape[0]} x {inputs['input_ids'].shape[1]} tokens"
    with torch.inference_mode():
        t = harness.timeit({
            "sdpa": lambda: _forward(model, "sdpa", inputs, False),
            "eager_w": lambda: _forward(model, "eager", inputs, True),
            "ours_w": lambda: _forward(model, "attnkit", inputs, True),
            "ours": lambda: _forward(model, "attnkit", inputs, False),
        }, rounds=rounds, min_time=0.5)
        a = _forward(model, "attnkit", inputs, True)
        e = _forward(model, "eager", inputs, True)
    diff = max(float((x - y).abs().max()) for x, y in zip(a.attentions, e.attentions, strict=True))
    harness.record(BENCH, f"Llama decoder with weights vs sdpa without ({shape})", "sdpa, no weights",
                   1 / t["sdpa"], 1 / t["ours_w"], "forwards/s", target=round(1 / 1.3, 3))
    harness.record(BENCH, f"Llama decoder with weights ({shape})", "eager, weights",
                   1 / t["eager_w"], 1 / t["ours_w"], "forwards/s", target=1.0)
    harness.record(BENCH, f"Llama decoder without weights ({shape})", "sdpa",
                   1 / t["sdpa"], 1 / t["ours"], "forwards/s", target=round(1 / 1.05, 3))
    eager_peak, our_peak = _peak_mib("eager", quick), _peak_mib("attnkit", quick)
    harness.record(BENCH, f"Llama decoder peak RSS growth of a forward with weights ({shape})", "eager, weights",
                   eager_peak, our_peak, "MiB", higher_is_better=False, target=1.0)
    return {"decoder weights, largest difference from eager": f"{diff:.2e}"}


def _corpus(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(8, 257, (n,), generator=g).tolist()


def bench_encoder(quick: bool, rounds: int) -> dict[str, str]:
    import transformers as tf

    import attnkit.hf

    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=2 if quick else 6,
                           num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512)
    model = tf.BertModel(config, add_pooling_layer=False).eval()
    lengths = _corpus(64 if quick else 128)
    g = torch.Generator().manual_seed(1)
    batches = []
    for i in range(0, len(lengths), 32):  # the corpus in order, 32 texts a batch, right-padded
        chunk = lengths[i:i + 32]
        T = max(chunk)
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.long)
        for b, n in enumerate(chunk):
            ids[b, :n] = torch.randint(1000, config.vocab_size, (n,), generator=g)
            mask[b, :n] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    packed = [attnkit.hf.pack(b) for b in batches]

    def padded_sdpa():
        model.set_attn_implementation("sdpa")
        return [model(**b).last_hidden_state for b in batches]

    def packed_ours():
        model.set_attn_implementation("attnkit")
        return [model(**p).last_hidden_state for p in packed]

    with torch.inference_mode():
        t = harness.timeit({"peer": padded_sdpa, "ours": packed_ours}, rounds=rounds, min_time=0.5)
        ref, ours = padded_sdpa(), packed_ours()
    diff = max(float((attnkit.hf.unpack(o, b["attention_mask"]) - r)[b["attention_mask"].bool()].abs().max())
               for o, r, b in zip(ours, ref, batches, strict=True))
    tokens = sum(lengths)
    harness.record(BENCH, f"BERT encoder, {len(lengths)} texts of 8-256 tokens, packed vs padded "
                   f"({config.num_hidden_layers} layers, hidden 384)", "sdpa, padded batches of 32",
                   tokens / t["peer"], tokens / t["ours"], "tokens/s", target=1.5)
    return {"encoder packed, largest difference from sdpa padded": f"{diff:.2e}"}


def main() -> None:
    if "--peak-child" in sys.argv:
        _peak_child(sys.argv[sys.argv.index("--peak-child") + 1], "--quick" in sys.argv)
        return
    if not _has_interface():
        other = os.environ.get("ATTNKIT_TEST_PYTHON")
        if other and Path(other).resolve() != Path(sys.executable).resolve():
            os.execv(other, [other, __file__, *sys.argv[1:]])
        print(f"[{BENCH}] skipped: transformers here has no AttentionMaskInterface (needs >= 4.53); "
              "set ATTNKIT_TEST_PYTHON to an interpreter that has it")
        return
    args = harness.parse_args(__doc__)
    torch.set_num_threads(THREADS)
    import attnkit.hf

    attnkit.hf.register()
    rounds = 3 if args.quick else 7
    extra = bench_decoder(args.quick, rounds)
    extra |= bench_encoder(args.quick, rounds)
    for k, v in extra.items():
        print(f"[{BENCH}] {k}: {v}")
    if not args.no_save:
        harness.save(BENCH, extra)


if __name__ == "__main__":
    main()
