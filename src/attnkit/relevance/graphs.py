"""Relevance from the attention graph: raw attention, rollout, gradient-weighted rollout, flow.

All take the per-layer maps of one pass, kind -> list of ``(Tq, Tk)`` matrices already reduced
over heads, and return a token-to-token matrix: ``(T_dec, S)`` (decoder position -> source token)
for the ``"seq2seq"`` layout, ``(T, T)`` for the self-attention layouts. :mod:`.api` then picks
the rows of the explained outputs and the columns of the input tokens.

- :func:`rollout`: Abnar & Zuidema (ACL 2020): each layer mixes ``Â = ½A + ½I`` (the residual),
  rows renormalised, and the mixings multiply. Across cross-attention the decoder state keeps
  half of itself and takes half from the encoder's rolled-out tokens: with ``M (T, T+S)`` the
  share of each decoder position in the decoder inputs and the source tokens,
  ``M ← Âself M``, then ``M ← ½M + ½ A_cross [0 | E]`` with ``E`` the encoder's rollout.
- :func:`chefer`: Chefer, Gur & Wolf (CVPR 2021; ICCV 2021 for cross-attention), with ``Ā`` the
  head-mean of ``(∇A ⊙ A)⁺``: ``R ← R + Ā R`` per self-attention layer (``R_ss`` for the encoder,
  ``R_qq``/``R_qs`` for the decoder) and ``R_qs ← R_qs + Ā_cross R_ss`` per cross-attention.
- :func:`flow`: attention flow (Abnar & Zuidema): the same ``Â`` graph as rollout, layer by
  layer, as capacities; the relevance of input ``j`` for output ``i`` is the maximum flow from
  ``i``'s top node to ``j``'s bottom node, solved exactly by ``scipy.sparse.csgraph.maximum_flow``
  (integer capacities: ``Â`` in units of ``2⁻²⁴``).
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOW_UNIT = 2**24  # capacities are integers: Â in units of 2^-24


def _mix(A: Tensor) -> Tensor:
    """``Â = ½A + ½I`` with rows renormalised (a zero row -> the identity)."""
    m = 0.5 * A + 0.5 * torch.eye(A.shape[-1], dtype=A.dtype)
    return m / m.sum(-1, keepdim=True).clamp_min(1e-30)


def _encoder_rollout(layers: list[Tensor], n: int) -> Tensor:
    E = torch.eye(n, dtype=torch.float64)
    for A in layers:
        E = _mix(A) @ E
    return E


def rollout(maps: dict[str, list[Tensor]], layout: str) -> Tensor:
    """Attention rollout over the layout's graph (module docstring); float64."""
    maps = {k: [a.double() for a in v] for k, v in maps.items()}
    if layout != "seq2seq":
        self_layers = maps.get("encoder") or maps["decoder"]
        return _encoder_rollout(self_layers, self_layers[0].shape[-1])
    cross = maps["cross"]
    T, S = cross[0].shape
    E = _encoder_rollout(maps.get("encoder", []), S)
    M = torch.cat([torch.eye(T, dtype=torch.float64), torch.zeros(T, S, dtype=torch.float64)], dim=1)  # (T, T+S)
    selfs = maps.get("decoder") or [None] * len(cross)
    src = torch.cat([torch.zeros(S, T, dtype=torch.float64), E], dim=1)  # (S, T+S): encoder top -> tokens
    for A_self, A_cross in zip(selfs, cross, strict=True):
        if A_self is not None:
            M = _mix(A_self) @ M
        M = 0.5 * M + 0.5 * A_cross @ src
    return M[:, T:]


def chefer(maps: dict[str, list[Tensor]], grads: dict[str, list[Tensor]], layout: str) -> Tensor:
    """Gradient-weighted rollout; ``maps``/``grads`` are per-layer ``(H, Tq, Tk)`` (not reduced)."""
    bar = {k: [(g.double() * a.double()).clamp_min(0).mean(0) for a, g in zip(maps[k], grads[k], strict=True)]
           for k in maps}
    if layout != "seq2seq":
        layers = bar.get("encoder") or bar["decoder"]
        R = torch.eye(layers[0].shape[-1], dtype=torch.float64)
        for A in layers:
            R = R + A @ R
        return R
    cross = bar["cross"]
    T, S = cross[0].shape
    R_ss = torch.eye(S, dtype=torch.float64)
    for A in bar.get("encoder", []):
        R_ss = R_ss + A @ R_ss
    R_ss = R_ss / R_ss.sum(-1, keepdim=True).clamp_min(1e-30)  # rows of the encoder's relevance sum to 1
    R_qq = torch.eye(T, dtype=torch.float64)
    R_qs = torch.zeros(T, S, dtype=torch.float64)
    selfs = bar.get("decoder") or [None] * len(cross)
    for A_self, A_cross in zip(selfs, cross, strict=True):
        if A_self is not None:
            R_qq, R_qs = R_qq + A_self @ R_qq, R_qs + A_self @ R_qs
        R_qs = R_qs + A_cross @ R_ss
    return R_qs


# ----------------------------------------------------------------------------- flow


def _scipy():
    try:
        from scipy.sparse import csr_array
        from scipy.sparse.csgraph import maximum_flow
    except ImportError:
        raise ValueError("method 'flow' needs scipy's exact max-flow solver: pip install 'attnkit[explain]'") from None
    return csr_array, maximum_flow


class FlowGraph:
    """The layered capacity graph of attention flow; :meth:`flow` solves one (source, sink) pair.

    Node ids: ``add_level(n)`` returns the ids of ``n`` new nodes; ``connect(upper, lower, cap)``
    adds edges ``upper[i] -> lower[j]`` with capacity ``cap[i, j]`` (float in [0, 1]).
    """

    def __init__(self) -> None:
        self.n = 0
        self.rows: list[Tensor] = []
        self.cols: list[Tensor] = []
        self.caps: list[Tensor] = []
        self._csr = None

    def add_level(self, n: int) -> Tensor:
        ids = torch.arange(self.n, self.n + n)
        self.n += n
        return ids

    def connect(self, upper: Tensor, lower: Tensor, cap: Tensor) -> None:
        q = (cap.double() * FLOW_UNIT).round().numpy().astype("int64")
        i, j = q.nonzero()
        self.rows.append(upper.numpy()[i])
        self.cols.append(lower.numpy()[j])
        self.caps.append(q[i, j])
        self._csr = None

    def flow(self, source: int, sinks: Tensor) -> Tensor:
        """Max flow from ``source`` to each node of ``sinks`` (one exact solve each) -> float64."""
        csr_array, maximum_flow = _scipy()
        if self._csr is None:
            import numpy as np

            rows, cols, caps = (np.concatenate(x) for x in (self.rows, self.cols, self.caps))
            self._csr = csr_array((caps.astype("int32"), (rows.astype("int32"), cols.astype("int32"))),
                                  shape=(self.n, self.n))
            self._csr.sum_duplicates()
        out = torch.zeros(len(sinks), dtype=torch.float64)
        for t, sink in enumerate(sinks.tolist()):
            if sink != source:
                out[t] = maximum_flow(self._csr, int(source), int(sink), method="dinic").flow_value / FLOW_UNIT
        return out


def flow_graph(maps: dict[str, list[Tensor]], layout: str) -> tuple[FlowGraph, Tensor, Tensor]:
    """``(graph, top (T_out_positions,), bottom (T_in,))``: the node ids of the output positions'
    top level and of the input tokens' bottom level."""
    g = FlowGraph()
    maps = {k: [a.double() for a in v] for k, v in maps.items()}
    if layout != "seq2seq":
        layers = maps.get("encoder") or maps["decoder"]
        bottom = level = g.add_level(layers[0].shape[-1])
        for A in layers:
            upper = g.add_level(A.shape[-1])
            g.connect(upper, level, _mix(A))
            level = upper
        return g, level, bottom
    cross = maps["cross"]
    T, S = cross[0].shape
    bottom = enc = g.add_level(S)
    for A in maps.get("encoder", []):
        upper = g.add_level(S)
        g.connect(upper, enc, _mix(A))
        enc = upper
    dec = g.add_level(T)  # the decoder's inputs: a dead end for flow to the source tokens
    selfs = maps.get("decoder") or [None] * len(cross)
    eye = torch.eye(T, dtype=torch.float64)
    for A_self, A_cross in zip(selfs, cross, strict=True):
        if A_self is not None:
            mid = g.add_level(T)
            g.connect(mid, dec, _mix(A_self))
            dec = mid
        upper = g.add_level(T)
        g.connect(upper, dec, 0.5 * eye)
        g.connect(upper, enc, 0.5 * A_cross)
        dec = upper
    return g, dec, bottom


def flow(maps: dict[str, list[Tensor]], layout: str, rows: list[int], readout: Tensor | None = None,
         progress: bool = False) -> Tensor:
    """Attention flow ``(len(rows), T_in)`` (or ``(1, T_in)`` with ``readout (T,)``: a super
    source feeding each top node with capacity ``readout[i]``)."""
    from attnkit.progress import progress_bar

    g, top, bottom = flow_graph(maps, layout)
    if readout is not None:
        source = g.add_level(1)
        g.connect(source, top, readout.double()[None])
        sources = [int(source[0])]
    else:
        sources = [int(top[r]) for r in rows]
    rows_out = []
    with progress_bar("flow", total=len(sources), enabled=progress) as bar:
        for s in sources:
            rows_out.append(g.flow(s, bottom))
            bar.update(advance=1)
    return torch.stack(rows_out)
