"""Tiny random models for fast tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

from textsam.config import ModelConfig, TextConfig, ViTEncoderConfig
from textsam.factory import build_sam
from textsam.model import TextSam
from textsam.text.clip import TextEncoder

TINY_CONFIG = ModelConfig(
    name="tiny_test",
    image_encoder=ViTEncoderConfig(img_size=256, embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=7),
    text=TextConfig(clip_model="tiny_clip", clip_pretrained=None),
)


def tiny_clip_encoder(seed: int = 0) -> TextEncoder:
    """A 2-layer open_clip CLIP (64 px images, width 64, embed 32) with the real CLIP tokenizer."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    clip = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=64),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
        quick_gelu=True,
    ).eval()
    return TextEncoder(clip, open_clip.get_tokenizer("ViT-B-16"), model_name="tiny_clip", pretrained=None)


def tiny_sam(seed: int = 0, *, with_text: bool = False) -> TextSam:
    """A SAM with a 2-block ViT at 256 px (16x16 embedding, 64x64 low-res masks), random weights."""
    torch.manual_seed(seed)
    model = build_sam(TINY_CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    if with_text:
        model.text_encoder = tiny_clip_encoder(seed)
    return model.eval()


def official_sam(variant: str = "vit_b", seed: int = 0):
    """segment-anything's own ``Sam`` of ``variant`` from its builder, every tensor perturbed, in eval mode."""
    import segment_anything

    torch.manual_seed(seed)
    sam = segment_anything.sam_model_registry[variant]()
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return sam.eval()


# a 1-layer open_clip CLIP (saved as a local-dir folder by the ``clip_spec`` fixture in conftest.py)
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def label_images(root: Path) -> Path:
    """Three images for the labeller's tests under ``root``: the example image, its mirror and a crop in a
    subfolder (``a.png``, ``b.png``, ``sub/c.png``)."""
    from PIL import Image

    from textsam.cli.segment import example_images

    (root / "sub").mkdir(parents=True)
    im = Image.open(example_images()[0]).convert("RGB")
    im.save(root / "a.png")
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "b.png")
    im.crop((0, 0, 160, 120)).save(root / "sub" / "c.png")
    return root

