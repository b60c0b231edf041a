"""Data-parallel training under torch.distributed: DDP equals one process with the whole
batch, a killed rank fails the others clearly, and the checkpoint resumes on another world
size. Ranks are spawned CPU processes (tests/spawn_support.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from spawn_support import free_port, init_group
from torch import nn

import attnkit as ak
import attnkit.distributed as distributed

TOL = dict(atol=1e-5, rtol=1e-5)


def _toy_pairs(n: int = 64) -> list[tuple[list[int], list[int]]]:
    """Reverse a digit string (ids 3..12; 0/1/2 = pad/bos/eos), lengths 2..7: varied token counts."""
    g = torch.Generator().manual_seed(5)
    pairs = []
    for _ in range(n):
        src = torch.randint(3, 13, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g).tolist()
        pairs.append((src, src[::-1]))
    return pairs


def _toy_trainer(out_dir, steps: int, cls=None):
    from attnkit.training import TrainConfig, Trainer, build_model

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
    from attnkit.training import Trainer

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
    init_group(rank, world, port, timeout_s=60)
    trainer = _toy_trainer(out_dir, 8, _dying_trainer_class())
    assert isinstance(trainer.model, nn.parallel.DistributedDataParallel)
    try:
        trainer.fit()
        Path(report, f"rank{rank}.txt").write_text("finished")
    except distributed.PeerLostError as exc:
        Path(report, f"rank{rank}.txt").write_text(f"PeerLostError: {exc}")
        os._exit(3)


def test_peer_guard_and_init_without_torchrun(monkeypatch) -> None:
    """A failed collective becomes a PeerLostError naming rank, step and checkpoint; other
    errors pass through; one process is a no-op; init_distributed outside torchrun does nothing."""
    with pytest.raises(distributed.PeerLostError, match=r"rank 1 of 2: lost contact .* during step 7 .* in /ckpt is intact"):
        with distributed.peer_guard(1, 2, 7, "/ckpt"):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234")
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        with distributed.peer_guard(1, 2, 7, "/ckpt"):
            raise RuntimeError("shape mismatch")
    assert not isinstance(info.value, distributed.PeerLostError)
    with pytest.raises(RuntimeError, match="Connection closed") as info:
        with distributed.peer_guard(0, 1, 7, "/ckpt"):
            raise RuntimeError("Connection closed by peer")
    assert not isinstance(info.value, distributed.PeerLostError)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_distributed() is False and not dist.is_initialized()
    assert distributed.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Run 2 DDP ranks (global batch 8 = 4 per rank) with a checkpoint every 2 steps; rank 1 is
    killed at step 5. Returns (checkpoint dir, exit codes, rank 0's report)."""
    root = tmp_path_factory.mktemp("ddp")
    out_dir, report = root / "ckpt", root / "report"
    report.mkdir()
    ctx = mp.get_context("spawn")
    port = free_port()
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
    saved = ak.load(out_dir).state_dict()
    for name, p in ref.raw_model.state_dict().items():
        torch.testing.assert_close(saved[name], p, **TOL, msg=lambda m, n=name: f"{n}: {m}")


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


