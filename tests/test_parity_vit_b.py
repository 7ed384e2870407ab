"""Parity with the official segment-anything SamPredictor on a vit_b checkpoint it wrote itself.

The checkpoint is the official builder's random model with every tensor perturbed (so zero-initialised
parts such as the relative-position tables are exercised), saved with ``torch.save(state_dict)`` exactly
like the published ``sam_vit_b_01ec64.pth``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import textsam
from textsam.transforms import load_image

from .conftest import SHARED_DATA
from .tiny import official_sam

segment_anything = pytest.importorskip("segment_anything")

LOGIT_TOL = 1e-4
IOU_TOL = 1e-5
BAND = 1e-5
MAX_BAND_FLIP_FRACTION = 1e-6  # of all pixels, with a floor of 8 pixels


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_random.pth"
    torch.save(official_sam("vit_b").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """The SAM demo truck photo (1800x1200) when ../shared/data is present, else a synthetic one."""
    path = SHARED_DATA / "sam_demo_images" / "truck.jpg"
    if path.exists():
        return load_image(path)
    rng = np.random.default_rng(0)  # non-square synthetic image when the shared data is absent
    img = rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)
    img[200:400, 300:600] = (200, 30, 30)
    return img


@pytest.fixture(scope="module")
def predictors(official_checkpoint: Path, image: np.ndarray):
    ref = segment_anything.SamPredictor(
        segment_anything.sam_model_registry["vit_b"](checkpoint=str(official_checkpoint)).eval()
    )
    ours = textsam.TextSamPredictor(textsam.create_model("sam_vit_b", checkpoint=official_checkpoint))
    ref.set_image(image)
    ours.set_image(image)
    return ref, ours


def test_image_embedding_matches(predictors) -> None:
    ref, ours = predictors
    diff = (ref.get_image_embedding() - ours.get_image_embedding()).abs().max().item()
    assert diff <= 1e-4, diff


def _compare(ref_call, ours_call) -> None:
    """Run both predictors with logits and with binary masks and compare everything.

    Binary masks must be identical wherever the official logit is farther than ``BAND`` from the 0.0
    threshold; inside that band float32 summation order decides and at most ``MAX_BAND_FLIPS`` pixels
    may differ, at most one pixel per million (the count is measured, not assumed).
    """
    ref_logits, ref_iou, ref_low = ref_call(return_logits=True)
    ours = ours_call(return_logits=True)
    assert ours.masks.shape == ref_logits.shape
    assert np.abs(ours.low_res_logits - ref_low).max() <= LOGIT_TOL
    assert np.abs(ours.masks - ref_logits).max() <= LOGIT_TOL
    assert np.abs(ours.scores - ref_iou).max() <= IOU_TOL
    ref_masks = ref_call(return_logits=False)[0]
    ours_masks = ours_call(return_logits=False).masks
    assert ours_masks.dtype == ref_masks.dtype == bool
    decided = np.abs(ref_logits) > BAND
    assert np.array_equal(ours_masks[decided], ref_masks[decided])
    assert int((ours_masks != ref_masks).sum()) <= max(8, MAX_BAND_FLIP_FRACTION * ref_masks.size)


def _prompts(h: int, w: int) -> dict[str, dict]:
    pts = np.array([[0.3 * w, 0.5 * h], [0.6 * w, 0.4 * h], [0.5 * w, 0.8 * h], [0.1 * w, 0.1 * h]])
    return {
        "one_point": dict(point_coords=pts[:1], point_labels=np.array([1])),
        "pos_neg_points": dict(point_coords=pts, point_labels=np.array([1, 1, 0, 0])),
        "box": dict(box=np.array([0.2 * w, 0.2 * h, 0.7 * w, 0.9 * h])),
        "box_and_points": dict(
            box=np.array([0.2 * w, 0.2 * h, 0.7 * w, 0.9 * h]), point_coords=pts[:2], point_labels=np.array([1, 0])
        ),
    }


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", ["one_point", "pos_neg_points", "box", "box_and_points"])
def test_predict_matches_official(predictors, image, prompt: str, multimask: bool) -> None:
    ref, ours = predictors
    kwargs = _prompts(*image.shape[:2])[prompt]
    _compare(
        lambda **kw: ref.predict(multimask_output=multimask, **kwargs, **kw),
        lambda **kw: ours.predict(multimask_output=multimask, **kwargs, **kw),
    )


def test_mask_input_from_previous_call(predictors, image) -> None:
    ref, ours = predictors
    kwargs = _prompts(*image.shape[:2])["one_point"]
    _, scores, low = ref.predict(**kwargs)
    mask_input = low[np.argmax(scores)][None]
    more = _prompts(*image.shape[:2])["pos_neg_points"]
    _compare(
        lambda **kw: ref.predict(mask_input=mask_input, multimask_output=False, **more, **kw),
        lambda **kw: ours.predict(mask_input=mask_input, multimask_output=False, **more, **kw),
    )


@pytest.mark.parametrize("multimask", [True, False])
def test_sixteen_boxes_in_one_call(predictors, image, multimask: bool) -> None:
    ref, ours = predictors
    h, w = image.shape[:2]
    rng = np.random.default_rng(1)
    xy0 = rng.uniform(0, 0.5, (16, 2)) * (w, h)
    boxes = np.concatenate([xy0, xy0 + rng.uniform(0.1, 0.5, (16, 2)) * (w, h)], axis=1)
    tb = ref.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), ref.original_size)

    def ref_call(return_logits: bool):
        return tuple(t.numpy() for t in ref.predict_torch(None, None, tb, multimask_output=multimask, return_logits=return_logits))

    _compare(ref_call, lambda **kw: ours.predict_batch(boxes=boxes, multimask_output=multimask, **kw))
