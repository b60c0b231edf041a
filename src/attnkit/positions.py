"""Where a token is: fixed sinusoidal positions added to the embeddings (Vaswani et al., 2017)
and rotary positions applied to queries and keys (Su et al., 2021). No parameters."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["POSITIONS", "RotaryEmbedding", "SinusoidalPositions", "sinusoidal_table"]

POSITIONS = ("sinusoidal", "learned", "rope")


def sinusoidal_table(length: int, dim: int, offset: int = 0) -> Tensor:
    """``(length, dim)`` table: ``PE[p, 2i] = sin(p / 10000^(2i/dim))``, ``PE[p, 2i+1] = cos(...)``."""
    pos = torch.arange(offset, offset + length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (dim/2,)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine positions added to the embeddings (no parameters)."""

    def __init__(self, embed_dim: int, max_len: int = 512) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.register_buffer("table", sinusoidal_table(max_len, embed_dim), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Positions ``offset .. offset + length - 1`` -> ``(length, E)``."""
        end = offset + length
        if end <= self.table.shape[0]:
            return self.table[offset:end]
        return sinusoidal_table(length, self.embed_dim, offset).to(self.table.device)

    def at(self, positions: Tensor) -> Tensor:
        """The rows of any ``positions (...)`` -> ``(..., E)``."""
        end = int(positions.max()) + 1 if positions.numel() else 0
        table = self.table if end <= self.table.shape[0] else sinusoidal_table(end, self.embed_dim).to(self.table.device)
        return table[positions]


class RotaryEmbedding(nn.Module):
    """Rotary positions (Su et al., 2021), "rotate half" layout.

    ``forward(x (B, H, L, d), offset)`` rotates each pair ``(x[i], x[i + d/2])`` by the angle
    ``p * 10000^(-2i/d)`` of its position ``p = offset + l``. Applied to queries and keys, the
    score then depends only on the distance between positions. No parameters.
    """

    def __init__(self, head_dim: int, max_len: int = 512, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding needs an even head_dim, got {head_dim}")
        self.head_dim, self.base = head_dim, base
        cos, sin = self._tables(max_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, end: int, start: int = 0) -> tuple[Tensor, Tensor]:
        inv = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        angles = torch.arange(start, end, dtype=torch.float32).unsqueeze(1) * inv  # (L, d/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, d)
        return angles.cos(), angles.sin()

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        L = x.shape[-2]
        if offset + L <= self.cos.shape[0]:
            cos, sin = self.cos[offset : offset + L], self.sin[offset : offset + L]  # (L, d)
        else:
            cos, sin = (t.to(x.device) for t in self._tables(offset + L, offset))
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)  # (..., L, d)
        return (x * cos + rotated * sin).to(x.dtype)
