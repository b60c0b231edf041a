"""One interface over every model :func:`attnkit.explain` takes: a *subject*.

A :class:`Subject` knows the input tokens, the output tokens and how to run the model once with
gradients: :meth:`Subject.run` returns a :class:`Pass` holding the scalar outputs to explain
``(T_out,)``, the input token embeddings as an autograd leaf ``(T_in, E)`` (relevance and
gradients are read there) and, when asked, each layer's attention weights, still in the graph.

The models, loaded as :func:`attnkit.viz.explore` loads them (its loaders are reused):

- attnkit ``TransformerSeq2Seq`` / ``RNNSeq2Seq`` (a checkpoint folder): output ``i`` is the logit
  of target token ``i`` at decoder step ``i`` (teacher forcing on the target or the greedy output);
- Hugging Face encoder-decoder: the same over ``decoder_input_ids``;
- Hugging Face decoder-only: ``text`` is the prompt, output ``i`` is the logit of continuation
  token ``i``; the columns are the prompt's tokens;
- Hugging Face encoder with a sequence-classification head: one output, the logit of the
  predicted class (or of the label named by ``target``);
- a sentence encoder (``SentenceEncoder``, a sentence-transformers folder, or a Hugging Face
  encoder) with ``query=``: one output, the cosine similarity of the text's pooled embedding to
  the query's.

Layouts (how attention maps become a token-to-token relevance, :mod:`.graphs`): ``"seq2seq"``
(encoder self, decoder self and cross, or only cross for the RNN), ``"decoder"`` (causal self over
prompt + continuation; ``rows`` are the positions whose logits are explained), ``"encoder"``
(self-attention; ``readout (T,)`` weighs the positions the scalar output reads: one-hot on
``[CLS]``, or uniform for mean pooling).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.relevance.rules import AttnLRP, hook_activations

LAYOUTS = ("seq2seq", "decoder", "encoder")


@dataclass
class Pass:
    """What one forward pass gives: ``outputs (T_out,)``, ``leaves`` (the embedding outputs in
    call order, each ``(T, E)``, leaf 0 the input's), ``weights`` kind -> per-layer
    ``(1, H, Tq, Tk)`` as the model returned them (in the graph: gradients are taken w.r.t. them)."""

    outputs: Tensor
    leaves: list[Tensor]
    weights: dict[str, list[Tensor]] = field(default_factory=dict)
    steps: list[Tensor] | None = None  # the RNN's per-step cross weights (1, S), in the graph


@dataclass
class Subject:
    """A model ready to explain on one text (see the module docstring)."""

    tokens: list[str]
    target_tokens: list[str] | None
    layout: str
    model_type: str
    model: nn.Module
    embeddings: tuple[nn.Module, ...]  # whose outputs are the leaves (the input's first)
    forward: Callable[[bool], tuple[Tensor, dict[str, list[Tensor]]]]  # need_weights -> outputs, weights
    rows: list[int] | None = None  # decoder layout: the positions explained
    n_inputs: int = 0  # columns (the prompt's length for a decoder)
    readout: Tensor | None = None  # encoder layout: (T,)
    has_attention: bool = True
    text: str | None = None  # the input as the model read it, where it was cut to fit (else None)

    def run(self, *, lrp: bool = False, need_weights: bool = False, alpha: float = 1.0) -> Pass:
        """One forward pass with the input embeddings as leaves (``alpha`` scales the input's,
        for integrated gradients); under :class:`AttnLRP` rules when ``lrp``."""
        leaves: list[Tensor] = []

        def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
            scale = alpha if not leaves else 1.0
            leaf = (out.detach()[0] * scale).requires_grad_(True)  # (T, E) of batch item 0
            leaves.append(leaf)
            return leaf[None]

        handles = [m.register_forward_hook(hook) for m in dict.fromkeys(self.embeddings)]
        if lrp:
            handles += hook_activations(self.model)
        try:
            with _frozen(self.model), torch.enable_grad(), (AttnLRP() if lrp else contextlib.nullcontext()):
                outputs, weights = self.forward(need_weights)
                steps = weights.pop("steps", None)
        finally:
            for h in handles:
                h.remove()
        if not leaves:
            raise ValueError(f"the {self.model_type} model never called its input embedding")
        return Pass(outputs, leaves, weights, steps)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without gradients (only the inputs carry a graph), eval mode; restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


# ----------------------------------------------------------------------------- dispatch


def subject(source: Any, text: str, *, target: str | None, query: str | None, tokenizer: Any = None,
            max_new_tokens: int = 32) -> Subject:
    """The :class:`Subject` for any model :func:`attnkit.explain` takes."""
    from attnkit.models import RNNSeq2Seq, TransformerSeq2Seq
    from attnkit.models.sentence_encoder import SentenceEncoder
    from attnkit.viz import any_model

    if isinstance(source, (str, os.PathLike)):
        return _folder(source, text, target=target, query=query, max_new_tokens=max_new_tokens)
    if isinstance(source, SentenceEncoder):
        _no_target(target, "a sentence encoder")
        return _sentence_encoder(source, text, query)
    if isinstance(source, (TransformerSeq2Seq, RNNSeq2Seq)):
        if tokenizer is None:
            raise ValueError(f"explain needs tokenizer= with an attnkit {type(source).__name__} "
                             "(or pass its checkpoint folder)")
        _no_query(query, type(source).__name__)
        return _attnkit(source, tokenizer, text, target=target, max_new_tokens=max_new_tokens)
    if isinstance(source, nn.Module) and hasattr(getattr(source, "config", None), "model_type"):
        tokenizer = any_model._tokenizer_beside(source) if tokenizer is None else tokenizer
        return _hf(source, tokenizer, text, target=target, query=query, max_new_tokens=max_new_tokens)
    raise ValueError(
        "explain takes a model folder, a Hugging Face model, an attnkit TransformerSeq2Seq/RNNSeq2Seq "
        f"or a SentenceEncoder; got {type(source).__name__}"
    )


def _no_target(target: str | None, what: str) -> None:
    if target is not None:
        raise ValueError(f"target={target!r} needs a model with a decoder or a classification head; this is {what}")


def _no_query(query: str | None, what: str) -> None:
    if query is not None:
        raise ValueError(f"query={query!r} needs a sentence encoder; this is {what}")


def _folder(source: str | os.PathLike, text: str, *, target: str | None, query: str | None,
            max_new_tokens: int) -> Subject:
    from attnkit.models.sentence_encoder import SentenceEncoder
    from attnkit.viz.any_model import read_model_folder

    found = read_model_folder(source)
    if found.kind in ("name", "sentence-transformers"):
        _no_target(target, "a sentence encoder")
        encoder = SentenceEncoder.from_pretrained(str(source) if found.kind == "name" else found.path)
        return _sentence_encoder(encoder, text, query)
    if found.kind == "attnkit":
        from attnkit.data import load_tokenizer
        from attnkit.models import load

        _no_query(query, "an attnkit seq2seq checkpoint")
        return _attnkit(load(found.path), load_tokenizer(found.path), text, target=target,
                        max_new_tokens=max_new_tokens)
    model, tokenizer = _load_hf(found.path, found.config)
    return _hf(model, tokenizer, text, target=target, query=query, max_new_tokens=max_new_tokens)


def _load_hf(folder: Path, config: dict) -> tuple[nn.Module, Any]:
    """explore()'s loader, except that an encoder with a classification head keeps its head."""
    from attnkit.viz import any_model

    classifier = any("ForSequenceClassification" in a for a in config.get("architectures") or [])
    if not classifier:
        return any_model._load_hf(folder)
    tf = any_model._transformers()
    try:
        model = tf.AutoModelForSequenceClassification.from_pretrained(
            folder, local_files_only=True, attn_implementation="eager")
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except OSError as exc:
        raise FileNotFoundError(f"cannot load the Hugging Face model in {folder}: {any_model._first_line(exc)}") from None
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- attnkit seq2seq


def _attnkit(model: nn.Module, tokenizer: Any, text: str, *, target: str | None, max_new_tokens: int) -> Subject:
    from attnkit.models import TransformerSeq2Seq, output_ids
    from attnkit.viz.any_model import _attnkit_tokens

    c = model.config
    src_ids, row = output_ids(model, tokenizer, text, target=target, max_new_tokens=max_new_tokens)
    device = next(model.parameters()).device
    src = torch.tensor([src_ids], device=device)  # (1, S)
    tgt_in = torch.tensor([[c.bos_id, *row[:-1]]], device=device)  # (1, T_out)
    picked = torch.tensor(row, device=device)  # (T_out,)
    steps = torch.arange(len(row), device=device)
    transformer = isinstance(model, TransformerSeq2Seq)
    has_attention = transformer or model.decoder.attention is not None

    def forward(need_weights: bool) -> tuple[Tensor, dict[str, list[Tensor]]]:
        if transformer:
            if need_weights:
                logits, maps = model.forward_with_weights(src, tgt_in)  # (1, T, V)
                weights = {kind: list(maps[key])
                           for kind, key in (("encoder", "encoder"), ("decoder", "decoder_self"), ("cross", "cross"))}
            else:
                logits, weights = model(src, tgt_in), {}
        elif need_weights and has_attention:  # the RNN: the stacked weights are a copy; gradients
            step_maps: list[Tensor] = []  # need each step's own (1, S) tensor
            handle = model.decoder.attention.register_forward_hook(lambda m, a, out: step_maps.append(out[1]))
            try:
                logits, w = model(src, tgt_in, need_weights=True)  # (1, T, V), (1, T, S)
            finally:
                handle.remove()
            weights = {"cross": [w], "steps": step_maps}  # one layer, one head
        else:  # the RNN without weights, or without attention (attention="none")
            logits, weights = model(src, tgt_in), {}
        return logits[0, steps, picked], weights

    return Subject(
        tokens=[str(t) for t in tokenizer.tokenize(text)], target_tokens=_attnkit_tokens(tokenizer, row),
        layout="seq2seq", model_type="attnkit-transformer" if transformer else "attnkit-rnn", model=model,
        embeddings=(model.src_embed.word_embeddings, model.tgt_embed.word_embeddings) if transformer
        else (model.encoder.embed, model.decoder.embed), forward=forward,
        n_inputs=len(src_ids), has_attention=has_attention,
    )


# ----------------------------------------------------------------------------- sentence encoders


def _cosine(embedding: Tensor, query: Tensor, lrp: bool) -> Tensor:
    """``cos(embedding (E,), query (E,))``; the norm of ``embedding`` is a constant under AttnLRP's
    identity rule for normalisations, so the relevance sums to the cosine."""
    norm = embedding.norm()
    return embedding @ query / (norm.detach() if lrp else norm)


def _sentence_encoder(encoder: nn.Module, text: str, query: str | None) -> Subject:
    from attnkit.viz.tokens import readable_tokens, token_scheme

    if query is None or not isinstance(query, str) or not query.strip():
        raise ValueError(f"explaining a sentence encoder needs query= (a non-empty text to match), got {query!r}")
    bert = encoder.encoder
    ids, tokens, _ = encoder.tokenize([text], with_tokens=True)
    q = encoder.embed([query], dtype="float32")[0].to(torch.float64 if bert.dtype == torch.float64 else torch.float32)
    q = q / q.norm()
    input_ids = torch.tensor(ids, device=next(bert.parameters()).device)  # (1, T)
    T = input_ids.shape[1]
    pooling = encoder.pooling

    def forward(need_weights: bool) -> tuple[Tensor, dict[str, list[Tensor]]]:
        hidden, w = bert(input_ids, need_weights=need_weights)  # (1, T, E)
        pooled = hidden[0, 0] if pooling == "cls" else hidden[0].max(0).values if pooling == "max" else hidden[0].mean(0)
        lrp = _lrp_active()
        out = _cosine(pooled.to(q.dtype), q, lrp)[None]  # (1,)
        return out, ({"encoder": list(w)} if need_weights else {})

    tok = encoder.tokenizer
    special = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
    readout = torch.zeros(T) if pooling == "cls" else torch.full((T,), 1.0 / T)
    if pooling == "cls":
        readout[0] = 1.0
    return Subject(
        tokens=readable_tokens(tokens[0], token_scheme(tok), special=special), target_tokens=None,
        layout="encoder", model_type="sentence-encoder", model=bert, embeddings=(bert.embeddings.word_embeddings,),
        forward=forward, n_inputs=T, readout=readout,
    )


def _lrp_active() -> bool:
    """Whether an :class:`AttnLRP` mode is on the stack (the forward closures ask)."""
    from torch.overrides import _get_current_function_mode_stack

    return any(isinstance(m, AttnLRP) for m in _get_current_function_mode_stack())


# ----------------------------------------------------------------------------- Hugging Face


def _hf(model: nn.Module, tokenizer: Any, text: str, *, target: str | None, query: str | None,
        max_new_tokens: int) -> Subject:
    from attnkit.viz import any_model

    config = model.config
    role = any_model._model_role(config)
    cont = None  # a decoder-only model's continuation: the target's ids, or generated below
    reserve = 0  # positions the continuation needs after the prompt (its last token is not fed)
    if role == "decoder":
        if target is not None:
            cont = tokenizer(target, add_special_tokens=False)["input_ids"]
            _check_encodable(tokenizer, target, cont)
        reserve = (max_new_tokens if cont is None else len(cont)) - 1
    device = next(model.parameters()).device
    ids, read = _input_ids(tokenizer, text, _length_limit(tokenizer, config), reserve)
    ids = ids.to(device)  # (1, S)
    if ids.shape[1] == 0:
        raise ValueError(f"the tokenizer gives no tokens for {text!r}")
    tokens = any_model._hf_tokens(tokenizer, ids[0].tolist())
    embeddings = (model.get_input_embeddings(),)
    if role == "seq2seq":  # BART's and T5's stacks call their own (weight-sharing) embedding modules
        embeddings = (model.get_encoder().get_input_embeddings(), model.get_decoder().get_input_embeddings())
    common = dict(model=model, embeddings=embeddings, model_type=config.model_type, text=read)

    def stack(attentions: Any, name: str) -> list[Tensor]:
        if not attentions or any(a is None for a in attentions):
            any_model._stack(attentions, name, model)  # raises the ValueError naming the cause
        return list(attentions)

    if role == "seq2seq":
        _no_query(query, f"{config.model_type} (encoder-decoder)")
        with torch.no_grad():
            target_ids = any_model._decoder_ids(model, tokenizer, {"input_ids": ids}, target, max_new_tokens)
        _check_encodable(tokenizer, target, target_ids[1:])
        dec_in = torch.tensor([target_ids[:-1]], device=device)  # (1, T_out)
        picked = torch.tensor(target_ids[1:], device=device)
        steps = torch.arange(len(picked), device=device)

        def forward(need_weights: bool) -> tuple[Tensor, dict[str, list[Tensor]]]:
            out = model(input_ids=ids, decoder_input_ids=dec_in, use_cache=False,
                        output_attentions=need_weights, return_dict=True)
            weights = {}
            if need_weights:
                weights = {"encoder": stack(out.encoder_attentions, "encoder_attentions"),
                           "decoder": stack(out.decoder_attentions, "decoder_attentions"),
                           "cross": stack(out.cross_attentions, "cross_attentions")}
            return out.logits[0, steps, picked], weights

        return Subject(tokens=tokens, target_tokens=any_model._hf_tokens(tokenizer, target_ids[1:]), layout="seq2seq",
                       forward=forward, n_inputs=ids.shape[1], **common)

    if role == "decoder":
        _no_query(query, f"{config.model_type} (decoder-only)")
        P = ids.shape[1]
        if cont is None:
            with torch.no_grad():
                generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                           max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            cont = generated[0, P:].tolist()
        if not cont:
            raise ValueError(f"the {config.model_type} model generated nothing after {text!r}")
        full = torch.cat([ids, torch.tensor([cont], device=device)], dim=1)[:, :-1]  # (1, P + T_out - 1)
        rows = list(range(P - 1, P - 1 + len(cont)))
        picked = torch.tensor(cont, device=device)

        def forward(need_weights: bool) -> tuple[Tensor, dict[str, list[Tensor]]]:
            out = model(input_ids=full, use_cache=False, output_attentions=need_weights, return_dict=True)
            weights = {"decoder": stack(out.attentions, "attentions")} if need_weights else {}
            return out.logits[0, rows, picked], weights

        return Subject(tokens=tokens, target_tokens=any_model._hf_tokens(tokenizer, cont), layout="decoder",
                       forward=forward, rows=rows, n_inputs=P, **common)

    # encoder-only: a classification head's logit, or the similarity to a query
    head = hasattr(model, "classifier") or hasattr(model, "score")
    T = ids.shape[1]
    if head and query is None:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        label = _label(config, target, logits)

        def forward(need_weights: bool) -> tuple[Tensor, dict[str, list[Tensor]]]:
            out = model(input_ids=ids, output_attentions=need_weights, return_dict=True)
            weights = {"encoder": stack(out.attentions, "attentions")} if need_weights else {}
            return out.logits[0, label][None], weights

        readout = torch.zeros(T)
        readout[0] = 1.0
        names = getattr(config, "id2label", None) or {}
        return Subject(tokens=tokens, target_tokens=[str(names.get(label, label))], layout="encoder",
                       forward=forward, n_inputs=T, readout=readout, **common)
    _no_target(target, f"{config.model_type} (an encoder without a classification head)")
    if query is None or not query.strip():
        raise ValueError(f"explaining the {config.model_type} encoder needs query= (cosine similarity of the "
                         f"mean-pooled text to the query) or a folder with a classification head; got query={query!r}")
    base = getattr(model, "base_model", model)
    with torch.no_grad():
        q_ids = tokenizer(query, return_tensors="pt")["input_ids"].to(device)
        q = base(input_ids=q_ids).last_hidden_state[0].mean(0).float()
    q = q / q.norm()

    def forward(need_weights: bool) -> tuple[Tensor, dict[str, list[Tensor]]]:
        out = base(input_ids=ids, output_attentions=need_weights, return_dict=True)
        weights = {"encoder": stack(out.attentions, "attentions")} if need_weights else {}
        pooled = out.last_hidden_state[0].mean(0)
        return _cosine(pooled.to(q.dtype), q.to(pooled.dtype), _lrp_active())[None], weights

    return Subject(tokens=tokens, target_tokens=None, layout="encoder", forward=forward, n_inputs=T,
                   readout=torch.full((T,), 1.0 / T), **common)


def _length_limit(tokenizer: Any, config: Any) -> int | None:
    """The most tokens the model reads at once: the tokenizer's ``model_max_length`` and the
    model's position table (``n_positions`` / ``max_position_embeddings``), the smaller; None if
    neither is set."""
    limits = [getattr(tokenizer, "model_max_length", None), getattr(config, "n_positions", None),
              getattr(config, "max_position_embeddings", None)]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 100_000]
    return min(limits, default=None)


def _input_ids(tokenizer: Any, text: str, limit: int | None, reserve: int) -> tuple[Tensor, str | None]:
    """``text``'s ids ``(1, P)``, cut as the tokenizer truncates so that ``P + reserve <= limit``
    (``reserve``: the positions a decoder-only model's continuation takes after the prompt), with a
    warning naming how many tokens were cut; and the text the kept tokens spell when it was cut
    (else None).

    Raises:
        ValueError: the continuation alone leaves no room for the prompt (names the lengths).
    """
    if limit is None:
        return tokenizer(text, return_tensors="pt")["input_ids"], None
    room = limit - reserve
    if room < 1:
        raise ValueError(f"the model reads at most {limit} tokens and the output to explain takes {reserve + 1} "
                         f"({reserve} after the prompt): no room for the prompt; use a shorter target "
                         "(or fewer new tokens)")
    full = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"]
    if full.shape[1] <= room:
        return full, None
    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=room)["input_ids"]
    after = f" to leave {reserve} for the output" if reserve else ""
    warnings.warn(f"the input has {full.shape[1]} tokens and the model reads at most {limit}: cut to "
                  f"{ids.shape[1]}{after} ({full.shape[1] - ids.shape[1]} tokens cut)", stacklevel=2)
    return ids, tokenizer.decode(ids[0], skip_special_tokens=True)


def _check_encodable(tokenizer: Any, target: str | None, ids: list[int]) -> None:
    if target is None:
        return
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and unk in ids):
        raise ValueError(f"the model's tokenizer cannot encode the target {target!r}")


def _label(config: Any, target: str | None, logits: Tensor) -> int:
    if target is None:
        return int(logits.argmax())
    names = {str(v): int(k) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if target in names:
        return names[target]
    raise ValueError(f"target={target!r} is not one of this classifier's labels {sorted(names)}")
