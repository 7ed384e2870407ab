"""predictor.generate() against segment-anything's own SamAutomaticMaskGenerator on the same weights.

The fast tests build segment-anything's own Sam classes at a small size (a 2-block ViT at 256 px; the real
prompt encoder and mask decoder), load the same random weights into textsam, and compare every record. The
slow test does the same with the full vit_b from segment-anything's builder on a real photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import textsam
from textsam.config import SHAPES_TINY
from textsam.errors import InputError

from .tiny import official_sam


def _official_shapes_tiny():
    """segment-anything's own Sam classes at shapes_tiny's sizes, holding the bundled model's trained SAM weights
    (a trained model gives varied, meaningful proposals; random weights give one mask whatever the click)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    cfg = SHAPES_TINY
    enc, dec = cfg.image_encoder, cfg.mask_decoder
    grid = cfg.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(depth=enc.depth, embed_dim=enc.embed_dim, img_size=enc.img_size, mlp_ratio=4,
                                      norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6), num_heads=enc.num_heads,
                                      patch_size=enc.patch_size, qkv_bias=True, use_rel_pos=True,
                                      global_attn_indexes=enc.global_attn_indexes, window_size=enc.window_size,
                                      out_chans=enc.out_chans),
        prompt_encoder=PromptEncoder(embed_dim=cfg.prompt_encoder.embed_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(enc.img_size, enc.img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dec.transformer_dim,
                                 transformer=TwoWayTransformer(depth=dec.depth, embedding_dim=dec.transformer_dim,
                                                               mlp_dim=dec.mlp_dim, num_heads=dec.num_heads),
                                 iou_head_depth=3, iou_head_hidden_dim=dec.iou_head_hidden_dim),
    )
    ours = textsam.create_model("shapes_tiny")
    sam.load_state_dict(ours.sam_state_dict(), strict=False)
    return sam.eval(), ours


def _image() -> np.ndarray:
    """A scene of the synthetic generator's kind: shapes on a plain background, 144 x 192."""
    from PIL import ImageDraw

    im = Image.new("RGB", (192, 144), (200, 200, 190))
    d = ImageDraw.Draw(im)
    d.ellipse([20, 20, 70, 70], fill=(220, 40, 40))
    d.rectangle([110, 30, 160, 80], fill=(40, 80, 220))
    d.polygon([(60, 130), (90, 85), (120, 130)], fill=(40, 170, 60))
    d.ellipse([140, 100, 170, 130], fill=(230, 200, 40))
    return np.asarray(im)


def _compare(ref: list[dict], ours: list[dict]) -> None:
    assert len(ours) == len(ref) and len(ref) > 0
    for a, b in zip(ref, ours):
        assert np.array_equal(a["segmentation"], b["segmentation"])
        assert a["bbox"] == b["bbox"] and a["area"] == b["area"] and a["crop_box"] == b["crop_box"]
        assert a["point_coords"] == b["point_coords"]
        assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-5
        assert abs(a["stability_score"] - b["stability_score"]) < 1e-6


@pytest.mark.parametrize("kwargs", [
    {"points_per_side": 8},
    {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    {"crop_n_layers": 1, "points_per_side": 8, "points_per_batch": 20},
], ids=["default-filters", "no-filters", "one-crop-layer"])
def test_generate_equals_the_official_generator(kwargs: dict) -> None:
    from segment_anything import SamAutomaticMaskGenerator

    official, model = _official_shapes_tiny()
    image = _image()
    with torch.no_grad():
        ref = SamAutomaticMaskGenerator(official, **kwargs).generate(image)
    predictor = textsam.TextSamPredictor(model)
    predictor.set_image(image)
    _compare(ref, predictor.generate(**kwargs))
    assert predictor.original_size == (144, 192)  # crops used a second predictor: this one keeps its image


def test_generate_output_modes_and_bad_options() -> None:
    from textsam import rle

    predictor = textsam.TextSamPredictor(_official_shapes_tiny()[1])
    predictor.set_image(_image())
    binary = predictor.generate(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    coco = predictor.generate(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                              output_mode="coco_rle")
    assert all(np.array_equal(rle.decode(c["segmentation"]), b["segmentation"]) for b, c in zip(binary, coco))
    with pytest.raises(InputError, match="unknown generate"):
        predictor.generate(points_per_sid=8)
    with pytest.raises(InputError, match="output_mode"):
        predictor.generate(output_mode="png")
    with pytest.raises(InputError, match="no image"):
        textsam.TextSamPredictor(predictor.model).generate()


@pytest.mark.slow
@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_generate_equals_the_official_generator_vit_b(shared_data: Path, crop_n_layers: int) -> None:
    from segment_anything import SamAutomaticMaskGenerator

    official = official_sam("vit_b")
    image = np.asarray(Image.open(sorted((shared_data / "sam_demo_images").glob("*.jpg"))[0]).convert("RGB"))
    kwargs = {"crop_n_layers": crop_n_layers}
    with torch.no_grad():
        ref = SamAutomaticMaskGenerator(official, **kwargs).generate(image)
    model = textsam.create_model("sam_vit_b", pretrained=False)
    model.load_state_dict({k: v for k, v in official.state_dict().items()}, strict=False)
    predictor = textsam.TextSamPredictor(model.eval())
    predictor.set_image(image)
    ours = predictor.generate(**kwargs)
    _compare(ref, ours)


def test_mask_boxes_equal_segment_anythings() -> None:
    """``masks_to_boxes`` (reductions on a uint8 view) gives segment-anything's ``batched_mask_to_box`` on masks
    that are empty, a single pixel, touch the edges, or are a strided view."""
    from segment_anything.utils.amg import batched_mask_to_box

    from textsam.modeling.proposals import masks_to_boxes

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 70, 90, generator=g) > 0.995
    masks[0] = False
    masks[1] = False
    masks[1, 69, 89] = True
    masks[2, :, 0] = True
    strided = (torch.rand(4, 140, 270, generator=g) > 0.999)[:, ::2, 1::3]
    for m in (masks, strided, masks.transpose(1, 2)):
        assert torch.equal(masks_to_boxes(m), batched_mask_to_box(m))
