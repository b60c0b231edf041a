"""Trainer: schedules, metrics, exact resume (RNN and Transformer), signals, early stops,
and (slow) the alignment a trained RNN learns on German long dates."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from torch import nn

import attnkit as ak
from attnkit.data import encode_pairs, load_task
from attnkit.training import TrainConfig, Trainer, build_model, evaluate, learning_rate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reverse_task():
    task = load_task("reverse", n_train=160, n_test=24, seed=0, lengths=(3, 6))
    tok = task.tokenizer
    return tok, encode_pairs(tok, task.train), encode_pairs(tok, task.test)


# ---------------------------------------------------------------------------------- config


def test_schedules():
    cfg = TrainConfig(steps=1000, lr=1.0, warmup_steps=100, min_lr_ratio=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(0.01)
    assert learning_rate(cfg, 99) == pytest.approx(1.0)
    assert learning_rate(cfg, 100) == pytest.approx(1.0)
    assert learning_rate(cfg, 550) == pytest.approx(0.55)  # cosine half-way between 1 and 0.1
    assert learning_rate(cfg, 1000) == pytest.approx(0.1)
    lrs = [learning_rate(cfg, s) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    inv = TrainConfig(steps=1000, lr=1.0, warmup_steps=100, schedule="inverse_sqrt")
    assert learning_rate(inv, 399) == pytest.approx(math.sqrt(100 / 400))
    assert learning_rate(TrainConfig(lr=0.5, warmup_steps=0, schedule="constant"), 123) == 0.5


@pytest.mark.parametrize("kw, word", [
    ({"steps": 0}, "steps"), ({"schedule": "linear"}, "schedule"), ({"lr": -1.0}, "lr"),
    ({"target_accuracy": 1.5}, "target_accuracy"), ({"time_budget": 0}, "time_budget"),
    ({"clip_norm": 0.0}, "clip_norm"), ({"eval_size": 0}, "eval_size"), ({"length_group": -1}, "length_group"),
    ({"steps": None}, "steps or time_budget"), ({"dtype": "float16"}, "dtype"),
])
def test_config_errors(kw, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**kw)


def test_training_set_smaller_than_batch(reverse_task):
    tok, train, test = reverse_task
    with pytest.raises(ValueError, match="batch_size=64"):
        Trainer(build_model("rnn", len(tok)), train[:10], test, TrainConfig(batch_size=64))


# ---------------------------------------------------------------------------------- metrics


class EchoModel(nn.Module):
    """A protocol model that copies its source (then EOS): exact on `copy`, known on `reverse`."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.config = ak.RNNConfig(vocab, hidden_dim=2, embed_dim=2)
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode(self, src, src_mask=None):
        mask = src != 0 if src_mask is None else src_mask
        return {"src": src, "mask": mask, "t": 0}

    def decode_step(self, state, tokens):
        src, mask, t = state["src"], state["mask"], state["t"]
        B, S = src.shape
        nxt = torch.where(mask[:, t] if t < S else torch.zeros(B, dtype=torch.bool),
                          src[:, min(t, S - 1)], torch.full((B,), self.config.eos_id))
        logits = torch.full((B, self.config.tgt_vocab_size), -10.0)
        logits[torch.arange(B), nxt] = 10.0
        attn = torch.zeros(B, S)
        return logits, attn, {"src": src, "mask": mask, "t": t + 1}

    def reorder_state(self, state, index):
        return {"src": state["src"][index], "mask": state["mask"][index], "t": state["t"]}


def test_evaluate_metrics():
    task = load_task("reverse", n_train=0, n_test=50, seed=0, lengths=(3, 6))
    tok = task.tokenizer
    model = EchoModel(len(tok))
    copy = [(s, s) for s, _ in encode_pairs(tok, task.test)]
    assert evaluate(model, copy) == {"exact_match": 1.0, "char_accuracy": 1.0, "n": 50}
    rev = encode_pairs(tok, task.test)
    m = evaluate(model, rev, batch_size=7)
    palindromes = sum(s == t for s, t in rev) / len(rev)
    expected_chars = sum(sum(a == b for a, b in zip(s, t, strict=True)) for s, t in rev) / sum(len(t) for _, t in rev)
    assert m["exact_match"] == pytest.approx(palindromes)
    assert m["char_accuracy"] == pytest.approx(expected_chars)


# ---------------------------------------------------------------------------------- resume


def _model(arch: str, vocab: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if arch == "rnn":
        return build_model("rnn", vocab, embed_dim=8, hidden_dim=16, dropout=0.1)
    return build_model("transformer", vocab, embed_dim=16, num_heads=2, num_encoder_layers=1,
                       num_decoder_layers=1, ff_dim=32, dropout=0.1)


class SignalAt(Trainer):
    """Sends itself a signal during a given step, like a user pressing Ctrl-C / a kill."""

    def __init__(self, *args, at: int, signum: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.at, self.signum = at, signum

    def train_step(self, step):
        out = super().train_step(step)
        if step + 1 == self.at:
            os.kill(os.getpid(), self.signum)
        return out


@pytest.mark.parametrize("arch, length_group", [("rnn", 0), ("transformer", 0), ("transformer", 3)])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, reverse_task, arch, length_group):
    """Interrupted by SIGTERM at step 7 (a checkpoint is written), resumed by a new Trainer
    with a differently initialised model: the same weights, optimizer state and history as
    one run, bit for bit - across an epoch boundary (10 steps per epoch) and with dropout,
    with random or length-grouped batches."""
    tok, train, test = reverse_task
    cfg = TrainConfig(steps=16, batch_size=16, lr=3e-3, warmup_steps=4, eval_every=5, checkpoint_every=3,
                      eval_size=8, progress=False, length_group=length_group)
    one = Trainer(_model(arch, len(tok), 0), train, test, cfg, out_dir=tmp_path / "one", tokenizer=tok)
    full = one.fit()
    assert full.stopped == "steps" and full.step == 16

    first = SignalAt(_model(arch, len(tok), 0), train, test, cfg, out_dir=tmp_path / "two", tokenizer=tok,
                     at=7, signum=signal.SIGTERM)
    part = first.fit()
    assert part.stopped == "SIGTERM" and part.step == 7
    assert ak.load(tmp_path / "two").state_dict().keys() == first.raw_model.state_dict().keys()

    second = Trainer(_model(arch, len(tok), 123), train, test, cfg, out_dir=tmp_path / "two", tokenizer=tok)
    assert second.resume() == 7
    rest = second.fit()
    assert rest.step == 16 and rest.stopped == "steps"
    for (name, a), b in zip(one.raw_model.state_dict().items(), second.raw_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    sa, sb = one.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in rest.history]


@pytest.mark.parametrize("at", [5, 10])
def test_a_signal_at_a_validation_step_keeps_the_validation(tmp_path, reverse_task, at):
    """A signal during a step at which validation is due (step 5 of eval_every=5, or the last
    step): that validation still runs before the stop, so the resumed run's history and final
    metrics equal one uninterrupted run's."""
    tok, train, test = reverse_task
    cfg = TrainConfig(steps=10, batch_size=16, lr=3e-3, warmup_steps=2, eval_every=5, eval_size=8, progress=False)
    full = Trainer(_model("rnn", len(tok), 0), train, test, cfg, out_dir=tmp_path / "one", tokenizer=tok).fit()
    assert [h["step"] for h in full.history] == [5, 10]
    first = SignalAt(_model("rnn", len(tok), 0), train, test, cfg, out_dir=tmp_path / "two", tokenizer=tok,
                     at=at, signum=signal.SIGINT)
    assert first.fit().step == at
    second = Trainer(_model("rnn", len(tok), 0), train, test, cfg, out_dir=tmp_path / "two", tokenizer=tok)
    second.resume()
    rest = second.fit()
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in rest.history]
    assert rest.metrics == full.metrics


def test_length_group_batches():
    """``length_group``: every epoch is still a permutation of the examples, batches pad far
    less than random ones, the order is a pure function of (seed, step) (a fresh Trainer asked
    out of order agrees), and the epochs differ."""
    lengths = [(i * 7919) % 40 + 1 for i in range(640)]
    data = [([5] * n, [6] * ((n * 3) % 11 + 1)) for n in lengths]
    model = build_model("transformer", 8, embed_dim=16, num_heads=2, ff_dim=16)
    plain = Trainer(model, data, None, TrainConfig(batch_size=32, progress=False))
    grouped = Trainer(model, data, None, TrainConfig(batch_size=32, progress=False, length_group=4))
    assert grouped.optimizer.defaults["fused"]  # the one-pass AdamW kernel on CPU

    def padded(trainer: Trainer, step: int) -> int:
        return 32 * max(lengths[i] for i in trainer.batch_indices(step))

    for epoch in range(2):
        steps = range(20 * epoch, 20 * (epoch + 1))
        seen = [i for s in steps for i in grouped.batch_indices(s)]
        assert sorted(seen) == list(range(640))
        assert sum(padded(grouped, s) for s in steps) < 0.75 * sum(padded(plain, s) for s in steps)
    fresh = Trainer(model, data, None, TrainConfig(batch_size=32, progress=False, length_group=4))
    assert [fresh.batch_indices(s) for s in (27, 3, 19)] == [grouped.batch_indices(s) for s in (27, 3, 19)]
    assert grouped.batch_indices(0) != grouped.batch_indices(20)


def test_resume_refuses_another_config(tmp_path, reverse_task):
    tok, train, test = reverse_task
    cfg = TrainConfig(steps=2, batch_size=16, eval_every=2, eval_size=4, progress=False)
    Trainer(_model("rnn", len(tok), 0), train, test, cfg, out_dir=tmp_path / "ck").fit()
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    other = build_model("rnn", len(tok), embed_dim=8, hidden_dim=16, attention="dot")
    with pytest.raises(ValueError, match="attention"):
        Trainer(other, train, test, cfg, out_dir=tmp_path / "ck").resume()
    with pytest.raises(ValueError, match="TransformerSeq2Seq"):
        Trainer(_model("transformer", len(tok), 0), train, test, cfg, out_dir=tmp_path / "ck").resume()
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before


# ---------------------------------------------------------------------------------- stops


def test_sigint_saves_and_stops(tmp_path, reverse_task):
    tok, train, test = reverse_task
    cfg = TrainConfig(steps=50, batch_size=16, eval_every=100, eval_size=4, progress=False)
    t = SignalAt(_model("rnn", len(tok), 0), train, test, cfg, out_dir=tmp_path / "ck", at=2, signum=signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    r = t.fit()
    assert r.stopped == "SIGINT" and r.step == 2
    assert ak.load(tmp_path / "ck") is not None
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is restored


def test_time_budget_and_target(reverse_task, monkeypatch):
    tok, train, test = reverse_task
    r = Trainer(_model("rnn", len(tok), 0), train, test,
                TrainConfig(steps=50, batch_size=16, eval_size=4, time_budget=1e-6, progress=False)).fit()
    assert r.stopped == "time_budget" and r.step == 1 and r.metrics["n"] == 4
    t = Trainer(_model("rnn", len(tok), 0), train, test,
                TrainConfig(steps=50, batch_size=16, eval_every=3, target_accuracy=0.9, progress=False))
    monkeypatch.setattr(t, "validate", lambda: {"exact_match": 0.95, "char_accuracy": 0.99, "n": 24})
    r = t.fit()
    assert r.stopped == "target" and r.step == 3


# ---------------------------------------------------------------------------------- time budget


class FakeClock:
    """A clock that moves only when told: ``step_s`` per optimizer step and ``val_s`` per
    validation (the trainer's own code still runs at real speed)."""

    def __init__(self, trainer: Trainer, step_s: float, val_s: float = 0.0, start: float = 1000.0) -> None:
        self.now = start
        trainer.clock = lambda: self.now
        step, validate = trainer.train_step, trainer.validate

        def timed_step(i: int):
            out = step(i)
            self.now += step_s
            return out

        def timed_validate():
            out = validate()
            self.now += val_s
            return out

        trainer.train_step, trainer.validate = timed_step, timed_validate


def _budget_trainer(reverse_task, budget: float, steps=None, **kw) -> Trainer:
    tok, train, test = reverse_task
    cfg = TrainConfig(steps=steps, time_budget=budget, batch_size=16, warmup_steps=20, eval_every=50, eval_size=8,
                      progress=False, **kw)
    return Trainer(_model("rnn", len(tok), 0), train, test, cfg, tokenizer=tok)


@pytest.mark.parametrize("step_s", [0.1, 0.04])
def test_budget_schedule_length_follows_the_step_time(reverse_task, step_s):
    """With a 20 s budget, 0.5 s per validation every 50 steps and ``step_s`` per step, the
    schedule is laid over the budget: its length is what fits (n * step_s + 0.5 * (n / 50 + 1)
    = 20 s), the cosine reaches its floor at the last step, and training ends at the budget."""
    t = _budget_trainer(reverse_task, 20.0)
    FakeClock(t, step_s, val_s=0.5)
    r = t.fit()
    fits = (20.0 - 0.5) / (step_s + 0.5 / 50)
    assert r.stopped == "time_budget"
    assert abs(r.step - fits) <= 3, (r.step, fits)
    assert t.schedule_length == r.step
    assert learning_rate(t.config, r.step, t.schedule_length) == pytest.approx(t.config.lr * t.config.min_lr_ratio)
    assert 20.0 - 2 * step_s - 0.5 <= r.seconds <= 20.0 + 0.5, r.seconds
    assert learning_rate(t.config, 0, t.schedule_length) == pytest.approx(t.config.lr / 20)  # warm-up of 20 steps


def test_budget_with_steps_means_whichever_ends_first(reverse_task):
    short = _budget_trainer(reverse_task, 20.0, steps=60)  # 60 steps take 6 s of the 20
    FakeClock(short, 0.1)
    r = short.fit()
    assert (r.step, r.stopped, short.schedule_length) == (60, "steps", 60)
    tight = _budget_trainer(reverse_task, 5.0, steps=1000)  # the budget ends first
    FakeClock(tight, 0.1)
    r = tight.fit()
    assert r.stopped == "time_budget" and 45 <= r.step <= 51


def test_budget_schedule_resumes_exactly(tmp_path, reverse_task):
    """Stopped by SIGTERM at step 70 (after two re-estimates), resumed by a new Trainer on
    the same clock: the same fitted length, steps and weights as one uninterrupted run."""
    tok, train, test = reverse_task
    cfg = TrainConfig(steps=None, time_budget=15.0, batch_size=16, warmup_steps=20, eval_every=50, eval_size=8,
                      checkpoint_every=0, progress=False)
    one = Trainer(_model("rnn", len(tok), 0), train, test, cfg, out_dir=tmp_path / "one", tokenizer=tok)
    FakeClock(one, 0.1, val_s=0.3)
    full = one.fit()
    first = SignalAt(_model("rnn", len(tok), 0), train, test, cfg, out_dir=tmp_path / "two", tokenizer=tok,
                     at=70, signum=signal.SIGTERM)
    FakeClock(first, 0.1, val_s=0.3)
    assert first.fit().step == 70
    second = Trainer(_model("rnn", len(tok), 7), train, test, cfg, out_dir=tmp_path / "two", tokenizer=tok)
    FakeClock(second, 0.1, val_s=0.3, start=0.0)  # a new process: its clock starts anywhere
    assert second.resume() == 70 and second.schedule_length == first.schedule_length
    rest = second.fit()
    assert (rest.step, rest.stopped, second.schedule_length) == (full.step, full.stopped, one.schedule_length)
    assert rest.seconds == pytest.approx(full.seconds)
    for (name, a), b in zip(one.raw_model.state_dict().items(), second.raw_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_rnn_learns_reversal(learn_seed, learned):
    """A small attention RNN learns to reverse short strings: held-out exact match reaches 0.9
    within 400 steps (validation every 100 steps; it stops there).
    Measured (benchmarks/robustness.py, seeds 0-4): 0.92, 0.97, 0.92, 0.98, 0.92, each at the
    first validation (step 200 of the 400 allowed)."""
    task = load_task("reverse", n_train=3000, n_test=100, seed=learn_seed, lengths=(3, 7))
    tok = task.tokenizer
    torch.manual_seed(learn_seed)
    model = build_model("rnn", len(tok), embed_dim=32, hidden_dim=64)
    cfg = TrainConfig(steps=400, batch_size=32, lr=5e-3, warmup_steps=20, eval_every=100, target_accuracy=0.9,
                      progress=False, seed=learn_seed)
    r = Trainer(model, encode_pairs(tok, task.train), encode_pairs(tok, task.test), cfg).fit()
    learned(exact_match=r.metrics["exact_match"], step=r.step, criterion=">= 0.9")
    assert r.metrics["exact_match"] >= 0.9, r.history


# ---------------------------------------------------------------------------------- alignment


@pytest.fixture(scope="module")
def date_model(tmp_path_factory, learn_seed):
    """The RNN `attnkit train --task dates --arch rnn` builds (additive attention, the CLI's
    sizes and training defaults), trained on the whole multilingual date task (48 locales) by
    the recipe the demo uses, and saved as a checkpoint the CLI can use."""
    from attnkit.training import date_data, train_date_model

    threads = torch.get_num_threads()  # module fixtures run before the per-test _one_thread
    torch.set_num_threads(1)
    data = date_data(n_train=100_000, n_test=300, seed=learn_seed)
    out = tmp_path_factory.mktemp("dates") / "ck"
    model, result = train_date_model("rnn", data, seed=learn_seed, out_dir=out, eval_every=500, eval_size=300,
                                     progress=False)
    torch.set_num_threads(threads)
    return data.task, model, out, result


ALIGNMENT_LOCALES = ("de_DE", "fr_FR", "ru_RU", "es_ES")


@pytest.mark.slow
def test_month_digits_attend_to_the_month_word(date_model, learned):
    """The alignment the model learned (never supervised): both month digits' largest
    attention weight lies inside the month word for >= 90% of 200 held-out German long dates
    (``24. November 2026``) and for >= 90% of those of four locales together (German, French,
    Russian, Spanish: 800 dates), and the model's held-out exact match (300 dates, all
    locales) is >= 99%.
    Measured (benchmarks/robustness.py, seeds 0-4, 2000 steps): German 200, 200, 200, 190, 200
    of 200; four locales 99.5%, 100%, 100%, 94.75% (ru_RU 178 of 200), 100%; exact match 100%
    on every seed.

    (A bidirectional encoder found a shortcut: its backward state at the space *before* the
    word has read the whole word, and the first month digit peaked there on 2 seeds of 5 (18
    to 178 of 200 inside). The encoder `attnkit train` builds reads left to right, so only
    states inside the word or after it know the month, and the peaks sit inside the word.)"""
    from attnkit.data.batching import pad_ids
    from attnkit.data.dates import TARGET_SPANS, DateTask, month_span

    task, model, _, result = date_model
    tok = task.tokenizer
    m0, m1 = TARGET_SPANS["month"]
    inside: dict[str, int] = {}
    for locale in ALIGNMENT_LOCALES:
        examples = DateTask((locale,), ("long",)).generate(200, seed=1, split="test", untagged=0.0)
        ids = [tok.encode(ex.source) for ex in examples]
        src, mask = pad_ids(ids)
        tokens, attn = ak.generate(model, src, src_mask=mask, max_len=11, return_attention=True)
        assert [tok.decode(row.tolist()) for row in tokens] == [ex.target for ex in examples], locale
        inside[locale] = 0
        for i, ex in enumerate(examples):
            t0, t1 = tok.token_span(ex.source, month_span(ex))
            argmax = attn[i, m0:m1].argmax(-1)  # (2,) source positions of the month digits' peaks
            inside[locale] += bool(((argmax >= t0) & (argmax < t1)).all())
    pooled = sum(inside.values()) / (200 * len(inside))
    learned(exact_match=result.metrics["exact_match"], inside_of_200=inside, inside_all=pooled,
            criterion="em >= 0.99, German inside >= 180, all >= 0.9")
    assert result.metrics["exact_match"] >= 0.99, result.history  # the RNN's target, 300 held out
    assert inside["de_DE"] >= 180, inside
    assert pooled >= 0.9, inside


@pytest.mark.slow
def test_cli_translates_a_german_date(date_model, tmp_path, learned):
    """The trained checkpoint through the CLI: translate one German date, evaluate >= 0.9.
    Measured (seeds 0-4): the right date and 100% exact match on every seed."""
    from typer.testing import CliRunner

    from attnkit.cli import app

    _, _, out, _ = date_model
    png = tmp_path / "align.png"
    r = CliRunner().invoke(app, ["translate", str(out), "24. November 2026", "--alignment", str(png)])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "2026-11-24"
    assert png.stat().st_size > 1000
    r = CliRunner().invoke(app, ["evaluate", str(out), "--json"])
    assert r.exit_code == 0, r.output
    import json

    metrics = json.loads(r.output)
    learned(exact_match=metrics["exact_match"], criterion="'24. November 2026' -> 2026-11-24, em >= 0.9")
    assert metrics["n"] == 300 and metrics["exact_match"] >= 0.9
