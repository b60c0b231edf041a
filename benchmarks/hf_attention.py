"""attnkit inside Hugging Face models (``attn_implementation="attnkit"``) vs transformers' own
``sdpa`` and ``eager``, same process, same random weights, CPU fp32, 2 threads.

Cases (ratio > 1 = attnkit better):
- a 6-layer Llama decoder (hidden 512, 8 heads, 2 key/value heads) on 4 x 512 tokens, forward:
  - attnkit with weights (output_attentions) vs sdpa without: at most 1.3x its time (ratio >= 0.77);
  - attnkit with weights vs eager with weights: faster (ratio >= 1.0);
  - attnkit without weights vs sdpa: at most 1.05x its time (ratio >= 0.95);
  - peak memory of a forward with weights, attnkit vs eager (growth of the peak RSS in fresh
    processes, alternated): <= eager's (ratio >= 1.0). Read twice: with glibc's default allocator
    (median of 7: one process's reading is bimodal for either backend, as glibc's heap keeps
    30-80 MiB of a forward's freed temporaries resident in some runs and not in others), and with
    its mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``: every freed block goes back
    at once, so the reading is the memory the backend holds; equal from run to run);
- a BERT-family encoder (hidden 384, 6 layers, 12 heads) on a mixed-length corpus (128 texts of 8-256 tokens,
  batches of 32): attnkit on packed rows (``attnkit.hf.pack``) vs sdpa on padded batches, same
  outputs (ratio >= 1.5); the largest difference of the outputs is printed;
- ``attnkit.viz.explore`` of a 12-layer GPT-2 decoder (hidden 768, 12 heads, random weights, a
  word-level tokenizer) on a 1,024-token text, the page written (its own results,
  ``hf_attention-explore``): peak RSS of the whole process (``ru_maxrss``, a fresh process each),
  the folder loaded with attnkit (what explore does) vs the 2 GB target, vs the same model loaded
  with ``eager`` and passed to explore, and vs eager's bare forward with ``output_attentions``
  (no page). ``--explore-only`` runs only this case.

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
EXPLORE_BENCH = "hf_attention-explore"
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


def _peak_mibs(quick: bool, runs: int, env: dict[str, str] | None = None) -> dict[str, list[float]]:
    """Peak growth (MiB) of eager and attnkit in ``runs`` fresh processes each, alternated,
    with ``env`` added to the children's environment."""
    cmd = [sys.executable, __file__, "--peak-child"]
    readings: dict[str, list[float]] = {"eager": [], "attnkit": []}
    for _ in range(runs):
        for impl, values in readings.items():
            out = subprocess.run([*cmd, impl] + (["--quick"] if quick else []), check=True, capture_output=True,
                                 text=True, env={**os.environ, **(env or {})}).stdout
            values.append(float(out.split()[-1]))
    return readings


# glibc's documented static policy: every block from 128 KiB up is mapped on malloc and unmapped on free
STATIC_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}


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
    extra = {"decoder weights, largest difference from eager": f"{diff:.2e}"}
    for how, runs, env in (("glibc's default allocator", 7, None), ("glibc's mmap threshold fixed at 128 KiB", 3,
                                                                     STATIC_MMAP)):
        peaks = _peak_mibs(quick, runs, env)
        harness.record(BENCH, f"Llama decoder peak RSS growth of a forward with weights ({shape}; {how}, median of "
                       f"{runs} processes)", "eager, weights", statistics.median(peaks["eager"]),
                       statistics.median(peaks["attnkit"]), "MiB", higher_is_better=False, target=1.0)
        extra.update({f"decoder peak RSS growth, {how}, {impl}, each process (MiB)":
                      " ".join(f"{v:.0f}" for v in values) for impl, values in peaks.items()})
    return extra


def _explore_folder(folder: Path, layers: int, tokens: int) -> str:
    """A random GPT-2 (hidden 768, 12 heads) and a word-level tokenizer (one token a word) in
    ``folder``; returns a text of ``tokens`` tokens."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    vocab = ["<|endoftext|>"] + [f"w{i}" for i in range(1, 512)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                      unk_token="<|endoftext|>")
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=len(vocab), n_embd=768, n_layer=layers, n_head=12,
                                             n_positions=tokens, bos_token_id=0, eos_token_id=0))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return " ".join(vocab[1 + i % (len(vocab) - 1)] for i in range(tokens))


def _explore_child(how: str, folder: str, tokens: int) -> None:
    """In a fresh process: peak RSS (MiB, ru_maxrss) of one explore (or eager's bare forward), printed."""
    import resource
    import tempfile

    import transformers as tf

    from attnkit.viz import explore

    torch.set_num_threads(THREADS)
    text = " ".join(f"w{1 + i % 511}" for i in range(tokens))
    with tempfile.TemporaryDirectory() as tmp:
        if how == "attnkit":  # what `attnkit show --model` and explore(folder) do
            att = explore(folder, text, path=Path(tmp) / "view.html")
        else:
            model = tf.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
            tokenizer = tf.AutoTokenizer.from_pretrained(folder)
            if how == "eager":
                att = explore(model, text, tokenizer=tokenizer, path=Path(tmp) / "view.html")
            else:  # "eager-forward": the weights alone, no page
                with torch.no_grad():
                    out = model(**tokenizer(text, return_tensors="pt"), output_attentions=True, use_cache=False)
                assert len(out.attentions) == model.config.n_layer
                att = None
        assert att is None or len(att.tokens) == tokens
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def bench_explore(quick: bool) -> dict[str, str]:
    import tempfile

    layers, tokens = (4, 256) if quick else (12, 1024)
    with tempfile.TemporaryDirectory() as tmp:
        _explore_folder(Path(tmp), layers, tokens)
        peak = {how: float(subprocess.run([sys.executable, __file__, "--explore-child", how, tmp, str(tokens)],
                                          check=True, capture_output=True, text=True).stdout.split()[-1])
                for how in ("attnkit", "eager", "eager-forward")}
    shape = f"GPT-2 decoder, {layers} layers x 12 heads, hidden 768, {tokens:,} tokens"
    weights_mib = layers * 12 * tokens * tokens * 4 / MIB
    harness.record(EXPLORE_BENCH, f"explore() peak RSS vs the 2 GB target ({shape})", "target: 2 GB",
                   2000e6 / MIB, peak["attnkit"], "MiB", higher_is_better=False, target=1.0)
    harness.record(EXPLORE_BENCH, f"explore() peak RSS, attnkit vs eager attention ({shape})",
                   "explore of the model loaded with eager", peak["eager"], peak["attnkit"], "MiB",
                   higher_is_better=False)
    harness.record(EXPLORE_BENCH, f"explore() peak RSS vs eager's forward alone ({shape})",
                   "eager forward with output_attentions, no page", peak["eager-forward"], peak["attnkit"], "MiB",
                   higher_is_better=False)
    return {"explore: the attention weights alone (float32)": f"{weights_mib:.0f} MiB",
            "explore: peak RSS is the whole process's (Python, torch, transformers, the model)": "ru_maxrss"}


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
    if "--explore-child" in sys.argv:
        i = sys.argv.index("--explore-child")
        _explore_child(sys.argv[i + 1], sys.argv[i + 2], int(sys.argv[i + 3]))
        return
    explore_only = "--explore-only" in sys.argv
    if explore_only:
        sys.argv.remove("--explore-only")
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
    if not explore_only:
        extra = bench_decoder(args.quick, rounds)
        extra |= bench_encoder(args.quick, rounds)
        for k, v in extra.items():
            print(f"[{BENCH}] {k}: {v}")
        if not args.no_save:
            harness.save(BENCH, extra)
    extra = bench_explore(args.quick)
    for k, v in extra.items():
        print(f"[{EXPLORE_BENCH}] {k}: {v}")
    if not args.no_save:
        harness.save(EXPLORE_BENCH, extra)


if __name__ == "__main__":
    main()
