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


# ----------------------------------------------------------------------------- learned outcomes
# A test of what training learns takes the ``learn_seed`` fixture and seeds everything random
# with it (initial weights, batch order, generated data). CI runs seed 0; the criterion must
# hold with margin on other seeds too, which stand in for another CPU's rounding:
#   pytest -m learning --seeds 5 --figures figures.jsonl      (benchmarks/robustness.py)
# Each such test reports its measured figures with ``learned(**figures)``.


def pytest_addoption(parser) -> None:
    parser.addoption("--seeds", default="1",
                     help="learned-outcome tests: a count N (seeds 0..N-1, default 1) or a list 0,3,7 (one seed: 3,)")
    parser.addoption("--figures", default=None, help="append each learned-outcome test's figures to this JSONL file")


def _seeds(config) -> list[int]:
    spec = str(config.getoption("--seeds"))
    return [int(s) for s in spec.split(",") if s.strip()] if "," in spec else list(range(int(spec)))


def pytest_generate_tests(metafunc) -> None:
    if "learn_seed" in metafunc.fixturenames:
        metafunc.parametrize("learn_seed", _seeds(metafunc.config), scope="module", ids=lambda s: f"seed{s}")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "learn_seed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.learning)


@pytest.fixture
def learned(request):
    """``learned(**figures)`` records what the test measured (printed with ``-s``, appended
    to ``--figures`` as one JSON object per call)."""
    import json

    def record(**figures) -> None:
        row = {"test": request.node.originalname, "seed": request.node.callspec.params.get("learn_seed"), **figures}
        print(f"\nlearned: {json.dumps(row)}")
        path = request.config.getoption("--figures")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    return record


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model(family) -> folder``: a tiny random Hugging Face model and its tokenizer,
    built once per session (tests/viz_support.py; ``family`` in ``viz_support.FAMILIES``)."""
    pytest.importorskip("transformers")
    from viz_support import build

    return _built_once(tmp_path_factory.mktemp("tiny-models"), build)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(kind) -> folder``: an untrained attnkit ``"transformer"`` (rotary
    positions, grouped kv heads) or ``"rnn"`` checkpoint with a character vocabulary, as
    ``attnkit train`` writes it (built once per session)."""
    from viz_support import build_checkpoint

    return _built_once(tmp_path_factory.mktemp("tiny-checkpoints"), build_checkpoint)


def _built_once(root, build):
    """``get(name)``: ``build(name, root / name)`` on the first call, the same result after."""
    built: dict[str, object] = {}

    def get(name: str):
        if name not in built:
            built[name] = build(name, root / name)
        return built[name]

    return get
