"""RNN encoder-decoder with attention: the alignment model the seed opens with.

The encoder keeps one hidden state per input step; at every output step the decoder scores
all of them against its own state, takes the softmax-weighted sum (the *context*) and
predicts the next token from its state and that context. Trained, the weights form an
alignment between output and input tokens.

* :class:`RNNEncoder` - GRU or LSTM, optionally bidirectional, over packed sequences so
  padding costs nothing. Outputs ``(B, S, hidden_dim)`` whatever the direction count (a
  bidirectional encoder uses ``hidden_dim // 2`` units per direction), so every score
  function - Luong's ``dot`` included - sees keys of the decoder's size.
* :class:`AttentionDecoder` - one step at a time, Luong-style "attentional hidden state"
  ``h~_t = tanh(W_c [h_t; c_t])`` with *input feeding* (``h~_{t-1}`` is concatenated to the
  next input embedding). The score function is ``additive`` (Bahdanau), ``general`` or
  ``dot`` (Luong), from :mod:`attnkit.attention`, or ``none``: the context is the encoder's
  last state for every step - the fixed-vector bottleneck of the no-attention baseline
  (Bahdanau et al., 2015, Figure 2).

Masks follow the package rule: ``src_mask (B, S)`` is True at real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnkit.attention import AdditiveAttention, DotAttention, GeneralAttention

__all__ = ["RNNConfig", "RNNEncoder", "AttentionDecoder", "DecoderState"]

_CELLS = ("gru", "lstm")
_ATTENTIONS = ("additive", "general", "dot", "none")


@dataclass
class RNNConfig:
    """Configuration of :class:`attnkit.RNNSeq2Seq`.

    ``hidden_dim`` is the size of the encoder outputs and of the decoder state (a
    bidirectional encoder splits it over the two directions, so it must be even).
    ``attention_dim`` is the hidden size of the additive score (default ``hidden_dim``).
    ``tgt_vocab_size=None`` means one vocabulary shared by source and target.
    """

    src_vocab_size: int
    tgt_vocab_size: int | None = None
    embed_dim: int = 64
    hidden_dim: int = 128
    num_layers: int = 1
    cell: str = "gru"
    bidirectional: bool = True
    attention: str = "additive"
    attention_dim: int | None = None
    input_feeding: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = False
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        if self.tgt_vocab_size is None:
            self.tgt_vocab_size = self.src_vocab_size
        for name in ("src_vocab_size", "tgt_vocab_size", "embed_dim", "hidden_dim", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RNNConfig.{name} must be a positive int, got {value!r}")
        if self.cell not in _CELLS:
            raise ValueError(f"RNNConfig.cell must be one of {_CELLS}, got {self.cell!r}")
        if self.attention not in _ATTENTIONS:
            raise ValueError(f"RNNConfig.attention must be one of {_ATTENTIONS}, got {self.attention!r}")
        if self.bidirectional and self.hidden_dim % 2:
            raise ValueError(
                f"RNNConfig: a bidirectional encoder splits hidden_dim over two directions; "
                f"hidden_dim={self.hidden_dim} must be even"
            )
        if self.attention_dim is not None and self.attention_dim < 1:
            raise ValueError(f"RNNConfig.attention_dim must be positive or None, got {self.attention_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RNNConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.tie_embeddings and self.embed_dim != self.hidden_dim:
            raise ValueError(
                f"RNNConfig.tie_embeddings needs embed_dim == hidden_dim, got {self.embed_dim} and {self.hidden_dim}"
            )
        ids = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        for name, value in ids.items():
            if not 0 <= value < min(self.src_vocab_size, self.tgt_vocab_size):
                raise ValueError(
                    f"RNNConfig.{name}={value} is outside the vocabularies "
                    f"(src {self.src_vocab_size}, tgt {self.tgt_vocab_size})"
                )
        if len(set(ids.values())) != 3:
            raise ValueError(f"RNNConfig: pad/bos/eos ids must differ, got {ids}")


def _make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float,
              bidirectional: bool = False) -> nn.RNNBase:
    rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
    return rnn_cls(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                   bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)


# GRU state: h (layers, B, H). LSTM state: (h, c), both (layers, B, H).
RNNState = Tensor | tuple[Tensor, Tensor]


class RNNEncoder(nn.Module):
    """Embeds the source and runs a (bi)GRU/LSTM over it, packed so padding costs nothing.

    ``forward(src (B, S) long, src_mask (B, S) bool)`` ->
    ``(outputs (B, S, hidden_dim), final)`` where ``final`` is the last state of every layer,
    ``(num_layers, B, hidden_dim)`` (a tuple ``(h, c)`` for LSTM), the two directions
    concatenated. Outputs at padded positions are zero. The RNN reads each row's real tokens in
    order wherever they sit (right or left padding alike): a row whose real tokens do not come
    first is compacted before the RNN and its outputs put back in place.
    """

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.src_vocab_size, config.embed_dim, padding_idx=config.pad_id)
        self.directions = 2 if config.bidirectional else 1
        self.rnn = _make_rnn(config.cell, config.embed_dim, config.hidden_dim // self.directions,
                             config.num_layers, config.dropout, bidirectional=config.bidirectional)
        self.dropout = nn.Dropout(config.dropout)

    def _merge_directions(self, h: Tensor) -> Tensor:
        # (layers * dirs, B, H / dirs) -> (layers, B, H): forward and backward side by side
        layers, B = self.config.num_layers, h.shape[1]
        h = h.view(layers, self.directions, B, -1)  # (layers, dirs, B, H / dirs)
        return torch.cat(h.unbind(1), dim=-1)  # (layers, B, H)

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, RNNState]:
        B, S = src.shape
        counts = src_mask.sum(dim=1)  # (B,)
        order = None  # (B, S): where each compacted position came from, when padding is not all at the end
        if not torch.equal(src_mask, torch.arange(S, device=src_mask.device) < counts[:, None]):
            order = torch.sort((~src_mask).to(torch.uint8), dim=1, stable=True).indices  # real tokens first, in order
            src = src.gather(1, order)
        lengths = counts.clamp(min=1).cpu()  # an empty row still needs one step
        x = self.dropout(self.embed(src))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        outputs, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, H)
        if order is not None:  # back to the positions the tokens came from
            outputs = torch.zeros_like(outputs).scatter(1, order[..., None].expand_as(outputs), outputs)
        if isinstance(final, tuple):
            final = (self._merge_directions(final[0]), self._merge_directions(final[1]))
        else:
            final = self._merge_directions(final)
        return outputs, final


@dataclass
class DecoderState:
    """Everything one decoding step needs; every tensor has the batch on dim 0 except
    ``hidden`` (``(layers, B, H)``, or a tuple for LSTM) - see :meth:`index_select`.

    ``memory (B, S, H)`` encoder outputs, ``keys_proj (B, S, A)`` the additive attention's
    precomputed ``W_k memory`` (or None), ``mask (B, S)`` True at real source tokens,
    ``last (B, H)`` the encoder's final top-layer state (the no-attention context),
    ``feed (B, H)`` the previous attentional state (input feeding).
    """

    memory: Tensor
    keys_proj: Tensor | None
    mask: Tensor
    last: Tensor
    feed: Tensor
    hidden: RNNState

    def index_select(self, index: Tensor) -> DecoderState:
        """Rows ``index (B',)`` of every tensor (beam search reorders hypotheses with this)."""
        def rows(t: Tensor | None, dim: int = 0) -> Tensor | None:
            return None if t is None else t.index_select(dim, index)

        hidden = (tuple(rows(h, 1) for h in self.hidden) if isinstance(self.hidden, tuple)
                  else rows(self.hidden, 1))
        return DecoderState(rows(self.memory), rows(self.keys_proj), rows(self.mask),
                            rows(self.last), rows(self.feed), hidden)


class AttentionDecoder(nn.Module):
    """One output token per :meth:`step`, attending over the encoder outputs.

    Per step, with ``y_{t-1}`` the previous token and ``h~_{t-1}`` the previous attentional
    state (input feeding)::

        h_t        = RNN([embed(y_{t-1}); h~_{t-1}], h_{t-1})
        c_t, a_t   = attention(h_t, memory)            # a_t (B, S): the alignment
        h~_t       = tanh(W_c [h_t; c_t])
        logits_t   = W_out h~_t

    With ``attention="none"`` the context ``c_t`` is the encoder's final state at every step
    and ``a_t`` is all zeros.
    """

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        H = config.hidden_dim
        self.embed = nn.Embedding(config.tgt_vocab_size, config.embed_dim, padding_idx=config.pad_id)
        feed = H if config.input_feeding else 0
        self.rnn = _make_rnn(config.cell, config.embed_dim + feed, H, config.num_layers, config.dropout)
        self.bridge = nn.Linear(H, H)  # encoder final state -> decoder initial state
        if config.attention == "additive":
            self.attention: nn.Module | None = AdditiveAttention(H, H, config.attention_dim or H)
        elif config.attention == "general":
            self.attention = GeneralAttention(H, H)
        elif config.attention == "dot":
            self.attention = DotAttention()
        else:
            self.attention = None
        self.combine = nn.Linear(2 * H, H, bias=False)  # W_c
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(H, config.tgt_vocab_size)
        if config.tie_embeddings:
            self.out.weight = self.embed.weight

    def init_state(self, memory: Tensor, mask: Tensor, final: RNNState) -> DecoderState:
        """Start decoding from the encoder's ``memory (B, S, H)``, ``mask (B, S)`` and final
        state ``(layers, B, H)`` (tuple for LSTM)."""
        if isinstance(final, tuple):
            hidden: RNNState = (torch.tanh(self.bridge(final[0])), final[1])
            last = final[0][-1]
        else:
            hidden = torch.tanh(self.bridge(final))
            last = final[-1]  # (B, H): top layer
        keys_proj = self.attention.project_keys(memory) if isinstance(self.attention, AdditiveAttention) else None
        feed = memory.new_zeros(memory.shape[0], self.config.hidden_dim)  # (B, H)
        return DecoderState(memory, keys_proj, mask, last, feed, hidden)

    def _advance(self, state: DecoderState, tokens: Tensor) -> tuple[Tensor, DecoderState]:
        """One step up to the attentional state: ``tokens (B,)`` -> ``(weights (B, S), state)``;
        ``state.feed`` is the new attentional state ``h~_t (B, H)``."""
        x = self.dropout(self.embed(tokens))  # (B, E)
        if self.config.input_feeding:
            x = torch.cat([x, state.feed], dim=-1)  # (B, E + H)
        out, hidden = self.rnn(x.unsqueeze(1), state.hidden)  # out (B, 1, H)
        h = out.squeeze(1)  # (B, H)
        if self.attention is None:
            context = state.last  # (B, H): one fixed vector for the whole output
            weights = state.mask.new_zeros(state.mask.shape, dtype=h.dtype)  # (B, S)
        else:
            context, weights = self.attention(h, state.memory, key_mask=state.mask, keys_proj=state.keys_proj)
        attentional = torch.tanh(self.combine(torch.cat([h, context], dim=-1)))  # (B, H)
        return weights, DecoderState(state.memory, state.keys_proj, state.mask, state.last, attentional, hidden)

    def step(self, state: DecoderState, tokens: Tensor) -> tuple[Tensor, Tensor, DecoderState]:
        """``tokens (B,)`` long -> ``(logits (B, V), weights (B, S), new state)``."""
        weights, state = self._advance(state, tokens)
        return self.out(self.dropout(state.feed)), weights, state

    def forward(self, state: DecoderState, tgt_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing over ``tgt_in (B, T)`` -> ``(logits (B, T, V), weights (B, T, S))``.
        The output projection runs once over all steps (one large matmul, not T small ones)."""
        attentional, weights = [], []
        for t in range(tgt_in.shape[1]):
            step_weights, state = self._advance(state, tgt_in[:, t])
            attentional.append(state.feed)
            weights.append(step_weights)
        logits = self.out(self.dropout(torch.stack(attentional, dim=1)))  # (B, T, V)
        return logits, torch.stack(weights, dim=1)
