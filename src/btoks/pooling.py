"""Pooling: final-layer hidden states of a left-padded ``[X|B]`` batch → one raw vector per row.

A pooler returns raw (unnormalised) float vectors; L2 normalisation is the caller's choice
(``BToksModel.forward`` applies it per ``config.normalize``; ``encode(normalize=False)`` takes the raw vector).
Rows are left-padded, so the last K columns are the BToks and the last column is the last real token.
"""

from __future__ import annotations

import torch
from torch import nn

from btoks.config import BToksConfig


class Pooler(nn.Module):
    """Base class: ``forward(hidden (B, L, D), attention_mask (B, L)) -> (B, D)`` float32."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class BToksMean(Pooler):
    """Mean of the K BToks' final states (the paper's v1 embedding)."""

    def __init__(self, num_btoks: int) -> None:
        super().__init__()
        self.num_btoks = num_btoks

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return hidden[:, -self.num_btoks:].mean(dim=1).float()


class LastToken(Pooler):
    """The last real token (VLM2Vec's baseline; K = 0)."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return hidden[:, -1].float()


class MeanTokens(Pooler):
    """Mean over every real token of the row."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float()


class BToksAttention(Pooler):
    """The authors' v2 head: softmax-weighted sum of the K BTok states (scores from one linear layer, scaled
    by 1/√D), then ``LayerNorm(a + MLP(a))`` with a GELU MLP of width ``mlp_ratio·D``.

    Parameter names (``attention``, ``mlp.0``, ``mlp.3``, ``layer_norm``) follow the authors'
    ``BToksAttentionPooling`` so their checkpoints load without renaming.
    """

    def __init__(self, num_btoks: int, hidden_size: int, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 attention_scale: bool = True) -> None:
        super().__init__()
        self.num_btoks = num_btoks
        self.hidden_size = hidden_size
        self.attention_scale = attention_scale
        width = int(hidden_size * mlp_ratio)
        self.attention = nn.Linear(hidden_size, 1)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(width, hidden_size), nn.Dropout(dropout))
        self.layer_norm = nn.LayerNorm(hidden_size)
        nn.init.xavier_uniform_(self.attention.weight)
        nn.init.zeros_(self.attention.bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = hidden[:, -self.num_btoks:].to(self.attention.weight.dtype)
        scores = self.attention(states)
        if self.attention_scale:
            scores = scores / self.hidden_size**0.5
        attended = (states * scores.softmax(dim=1)).sum(dim=1)
        return self.layer_norm(attended + self.mlp(attended)).float()


def build_pooler(config: BToksConfig, hidden_size: int) -> Pooler:
    """The pooler ``config.pooling`` names (``attention`` needs the decoder's hidden size)."""
    if config.pooling == "btoks":
        return BToksMean(config.num_btoks)
    if config.pooling == "last":
        return LastToken()
    if config.pooling == "mean":
        return MeanTokens()
    return BToksAttention(config.num_btoks, hidden_size, config.pool_mlp_ratio, config.pool_dropout,
                          config.pool_attention_scale)
