"""Evaluation metrics against independent computations (pycocotools, hand-computed cases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from textsam import rle
from textsam.eval import metrics
from textsam.eval.clicks import _argmax_distance, distance_transform, first_click, next_click
from textsam.eval.semseg import combine_masks

mask_utils = pytest.importorskip("pycocotools.mask")


def _random_masks(rng: np.random.Generator, n: int, h: int = 23, w: int = 31) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        m = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
        m[y0 : y0 + rng.integers(2, h), x0 : x0 + rng.integers(2, w)] = True
        m ^= rng.random((h, w)) < 0.1
        out.append(m)
    return out


def test_mask_iou_and_rle_match_pycocotools() -> None:
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, 12) + [np.zeros((23, 31), bool)]
    coco = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    for m, c in zip(masks, coco):
        ours = rle.encode(m)
        assert ours["counts"] == c["counts"].decode()
        assert rle.area(ours) == int(mask_utils.area(c))
    for i in range(len(masks) - 1):
        a, b = masks[i], masks[i + 1]
        want = float(mask_utils.iou([coco[i]], [coco[i + 1]], [0])[0, 0])
        assert metrics.mask_iou(a, b) == pytest.approx(want, abs=1e-12)
        assert metrics.mask_iou(rle.encode(a), rle.encode(b)) == pytest.approx(want, abs=1e-12)


def test_refer_metrics_hand_computed() -> None:
    gt1 = np.zeros((8, 8), bool)
    gt1[0:4, 0:4] = True  # 16 px
    pred1 = np.zeros((8, 8), bool)
    pred1[0:2, 0:4] = True  # 8 px inside: I 8, U 16 -> 0.5
    gt2 = np.zeros((8, 8), bool)
    gt2[5:7, 5:7] = True  # 4 px
    pred2 = np.zeros((8, 8), bool)
    pred2[5:7, 6:8] = True  # 4 px, 2 shared: I 2, U 6 -> 1/3
    pairs = [metrics.intersection_union(pred1, gt1), metrics.intersection_union(pred2, gt2)]
    assert pairs == [(8, 16), (2, 6)]
    m = metrics.refer_metrics([p[0] for p in pairs], [p[1] for p in pairs])
    assert m["mIoU"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert m["cIoU"] == pytest.approx(10 / 22)
    assert m["P@0.5"] == 0.0  # strictly greater than the threshold, as LAVT/ReLA
    m2 = metrics.refer_metrics([8, 2, 0], [8, 6, 0])  # IoU 1, 1/3, and an empty-target correct rejection
    assert m2["P@0.9"] == pytest.approx(2 / 3) and m2["cIoU"] == pytest.approx(10 / 14)
    with pytest.raises(ValueError):
        metrics.refer_metrics([], [])


def test_semseg_confusion_hand_made_4x4() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, -1], [2, 0, 2, 2], [2, 2, 2, 1]])
    conf = metrics.confusion_matrix(gt, pred, 4, 255)  # class 3 absent from both
    want = np.zeros((4, 5), int)
    want[0, 0], want[0, 1] = 3, 1  # class 0: 4 px, one predicted as 1
    want[1, 1], want[1, 4] = 3, 1  # class 1: 4 px, one with no prediction
    want[2, 2], want[2, 0], want[2, 1] = 4, 1, 1  # class 2: 6 px
    np.testing.assert_array_equal(conf, want)
    m = metrics.semseg_metrics(conf, ["a", "b", "c", "d"])
    iou = m["per_class_iou"]
    assert iou["a"] == pytest.approx(3 / (4 + 4 - 3))  # GT 4, pred 4 (3 + the one from class 2)
    assert iou["b"] == pytest.approx(3 / (4 + 5 - 3))  # pred 1: 1 + 3 + 1
    assert iou["c"] == pytest.approx(4 / (6 + 4 - 4))
    assert iou["d"] is None  # in neither GT nor prediction: excluded
    assert m["mIoU"] == pytest.approx((3 / 5 + 3 / 6 + 4 / 6) / 3)
    assert m["pixel_accuracy"] == pytest.approx(10 / 14)
    assert m["classes_scored"] == 3


def test_combine_masks_rule() -> None:
    a = np.array([[1, 1, 0]], bool)
    b = np.array([[0, 1, 1]], bool)
    c = np.array([[0, 1, 0]], bool)
    out = combine_masks([a, b, c], [0.5, 0.9, 0.9], [0, 1, 2], (1, 3), fill=-1)
    np.testing.assert_array_equal(out, [[0, 1, 1]])  # the tie 1 vs 2 goes to the lower index
    np.testing.assert_array_equal(combine_masks([], [], [], (1, 2), fill=7), [[7, 7]])


def _tiny_gt(path: Path) -> dict:
    rng = np.random.default_rng(1)
    images, anns = [], []
    for iid in (1, 2, 3):
        images.append({"id": iid, "file_name": f"{iid}.png", "height": 40, "width": 50})
        for k in range(3):
            m = np.zeros((40, 50), bool)
            y, x = rng.integers(0, 25), rng.integers(0, 35)
            m[y : y + rng.integers(4, 15), x : x + rng.integers(4, 15)] = True
            r = rle.encode(m)
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": 1 + k % 2, "segmentation": r,
                         "area": float(m.sum()), "bbox": rle.to_bbox(r), "iscrowd": 0})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    path.write_text(json.dumps(gt))
    return gt


def test_coco_eval_equals_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _tiny_gt(tmp_path / "gt.json")
    rng = np.random.default_rng(2)
    results = []
    for a in gt["annotations"]:
        m = rle.decode(a["segmentation"])
        m = np.roll(m, int(rng.integers(-3, 4)), axis=1)  # partial overlaps
        results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                        "segmentation": rle.encode(m), "score": float(rng.random())})
    fp = np.zeros((40, 50), bool)
    fp[30:38, 40:48] = True
    results.append({"image_id": 1, "category_id": 2, "segmentation": rle.encode(fp), "score": 0.99})
    (tmp_path / "res.json").write_text(json.dumps(results))

    coco = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(coco, coco.loadRes(str(tmp_path / "res.json")), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    ours = metrics.coco_eval(tmp_path / "gt.json", results)
    assert list(ours) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    np.testing.assert_allclose([ours[k] for k in ours], ev.stats[:6], rtol=0, atol=1e-12)
    assert 0 < ours["AP"] < 1

    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "score": 1.0} for a in gt["annotations"]]
    assert metrics.coco_eval(coco, perfect)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no predictions"):
        metrics.coco_eval(coco, [])


def test_lvis_without_package_gives_clear_error(tmp_path: Path) -> None:
    try:
        import lvis  # noqa: F401  (optional: only the message is checked when it is absent)
    except ImportError:
        with pytest.raises(Exception, match="pip install lvis"):
            metrics.lvis_eval(tmp_path / "x.json", [{"image_id": 1}])
    assert metrics.is_lvis({"categories": [{"id": 1, "name": "a", "frequency": "r"}]})
    assert not metrics.is_lvis({"categories": [{"id": 1, "name": "a"}], "images": [{"id": 1}]})


def _brute_edt(m: np.ndarray) -> np.ndarray:
    bg = np.argwhere(~m)
    out = np.zeros(m.shape)
    for y, x in np.argwhere(m):
        out[y, x] = np.sqrt(((bg - [y, x]) ** 2).sum(1).min())
    return out


def test_distance_transform_and_clicks_exact() -> None:
    rng = np.random.default_rng(3)
    for _ in range(60):
        h, w = rng.integers(2, 16, 2)
        m = np.pad(rng.random((h, w)) < rng.random() * 1.2, 1)
        want = _brute_edt(m)
        np.testing.assert_allclose(distance_transform(m, use_scipy=False), want)
        if m.any():
            flat, d2 = _argmax_distance(m)
            assert flat == int(np.argmax(want)) and np.sqrt(d2) == pytest.approx(want.max())
    gt = np.zeros((20, 30), bool)
    gt[2:12, 3:25] = True  # centre row 6 or 7, first in row-major order
    assert first_click(gt) == (7, 6, 1)
    pred = gt.copy()
    pred[2:12, 14:25] = False  # a false-negative block -> positive click in it
    x, y, label = next_click(gt, pred)
    assert label == 1 and 14 <= x < 25 and 2 <= y < 12
    pred = gt.copy()
    pred[14:20, :] = True  # a false-positive band -> negative click
    assert next_click(gt, pred)[2] == 0
    assert next_click(gt, gt) is None
