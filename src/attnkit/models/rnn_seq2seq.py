"""``RNNSeq2Seq``: the RNN encoder-decoder with attention as a complete model.

It implements the seq2seq decoding protocol shared with ``TransformerSeq2Seq`` so the one
``attnkit.generate`` serves both (greedy and beam search, attention per output step)::

    model.forward(src (B, S), tgt_in (B, T), src_mask (B, S) | None) -> logits (B, T, V)
    model.encode(src, src_mask)                  -> state (a DecoderState)
    model.decode_step(state, tokens (B, 1))      -> (logits (B, V), attention (B, S), state)
    model.reorder_state(state, index (B',))      -> state

``src_mask`` defaults to ``src != config.pad_id`` (True at real tokens); an explicit mask wins.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnkit.models.generation import source_mask
from attnkit.rnn import AttentionDecoder, DecoderState, RNNConfig, RNNEncoder

__all__ = ["RNNSeq2Seq"]


class RNNSeq2Seq(nn.Module):
    """Bahdanau/Luong encoder-decoder: :class:`~attnkit.rnn.RNNEncoder` +
    :class:`~attnkit.rnn.AttentionDecoder`, configured by one :class:`~attnkit.RNNConfig`."""

    config_class = RNNConfig

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        if not isinstance(config, RNNConfig):
            raise ValueError(f"RNNSeq2Seq takes an RNNConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = RNNEncoder(config)
        self.decoder = AttentionDecoder(config)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> DecoderState:
        """Run the encoder once: ``src (B, S)`` -> the decoder's initial state."""
        mask = source_mask(src, src_mask, self.config.pad_id)  # (B, S)
        memory, final = self.encoder(src, mask)  # (B, S, H)
        return self.decoder.init_state(memory, mask, final)

    def decode_step(self, state: DecoderState, tokens: Tensor) -> tuple[Tensor, Tensor, DecoderState]:
        """``tokens (B, 1)`` (or ``(B,)``) -> ``(logits (B, V), attention (B, S), state)``."""
        if tokens.dim() == 2:
            tokens = tokens[:, -1]
        return self.decoder.step(state, tokens)

    def reorder_state(self, state: DecoderState, index: Tensor) -> DecoderState:
        """Keep rows ``index (B',)`` of the state (beam search)."""
        return state.index_select(index)

    def forward(self, src: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None,
                *, need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Teacher forcing: ``src (B, S)``, ``tgt_in (B, T)`` (BOS + target without its last
        token) -> ``logits (B, T, V)``; with ``need_weights`` also the attention ``(B, T, S)``."""
        state = self.encode(src, src_mask)
        logits, weights = self.decoder(state, tgt_in)
        return (logits, weights) if need_weights else logits

    def forward_with_weights(
        self, src: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, list[Tensor]]]:
        """Like :meth:`forward`, plus the attention maps in the seq2seq models' one format
        (as :meth:`TransformerSeq2Seq.forward_with_weights`): ``{"cross": [(B, 1, T, S)]}``,
        one layer of one head."""
        logits, weights = self(src, tgt_in, src_mask, need_weights=True)  # (B, T, S)
        return logits, {"cross": [weights[:, None]]}  # (B, 1 head, T, S)

