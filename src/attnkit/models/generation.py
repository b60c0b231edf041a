"""The ONE ``generate`` that decodes every seq2seq model of attnkit (Transformer and RNN),
greedily or with beam search.

Decoding protocol (what ``generate`` needs from a model)::

    model.config                      # dataclass with pad_id, bos_id, eos_id
    model.encode(src (B, S), src_mask (B, S) | None) -> state
    model.decode_step(state, tokens (B, 1)) -> (logits (B, V), attention (B, S), state)
    model.reorder_state(state, index (B',)) -> state      # keep rows ``index`` (beam search)

``src_mask`` is True at real source tokens; its default is ``src != config.pad_id``
(:func:`source_mask`, which every model's ``encode`` applies).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

__all__ = ["Generation", "Seq2SeqModel", "beam_search", "generate", "greedy_search", "output_ids", "source_mask"]


class Seq2SeqModel(Protocol):
    """What :func:`generate` needs (see the module docstring)."""

    config: object

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> object: ...

    def decode_step(self, state: object, tokens: Tensor) -> tuple[Tensor, Tensor, object]: ...

    def reorder_state(self, state: object, index: Tensor) -> object: ...


def source_mask(src: Tensor, src_mask: Tensor | None, pad_id: int) -> Tensor:
    """The source mask ``(B, S)``, True at real tokens: an explicit one wins over ``src != pad_id``."""
    if src.dim() != 2:
        raise ValueError(f"src must be (B, S) token ids, got shape {tuple(src.shape)}")
    if src_mask is None:
        return src != pad_id
    if src_mask.shape != src.shape or src_mask.dtype != torch.bool:
        raise ValueError(
            f"src_mask must be bool of shape {tuple(src.shape)} (True = real token), got "
            f"{src_mask.dtype} {tuple(src_mask.shape)}"
        )
    return src_mask


class Generation(NamedTuple):
    """``tokens (B, T)`` (no BOS, up to and including EOS, pad after), ``attention (B, T, S)``
    (zero after a row's EOS) or None, ``scores (B,)``: the sum of the chosen tokens' log-probs
    (beam: divided by ``length ** length_penalty``)."""

    tokens: Tensor
    attention: Tensor | None
    scores: Tensor


def _ids(model) -> tuple[int, int, int]:
    c = model.config
    return c.pad_id, c.bos_id, c.eos_id


def _log_probs(logits: Tensor, pad_id: int, bos_id: int) -> Tensor:
    """Float32 log-softmax with BOS and pad forbidden (they are never emitted)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    logp[:, pad_id] = float("-inf")
    logp[:, bos_id] = float("-inf")
    return logp


def _room(model: Seq2SeqModel, max_len: int) -> int:
    """``max_len`` capped at the tokens the decoder can read positions for: a learned position
    table of ``config.max_len`` rows takes BOS and ``max_len - 1`` generated tokens, so at most
    ``config.max_len`` are generated (sinusoidal and rotary positions, and RNNs, have no limit)."""
    config = getattr(model, "config", None)
    if getattr(config, "position", None) == "learned":
        return min(max_len, int(config.max_len))
    return max_len


def _check_args(src: Tensor, max_len: int, beam_size: int, length_penalty: float) -> None:
    if src.dim() != 2 or src.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"src must be (B, S) integer token ids, got {src.dtype} {tuple(src.shape)}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be finite, got {length_penalty}")


@torch.no_grad()
def greedy_search(
    model: Seq2SeqModel, src: Tensor, *, src_mask: Tensor | None = None, max_len: int = 64,
    return_attention: bool = False,
) -> Generation:
    """Pick the most likely token at each step. Finished rows leave the batch."""
    _check_args(src, max_len, 1, 1.0)
    max_len = _room(model, max_len)
    pad_id, bos_id, eos_id = _ids(model)
    B, S = src.shape
    state = model.encode(src, src_mask)
    tokens = src.new_full((B, max_len), pad_id, dtype=torch.long)  # long whatever src's integer dtype
    attention = src.new_zeros((B, max_len, S), dtype=torch.float32) if return_attention else None
    scores = torch.zeros(B, device=src.device)
    rows = torch.arange(B, device=src.device)  # original row of each active row
    last = src.new_full((B, 1), bos_id)
    T = 0
    for t in range(max_len):
        logits, attn, state = model.decode_step(state, last)  # (A, V), (A, S)
        logp = _log_probs(logits, pad_id, bos_id)
        best, tok = logp.max(dim=-1)  # (A,)
        tokens[rows, t] = tok
        scores[rows] += best
        if return_attention:
            attention[rows, t] = attn.float()
        T = t + 1
        alive = tok != eos_id
        if not bool(alive.any()):
            break
        if not bool(alive.all()):
            keep = alive.nonzero().squeeze(1)
            state = model.reorder_state(state, keep)
            rows, tok = rows[keep], tok[keep]
        last = tok.unsqueeze(1)
    return Generation(tokens[:, :T], None if attention is None else attention[:, :T], scores)


@torch.no_grad()
def beam_search(
    model: Seq2SeqModel, src: Tensor, *, src_mask: Tensor | None = None, max_len: int = 64,
    beam_size: int = 4, length_penalty: float = 1.0, return_attention: bool = False,
) -> Generation:
    """Beam search over ``beam_size`` hypotheses per source.

    At each step every live hypothesis is extended by every token; of the ``2K`` best
    candidates, those ending in EOS among the top ``K`` become finished hypotheses (scored
    ``sum log p / length ** length_penalty``, length counting EOS; the ``K`` best are kept) and
    the ``K`` best others stay live. A source is done when it has ``K`` finished hypotheses and
    its best live one, scored at its current length, is no better than the worst of them (so an
    unlikely early EOS cannot end the search while a likely hypothesis is still growing); at
    ``max_len`` its live ones count as finished (without EOS). The best finished hypothesis
    wins. With ``beam_size=1`` this is exactly greedy search.
    """
    _check_args(src, max_len, beam_size, length_penalty)
    max_len = _room(model, max_len)
    pad_id, bos_id, eos_id = _ids(model)
    B, S = src.shape
    K, device = beam_size, src.device
    state = model.encode(src, src_mask)
    state = model.reorder_state(state, torch.arange(B, device=device).repeat_interleave(K))  # (B*K) rows
    sources = torch.arange(B, device=device)  # original source of each active group of K rows
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # the first step expands one hypothesis only
    hist = src.new_zeros((B, K, 0))  # (A, K, t) tokens so far
    attn_hist = torch.zeros(B, K, 0, S, device=device) if return_attention else None  # (A, K, t, S)
    finished: list[list[tuple[float, Tensor, Tensor | None]]] = [[] for _ in range(B)]
    last = src.new_full((B * K, 1), bos_id)

    def finish(a: int, score: float, length: int, toks: Tensor, att: Tensor | None) -> None:
        """Add a hypothesis of source ``sources[a]``, keeping its K best."""
        done = finished[int(sources[a])]
        done.append((score / length**length_penalty, toks, att))
        if len(done) > K:
            done.remove(min(done, key=lambda h: h[0]))

    for t in range(max_len):
        A = sources.shape[0]
        logits, attn, state = model.decode_step(state, last)  # (A*K, V), (A*K, S)
        V = logits.shape[-1]
        cand = scores.unsqueeze(-1) + _log_probs(logits, pad_id, bos_id).view(A, K, V)  # (A, K, V)
        top_v, top_i = cand.view(A, K * V).topk(min(2 * K, K * V), dim=1)  # (A, 2K)
        beam, tok = top_i // V, top_i % V
        is_eos = (tok == eos_id) & torch.isfinite(top_v)
        attn = attn.float().view(A, K, S) if return_attention else None

        # hypotheses that end here: EOS among the top K candidates
        for a, j in is_eos[:, :K].nonzero().tolist():
            k = int(beam[a, j])
            toks = torch.cat([hist[a, k], tok[a, j : j + 1]])
            att = None if attn is None else torch.cat([attn_hist[a, k], attn[a, k : k + 1]])
            finish(a, float(top_v[a, j]), t + 1, toks, att)

        # the K best non-EOS candidates stay live (stable sort keeps score order)
        pick = torch.sort(is_eos.to(torch.uint8), dim=1, stable=True).indices[:, :K]  # (A, K)
        scores = top_v.gather(1, pick).masked_fill(is_eos.gather(1, pick), float("-inf"))
        beam, tok = beam.gather(1, pick), tok.gather(1, pick)  # (A, K)
        hist = torch.cat([hist.gather(1, beam[..., None].expand(-1, -1, t)), tok.unsqueeze(-1)], dim=2)
        if attn_hist is not None:
            prev = attn_hist.gather(1, beam[..., None, None].expand(-1, -1, t, S))
            attn_hist = torch.cat([prev, attn.gather(1, beam[..., None].expand(-1, -1, S)).unsqueeze(2)], dim=2)

        if t == max_len - 1:  # out of room: live hypotheses count as they are
            for a in range(A):
                for k in range(K):
                    if math.isfinite(float(scores[a, k])):
                        att = None if attn_hist is None else attn_hist[a, k]
                        finish(a, float(scores[a, k]), max_len, hist[a, k], att)
            break

        best_live = (scores.max(dim=1).values / (t + 1) ** length_penalty).tolist()  # (A,)
        alive = torch.tensor(
            [len(finished[int(s)]) < K or best_live[a] > min(h[0] for h in finished[int(s)])
             for a, s in enumerate(sources.tolist())], dtype=torch.bool, device=device,
        )  # (A,); bool also when A == 0 (an empty batch)
        alive &= torch.isfinite(scores).any(dim=1)
        if not bool(alive.any()):
            break
        rows = (torch.arange(A, device=device).unsqueeze(1) * K + beam)[alive].reshape(-1)  # (A'*K,)
        state = model.reorder_state(state, rows)
        sources, scores, hist, tok = sources[alive], scores[alive], hist[alive], tok[alive]
        if attn_hist is not None:
            attn_hist = attn_hist[alive]
        last = tok.reshape(-1, 1)

    best = [max(f, key=lambda h: h[0]) if f else (float("-inf"), src.new_zeros(0), None) for f in finished]
    T = max(1, max((h[1].shape[0] for h in best), default=0))  # (B, 1) for an empty batch, as greedy
    tokens = src.new_full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros(B, T, S, device=device) if return_attention else None
    for b, (_, toks, att) in enumerate(best):
        tokens[b, : toks.shape[0]] = toks
        if attention is not None and att is not None:
            attention[b, : att.shape[0]] = att
    out_scores = torch.tensor([h[0] for h in best], device=device)
    return Generation(tokens, attention, out_scores)


@torch.no_grad()
def generate(
    model: Seq2SeqModel,
    src: Tensor,
    *,
    src_mask: Tensor | None = None,
    max_len: int = 64,
    method: str = "greedy",
    beam_size: int = 4,
    length_penalty: float = 1.0,
    return_attention: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Decode ``src (B, S)`` with any seq2seq model that follows the decoding protocol.

    Returns ``tokens (B, T)`` long: no BOS, each row up to and including its EOS, ``pad_id``
    after; ``max_len`` counts generated tokens including EOS (a row that never emits EOS stops
    there; a decoder with a learned position table of ``config.max_len`` rows generates at most
    that many); ``T`` is the longest row. BOS and pad are never emitted. With ``return_attention``
    also ``attention (B, T, S)``: the cross-attention that produced each token, zero after the
    row's EOS. An explicit ``src_mask (B, S)`` (True = real token) wins over ``src != pad_id``.
    ``method="beam"`` runs :func:`beam_search` (``beam_size=1`` gives the greedy result).
    The model is put in eval mode for the call and restored afterwards.
    """
    if method not in ("greedy", "beam"):
        raise ValueError(f"method must be 'greedy' or 'beam', got {method!r}")
    training = getattr(model, "training", False)
    if training:
        model.eval()
    try:
        if method == "greedy":
            out = greedy_search(model, src, src_mask=src_mask, max_len=max_len, return_attention=return_attention)
        else:
            out = beam_search(
                model, src, src_mask=src_mask, max_len=max_len, beam_size=beam_size,
                length_penalty=length_penalty, return_attention=return_attention,
            )
    finally:
        if training:
            model.train()
    return (out.tokens, out.attention) if return_attention else out.tokens


def output_ids(model: Seq2SeqModel, tokenizer: object, text: str, *, target: str | None = None,
               max_new_tokens: int = 32) -> tuple[list[int], list[int]]:
    """The ids one input is run on: ``(source ids, output ids)``, the output being ``target``'s
    ids then EOS, or (``target=None``) :func:`generate`'s greedy output up to and including its
    EOS (``max_new_tokens`` at most). Prepend ``bos_id`` to the output for the decoder's input.

    ``tokenizer`` has ``encode(text) -> list[int]`` (an attnkit vocabulary).

    Raises:
        ValueError: ``text`` gives no tokens; ``target`` gives none or an unknown one.
    """
    c = model.config
    src_ids = tokenizer.encode(text)
    if not src_ids:
        raise ValueError(f"the tokenizer gives no tokens for {text!r}")
    if target is not None:
        body = tokenizer.encode(target)
        if not body or getattr(tokenizer, "unk_id", None) in body:
            raise ValueError(f"the model's tokenizer cannot encode the target {target!r}")
        return src_ids, [*body, c.eos_id]
    device = next(model.parameters()).device
    row = generate(model, torch.tensor([src_ids], device=device), max_len=max_new_tokens)[0].tolist()
    return src_ids, row[: row.index(c.eos_id) + 1] if c.eos_id in row else [t for t in row if t != c.pad_id]
