"""See attention in any model: ``explore(model_or_folder, text)``.

One call runs the model once on ``text`` (and, for an encoder-decoder, on ``target`` or on
its own greedy output), keeps exactly the attention weights the model reports, captures the
queries, keys and values with forward hooks (:mod:`attnkit.viz.hooks`), and writes the
explorer page: a kind selector (encoder / decoder / cross, only those the model has), raw
weights beside attention rollout and value-norm-weighted attention, the neuron view, and
buttons that save the head and model views as SVG and PNG.

What it takes (one adapter per kind of model, registered by type on :func:`_run`):

- a local Hugging Face folder: encoder-only (BERT, RoBERTa, DistilBERT, ...), decoder-only
  (GPT-2, ...) or encoder-decoder (BART, Marian, T5, ...), loaded offline with ``AutoConfig``,
  the matching auto class and ``AutoTokenizer``, ``attn_implementation="attnkit"``
  (:mod:`attnkit.hf`: eager's weights from attnkit's weights path; a family that does not
  dispatch through transformers' interface runs its own attention, which reports them too);
- an already loaded Hugging Face model (pass ``tokenizer=`` unless its folder has one);
- an attnkit checkpoint (``attnkit train``): the RNN's cross-attention, the Transformer's
  encoder self, decoder self (causal) and cross-attention;
- a sentence-transformers BERT folder (or ``"all-MiniLM-L6-v2"``) or a ``SentenceEncoder``.

``transformers`` is needed only for Hugging Face models (``pip install 'attnkit[hf]'``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attnkit.models import RNNSeq2Seq, TransformerSeq2Seq
from attnkit.models.sentence_encoder import SentenceEncoder
from attnkit.runtime import returned_memory
from attnkit.viz.explorer import (
    LayerSource,
    Panel,
    _page_data,
    _write_data,
    json_chars,
    neuron_payload,
)
from attnkit.viz.hooks import CAUSAL_KINDS, FAMILIES, KINDS, Capture, Projections
from attnkit.viz.tokens import readable_tokens, token_scheme
from attnkit.viz.views import check_value_norm_shapes, rollout, value_norm_layer

MAX_PAGE_BYTES = 15_000_000  # quantised weights of all views together (base64: 20 MB)
MAX_PAGE_CHARS = 24_000_000  # the neuron view is left out by default when the page would pass this
MAX_NEURON_CHARS = 8_000_000  # ... or when its queries and keys alone would
HF_EXTRA = "pip install 'attnkit[hf]'"


@dataclass
class Exploration:
    """What :func:`explore` computed, and what it drew: :meth:`save` writes it again (the page,
    SVG and PNG pictures); in a notebook it displays itself.

    ``tokens``: the input's tokens (a decoder-only model's tokens too); ``target_tokens``: the
    decoder's input tokens of an encoder-decoder (its start token, then the target or the
    greedy output), else None. ``weights``: kind -> ``(layers, heads, T_query, T_key)`` float,
    exactly the model's attentions: ``"encoder"`` (over ``tokens``), ``"decoder"`` (causal,
    over ``target_tokens``, or ``tokens`` for a decoder-only model), ``"cross"`` (queries
    ``target_tokens``, keys ``tokens``). ``ids``/``target_ids``: the token ids that were run.
    ``projections``: kind -> captured q/k/v (:class:`~attnkit.viz.hooks.Projections`), for
    the kinds the hooks could capture; ``neuron_note`` says why a kind has none.
    """

    tokens: list[str]
    target_tokens: list[str] | None
    weights: dict[str, Tensor]
    path: Path | None = None
    model_type: str = ""
    ids: list[int] = field(default_factory=list)
    target_ids: list[int] | None = None
    projections: dict[str, Projections] = field(default_factory=dict)
    neuron_note: str = ""
    title: str | None = None  # the page's title

    def __setattr__(self, name: str, value: Any) -> None:
        # Setting ``path`` (save() does, after writing) records which file is this record's page:
        # another explore() with the same (default) path replaces the file, and the record must
        # not then show that other text's page inline.
        object.__setattr__(self, name, value)
        if name == "path":
            object.__setattr__(self, "_page_stamp", _file_stamp(value))

    def _repr_html_(self) -> str:
        """In a notebook: the explorer page inline (isolated, offline; :mod:`attnkit.viz.notebook`):
        the file it wrote while that is still its page, else the same page made again in memory."""
        from attnkit.viz.explorer import _render_page
        from attnkit.viz.notebook import exploration_html

        def render(neuron: bool | None, max_bytes: int) -> str:
            return _render_page(_explorer_data(self, title=self.title, neuron=neuron, max_bytes=max_bytes))

        mine = self.path is not None and _file_stamp(self.path) == getattr(self, "_page_stamp", None)
        return exploration_html(self.path if mine else None, render, MAX_PAGE_BYTES)

    @property
    def kinds(self) -> list[str]:
        """The kinds present, in the order encoder, decoder, cross."""
        return [k for k in KINDS if k in self.weights]

    def token_pair(self, kind: str) -> tuple[list[str], list[str]]:
        """``(query tokens, key tokens)`` of ``kind``."""
        if kind not in self.weights:
            raise ValueError(f"this model has no {kind!r} attention; it has {self.kinds}")
        if kind == "encoder" or self.target_tokens is None:
            return self.tokens, self.tokens
        if kind == "decoder":
            return self.target_tokens, self.target_tokens
        return self.target_tokens, self.tokens

    def views(self, kind: str) -> dict[str, Tensor]:
        """The page's views of ``kind``: ``"raw"`` ``(L, H, Tq, Tk)``; ``"rollout"`` ``(L, 1, T, T)``
        for self-attention; ``"value-norm"`` ``(L, H, Tq, Tk)`` (each row rescaled to sum to 1)
        where the projections were captured."""
        out: dict[str, Tensor] = {}
        for view, source in self._view_sources(kind).items():
            if isinstance(source, LayerSource):
                full = torch.empty(source.shape, dtype=torch.float32)
                for layer in range(source.shape[0]):
                    full[layer] = torch.from_numpy(source[layer])
                source = full
            out[view] = source
        return out

    def _view_sources(self, kind: str) -> dict[str, Tensor | LayerSource]:
        """:meth:`views`, with the value-norm view as a :class:`LayerSource` (computed a layer at
        a time when it is read, so a page never holds it whole in float)."""
        raw = self.weights[kind]
        out: dict[str, Tensor | LayerSource] = {"raw": raw}
        if kind != "cross":
            out["rollout"] = rollout(raw)[:, None]  # (L, 1, T, T)
        p = self.projections.get(kind)
        if p is not None:
            check_value_norm_shapes(raw, p.v, p.out_proj_weight)

            def layer(i: int) -> np.ndarray:
                vn = value_norm_layer(raw[i], p.v[i], p.out_proj_weight[i])  # (H, Tq, Tk) float32
                return (vn / vn.sum(dim=-1, keepdim=True).clamp_min(1e-30)).numpy()  # rows sum to 1

            out["value-norm"] = LayerSource(tuple(raw.shape), layer)
        return out

    def save(
        self, path: str | os.PathLike | None = None, *, svg: str | os.PathLike | None = None,
        png: str | os.PathLike | None = None, title: str | None = None, neuron: bool | None = None,
        kinds: Sequence[str] | None = None, view: str = "raw",
    ) -> list[Path]:
        """Write the explorer page to ``path`` and/or the head and model views as SVG files
        into the folder ``svg`` and PNG files into ``png``; returns every path written (the
        page first). ``kinds`` limits both to some attention kinds (default: all, in the order
        encoder, decoder, cross; a link to ``page.html#cross`` opens the page on that kind);
        ``neuron`` as in :func:`explore`; ``view`` is the pictures' view (``"raw"``,
        ``"rollout"``, ``"value-norm"``)."""
        from attnkit.viz.export import write_views

        if path is None and svg is None and png is None:
            raise ValueError("save needs a page path, svg= or png= (a folder)")
        written = []
        if path is not None:
            self.path = _write_page(self, path, title=title if title is not None else self.title,
                                    neuron=neuron, kinds=kinds)
            written.append(self.path)
        if svg is not None or png is not None:
            written += write_views(self, svg_dir=svg, png_dir=png, kinds=kinds, view=view)
        return written


def _file_stamp(path: str | os.PathLike | None) -> tuple[int, int, int] | None:
    """``(inode, size, mtime_ns)`` of the file at ``path`` (None: no path or no file). A page is
    written to a temporary file and renamed, so a rewrite always changes the inode."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def explore(
    model_or_folder: Any,
    text: str,
    *,
    target: str | None = None,
    path: str | os.PathLike | None = "view.html",
    tokenizer: Any = None,
    title: str | None = None,
    neuron: bool | None = None,
    max_new_tokens: int = 64,
) -> Exploration:
    """Run a model on ``text``, write its attention explorer to ``path`` and return what it drew
    (an :class:`Exploration`, which can :meth:`~Exploration.save` itself again).

    Args:
        model_or_folder: a model folder (Hugging Face, attnkit checkpoint, sentence-transformers),
            the name ``"all-MiniLM-L6-v2"``, a loaded Hugging Face model, an attnkit
            ``TransformerSeq2Seq``/``RNNSeq2Seq`` (with ``tokenizer``) or a ``SentenceEncoder``.
        text: the input text.
        target: an encoder-decoder's output text to attend over; None decodes greedily
            (at most ``max_new_tokens`` tokens).
        path: the page to write; None writes nothing.
        tokenizer: the tokenizer of an already loaded model (a folder brings its own).
        title: the page's title (default: the model and the text).
        neuron: include the neuron view's queries and keys; None includes them when the page
            stays small (under ``MAX_NEURON_CHARS``/``MAX_PAGE_CHARS``).

    Raises:
        FileNotFoundError: the folder does not exist or holds no model.
        ValueError: not a model, a model that reports no attention weights, a ``target`` for a
            model without a decoder, empty text, or ``transformers`` missing for a Hugging Face
            model (the message names ``pip install 'attnkit[hf]'``).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if target is not None and (not isinstance(target, str) or not target.strip()):
        raise ValueError(f"target must be a non-empty string or None, got {target!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    att = _run(model_or_folder, text, target=target, tokenizer=tokenizer, max_new_tokens=max_new_tokens)
    att.title = title or f"{_display_name(model_or_folder, att)}: {text}"
    if path is not None:
        att.save(path, title=att.title, neuron=neuron)
    return att


def _write_page(att: Exploration, path: str | os.PathLike, *, title: str | None = None,
                neuron: bool | None = None, kinds: Sequence[str] | None = None,
                relevance: dict | None = None) -> Path:
    """The explorer page of ``att`` (see :meth:`Exploration.save`); returns its path.
    ``relevance``: the relevance view's data (``attnkit.relevance.page.relevance_data``), drawn
    above the attention views."""
    data = _explorer_data(att, title=title, neuron=neuron, kinds=kinds)
    if relevance is not None:
        data["relevance"] = relevance
    return _write_data(data, path)


def _explorer_data(att: Exploration, *, title: str | None = None, neuron: bool | None = None,
                   kinds: Sequence[str] | None = None, max_bytes: int = MAX_PAGE_BYTES) -> dict[str, Any]:
    """The data of :func:`_write_page`'s page (same arguments; ``max_bytes`` bounds the
    quantised weights of all views together)."""
    kinds = att.kinds if kinds is None else list(kinds)
    bad = [k for k in kinds if k not in att.weights]
    if bad or not kinds:
        raise ValueError(f"kinds {kinds} are not a non-empty subset of this model's {att.kinds}")
    panels = []
    for kind in kinds:
        left, right = att.token_pair(kind)
        for view, weights in att._view_sources(kind).items():
            if isinstance(weights, Tensor):
                weights = weights.detach().float().cpu().numpy()  # no copy of float32 on the CPU
            panels.append(Panel(
                weights, left, right, kind=kind, view=view,
                causal=kind in CAUSAL_KINDS, cross=kind == "cross",
                head_names=["all heads"] if view == "rollout" else None,
            ))
    data = _page_data(panels, title=title, max_bytes=max_bytes)
    note = att.neuron_note
    if att.projections and neuron is not False:
        projections = {kind: p for kind, p in att.projections.items() if kind in kinds}
        notes = {kind: _neuron_note(att.model_type, kind) for kind in projections}
        payload = neuron_payload(projections, notes={k: v for k, v in notes.items() if v})
        chars = json_chars(payload)
        if neuron or (chars <= MAX_NEURON_CHARS and json_chars(data) + chars <= MAX_PAGE_CHARS):
            data["neuron"] = payload
        else:
            note = (f"The neuron view is left out: its queries and keys would add {chars / 1e6:.1f} MB "
                    f"to the page (pass neuron=True to include them).")
    elif att.projections:
        note = "The neuron view was not requested (neuron=False)."
    if note:
        data["neuronNote"] = note
    return data


def _neuron_note(model_type: str, kind: str) -> str:
    """The caveat shown with a kind's neuron view (T5's scores are not q·k/√d)."""
    family = FAMILIES.get(model_type)
    if family is None or not family.position_bias:
        return ""
    if kind == "cross":
        return "T5 does not divide q\u00b7k by \u221ad: the score is q\u00b7k."
    return ("T5 does not divide q\u00b7k by \u221ad and adds a learned relative position bias (computed in "
            "the first layer and shared by all): the score is q\u00b7k + bias, and the softmax of q\u00b7k "
            "alone would not be T5's attention.")


def _display_name(source: Any, att: Exploration) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name or str(source)
    return att.model_type or type(source).__name__


# ----------------------------------------------------------------------------- dispatch


@functools.singledispatch
def _run(source: Any, text: str, *, target: str | None, tokenizer: Any, max_new_tokens: int) -> Exploration:
    """Run ``source`` (any of :func:`explore`'s kinds) once and collect its attention: the adapter
    registered for its type (``_run.register``)."""
    raise ValueError(
        "explore takes a model folder, a Hugging Face model, an attnkit TransformerSeq2Seq/RNNSeq2Seq "
        f"or a SentenceEncoder; got {type(source).__name__}"
    )


@_run.register(str)
@_run.register(os.PathLike)
def _(source: str | os.PathLike, text: str, *, target: str | None, tokenizer: Any,
      max_new_tokens: int) -> Exploration:
    return _run_folder(source, text, target=target, max_new_tokens=max_new_tokens)


@_run.register
def _(source: SentenceEncoder, text: str, *, target: str | None, tokenizer: Any, max_new_tokens: int) -> Exploration:
    _no_target(target, "a SentenceEncoder (encoder-only)")
    return _run_sentence_encoder(source, text)


@_run.register(TransformerSeq2Seq)
@_run.register(RNNSeq2Seq)
def _(source: nn.Module, text: str, *, target: str | None, tokenizer: Any, max_new_tokens: int) -> Exploration:
    if tokenizer is None:
        raise ValueError(f"explore needs tokenizer= with an attnkit {type(source).__name__} "
                         "(or pass its checkpoint folder)")
    return _run_attnkit(source, tokenizer, text, target=target, max_new_tokens=max_new_tokens)


@_run.register
def _(source: nn.Module, text: str, *, target: str | None, tokenizer: Any, max_new_tokens: int) -> Exploration:
    """Any other module: a Hugging Face model (its config names a model_type)."""
    if not hasattr(getattr(source, "config", None), "model_type"):
        return _run.dispatch(object)(source, text, target=target, tokenizer=tokenizer, max_new_tokens=max_new_tokens)
    if tokenizer is None:
        tokenizer = _tokenizer_beside(source)
    return _run_hf(source, tokenizer, text, target=target, max_new_tokens=max_new_tokens)


def _no_target(target: str | None, what: str) -> None:
    if target is not None:
        raise ValueError(f"target={target!r} needs an encoder-decoder model, but this is {what}")


@dataclass(frozen=True)
class ModelFolder:
    """What a model folder (or name) holds, read once by :func:`read_model_folder`: ``kind`` is
    ``"name"`` (no such folder: a known model name such as ``"all-MiniLM-L6-v2"``), ``"attnkit"``
    (an ``attnkit train`` checkpoint), ``"sentence-transformers"`` (a BERT folder with
    ``modules.json``) or ``"hf"`` (any other Hugging Face model); ``config`` its config.json."""

    kind: str
    path: Path
    config: dict[str, Any]


def read_model_folder(source: str | os.PathLike) -> ModelFolder:
    """Classify a model folder (or name) for every reader of one (explore, explain).

    Raises ``FileNotFoundError`` for a file or a folder without config.json and ``ValueError``
    for a config that is not a JSON object naming a model_type (or an attnkit checkpoint)."""
    folder = Path(source).expanduser()
    if not folder.exists():  # a known name, or FileNotFoundError naming it when it is loaded
        return ModelFolder("name", folder, {})
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a model folder (it is a file)")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a model folder: it has no config.json "
            "(expected a Hugging Face model, an attnkit checkpoint or a sentence-transformers folder)"
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path} is not a model config (a JSON object)")
    if config.get("format") == "attnkit-checkpoint":
        return ModelFolder("attnkit", folder, config)
    if "model_type" not in config:
        raise ValueError(f"{cfg_path} names no model_type and is not an attnkit checkpoint: "
                         f"{folder} is not a model folder")
    if (folder / "modules.json").is_file() and config["model_type"] == "bert":
        return ModelFolder("sentence-transformers", folder, config)
    return ModelFolder("hf", folder, config)


def _run_folder(source: str | os.PathLike, text: str, *, target: str | None, max_new_tokens: int) -> Exploration:
    """A folder: attnkit checkpoint, sentence-transformers BERT, or Hugging Face model."""
    found = read_model_folder(source)
    if found.kind in ("name", "sentence-transformers"):
        encoder = SentenceEncoder.from_pretrained(str(source) if found.kind == "name" else found.path)
        _no_target(target, "a sentence-transformers encoder")
        return _run_sentence_encoder(encoder, text)
    if found.kind == "attnkit":
        from attnkit.data import load_tokenizer
        from attnkit.models import load

        return _run_attnkit(load(found.path), load_tokenizer(found.path), text, target=target,
                            max_new_tokens=max_new_tokens)
    model, tokenizer = _load_hf(found.path)
    return _run_hf(model, tokenizer, text, target=target, max_new_tokens=max_new_tokens)


# ----------------------------------------------------------------------------- Hugging Face


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError(f"seeing a Hugging Face model needs the transformers package: {HF_EXTRA}") from None
    return transformers


def _model_role(config: Any) -> str:
    """``"seq2seq"``, ``"decoder"`` (decoder-only) or ``"encoder"`` (encoder-only) for an HF config."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = config.model_type
    if getattr(config, "is_decoder", False) or (
        mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    ):
        return "decoder"
    return "encoder"


def _load_hf(folder: Path) -> tuple[nn.Module, Any]:
    """Model (attnkit attention, eval mode) and tokenizer of a Hugging Face folder, offline."""
    tf = _transformers()
    from attnkit.hf import register

    attn = register()  # ValueError (one line) where transformers is too old
    try:
        config = tf.AutoConfig.from_pretrained(folder, local_files_only=True)
        auto = {"seq2seq": tf.AutoModelForSeq2SeqLM, "decoder": tf.AutoModelForCausalLM,
                "encoder": tf.AutoModel}[_model_role(config)]
        model = auto.from_pretrained(folder, local_files_only=True, attn_implementation=attn)
    except OSError as exc:
        raise FileNotFoundError(f"cannot load the Hugging Face model in {folder}: {_first_line(exc)}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot load the Hugging Face model in {folder}: {_first_line(exc)}") from None
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise FileNotFoundError(f"no usable tokenizer in {folder}: {_first_line(exc)}") from None
    return model.eval(), tokenizer


def _tokenizer_beside(model: nn.Module) -> Any:
    folder = Path(str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")))
    if str(folder) and folder.is_dir():
        tf = _transformers()
        return tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    raise ValueError(f"explore needs tokenizer= with an already loaded {type(model).__name__}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _stack(attentions: list[Any], name: str, model: nn.Module) -> Tensor:
    """HF's per-layer ``(B, H, Tq, Tk)`` attentions -> ``(L, H, Tq, Tk)`` float (batch item 0).

    ``attentions`` is a list that this empties as it copies: each layer's tensor is dropped once
    copied, and its memory handed back (:func:`attnkit.runtime.returned_memory` would keep it for
    the next forward), so the model's weights and their stack are never both held whole (at
    1,024 tokens and 12 layers x 12 heads each is 604 MB)."""
    if not attentions or any(a is None for a in attentions):
        impl = getattr(model.config, "_attn_implementation", None)
        shown = tuple(attentions) if isinstance(attentions, list) else attentions
        raise ValueError(
            f"the {model.config.model_type} model reported no attention weights (outputs.{name} is "
            f"{shown!r}): its attention implementation {impl!r} cannot report them; load it with "
            "attn_implementation='eager'"
        )
    out = torch.empty((len(attentions), *attentions[0].shape[1:]), dtype=torch.float32)  # (L, H, Tq, Tk)
    for layer in range(len(attentions)):
        out[layer] = attentions[layer][0]
        attentions[layer] = None
        returned_memory().clear()
    return out


def _as_list(attentions: Any) -> Any:
    return list(attentions) if isinstance(attentions, (tuple, list)) else attentions


def _hf_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return readable_tokens(tokens, token_scheme(tokenizer), special=tokenizer.all_special_tokens)


def _run_hf(model: nn.Module, tokenizer: Any, text: str, *, target: str | None, max_new_tokens: int) -> Exploration:
    """Run a Hugging Face model once with ``output_attentions=True`` and hooks on its projections."""
    config = model.config
    role = _model_role(config)
    if role != "seq2seq":
        _no_target(target, f"{config.model_type} ({role}-only)")
    limit = getattr(tokenizer, "model_max_length", None)
    limit = limit if isinstance(limit, int) and limit < 100_000 else None
    enc = tokenizer(text, return_tensors="pt", truncation=limit is not None, max_length=limit)
    device = next(model.parameters()).device
    inputs = {"input_ids": enc["input_ids"].to(device)}  # (1, S)
    if "attention_mask" in enc:
        inputs["attention_mask"] = enc["attention_mask"].to(device)
    ids = enc["input_ids"][0].tolist()
    if not ids:
        raise ValueError(f"the tokenizer gives no tokens for {text!r}")
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            target_ids = None
            if role == "seq2seq":
                target_ids = _decoder_ids(model, tokenizer, inputs, target, max_new_tokens)
                inputs["decoder_input_ids"] = torch.tensor([target_ids], device=device)  # (1, T)
            if role != "encoder":
                inputs["use_cache"] = False
            with Capture(model, config.model_type) as capture:
                out = model(**inputs, output_attentions=True, return_dict=True)
    finally:
        model.train(training)
    names = {"encoder": "encoder_attentions", "decoder": "decoder_attentions", "cross": "cross_attentions"}
    names = names if role == "seq2seq" else {role: "attentions"}
    attentions = {kind: _as_list(getattr(out, name, None)) for kind, name in names.items()}
    del out  # the lists now hold the only references: _stack frees each layer as it copies it
    weights = {kind: _stack(attentions.pop(kind), names[kind], model) for kind in names}
    projections = capture.projections(weights)
    return Exploration(
        tokens=_hf_tokens(tokenizer, ids),
        target_tokens=None if target_ids is None else _hf_tokens(tokenizer, target_ids),
        weights=weights, model_type=config.model_type, ids=ids, target_ids=target_ids,
        projections=projections, neuron_note=capture.note,
    )


def _decoder_ids(model: nn.Module, tokenizer: Any, inputs: dict[str, Tensor], target: str | None,
                 max_new_tokens: int) -> list[int]:
    """The decoder's input ids: its start token, then ``target``'s ids or the greedy output."""
    if target is None:
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        return generated[0].tolist()  # starts with the decoder start token
    start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
    if start is None:
        raise ValueError(f"the {model.config.model_type} config has no decoder_start_token_id to begin the target")
    labels = tokenizer(text_target=target)["input_ids"]
    return [int(start), *labels]


# ----------------------------------------------------------------------------- attnkit models


def _run_attnkit(model: nn.Module, tokenizer: Any, text: str, *, target: str | None,
                 max_new_tokens: int) -> Exploration:
    """An attnkit seq2seq model: the Transformer's three kinds, or the RNN's cross-attention."""
    from attnkit.models import output_ids

    c = model.config
    src_ids, row = output_ids(model, tokenizer, text, target=target, max_new_tokens=max_new_tokens)
    src = torch.tensor([src_ids], device=next(model.parameters()).device)  # (1, S)
    model.eval()
    with torch.no_grad():
        tgt_ids = [c.bos_id, *row]
        tgt_in = torch.tensor([tgt_ids], device=src.device)  # (1, T)
        is_transformer = isinstance(model, TransformerSeq2Seq)
        with Capture(model, "attnkit" if is_transformer else f"attnkit {type(model).__name__}") as capture:
            _, maps = model.forward_with_weights(src, tgt_in)  # kind -> [per layer (1, H, Tq, Tk)]
        names = {"encoder": "encoder", "decoder_self": "decoder", "cross": "cross"}
        weights = {names[key]: torch.stack([w[0] for w in maps[key]]).float().cpu()  # (L, H, Tq, Tk)
                   for key in names if key in maps}
    return Exploration(
        tokens=[str(t) for t in tokenizer.tokenize(text)],
        target_tokens=_attnkit_tokens(tokenizer, tgt_ids),
        weights=weights, model_type="attnkit-transformer" if is_transformer else "attnkit-rnn",
        ids=src_ids, target_ids=tgt_ids, projections=capture.projections(weights), neuron_note=capture.note,
    )


def _attnkit_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    from attnkit.data.base import SPECIAL_TOKENS

    specials = dict(zip((tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id),
                        SPECIAL_TOKENS, strict=True))
    return [specials[i] if i in specials else tokenizer.decode([i], skip_special=False) for i in ids]


def _run_sentence_encoder(encoder: nn.Module, text: str) -> Exploration:
    """A ``SentenceEncoder`` (attnkit's BERT): its self-attention, hooked on our MultiHeadAttention."""
    with torch.no_grad(), Capture(encoder, "bert") as capture:
        tokens, weights = encoder.attentions(text)  # (layers, heads, T, T)
    tok = encoder.tokenizer
    special = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
    weights = {"encoder": weights.float().cpu()}
    return Exploration(
        tokens=readable_tokens(tokens, token_scheme(tok), special=special), target_tokens=None,
        weights=weights, model_type="sentence-encoder", ids=list(encoder.tokenize([text])[0][0]),
        projections=capture.projections(weights), neuron_note=capture.note,
    )
