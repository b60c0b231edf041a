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


TSV_CORPUS = [
    ("Go.", "Va !"), ("Hi.", "Salut !"), ("Run!", "Cours !"), ("Who?", "Qui ?"),
    ("I see.", "Je comprends."), ("Thank you.", "Merci."), ("Good morning.", "Bonjour."),
    ("Tokyo is big.", "東京は大きい。"), ("Moscow", "Москва"), ("Cairo", "القاهرة"),
]


@pytest.fixture
def tsv_corpus() -> list[tuple[str, str]]:
    """Ten (source, target) pairs in several scripts, as an Anki/Tatoeba export holds them."""
    return list(TSV_CORPUS)


@pytest.fixture
def good_tsv(tmp_path):
    """``good_tsv(n=10)`` writes ``tmp_path/c.tsv``: the first ``n`` lines cycling through
    :data:`TSV_CORPUS`, each with an Anki attribution column, and returns its path."""

    def write(n: int = 10):
        lines = [f"{s}\t{t}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}" for i, (s, t) in
                 enumerate(TSV_CORPUS * (n // len(TSV_CORPUS) + 1))][:n]
        path = tmp_path / "c.tsv"
        path.write_bytes(("\n".join(lines) + "\n").encode())
        return path

    return write
