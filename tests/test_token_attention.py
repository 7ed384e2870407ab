"""Token-space cross-attention equals the official projection-first attention (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from textsam.modeling.token_attention import image_to_tokens, token_space_pays, tokens_to_image
from textsam.modeling.transformer import Attention


@pytest.fixture()
def attention() -> Attention:
    torch.manual_seed(0)
    attn = Attention(embedding_dim=64, num_heads=4, downsample_rate=2)  # head dim 8
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.2)  # non-zero biases so the bias algebra is exercised
    return attn


@pytest.mark.parametrize("image_batch", [1, 3])
def test_tokens_to_image_matches_projection_first(attention: Attention, image_batch: int) -> None:
    tokens = torch.randn(3, 5, 64)
    image = torch.randn(image_batch, 300, 64)
    values = torch.randn(image_batch, 300, 64)
    ours = tokens_to_image(attention, tokens, image, values)
    ref = attention(q=tokens, k=image.expand(3, -1, -1), v=values.expand(3, -1, -1))
    assert ours.shape == (3, 5, 64)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image_batch", [1, 3])
@pytest.mark.parametrize("with_residual", [False, True])
def test_image_to_tokens_matches_projection_first(attention: Attention, image_batch: int, with_residual: bool) -> None:
    tokens = torch.randn(3, 6, 64)
    token_values = torch.randn(3, 6, 64)
    image = torch.randn(image_batch, 300, 64)
    residual = torch.randn(image_batch, 300, 64) if with_residual else None
    ours = image_to_tokens(attention, image, tokens, token_values, residual=residual)
    ref = attention(q=image.expand(3, -1, -1), k=tokens, v=token_values)
    if residual is not None:
        ref = ref + residual
    assert ours.shape == (3, 300, 64)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_gradients_match(attention: Attention) -> None:
    tokens = torch.randn(2, 5, 64, requires_grad=True)
    image = torch.randn(2, 200, 64, requires_grad=True)
    (tokens_to_image(attention, tokens, image, image).square().sum()
     + image_to_tokens(attention, image, tokens, tokens).square().sum()).backward()
    ours = [tokens.grad.clone(), image.grad.clone()] + [p.grad.clone() for p in attention.parameters()]
    tokens.grad = image.grad = None
    attention.zero_grad()
    (attention(q=tokens, k=image, v=image).square().sum() + attention(q=image, k=tokens, v=tokens).square().sum()).backward()
    ref = [tokens.grad, image.grad] + [p.grad for p in attention.parameters()]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_token_space_only_when_fewer_tokens_than_head_width(attention: Attention) -> None:
    assert token_space_pays(attention, 7)
    assert not token_space_pays(attention, 8)


def test_decode_confident_equals_decode_for_the_kept_prompts() -> None:
    from .tiny import tiny_sam

    model = tiny_sam()
    emb = torch.randn(1, 256, 16, 16)
    coords = torch.rand(40, 1, 2) * 255
    labels = torch.ones(40, 1)
    with torch.inference_mode():
        low, iou = model.decode(emb, points=(coords, labels), multimask_output=True)
        threshold = float(iou.amax(dim=1).median())
        iou2, low2, rows = model.decode_confident(emb, (coords, labels), threshold)
    assert torch.equal(rows, torch.nonzero(iou.amax(dim=1) >= threshold).flatten()) and 0 < len(rows) < 40
    torch.testing.assert_close(iou2, iou)
    torch.testing.assert_close(low2, low[rows])
