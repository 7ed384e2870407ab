"""textsam.ops: mask NMS and the mask -> box / point helpers on edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textsam.ops import deepest_points, mask_box, mask_nms


def test_mask_nms_keeps_the_best_of_overlapping_masks_and_drops_empty_ones() -> None:
    masks = np.zeros((4, 8, 8), bool)
    masks[0, :4, :4] = True
    masks[1, :4, :3] = True  # IoU 0.75 with mask 0
    masks[2, 5:, 5:] = True
    assert mask_nms(masks, np.array([0.9, 0.95, 0.5, 0.99]), 0.7) == [1, 2]  # mask 3 is empty


def test_mask_nms_is_greedy_nms_on_pycocotools_mask_iou() -> None:
    """The same masks as greedy NMS on pycocotools' mask IoU, at thresholds that ties and near-ties meet."""
    import pycocotools.mask as mask_utils

    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 8))
        masks = np.zeros((n, 40, 50), bool)
        for i in range(n):
            y, x = rng.integers(0, 30, 2)
            masks[i, y : y + rng.integers(1, 15), x : x + rng.integers(1, 25)] = True
        masks[rng.integers(0, n)] &= rng.random((40, 50)) > 0.3
        scores = rng.random(n)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        iou = mask_utils.iou(rles, rles, [0] * n)
        for threshold in (0.0, 0.3, 0.5, 0.7, 1.0):
            keep: list[int] = []
            for i in np.argsort(-scores):
                if masks[i].any() and all(iou[i, j] <= threshold for j in keep):
                    keep.append(int(i))
            assert mask_nms(masks, scores, threshold) == keep


def test_mask_nms_of_no_masks_is_empty() -> None:  # a flat image gives no candidates (was a ValueError)
    assert mask_nms(np.zeros((0, 8, 8), bool), np.zeros(0), 0.7) == []


def test_mask_box_and_deepest_point() -> None:
    m = np.zeros((9, 9), bool)
    m[2:7, 3:8] = True
    assert mask_box(m) == (3, 2, 8, 7) and mask_box(np.zeros((4, 4), bool)) is None
    assert deepest_points(torch.as_tensor(m)[None]).tolist() == [[5, 4]]


@pytest.mark.parametrize("seed", range(4))
def test_deepest_points_match_scipy_chessboard_distance(seed: int) -> None:
    """The deepest pixel is the first (raster order) maximum of the chessboard distance to the nearest pixel
    outside the mask, the image border counting as outside (scipy's distance transform as the reference)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(5, 70)), int(rng.integers(5, 70))
    masks = np.stack([ndimage.binary_opening(rng.random((h, w)) < 0.8) for _ in range(6)])
    masks[0] = False
    out = deepest_points(torch.from_numpy(masks)).numpy()
    for mask, (x, y) in zip(masks, out):
        if not mask.any():
            assert (x, y) == (w // 2, h // 2)
            continue
        depth = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="chessboard")[1:-1, 1:-1]
        assert (x, y) == tuple(int(v) for v in np.unravel_index(depth.argmax(), depth.shape)[::-1])
