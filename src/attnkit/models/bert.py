"""A real pretrained BERT in our own layers.

:class:`BertEncoder` is built from :class:`attnkit.transformer.Embeddings` (word + learned
position + token type, then LayerNorm) and post-LN :class:`attnkit.transformer.EncoderLayer`
blocks with our :class:`attnkit.MultiHeadAttention`. Loading a Hugging Face checkpoint is a
plain copy through a small, explicit name map (:func:`hf_name_map`), and the loader refuses a
checkpoint with missing, unexpected or mis-shaped tensors. :meth:`BertEncoder.forward` with
``packed=`` runs the network on a packed stream of real tokens (no padding computed); sentence embeddings
on top of it live in :mod:`attnkit.models.sentence_encoder`.

Mask convention: ``key_mask`` is True at real tokens (Hugging Face's ``attention_mask == 1``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import attnkit.runtime as runtime
from attnkit.runtime import resolve_dtype
from attnkit.transformer import Embeddings, EncoderLayer, LayerSettings
from attnkit.varlen import Packed

__all__ = ["BertConfig", "BertEncoder", "hf_name_map"]

# Checkpoint tensors BertModel carries that this encoder does not use (HF's pooler, a buffer).
IGNORED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
# A task model's checkpoint (BertForMaskedLM, BertForSequenceClassification, ...) holds the BertModel
# under this prefix, beside its head; old checkpoints name LayerNorm parameters gamma/beta.
BASE_MODEL_PREFIX = "bert."
LEGACY_NORM_NAMES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}
ACTIVATIONS = ("gelu", "relu")


# --------------------------------------------------------------------------- config


@dataclass
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that shape the network.

    ``hidden_act`` is ``"gelu"`` (exact, erf) or ``"relu"``; only absolute (learned) position
    embeddings are supported. ``dropout`` is ``hidden_dropout_prob`` (inactive in eval mode).
    ``pad_token_id=None`` (``"pad_token_id": null``) means no padding row, as in Hugging Face.
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
    pad_token_id: int | None = 0
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
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
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

    def layer_settings(self) -> LayerSettings:
        """The settings of every (post-LN) encoder layer."""
        return LayerSettings(
            self.hidden_size, self.num_attention_heads, self.intermediate_size, dropout=self.dropout,
            activation=self.hidden_act, norm_first=False, layer_norm_eps=self.layer_norm_eps,
        )


# --------------------------------------------------------------------------- dtype


def _calibration_ids(folder: Path, config: BertConfig) -> list[list[int]]:
    """Token ids of :func:`attnkit.runtime.calibration_texts` with ``folder``'s tokenizer."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"dtype='int8' calibrates with the folder's tokenizer: no tokenizer.json in {folder}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(config.max_position_embeddings)
    return [e.ids for e in tokenizer.encode_batch(runtime.calibration_texts())]


def _check_calibration(calibration: Sequence[Sequence[int]] | None) -> Sequence[Sequence[int]]:
    """``calibration`` (token ids of each calibration text) when it has texts and none is empty."""
    if not calibration:
        raise ValueError("dtype='int8' needs calibration token ids (BertEncoder.with_dtype(..., calibration=))")
    empty = [i for i, row in enumerate(calibration) if len(row) == 0]
    if empty:
        raise ValueError(f"int8 calibration sequences must be non-empty: sequences {empty[:5]} of "
                         f"{len(calibration)} have no token")
    return calibration


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


def base_model_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``BertModel`` tensors of a checkpoint, named as :func:`hf_name_map` expects: a
    ``BertModel`` checkpoint as it is; a task model's (``BertForMaskedLM``, ...; no tensor named
    ``embeddings.*`` or ``encoder.*`` but some ``bert.*``) its ``bert.*`` tensors without the
    prefix, its head (``cls.*``, ``classifier.*``, ...) left out, as ``BertModel.from_pretrained``
    does. LayerNorm ``gamma``/``beta`` (old checkpoints) read as ``weight``/``bias``."""
    bare = any(k.startswith(("embeddings.", "encoder.")) for k in tensors)
    if not bare and any(k.startswith(BASE_MODEL_PREFIX) for k in tensors):
        tensors = {k[len(BASE_MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(BASE_MODEL_PREFIX)}
    renamed = {}
    for name, value in tensors.items():
        for old, new in LEGACY_NORM_NAMES.items():
            if name.endswith(old):
                name = name[: -len(old)] + new
        renamed[name] = value
    return renamed


# --------------------------------------------------------------------------- encoder


class BertEncoder(nn.Module):
    """BERT: embeddings (word + learned position + token type, LayerNorm) and post-LN layers.

    ``forward(input_ids (B, T), key_mask (B, T) | None, token_type_ids (B, T) | None, *,
    need_weights, packed=None)`` -> ``(hidden (B, T, E), [per-layer weights (B, H, T, T)] | None)``;
    with ``packed`` (:class:`attnkit.varlen.Packed`) the same network runs on a packed stream of
    real tokens ``input_ids (N,)`` -> ``(hidden (N, E), None)``.

    Compute dtype (:attr:`dtype`): the dtype of the layers' linear weights, float32 or bfloat16
    (:meth:`with_dtype`). In bfloat16 the matmuls take bfloat16 weights and activations and
    accumulate in float32, attention runs the fused bfloat16 kernel (softmax in float32), the
    LayerNorms keep float32 parameters and statistics, and the embeddings (tables, sum and
    their LayerNorm) stay float32; the hidden states come out in bfloat16.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(
            config.vocab_size, config.hidden_size, position="learned", max_len=config.max_position_embeddings,
            dropout=config.dropout, padding_idx=config.pad_token_id, scale=False,
            type_vocab_size=config.type_vocab_size, layer_norm=True, layer_norm_eps=config.layer_norm_eps,
        )
        self.layers = nn.ModuleList(EncoderLayer(config.layer_settings()) for _ in range(config.num_hidden_layers))

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: ``torch.int8`` once quantised (:meth:`with_dtype`), else that of
        the layers' linear weights (float32 with no layers)."""
        return torch.int8 if runtime.is_int8(self.layers) else self._float_dtype

    @property
    def _float_dtype(self) -> torch.dtype:
        """The dtype of the hidden states between layers (float32 in an int8 encoder)."""
        return self.layers[0].ff.linear1.weight.dtype if len(self.layers) else torch.float32

    def with_dtype(self, dtype: str | torch.dtype, *, calibration: Sequence[Sequence[int]] | None = None) -> BertEncoder:
        """This encoder computing in ``dtype`` (see :data:`attnkit.runtime.DTYPES`): ``self`` when it already
        does, else a copy whose linear weights are converted (rounded to nearest), sharing the
        float32 embeddings; LayerNorm parameters stay float32. A float copy of an int8 encoder
        computes in float from its float weights.

        ``"int8"``: a copy whose q/k/v, output and feed-forward up projections run in int8
        (:func:`attnkit.runtime.quantize_int8`; the down projection stays float32),
        calibrated by a float32 pass over ``calibration`` (token ids of each text, e.g. of
        :func:`attnkit.runtime.calibration_texts`, none empty); attention, softmax, norms and the
        residual stream stay float32. An int8 encoder whose weights changed since it was
        quantised is quantised again from them."""
        dtype = resolve_dtype(dtype)
        if dtype == self.dtype and (dtype != torch.int8 or runtime.int8_current(self.layers)):
            return self
        if dtype != torch.int8:
            return self._float_copy(dtype)
        rows = sorted(_check_calibration(calibration), key=len)  # equal lengths side by side: fewer attention runs
        new = self._float_copy(torch.float32).eval()
        packed = Packed.from_lengths([len(r) for r in rows])
        stream = torch.tensor([t for row in rows for t in row], dtype=torch.long)  # (N,)
        # the feed-forward's down projection stays float32: its input (GELU's output) has
        # per-token outliers no 8-bit scheme here kept within cosine 0.999 on one-word texts
        # (see docs/embeddings.md, "Precision")
        runtime.quantize_int8(new.layers, lambda: new(stream, packed=packed),
                              keep_float=[layer.ff.linear2 for layer in new.layers])
        return new

    def _float_copy(self, dtype: torch.dtype) -> BertEncoder:
        """A copy computing in the float ``dtype``: linear weights converted, no int8 forms, the
        embeddings shared (derived values such as prepared weights are not copied, see
        :class:`attnkit.runtime.DerivedValues`)."""
        new = copy.deepcopy(self, memo={id(self.embeddings): self.embeddings})
        runtime.drop_int8(new)
        for module in new.layers.modules():
            if isinstance(module, nn.Linear):
                module.to(dtype)
        return new

    def non_embedding_parameters(self) -> int:
        """Parameters of the layers (not the embedding tables): a forward pass costs about
        ``2 * non_embedding_parameters()`` FLOPs per real token, plus attention scores."""
        return sum(p.numel() for p in self.layers.parameters())

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: str | torch.dtype = "float32") -> BertEncoder:
        """Load ``config.json`` + ``model.safetensors`` from a Hugging Face BERT folder, to
        compute in ``dtype`` (``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"int8"``, see
        :meth:`with_dtype`; int8 calibrates on :func:`attnkit.runtime.calibration_texts` with the
        folder's ``tokenizer.json``).

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
        if resolve_dtype(dtype) == torch.int8:
            return model.with_dtype(dtype, calibration=_calibration_ids(folder, config)).eval()
        return model.with_dtype(dtype).eval()

    def load_hf_state_dict(self, tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Copy Hugging Face ``BertModel`` tensors in, strictly (see :func:`hf_name_map`); a task
        model's checkpoint gives its ``bert.*`` tensors (see :func:`base_model_tensors`)."""
        tensors = base_model_tensors(tensors)
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

    # -- forward ---------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        key_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        need_weights: bool = False,
        packed: Packed | None = None,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """``input_ids (B, T)``, ``key_mask (B, T)`` True at real tokens ->
        ``(hidden (B, T, E), [weights (B, H, T, T) per layer] | None)``.

        With ``packed``: ``input_ids (N,)`` holds the sequences of ``packed`` back to back
        (``token_type_ids (N,)`` likewise) -> ``(hidden (N, E), None)``. Embeddings, linears,
        LayerNorm and feed-forward then see only the N real tokens, positions restart at 0 in
        every sequence, and attention runs per group of equal-length sequences. The hidden
        states are in the compute dtype (:attr:`dtype`).

        An int8 encoder is inference-only: its forward runs without autograd in any grad mode.
        """
        if torch.is_grad_enabled() and runtime.is_int8(self.layers):
            with torch.no_grad():
                return self.forward(input_ids, key_mask, token_type_ids, need_weights=need_weights, packed=packed)
        if packed is not None:
            return self._forward_packed(input_ids, token_type_ids, packed, key_mask, need_weights), None
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        if key_mask is not None and key_mask.dtype != torch.bool:
            key_mask = key_mask.bool()  # HF-style 0/1 attention_mask
        x = self.embeddings(input_ids, token_type_ids=token_type_ids).to(self._float_dtype)  # (B, T, E)
        weights: list[Tensor] = []
        for layer in self.layers:
            x, w = layer(x, key_mask=key_mask, need_weights=need_weights)
            if need_weights:
                weights.append(w)
        return x, (weights if need_weights else None)

    def _forward_packed(self, input_ids: Tensor, token_type_ids: Tensor | None, packed: Packed,
                        key_mask: Tensor | None, need_weights: bool) -> Tensor:
        if key_mask is not None or need_weights:
            raise ValueError("a packed forward takes no key_mask and returns no weights")
        if input_ids.dim() != 1 or input_ids.shape[0] != packed.num_tokens:
            raise ValueError(
                f"a packed forward needs input_ids (N,) with N = sum(lengths) = {packed.num_tokens}, "
                f"got shape {tuple(input_ids.shape)}"
            )
        if packed.max_len > self.config.max_position_embeddings:
            raise ValueError(
                f"a sequence of {packed.max_len} tokens is longer than max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        x = self.embeddings(input_ids, token_type_ids=token_type_ids, positions=packed.positions)  # (N, E)
        x = x.to(self._float_dtype)
        for layer in self.layers:
            x, _ = layer(x, packed=packed)
        return x  # (N, E)
