"""Shared pytest setup: offline Hugging Face, deterministic seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster than two (much faster on a busy machine).
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model(family) -> folder``: a tiny random Hugging Face model and its tokenizer,
    built once per session (tests/viz_support.py; ``family`` in ``viz_support.FAMILIES``)."""
    pytest.importorskip("transformers")
    from viz_support import build

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, object] = {}

    def get(family: str):
        if family not in built:
            built[family] = build(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(kind) -> folder``: an untrained attnkit ``"transformer"`` (rotary
    positions, grouped kv heads) or ``"rnn"`` checkpoint with a character vocabulary, as
    ``attnkit train`` writes it (built once per session)."""
    from viz_support import build_checkpoint

    root = tmp_path_factory.mktemp("tiny-checkpoints")
    built: dict[str, object] = {}

    def get(kind: str):
        if kind not in built:
            built[kind] = build_checkpoint(kind, root / kind)
        return built[kind]

    return get
