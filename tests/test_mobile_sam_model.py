"""A tiny MobileSAM-style TextSam (TinyViT encoder) built with ``build_sam``: training step and round trip.

The model has MobileSAM's structure with small numbers (img_size 256 -> 16x16 embedding, 64x64 low-res
masks, widths 16..64, prompt encoder / decoder width 32), so a forward + backward pass takes well
under a second on a CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import textsam
from textsam.config import (
    MODEL_CONFIGS,
    MaskDecoderConfig,
    ModelConfig,
    PromptEncoderConfig,
    TinyViTEncoderConfig,
)
from textsam.factory import build_sam, load_sam_weights
from textsam.model import TextSam

IMG = 256
DIM = 32
TINY_MOBILE = ModelConfig(
    name="tiny_mobile_sam",
    image_encoder=TinyViTEncoderConfig(
        img_size=IMG,
        embed_dims=(16, 32, 32, 64),
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 2, 4),
        window_sizes=(7, 7, 7, 7),
        num_classes=10,
        out_chans=DIM,
    ),
    prompt_encoder=PromptEncoderConfig(embed_dim=DIM, mask_in_chans=16),
    mask_decoder=MaskDecoderConfig(transformer_dim=DIM, num_heads=2, mlp_dim=64, iou_head_hidden_dim=DIM),
)


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random but well-scaled values for every float tensor, BatchNorm statistics included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if not v.is_floating_point():
                continue
            noise = torch.randn(v.shape, generator=g)
            if k.endswith("running_var"):
                v.copy_(noise.abs() + 0.5)
            elif k.endswith(("running_mean", "bias")) or "attention_biases" in k:
                v.copy_(0.1 * noise)
            elif "gaussian_matrix" in k:
                v.copy_(noise)
            elif v.ndim == 1:
                v.copy_(1 + 0.1 * noise)
            else:
                v.copy_(noise / math.sqrt(v[0].numel()))
    return model


def _inputs() -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Images (2, 3, 256, 256), one positive + one negative point per image, target masks (2, 1, 64, 64)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, IMG, IMG, generator=g)
    coords = torch.tensor([[[64.0, 80.0], [200.0, 30.0]], [[150.0, 150.0], [20.0, 230.0]]])
    labels = torch.tensor([[1, 0], [1, 0]])
    target = torch.zeros(2, 1, IMG // 4, IMG // 4)
    target[0, :, 10:30, 8:24] = 1
    target[1, :, 30:50, 30:45] = 1
    return x, (coords, labels), target


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SAM's recipe (20:1 focal:dice) on ``(B, M, h, w)`` logits against a ``(B, 1, h, w)`` target."""
    target = target.expand_as(logits)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    focal = (ce * (1 - p_t) ** 2 * (0.25 * target + 0.75 * (1 - target))).mean()
    inter = (p * target).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (p.flatten(2).sum(-1) + target.flatten(2).sum(-1) + 1)
    return 20 * focal + dice.mean()


@pytest.fixture
def model() -> TextSam:
    torch.manual_seed(0)
    return randomise_(build_sam(TINY_MOBILE))


def test_tiny_mobile_sam_shapes(model: TextSam) -> None:
    from textsam.modeling.tiny_vit import TinyViT

    assert isinstance(model.image_encoder, TinyViT)
    assert model.img_size == IMG
    x, points, _ = _inputs()
    model.eval()
    with torch.no_grad():
        emb = model.image_encoder(x)
        assert emb.shape == (2, DIM, IMG // 16, IMG // 16)
        masks, iou = model.decode(emb, points=points, multimask_output=True)
        assert masks.shape == (2, 3, IMG // 4, IMG // 4) and iou.shape == (2, 3)
        one, iou1 = model.decode(emb, points=points, multimask_output=False)
        assert one.shape == (2, 1, IMG // 4, IMG // 4) and iou1.shape == (2, 1)
    assert torch.isfinite(masks).all() and torch.isfinite(iou).all()


def test_backward_reaches_every_used_part(model: TextSam) -> None:
    x, points, target = _inputs()
    model.train()
    masks, iou = model.decode(model.image_encoder(x), points=points, multimask_output=True)
    with torch.no_grad():  # SAM trains the IoU head on the IoU of each predicted mask with the target
        pred = masks > 0
        t = target.expand_as(pred) > 0
        true_iou = (pred & t).flatten(2).sum(-1) / (pred | t).flatten(2).sum(-1).clamp(min=1)
    loss = focal_dice_loss(masks, target) + F.mse_loss(iou, true_iou.float())
    assert torch.isfinite(loss)
    loss.backward()

    def reached(p: torch.nn.Parameter) -> bool:
        return p.grad is not None and bool(torch.isfinite(p.grad).all()) and p.grad.abs().sum() > 0

    params = dict(model.named_parameters())
    for part in ("image_encoder.", "prompt_encoder.", "mask_decoder."):
        assert any(reached(p) for k, p in params.items() if k.startswith(part)), part
    for key in (
        "image_encoder.patch_embed.seq.0.c.weight",  # the very first layer
        "image_encoder.layers.1.blocks.0.attn.attention_biases",
        "image_encoder.neck.2.weight",
        "prompt_encoder.point_embeddings.0.weight",  # negative click
        "prompt_encoder.point_embeddings.1.weight",  # positive click
        "prompt_encoder.not_a_point_embed.weight",  # padding point (no box)
        "prompt_encoder.no_mask_embed.weight",
        "mask_decoder.iou_token.weight",
        "mask_decoder.mask_tokens.weight",
        "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
        "mask_decoder.output_upscaling.0.weight",
        "mask_decoder.output_hypernetworks_mlps.1.layers.0.weight",
        "mask_decoder.iou_prediction_head.layers.2.weight",
    ):
        assert reached(params[key]), key
    # Exactly the parts this prompt cannot use stay untouched: the unused classifier head, box corners,
    # mask prompts and the single-mask output token's hypernetwork.
    untouched = {k for k, p in params.items() if not reached(p)}
    expected_untouched = {
        k
        for k in params
        if k.startswith(
            (
                "image_encoder.head.",
                "image_encoder.norm_head.",
                "prompt_encoder.point_embeddings.2.",
                "prompt_encoder.point_embeddings.3.",
                "prompt_encoder.mask_downscaling.",
                "mask_decoder.output_hypernetworks_mlps.0.",
            )
        )
    }
    assert untouched == expected_untouched


def test_one_sgd_step_lowers_the_loss(model: TextSam) -> None:
    x, points, target = _inputs()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        masks, _ = model.decode(model.image_encoder(x), points=points, multimask_output=True)
        loss = focal_dice_loss(masks, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_official_format_round_trip(model: TextSam, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sam_state_dict`` saved with torch.save (the mobile_sam.pt format) loads strictly and exactly."""
    model.eval()
    sd = model.sam_state_dict()
    assert sd and all(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in sd)
    assert not any(k.endswith(("attention_bias_idxs", ".ab")) for k in sd)  # non-persistent
    assert sd["image_encoder.layers.1.blocks.0.attn.attention_biases"].abs().sum() > 0  # randomised
    assert (sd["image_encoder.patch_embed.seq.0.bn.running_var"] != 1).all()
    path = tmp_path / "tiny_mobile_sam.pt"
    torch.save(sd, path)

    fresh = build_sam(TINY_MOBILE)
    load_sam_weights(fresh, path)  # strict
    fresh.eval()
    monkeypatch.setitem(MODEL_CONFIGS, TINY_MOBILE.name, TINY_MOBILE)
    created = textsam.create_model(TINY_MOBILE.name, checkpoint=path)
    assert not created.training

    x, points, _ = _inputs()
    box = torch.tensor([[30.0, 40.0, 120.0, 200.0], [100.0, 100.0, 250.0, 180.0]])
    with torch.no_grad():
        ref_emb = model.image_encoder(x)
        ref = model.decode(ref_emb, points=points, boxes=box, multimask_output=True)
        for other in (fresh, created):
            emb = other.image_encoder(x)
            assert torch.equal(emb, ref_emb)
            out = other.decode(emb, points=points, boxes=box, multimask_output=True)
            assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    for k, v in fresh.sam_state_dict().items():
        assert torch.equal(v, sd[k]), k
