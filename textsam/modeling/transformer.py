"""SAM's two-way transformer (official attribute names, ``mask_decoder.transformer.*``).

Tokens attend to the image and the image attends back to the tokens. The image tensors may carry a
batch of 1 while the tokens carry a batch of B (many prompts on one image): projections of the
shared image are then computed once and broadcast, which gives the same numbers as repeating it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import MLPBlock
from .token_attention import image_to_tokens, token_space_pays, tokens_to_image


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may downscale the width by ``downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q (Bq, Nq, C)``, ``k, v (Bk, Nk, C)`` with Bk in {1, Bq} -> ``(B, Nq, C)``."""
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        b = max(q.shape[0], k.shape[0])
        q, k, v = q.expand(b, -1, -1, -1), k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, self.internal_dim)
        return self.out_proj(out)


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, token->image and image->token cross-attention, and a token MLP."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """``queries (B, Nt, C)``, ``keys (B or 1, HW, C)`` -> updated ``(queries, keys (B, HW, C))``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + _token_to_image(self.cross_attn_token_to_image, q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        if token_space_pays(self.cross_attn_image_to_token, q.shape[1]):
            keys = self.norm4(image_to_tokens(self.cross_attn_image_to_token, k, q, queries, residual=keys))
        else:
            attn_out = self.cross_attn_image_to_token(q=k, k=q, v=queries)
            keys = self.norm4(attn_out + keys)  # (B,...) + (1,...): the fast broadcast order
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks and a final token->image attention."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """``image_embedding (B or 1, C, h, w)``, ``image_pe (1, C, h, w)``, ``point_embedding (B, N, C)``.

        Returns ``(tokens (B, N, C), image (B, h*w, C))``.
        """
        # contiguous (B, h*w, C): the permuted views keep (B, C, h, w) memory order, which every add and norm of
        # the image tokens would then inherit, reading channels with a stride of h*w
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + _token_to_image(self.final_attn_token_to_image, q, k, keys))
        return queries, keys


def _token_to_image(attention: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Token->image attention, in token space when that is fewer multiply-adds (same result)."""
    if token_space_pays(attention, q.shape[1]):
        return tokens_to_image(attention, q, k, v)
    return attention(q=q, k=k, v=v)
