"""Regenerate the README's figures (``make docs-figures``); the PNGs are committed in docs/.

* ``docs/alignment.png``: the alignment heatmap of the RNN with additive attention on a
  German long date (trained here for ``--budget`` seconds with the shared Trainer, or read
  from ``--checkpoint``, e.g. ``attnkit-demo/models/rnn-attention`` after ``make demo``).
* ``docs/explorer.png``: a screenshot of the attention explorer (all-MiniLM-L6-v2) in
  headless Debian chromium, hovering the token "it".
* ``docs/flies.png``: the "flies" contextual-embedding plot.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
SENTENCE = "The animal didn't cross the street because it was too tired."


def train_rnn(budget: float, seed: int = 0, locales: list[str] | None = None):
    """An RNN with additive attention trained on the date task (all 48 locales, or
    ``locales``) for ``budget`` seconds or until 97% held-out exact match."""
    from attnkit.training import date_data, train_date_model

    options = {"locales": tuple(locales)} if locales else {}
    data = date_data(n_train=100_000, n_test=500, seed=seed, **options)
    model, result = train_date_model("rnn", data, seed=seed, steps=4000, eval_every=500, eval_size=300,
                                     time_budget=budget, target_accuracy=0.97)
    print(f"trained {result.step} steps in {result.seconds:.0f} s: {result.metrics}")
    return model, data.tokenizer


def alignment_figure(model, vocab, path: Path) -> None:
    from attnkit.data.dates import DateTask
    from attnkit.viz.alignment import align, draw

    day = datetime.date(2026, 11, 24)
    while not DateTask.is_test_date(day):  # a date the model never saw
        day += datetime.timedelta(days=1)
    example = DateTask(("de_DE",)).render(day, "de_DE", "long")
    [a] = align(model, vocab, [example.source], max_len=16)
    draw(a, path, title=f"RNN + additive attention: {example.source} -> {a.prediction}")
    print(f"wrote {path}")


def explorer_screenshot(path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from browser_support import Browser

    from attnkit.models.sentence_encoder import SentenceEncoder
    from attnkit.viz.contextual import similarity_table
    from attnkit.viz.explorer import explorer

    encoder = SentenceEncoder.from_pretrained()
    tokens, weights = encoder.attentions(SENTENCE)
    similarity_table(encoder, path=DOCS / "flies.png")
    with tempfile.TemporaryDirectory() as tmp:
        page_path = explorer(tokens, weights, Path(tmp) / "explorer.html",
                             title=f"all-MiniLM-L6-v2: {SENTENCE}")
        browser = Browser(Path(tmp) / "profile")
        try:
            view = browser.open(page_path)
            page = view.page
            page.set_viewport_size({"width": 1100, "height": 760})
            page.wait_for_function("document.body.dataset.thumbs === 'done'")
            page.select_option("#layer", "2")
            page.hover(f".tok.left[data-index='{tokens.index('it')}']")
            page.screenshot(path=str(path))
            view.assert_clean()
        finally:
            browser.close()
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="an RNN checkpoint to draw instead of training one")
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds (default 180)")
    parser.add_argument("--locales", nargs="*", help="train on these locales only (default: all 48)")
    args = parser.parse_args()
    if args.checkpoint:
        from attnkit.data import load_tokenizer
        from attnkit.models.checkpoint import load

        model, vocab = load(args.checkpoint), load_tokenizer(args.checkpoint)
    else:
        model, vocab = train_rnn(args.budget, locales=args.locales)
    alignment_figure(model.eval(), vocab, DOCS / "alignment.png")
    explorer_screenshot(DOCS / "explorer.png")


if __name__ == "__main__":
    main()
