"""Cross-attention between a few prompt tokens and many image positions, computed in the token space.

SAM's decoder attends between ``Nt`` tokens (about 5-10) and ``HW = 4096`` image positions. The
official code projects every image position to the internal width (128) before attending. When the
token side is small, the same attention can be computed by moving each head's projection onto the
token side instead:

* tokens -> image:  ``softmax((q_h W_k,h) k^T / sqrt(d)) (v W_v,h^T) = (softmax(...) v) W_v,h^T``
  (the key bias adds the same constant to every logit of a query and cancels in the softmax);
* image -> tokens:  ``(q W_q,h^T + b_q,h) k_h^T = q (W_q,h^T k_h^T) + b_q,h k_h^T`` and
  ``sum_h P_h v_h W_o,h^T = P (v_h W_o,h^T)``.

The image side then meets matrices of width ``heads * Nt`` instead of the internal width, which is
fewer multiply-adds whenever ``Nt < head_dim`` (16 for SAM). The result equals the official
attention up to float rounding (about 1e-6 relative). The image side may carry a batch of 1 shared
by all B prompts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def token_space_pays(attention: nn.Module, num_tokens: int) -> bool:
    """Whether computing in token space needs fewer multiply-adds than projecting every image position."""
    return num_tokens * attention.num_heads < attention.internal_dim


def _tokens_times_image(left: Tensor, image: Tensor) -> Tensor:
    """``left (B, K, C) @ image^T`` with ``image (1 or B, HW, C)`` -> ``(B, K, HW)``; a shared image is one matmul."""
    b, k, c = left.shape
    if image.shape[0] == 1 and b > 1:
        return (left.reshape(b * k, c) @ image[0].T).view(b, k, -1)
    return left @ image.transpose(1, 2)


def tokens_to_image(attention: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Token queries ``q (B, Nt, C)`` attend to image keys/values ``k, v (1 or B, HW, C)`` -> ``(B, Nt, C)``."""
    b, nt, _ = q.shape
    heads = attention.num_heads
    d = attention.internal_dim // heads
    c = k.shape[-1]
    qh = attention.q_proj(q).view(b, nt, heads, d)
    w_k = attention.k_proj.weight.view(heads, d, c)
    q_img = torch.einsum("bnhd,hdc->bhnc", qh, w_k).reshape(b, heads * nt, c) * (1.0 / math.sqrt(d))
    probs = _tokens_times_image(q_img, k).softmax(dim=-1)
    if v.shape[0] == 1 and b > 1:
        pooled = (probs.view(b * heads * nt, -1) @ v[0]).view(b, heads, nt, c)
    else:
        pooled = (probs @ v).view(b, heads, nt, c)
    w_v = attention.v_proj.weight.view(heads, d, c)
    out = torch.einsum("bhnc,hdc->bnhd", pooled, w_v) + attention.v_proj.bias.view(heads, d)
    return attention.out_proj(out.reshape(b, nt, heads * d))


def image_to_tokens(attention: nn.Module, q: Tensor, k: Tensor, v: Tensor, residual: Tensor | None = None) -> Tensor:
    """Image queries ``q (1 or B, HW, C)`` attend to token keys/values ``k, v (B, Nt, C)`` -> ``(B, HW, C)``.

    ``residual (1 or B, HW, C)``, when given, is added to the result in the same pass.
    """
    b, nt, _ = k.shape
    heads = attention.num_heads
    d = attention.internal_dim // heads
    c = q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    kh = attention.k_proj(k).view(b, nt, heads, d) * scale
    w_q = attention.q_proj.weight.view(heads, d, c)
    from_image = torch.einsum("bnhd,hdc->bhnc", kh, w_q).reshape(b, heads * nt, c)
    bias = torch.einsum("bnhd,hd->bhn", kh, attention.q_proj.bias.view(heads, d)).reshape(b, heads * nt, 1)
    # Logits laid out (B, heads, Nt, HW): the softmax over Nt then runs along contiguous HW rows.
    logits = (_tokens_times_image(from_image, q) + bias).view(b, heads, nt, -1)
    probs = logits.softmax(dim=2).view(b, heads * nt, -1)
    vh = attention.v_proj(v).view(b, nt, heads, d)
    w_o = attention.out_proj.weight.view(c, heads, d)
    values = torch.einsum("bnhd,chd->bhnc", vh, w_o).reshape(b, heads * nt, c)
    if residual is None:
        return torch.baddbmm(attention.out_proj.bias.view(1, 1, c), probs.transpose(1, 2), values)
    # Each head's probabilities sum to 1, so bias / heads on every value row adds exactly the bias.
    values = values + attention.out_proj.bias / heads
    return torch.baddbmm(residual, probs.transpose(1, 2), values)
