"""attnkit.explain on the models and inputs at its edges, and what it draws of them.

- an RNN without attention: the gradient methods give a map (the attention methods one line);
- grouped kv heads: grad_rollout's map equals the map of the same model with its kv heads
  repeated (attnkit's Transformer and a Hugging Face Llama), and a map no output depends on is
  an error, never a zero map;
- the page and the inline view of a decoder-only model and a classifier explained with a target;
- the relevance picture's signed, symmetric colour scale;
- a prompt at the model's length limit: cut to leave room for the output, with a warning;
- the page's attention views decode as many tokens as the explanation did.
"""

from __future__ import annotations

import pytest
import torch
from viz_support import CORPUS, TARGET, TEXT, page_data

import attnkit as ak
from attnkit.data import CharVocab
from attnkit.relevance import explain
from attnkit.relevance.api import _weight_grads
from attnkit.relevance.subjects import Pass

LONG = "the cat sat on the mat " * 20  # 121 tokens of the tiny GPT-2's tokenizer


def _cli(*args: str):
    from typer.testing import CliRunner

    from attnkit.cli import app

    return CliRunner().invoke(app, ["explain", *args])


# ----------------------------------------------------------------------------- an RNN without attention


def _rnn_without_attention() -> tuple[ak.RNNSeq2Seq, CharVocab]:
    torch.manual_seed(0)
    vocab = CharVocab.build(CORPUS)
    return ak.RNNSeq2Seq(ak.RNNConfig(len(vocab), embed_dim=8, hidden_dim=8, attention="none")).eval(), vocab


@pytest.mark.parametrize("method", ["attnlrp", "input_x_gradient", "integrated_gradients"])
def test_gradient_methods_explain_an_rnn_without_attention(method: str) -> None:
    model, vocab = _rnn_without_attention()
    e = explain(model, "ab", target="ab", method=method, tokenizer=vocab, steps=4)
    assert e.relevance.shape == (3, 2) and torch.isfinite(e.relevance).all()
    assert e.relevance.abs().sum() > 0
    with pytest.raises(ValueError, match="needs attention weights"):
        explain(model, "ab", target="ab", method="rollout", tokenizer=vocab)


def test_cli_explains_an_rnn_without_attention(tmp_path) -> None:
    model, vocab = _rnn_without_attention()
    folder = ak.save_model(model, tmp_path / "rnn", tokenizer=vocab)
    result = _cli(TEXT, "--model", str(folder), "--target", TARGET, "--out", str(tmp_path / "e.html"))
    assert result.exit_code == 0, result.output
    data = page_data(tmp_path / "e.html")["relevance"]
    assert data["order"][0] == "attnlrp" and "grad_rollout" not in data["order"]


# ----------------------------------------------------------------------------- grouped kv heads


def _repeat_kv(state: dict[str, torch.Tensor], kv_heads: int, heads: int, head_dim: int) -> dict[str, torch.Tensor]:
    """``state`` with each k/v projection's ``kv_heads`` heads repeated for the ``heads`` query heads
    that share them (query head ``h`` reads kv head ``h // (heads // kv_heads)``)."""
    out = {}
    for name, w in state.items():
        if any(p in name for p in ("k_proj.", "v_proj.")):
            w = w.unflatten(0, (kv_heads, head_dim)).repeat_interleave(heads // kv_heads, dim=0).flatten(0, 1)
        out[name] = w
    return out


def test_grad_rollout_with_grouped_kv_heads_is_the_repeated_heads_map() -> None:
    vocab = CharVocab.build(CORPUS)
    sizes = dict(embed_dim=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, ff_dim=64, dropout=0.0,
                 position="rope", max_len=128)
    torch.manual_seed(0)
    grouped = ak.TransformerSeq2Seq(ak.TransformerConfig(len(vocab), kv_heads=2, **sizes)).eval()
    full = ak.TransformerSeq2Seq(ak.TransformerConfig(len(vocab), kv_heads=4, **sizes)).eval()
    full.load_state_dict(_repeat_kv(grouped.state_dict(), 2, 4, 8))
    e = explain(grouped, TEXT, target=TARGET, method="grad_rollout", tokenizer=vocab)
    reference = explain(full, TEXT, target=TARGET, method="grad_rollout", tokenizer=vocab)
    assert e.relevance.abs().sum() > 0 and not e.zero_rows
    torch.testing.assert_close(e.relevance, reference.relevance, atol=1e-5, rtol=0)


def test_grad_rollout_on_a_grouped_query_llama() -> None:
    tf = pytest.importorskip("transformers")
    from viz_support import _byte_bpe

    import attnkit.hf

    tok = tf.PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(["<s>", "</s>", "<unk>"], "<s> $A"),
                                     bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    sizes = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=64)
    name = attnkit.hf.register()
    torch.manual_seed(0)
    grouped = tf.LlamaForCausalLM._from_config(tf.LlamaConfig(num_key_value_heads=2, **sizes),
                                               attn_implementation=name).eval()
    full = tf.LlamaForCausalLM._from_config(tf.LlamaConfig(num_key_value_heads=4, **sizes),
                                            attn_implementation=name).eval()
    full.load_state_dict(_repeat_kv(grouped.state_dict(), 2, 4, 8))
    e = explain(grouped, TEXT, target=" on the mat", method="grad_rollout", tokenizer=tok)
    reference = explain(full, TEXT, target=" on the mat", method="grad_rollout", tokenizer=tok)
    assert not e.zero_rows
    torch.testing.assert_close(e.relevance, reference.relevance, atol=1e-5, rtol=0)


def test_a_map_no_output_depends_on_is_an_error() -> None:
    x = torch.ones(3, requires_grad=True)
    used = x[None, None, None].expand(1, 1, 3, 3) * 1.0  # (1, H, Tq, Tk)
    unused = x.detach().clone().requires_grad_(True)[None, None, None].expand(1, 1, 3, 3) * 1.0
    p = Pass(outputs=used.sum((0, 1, 3)), leaves=[x], weights={"encoder": [used, unused]})
    maps = {"encoder": [w.detach()[0] for w in p.weights["encoder"]]}
    with pytest.raises(ValueError, match="encoder layer 1"):
        _weight_grads(p, maps)
    p.weights["encoder"] = [used]
    assert _weight_grads(p, {"encoder": maps["encoder"][:1]})[0]["encoder"][0].shape == (1, 3, 3)


# ----------------------------------------------------------------------------- the page of every kind of model


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    tf = pytest.importorskip("transformers")
    from viz_support import wordpiece_tokenizer

    tok, special = wordpiece_tokenizer()
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(tf.BertConfig(
        vocab_size=tok.get_vocab_size(), max_position_embeddings=64, pad_token_id=fast.pad_token_id,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, hidden_size=32, num_labels=2,
        id2label={0: "NEG", 1: "POS"}, label2id={"NEG": 0, "POS": 1}))
    folder = tmp_path_factory.mktemp("classifier") / "bertcls"
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["gpt2", "classifier"])
def test_page_and_inline_view_with_a_target(kind: str, tiny_model, classifier, tmp_path) -> None:
    folder, target = (tiny_model("gpt2"), " on the mat") if kind == "gpt2" else (classifier, "POS")
    e = explain(str(folder), TEXT, target=target)
    assert "attn-data" in e._repr_html_()
    result = _cli(TEXT, "--model", str(folder), "--target", target, "--out", str(tmp_path / "e.html"),
                  "--svg", str(tmp_path / "svg"))
    assert result.exit_code == 0, result.output
    data = page_data(tmp_path / "e.html")
    assert data["relevance"]["tokens"] == e.tokens and data["relevance"]["targets"] == e.target_tokens
    assert data["left"] == e.tokens  # the attention views are over the explained input tokens
    assert (tmp_path / "svg" / "relevance-attnlrp.svg").is_file()


def test_page_decodes_as_many_tokens_as_the_explanation(tiny_checkpoint, tmp_path) -> None:
    from attnkit.relevance.page import write_page

    folder = tiny_checkpoint("transformer")
    e = explain(folder, TEXT, max_new_tokens=32)
    assert len(e.target_tokens) == 32  # the untrained model never says EOS: max_new_tokens decides
    write_page({"attnlrp": e}, tmp_path / "e.html", source=folder, text=TEXT, max_new_tokens=32)
    views = {v["kind"]: v for v in page_data(tmp_path / "e.html")["more"]}
    assert views["cross"]["nq"] == len(e.target_tokens) + 1  # the start token, then the outputs


# ----------------------------------------------------------------------------- the relevance picture


def test_relevance_picture_is_signed_and_symmetric(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    import attnkit.viz
    from attnkit.cli.explain import _relevance_pictures

    figures = []
    draw = attnkit.viz.heatmap
    monkeypatch.setattr(attnkit.viz, "heatmap", lambda *a, **k: figures.append(draw(*a, **k)) or figures[-1])
    e = explain(tiny_checkpoint("transformer"), TEXT, target=TARGET)
    assert (e.relevance < 0).any()
    assert _relevance_pictures(e, None, tmp_path) == [tmp_path / "relevance-attnlrp.png"]
    image = figures[0].axes[0].images[0]
    peak = float(e.relevance.abs().max())
    assert image.get_clim() == pytest.approx((-peak, peak))
    assert image.get_cmap().name == "RdBu_r"  # red for, blue against: the page's colours
    assert figures[0].axes[1].get_ylabel().startswith("relevance")


# ----------------------------------------------------------------------------- prompts at the length limit


@pytest.mark.parametrize("target", [" on the mat", None])
def test_prompt_at_the_length_limit_leaves_room_for_the_output(target, tiny_model) -> None:
    tf = pytest.importorskip("transformers")
    folder = tiny_model("gpt2")  # 64 positions
    tok = tf.AutoTokenizer.from_pretrained(folder, model_max_length=64)
    model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert len(tok(LONG, verbose=False)["input_ids"]) == 121
    with pytest.warns(UserWarning, match=r"121 tokens .* cut"):
        e = explain(model, LONG, target=target, tokenizer=tok, max_new_tokens=8)
    assert len(e.tokens) + e.relevance.shape[0] - 1 <= 64 and e.relevance.shape[1] == len(e.tokens)
    assert torch.isfinite(e.relevance).all()


def test_a_target_longer_than_the_limit_is_one_line(tiny_model, tmp_path) -> None:
    folder = str(tiny_model("gpt2"))
    with pytest.raises(ValueError, match="at most 64 tokens .* no room for the prompt"):
        explain(folder, TEXT, target=LONG)
    result = _cli(TEXT, "--model", folder, "--target", LONG, "--out", str(tmp_path / "e.html"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no room for the prompt" in result.output


def test_cli_page_of_a_prompt_cut_to_fit(tiny_model, tmp_path) -> None:
    """The page's attention views are over the prompt as the model read it (cut to fit), not the
    whole text (which the 64 positions of the tiny GPT-2 could not take)."""
    from attnkit.cli.explain import explain_command

    with pytest.warns(UserWarning, match="tokens cut"):
        explanations, page, _ = explain_command(LONG, model=str(tiny_model("gpt2")), target=" on the mat",
                                                out=tmp_path / "e.html")
    e = explanations["attnlrp"]
    assert len(e.tokens) == 62 and page_data(page)["left"] == e.tokens
