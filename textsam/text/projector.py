"""TextProjector: a phrase's pooled CLIP embedding -> prompt tokens in the decoder's sparse slot.

Shapes: ``emb (B, D)`` unit CLIP embeddings -> tokens ``(B, K, C)`` (``K = num_tokens``, ``C`` the decoder's
token width). The tokens join the point and box tokens of the same decoder call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import TextHeadConfig
from ..errors import InputError

__all__ = ["TextProjector"]


class TextProjector(nn.Module):
    """A two-layer MLP plus a learned text-type embedding per token (like SAM's point-type embeddings), so
    the decoder can tell text tokens from clicks. Built from a :class:`~textsam.config.TextHeadConfig`
    (its ``clip_dim``, ``token_dim``, ``num_tokens``, ``hidden_dim``)."""

    def __init__(self, config: TextHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.clip_dim, self.token_dim = config.clip_dim, config.token_dim
        self.num_tokens, self.hidden_dim = config.num_tokens, config.hidden_dim
        self.mlp = nn.Sequential(
            nn.Linear(config.clip_dim, config.hidden_dim), nn.GELU(),
            nn.Linear(config.hidden_dim, config.token_dim * config.num_tokens),
        )
        self.text_type_embed = nn.Parameter(torch.randn(config.num_tokens, config.token_dim) * 0.02)
        nn.init.normal_(self.mlp[2].weight, std=0.02 / math.sqrt(config.hidden_dim))
        nn.init.zeros_(self.mlp[2].bias)

    @classmethod
    def from_config(cls, config: TextHeadConfig) -> TextProjector:
        return cls(config)

    def forward(self, emb: Tensor) -> Tensor:
        """``emb (B, D)`` unit CLIP embeddings -> tokens ``(B, K, C)``."""
        if emb.ndim != 2 or emb.shape[1] != self.clip_dim:
            raise InputError(f"TextProjector expects (B, {self.clip_dim}) CLIP embeddings, got {tuple(emb.shape)}")
        x = emb.to(self.mlp[0].weight.dtype) * math.sqrt(self.clip_dim)  # unit vectors -> unit-variance entries
        tokens = self.mlp(x).view(emb.shape[0], self.num_tokens, self.token_dim)
        return tokens + self.text_type_embed
