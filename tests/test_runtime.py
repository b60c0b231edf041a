"""The CPU runtime (attnkit.runtime): the allocator policy, huge pages, prepared weights, the
typed scratch pool and the dtype policy. Tests that read process state (page faults, RSS) run in
a process of their own: a fresh heap, and nothing left by earlier tests or other threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from attnkit import runtime


def _run_alone(code: str) -> str:
    """Run ``code`` in a fresh Python process with one torch thread; its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_keep_freed_memory_stops_page_faults():
    """After keep_freed_memory, allocating and freeing the same 8 MB tensor again and again
    reuses the memory: almost no minor page faults (where glibc maps such a block anew, a round
    faults ~2,000 pages). Measured in a process of its own: in the shared test process, earlier
    tests' threads and heap state made this flaky (4,096 faults once, on a busy machine)."""
    out = _run_alone("""
        import resource, torch
        from attnkit import runtime

        torch.set_num_threads(1)

        def faults() -> int:
            for _ in range(3):
                torch.ones(2048, 1024)  # settle the heap
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            for _ in range(20):
                torch.ones(2048, 1024)  # (2048, 1024) float32: 8 MiB, allocated and freed
            return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

        kept = runtime.keep_freed_memory()
        print(kept, faults())
    """)
    kept, faults = out.split()
    assert kept == "True"  # Linux with glibc (this platform and CI)
    assert int(faults) < 500


def test_release_freed_memory_returns_memory_to_the_os():
    """malloc_trim after freeing many small blocks lowers RSS (read from /proc, alone)."""
    out = _run_alone("""
        import torch
        from attnkit import runtime

        def rss() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096

        runtime.keep_freed_memory()  # freed memory stays: the case malloc_trim is for
        blocks = [torch.ones(16 * 1024) for _ in range(4000)]  # 64 KiB each: 250 MiB of heap
        del blocks
        before = rss()
        print(runtime.release_freed_memory(), before - rss())
    """)
    released, freed = out.split()
    assert released == "True" and int(freed) > 100 << 20


def test_advise_huge_pages_keeps_the_tensor():
    t = torch.empty(runtime.DISPATCH.huge_page_bytes // 4 + 1000)
    assert runtime.advise_huge_pages(t) is t
    small = torch.zeros(10)
    assert runtime.advise_huge_pages(small) is small and small.sum() == 0


def test_exchange_paths_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not runtime.exchange_paths(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_prepared_value_is_remade_when_the_weight_changes():
    lin = torch.nn.Linear(4, 3)
    calls = []

    def make():
        calls.append(1)
        return lin.weight.detach().clone()

    first = runtime.prepared(lin, "w", (lin.weight,), make)
    assert runtime.prepared(lin, "w", (lin.weight,), make) is first and len(calls) == 1
    with torch.no_grad():
        lin.weight.add_(1.0)  # in place: a new version
    second = runtime.prepared(lin, "w", (lin.weight,), make)
    assert len(calls) == 2 and torch.equal(second, lin.weight)
    lin.weight = torch.nn.Parameter(torch.zeros(3, 4))  # a new storage
    assert torch.equal(runtime.prepared(lin, "w", (lin.weight,), make), torch.zeros(3, 4)) and len(calls) == 3
    assert "_prepared" not in dict(lin.named_buffers()) and set(lin.state_dict()) == {"weight", "bias"}


def test_stacked_qkv_weight_follows_an_update():
    """MultiHeadAttention keeps its stacked q/k/v weight in inference; an optimizer step (in
    place) is seen on the next call."""
    import attnkit as ak

    mha = ak.MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 3, 8)
    with torch.no_grad():
        before, _ = mha(x)
        mha.k_proj.weight.mul_(2.0)
        after, _ = mha(x)
        want, _ = mha.to_torch().eval()(x, x, x, need_weights=False)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, atol=1e-6, rtol=1e-5)


def test_buffer_pool_takes_roles_only():
    pool = runtime.BufferPool()
    a = pool.take(runtime.Role.SCORES, (4, 5), torch.float32, torch.device("cpu"))
    b = pool.take(runtime.Role.SCORES, (2, 3), torch.float32, torch.device("cpu"))
    assert a.shape == (4, 5) and b.shape == (2, 3) and a.data_ptr() == b.data_ptr()  # reused, not grown
    assert pool.take(runtime.Role.RUN_OUTPUT, (2, 3), torch.float32, torch.device("cpu")).data_ptr() != a.data_ptr()
    with pytest.raises(ValueError, match="'scores'"):
        pool.take("scores", (1,), torch.float32, torch.device("cpu"))


MIB = 1 << 20


def _span(t: torch.Tensor) -> range:
    return range(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())


def test_returned_memory_is_reused_only_once_every_tensor_on_it_is_gone():
    """A block comes back only after the tensor, its views and its numpy arrays have all died;
    while any of them lives, a new request gets other memory, and the live values stay."""
    pool = runtime.ReturnedMemory()
    a = pool.take((4, MIB // 4), torch.float32)  # 4 MiB
    assert a.shape == (4, MIB // 4) and a.dtype == torch.float32 and a.is_contiguous()
    assert a.data_ptr() % 64 == 0
    ptr = a.data_ptr()
    a.fill_(7.0)
    row, arr = a[2], a.numpy()
    del a
    b = pool.take((4, MIB // 4), torch.float32)  # a view and an array still hold the first block
    assert b.data_ptr() != ptr and ptr not in _span(b)
    b.fill_(1.0)
    assert bool((row == 7.0).all()) and float(arr.min()) == 7.0
    del row
    assert pool.take((4, MIB // 4), torch.float32).data_ptr() not in (ptr, b.data_ptr())  # arr still holds it
    del arr
    c = pool.take((MIB,), torch.float32)  # the same bytes in another shape
    assert c.data_ptr() == ptr and c.shape == (MIB,)
    half = pool.take((MIB // 8,), torch.float32)  # 0.5 MiB: below returned_min_bytes, a plain tensor
    assert half.numel() == MIB // 8
    assert pool.nbytes() == 3 * (4 * MIB + 64)  # a, b and the one dropped at once (free now)


def test_returned_memory_keeps_at_most_its_budget_and_clear_hands_free_blocks_back(monkeypatch):
    monkeypatch.setattr(runtime.DISPATCH, "returned_keep_bytes", 10 * MIB)
    pool = runtime.ReturnedMemory()
    live = [pool.take((MIB,), torch.float32) for _ in range(4)]  # 4 x 4 MiB: the third is past the budget
    assert pool.nbytes() <= 10 * MIB
    assert len({t.data_ptr() for t in live}) == 4  # every live tensor has its own memory
    small = pool.take((MIB // 2,), torch.float32)  # 2 MiB: past the budget too, still served
    assert small.numel() == MIB // 2
    kept = pool.nbytes()
    del live[0]
    pool.clear()
    assert pool.nbytes() < kept  # the freed block went back; the one still in use stayed
    assert pool.nbytes() > 0 and pool.take((MIB,), torch.float32).data_ptr() not in {t.data_ptr() for t in live}


def test_returned_memory_never_hands_a_live_block_to_two_threads():
    """Eight threads take, write and check their own tensors at once: no two live tensors
    overlap and every value written is read back."""
    import threading

    pool, errors = runtime.ReturnedMemory(), []

    def work(seed: int) -> None:
        for i in range(30):
            t = pool.take((MIB // 2 + 1024 * (i % 3),), torch.float32)
            t.fill_(float(seed))
            if not bool((t == float(seed)).all()):
                errors.append((seed, i))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_no_library_call_changes_the_thread_count():
    """Packed inference of many short sequences (the runs that once ran on one thread) leaves the
    process-wide intra-op thread count as the caller set it."""
    import attnkit as ak
    from attnkit.varlen import Packed

    threads = torch.get_num_threads()
    layer = ak.EncoderLayer(ak.LayerSettings(16, 2, 32, dropout=0.0)).eval()
    lengths = [3] * 50 + [200]
    with torch.inference_mode():
        layer(torch.randn(sum(lengths), 16), packed=Packed.from_lengths(lengths))
    assert torch.get_num_threads() == threads


def test_auto_dtype_follows_the_cpu(monkeypatch):
    import warnings

    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert runtime.resolve_dtype("auto") == torch.float32
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert runtime.resolve_dtype("auto") == torch.bfloat16
    with pytest.raises(ValueError, match="'int4'"):
        runtime.resolve_dtype("int4")


def test_kept_weights_from_inference_serve_a_later_backward():
    """Embedding under inference_mode keeps the stacked q/k/v weight; a later forward with
    autograd on a frozen model (gradients to the inputs only, as an explanation needs) still
    backpropagates, and gives torch's gradient."""
    import attnkit as ak

    mha = ak.MultiHeadAttention(8, 2).eval().requires_grad_(False)
    x = torch.randn(1, 3, 8)
    with torch.inference_mode():
        mha(x)
    ours = x.clone().requires_grad_(True)
    mha(ours)[0].sum().backward()
    peer = mha.to_torch().eval()
    theirs = x.clone().requires_grad_(True)
    peer(theirs, theirs, theirs, need_weights=False)[0].sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=1e-5)


def test_a_request_larger_than_the_budget_keeps_the_free_blocks(monkeypatch):
    monkeypatch.setattr(runtime.DISPATCH, "returned_keep_bytes", 10 * MIB)
    pool = runtime.ReturnedMemory()
    first = pool.take((MIB,), torch.float32)  # 4 MiB, kept
    ptr = first.data_ptr()
    del first  # free now
    kept = pool.nbytes()
    big = pool.take((3 * MIB,), torch.float32)  # 12 MiB: more than the whole budget, a plain tensor
    assert big.numel() == 3 * MIB and ptr not in _span(big)
    assert pool.nbytes() == kept  # the free block stayed
    assert pool.take((MIB,), torch.float32).data_ptr() == ptr


def test_derived_values_are_neither_copied_nor_pickled():
    """Prepared weights are remade on use: a copy or a pickle of their owner starts without them
    (a oneDNN weight layout is an opaque tensor, which has no storage to copy)."""
    import copy
    import pickle

    lin = torch.nn.Linear(4, 3)
    runtime.prepared(lin, "w", (lin.weight,), lambda: lin.weight.detach().clone())
    assert isinstance(lin.__dict__["_prepared"], runtime.DerivedValues) and len(lin.__dict__["_prepared"]) == 1
    for other in (copy.deepcopy(lin), pickle.loads(pickle.dumps(lin))):
        assert isinstance(other.__dict__["_prepared"], runtime.DerivedValues) and len(other.__dict__["_prepared"]) == 0
        torch.testing.assert_close(runtime.prepared(other, "w", (other.weight,), lambda o=other: o.weight * 2),
                                   lin.weight * 2)


def test_a_dtype_of_another_type_is_a_value_error():
    for bad in (["int8"], None, 8):
        with pytest.raises(ValueError, match=f"got {bad!r}".replace("[", r"\[").replace("]", r"\]")):
            runtime.resolve_dtype(bad)
