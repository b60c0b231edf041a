"""Training step (forward + backward + AdamW) of ``ak.TransformerSeq2Seq`` vs ``nn.Transformer``.

Both sides share everything but the Transformer itself: the same embeddings (``ak.Embeddings``,
sinusoidal), the same tied output projection, loss and optimizer, the same padded batch
(TransformerConfig defaults: E=256, 4 heads, 3+3 layers, ff 1024, dropout 0.1). The peer is
timed twice: called the usual way (causal mask + all three key-padding masks) and with only
what changes its real outputs (causal + source padding). Target: >= 1.0x tokens/s of each.

    .venv/bin/python benchmarks/training.py [--quick] [--no-save]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import attnkit as ak  # noqa: E402
from attnkit.progress import progress_bar  # noqa: E402

BENCH = "training"


class TorchSeq2Seq(nn.Module):
    """``nn.Transformer`` between the same embeddings and tied projection as ours."""

    def __init__(self, cfg: ak.TransformerConfig, full_masks: bool) -> None:
        super().__init__()
        self.cfg, self.full_masks = cfg, full_masks
        self.embed = ak.Embeddings(cfg.src_vocab_size, cfg.embed_dim, max_len=cfg.max_len, dropout=cfg.dropout,
                                   padding_idx=cfg.pad_id)
        self.transformer = nn.Transformer(
            cfg.embed_dim, cfg.num_heads, cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.ff_dim,
            dropout=cfg.dropout, activation=cfg.activation, batch_first=True, norm_first=cfg.norm_first,
        )
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.src_vocab_size, bias=False)
        self.out_proj.weight = self.embed.word_embeddings.weight

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        src_pad = src == self.cfg.pad_id
        T = tgt_in.shape[1]
        causal = ~ak.causal_mask(T, device=src.device)  # torch: True = masked
        tgt_pad = (tgt_in == self.cfg.pad_id) if self.full_masks else None
        h = self.transformer(
            self.embed(src), self.embed(tgt_in), tgt_mask=causal, tgt_is_causal=True,
            src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad,
        )
        return self.out_proj(h)


def batch(cfg: ak.TransformerConfig, B: int, S: int, T: int, g: torch.Generator):
    """Right-padded random batch: lengths uniform in [S/2, S] and [T/2, T]."""
    def padded(n: int) -> torch.Tensor:
        lengths = torch.randint(n // 2, n + 1, (B,), generator=g)
        lengths[0] = n
        x = torch.randint(3, cfg.src_vocab_size, (B, n), generator=g)
        return x.masked_fill(~ak.padding_mask(lengths, n), cfg.pad_id)

    src, tgt = padded(S), padded(T + 1)
    return src, tgt[:, :-1], tgt[:, 1:]


def make_step(model: nn.Module, data):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    src, tgt_in, tgt_out = data

    def step() -> None:
        logits = model(src, tgt_in)
        loss = ak.label_smoothed_cross_entropy(logits, tgt_out, smoothing=0.1, ignore_index=0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    torch.manual_seed(0)
    cfg = ak.TransformerConfig(1000) if not args.quick else ak.TransformerConfig(
        1000, embed_dim=64, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, ff_dim=128)
    B, S, T = (32, 32, 32) if not args.quick else (8, 16, 16)
    data = batch(cfg, B, S, T, torch.Generator().manual_seed(0))
    ours = ak.TransformerSeq2Seq(cfg).train()
    peers = {"usual masks": TorchSeq2Seq(cfg, full_masks=True).train(),
             "causal + src padding": TorchSeq2Seq(cfg, full_masks=False).train()}
    fns = {"ours": make_step(ours, data)} | {name: make_step(m, data) for name, m in peers.items()}
    with progress_bar("training-step benchmark (interleaved rounds)", None, transient=True):
        t = harness.timeit(fns, rounds=3 if args.quick else 5, min_time=0.1 if args.quick else 0.5)
    tokens = B * T
    for name in peers:
        harness.record(BENCH, f"seq2seq train step, batch {B}, src {S}, tgt {T}: tokens/s",
                       f"nn.Transformer ({name})", tokens / t[name], tokens / t["ours"], "tokens/s",
                       target=1.0, note=f"E={cfg.embed_dim}, {cfg.num_heads} heads, "
                       f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers, AdamW")
    if not args.no_save and not args.quick:
        print(f"saved {harness.save(BENCH, {'threads': torch.get_num_threads()})}")


if __name__ == "__main__":
    main()
