"""Ring attention and data-parallel training on real process groups.

Every multi-process case spawns its own CPU processes (gloo on 127.0.0.1, a free port, one
thread each). Spawning is slow, so the cases are grouped: one spawn checks everything about
ring attention on 2 ranks, one on 4 ranks. References are PyTorch's own
``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` on the whole sequence.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import attnkit as ak
import attnkit.distributed as akd

TOL = dict(atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- spawning


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int, timeout_s: float = 60.0) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def _entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    _init(rank, world, port)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def _spawn(fn, world: int, *args, timeout: float = 150.0) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes; re-raise a worker's error."""
    ctx = mp.spawn(_entry, args=(fn, world, _free_port(), args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{fn.__name__} on {world} ranks did not finish within {timeout} s")


# ----------------------------------------------------------------------------- ring workers


def _check_ring(rank: int, world: int, *, layout: str, causal: bool, kv_heads: int = 4, N: int = 32) -> None:
    """One ring attention case against F.scaled_dot_product_attention on the full sequence."""
    g = torch.Generator().manual_seed(1234)  # same full tensors on every rank
    B, H, d = 2, 4, 16
    q = torch.randn(B, H, N, d, generator=g, requires_grad=True)  # (B, H, N, d)
    k = torch.randn(B, kv_heads, N, d, generator=g, requires_grad=True)
    v = torch.randn(B, kv_heads, N, d, generator=g, requires_grad=True)
    w = torch.randn(B, H, N, d, generator=g)  # loss weights -> a non-trivial dout
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=kv_heads != H)
    (ref * w).sum().backward()

    qs, ks, vs = (akd.shard(t.detach(), layout=layout).requires_grad_() for t in (q, k, v))
    out = akd.ring_attention(qs, ks, vs, causal=causal, layout=layout)  # (B, H, N/P, d)
    what = f"rank {rank}/{world} layout={layout} causal={causal} kv_heads={kv_heads}"
    torch.testing.assert_close(out, akd.shard(ref.detach(), layout=layout), **TOL, msg=lambda m: f"{what}: {m}")
    torch.testing.assert_close(akd.unshard(out, layout=layout), ref.detach(), **TOL)
    (out * akd.shard(w, layout=layout)).sum().backward()
    for name, mine, full in (("dq", qs, q), ("dk", ks, k), ("dv", vs, v)):
        torch.testing.assert_close(
            mine.grad, akd.shard(full.grad, layout=layout), **TOL, msg=lambda m, n=name: f"{what} {n}: {m}"
        )


def _check_shard_roundtrip(rank: int, world: int) -> None:
    x = torch.arange(3 * 8 * world * 5, dtype=torch.float32).reshape(3, 8 * world, 5)
    for layout in akd.LAYOUTS:
        for dim in (1, -2):
            s = akd.shard(x, layout=layout, dim=dim)
            assert s.shape == (3, 8, 5)
            torch.testing.assert_close(akd.unshard(s, layout=layout, dim=dim), x, atol=0, rtol=0)
    # zigzag: rank r holds chunks r and 2P-1-r of 2P, in that order
    chunks = x.chunk(2 * world, dim=1)
    torch.testing.assert_close(akd.shard(x, layout="zigzag", dim=1), torch.cat([chunks[rank], chunks[-1 - rank]], 1))
    torch.testing.assert_close(akd.shard(x, dim=1), x.chunk(world, dim=1)[rank])
    with pytest.raises(ValueError, match="cannot shard length"):
        akd.shard(torch.zeros(2, 2 * world + 1, 3), dim=1)


def _check_mha_sequence_parallel(rank: int, world: int, layout: str) -> None:
    """ak.MultiHeadAttention(sequence_parallel=...) on shards == nn.MultiheadAttention on the
    whole sequence, outputs and (all-reduced) parameter gradients."""
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    E, H, B, N = 32, 4, 2, 16 * world
    peer = nn.MultiheadAttention(E, H, batch_first=True)
    x = torch.randn(B, N, E, generator=g, requires_grad=True)
    w = torch.randn(B, N, E, generator=g)
    ref, _ = peer(x, x, x, attn_mask=~ak.causal_mask(N), need_weights=False)  # torch: True = masked
    (ref * w).sum().backward()

    ours = ak.MultiHeadAttention.from_torch(peer)
    ours.sequence_parallel, ours.sequence_layout = True, layout
    xs = akd.shard(x.detach(), layout=layout, dim=1).requires_grad_()
    out, weights = ours(xs, causal=True)  # (B, N/P, E)
    assert weights is None
    torch.testing.assert_close(out, akd.shard(ref.detach(), layout=layout, dim=1), **TOL)
    (out * akd.shard(w, layout=layout, dim=1)).sum().backward()
    torch.testing.assert_close(xs.grad, akd.shard(x.grad, layout=layout, dim=1), **TOL)
    E_ = peer.embed_dim  # peer gradients under our parameter names
    peer_grads = {
        "q_proj.weight": peer.in_proj_weight.grad[:E_], "k_proj.weight": peer.in_proj_weight.grad[E_:2 * E_],
        "v_proj.weight": peer.in_proj_weight.grad[2 * E_:], "q_proj.bias": peer.in_proj_bias.grad[:E_],
        "k_proj.bias": peer.in_proj_bias.grad[E_:2 * E_], "v_proj.bias": peer.in_proj_bias.grad[2 * E_:],
        "out_proj.weight": peer.out_proj.weight.grad, "out_proj.bias": peer.out_proj.bias.grad,
    }
    assert set(peer_grads) == {n for n, _ in ours.named_parameters()}
    for name, p in ours.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad)  # each rank holds its shard's share of the parameter gradient
        torch.testing.assert_close(grad, peer_grads[name], atol=1e-4, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    with pytest.raises(ValueError, match="key_mask"):
        ours(xs, key_mask=torch.ones(B, xs.shape[1], dtype=torch.bool))


def _check_encoder_sequence_parallel(rank: int, world: int, layout: str) -> None:
    """ak.Encoder with sequence_parallel on shards == nn.TransformerEncoder on the whole sequence."""
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(1)
    E, N = 32, 8 * world
    layer = nn.TransformerEncoderLayer(E, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
    peer = nn.TransformerEncoder(layer, num_layers=2, norm=nn.LayerNorm(E), enable_nested_tensor=False)
    x = torch.randn(2, N, E, generator=g, requires_grad=True)
    ref = peer(x)
    ref.square().sum().backward()
    ours = ak.Encoder.from_torch(peer).set_sequence_parallel(True, layout)
    xs = akd.shard(x.detach(), layout=layout, dim=1).requires_grad_()
    hidden, _ = ours(xs)  # (B, N/P, E)
    torch.testing.assert_close(hidden, akd.shard(ref.detach(), layout=layout, dim=1), **TOL)
    hidden.square().sum().backward()
    torch.testing.assert_close(xs.grad, akd.shard(x.grad, layout=layout, dim=1), atol=1e-4, rtol=1e-5)


def _ring_suite(rank: int, world: int, full: bool) -> None:
    for layout, causal in (("contiguous", True), ("zigzag", True), ("zigzag", False), ("contiguous", False)):
        if full or causal or layout == "zigzag":  # non-causal: the layout is only a permutation
            _check_ring(rank, world, layout=layout, causal=causal)
    _check_shard_roundtrip(rank, world)
    if full:
        _check_ring(rank, world, layout="zigzag", causal=True, kv_heads=2)  # grouped-query heads
        fused = akd._fused_ok
        akd._fused_ok = lambda *a: False  # the math fallback of the block functions
        try:
            _check_ring(rank, world, layout="zigzag", causal=True)
        finally:
            akd._fused_ok = fused
        for layout in akd.LAYOUTS:
            _check_mha_sequence_parallel(rank, world, layout)
            _check_encoder_sequence_parallel(rank, world, layout)


# ----------------------------------------------------------------------------- tests


def test_ring_attention_single_process_matches_sdpa() -> None:
    """Without torch.distributed the ring has one rank: plain attention, fused and fallback."""
    q, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny calls: a thread pool only adds waiting on a busy machine
    try:
        for causal in (False, True):
            torch.testing.assert_close(
                akd.ring_attention(q, k, v, causal=causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            )
            assert torch.autograd.gradcheck(lambda a, b, c, cz=causal: akd.ring_attention(a, b, c, causal=cz), (q, k, v))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(akd.shard(q, layout="zigzag"), q)
    torch.testing.assert_close(akd.unshard(q), q)


def test_ring_attention_rejects_bad_input() -> None:
    q = torch.randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match="layout"):
        akd.ring_attention(q, q, q, layout="striped")
    with pytest.raises(ValueError, match=r"\(B, H, n, d\)"):
        akd.ring_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="share batch and length"):
        akd.ring_attention(q, q[..., :4, :], q)
    with pytest.raises(ValueError, match="odd shard length"):
        akd.ring_attention(q[..., :5, :], q[..., :5, :], q[..., :5, :], layout="zigzag")
    with pytest.raises(ValueError, match="sequence_layout"):
        ak.MultiHeadAttention(8, 2, sequence_layout="striped")


@pytest.mark.slow
def test_ring_attention_2_ranks() -> None:
    """2 ranks: both layouts, causal and not, forward and gradients, GQA, the math fallback,
    shard/unshard round trips, MultiHeadAttention(sequence_parallel=...) vs nn.MultiheadAttention
    and Encoder(sequence_parallel=...) vs nn.TransformerEncoder."""
    _spawn(_ring_suite, 2, True)


@pytest.mark.slow
def test_ring_attention_4_ranks() -> None:
    """4 ranks: both layouts causal, zigzag non-causal, forward and gradients, shard/unshard."""
    _spawn(_ring_suite, 4, False)


# ----------------------------------------------------------------------------- data parallel


def _toy_pairs(n: int = 64) -> list[tuple[list[int], list[int]]]:
    """Reverse a digit string (ids 3..12; 0/1/2 = pad/bos/eos), lengths 2..7: varied token counts."""
    g = torch.Generator().manual_seed(5)
    pairs = []
    for _ in range(n):
        src = torch.randint(3, 13, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g).tolist()
        pairs.append((src, src[::-1]))
    return pairs


def _toy_trainer(out_dir, steps: int, cls=None):
    from attnkit.train import TrainConfig, Trainer, build_model

    torch.manual_seed(0)
    model = build_model("transformer", 13, embed_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                        ff_dim=64, dropout=0.0)
    for name, p in model.named_parameters():
        # A key bias adds the same q.b to every score of a row: softmax ignores it, so its exact
        # gradient is 0 and what autograd returns is rounding noise, which Adam scales up to
        # lr-sized steps that differ between any two summation orders. Freeze it.
        if name.endswith("k_proj.bias"):
            p.requires_grad_(False)
    cfg = TrainConfig(steps=steps, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=1000, eval_size=None,
                      checkpoint_every=2, progress=False, seed=0)
    return (cls or Trainer)(model, _toy_pairs(), None, cfg, out_dir=out_dir)


def _dying_trainer_class():
    from attnkit.train import Trainer

    class DyingTrainer(Trainer):
        """Rank 1 is killed (SIGKILL, no clean-up) when it starts step ``kill_at``."""

        kill_at = 5

        def train_step(self, step: int):
            if self.rank == 1 and step == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().train_step(step)

    return DyingTrainer


def _ddp_rank(rank: int, world: int, port: int, out_dir: str, report: str) -> None:
    """One rank of a 2-process DDP run whose rank 1 dies at step 5; rank 0 reports its error."""
    _init(rank, world, port, timeout_s=60)
    trainer = _toy_trainer(out_dir, 8, _dying_trainer_class())
    assert isinstance(trainer.model, nn.parallel.DistributedDataParallel)
    try:
        trainer.fit()
        Path(report, f"rank{rank}.txt").write_text("finished")
    except akd.PeerLostError as exc:
        Path(report, f"rank{rank}.txt").write_text(f"PeerLostError: {exc}")
        os._exit(3)


def test_peer_guard_and_init_without_torchrun(monkeypatch) -> None:
    """A failed collective becomes a PeerLostError naming rank, step and checkpoint; other
    errors pass through; one process is a no-op; init_distributed outside torchrun does nothing."""
    with pytest.raises(akd.PeerLostError, match=r"rank 1 of 2: lost contact .* during step 7 .* in /ckpt is intact"):
        with akd.peer_guard(1, 2, 7, "/ckpt"):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234")
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        with akd.peer_guard(1, 2, 7, "/ckpt"):
            raise RuntimeError("shape mismatch")
    assert not isinstance(info.value, akd.PeerLostError)
    with pytest.raises(RuntimeError, match="Connection closed") as info:
        with akd.peer_guard(0, 1, 7, "/ckpt"):
            raise RuntimeError("Connection closed by peer")
    assert not isinstance(info.value, akd.PeerLostError)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert akd.init_distributed() is False and not dist.is_initialized()
    assert akd.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Run 2 DDP ranks (global batch 8 = 4 per rank) with a checkpoint every 2 steps; rank 1 is
    killed at step 5. Returns (checkpoint dir, exit codes, rank 0's report)."""
    root = tmp_path_factory.mktemp("ddp")
    out_dir, report = root / "ckpt", root / "report"
    report.mkdir()
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_ddp_rank, args=(r, 2, port, str(out_dir), str(report))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    msg = (report / "rank0.txt").read_text() if (report / "rank0.txt").exists() else ""
    return out_dir, codes, msg


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_with_the_whole_batch(ddp_run) -> None:
    """The checkpoint rank 0 wrote at step 4 of the 2-process run == 4 steps of one process
    with the doubled batch (same global batches; tokens weighted alike across ranks)."""
    from attnkit.models.checkpoint import load_trainer_state

    out_dir, codes, _ = ddp_run
    assert load_trainer_state(out_dir)["step"] == 4
    ref = _toy_trainer(None, 8)
    for step in range(4):
        ref.train_step(step)
    ddp = ak.load(out_dir).state_dict()
    for name, p in ref.raw_model.state_dict().items():
        torch.testing.assert_close(ddp[name], p, **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_ddp_rank_killed_others_fail_clearly_and_checkpoint_resumes(ddp_run) -> None:
    """Rank 1 dies mid-run: rank 0 exits with a PeerLostError naming the step and the
    checkpoint; the checkpoint of step 4 is intact and resumes on ONE process (another world
    size) to the same weights as an uninterrupted one-process run."""
    out_dir, codes, msg = ddp_run
    assert codes[1] == -signal.SIGKILL
    assert codes[0] == 3, f"rank 0 exit code {codes[0]}, report {msg!r}"
    assert "lost contact with another rank during step 5" in msg and str(out_dir) in msg, msg
    assert not any(p.name.startswith(".") or "tmp" in p.name for p in out_dir.parent.iterdir() if p != out_dir)
    resumed = _toy_trainer(None, 8)
    assert resumed.resume(out_dir) == 4
    resumed.fit()
    ref = _toy_trainer(None, 8)
    for step in range(8):
        ref.train_step(step)
    for (name, a), b in zip(resumed.raw_model.state_dict().items(), ref.raw_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"{n}: {m}")


if __name__ == "__main__":  # pragma: no cover - manual run
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pytest.main([__file__, "-x", "-q"])
