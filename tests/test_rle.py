"""textsam.rle against pycocotools: identical compressed strings, areas, boxes and IoUs."""

from __future__ import annotations

import numpy as np
import pytest

from textsam import rle
from textsam.errors import InputError

mask_api = pytest.importorskip("pycocotools.mask")
# pycocotools (numpy 2) warns about __array__ copy semantics inside its own decode
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _coco(mask: np.ndarray) -> dict:
    return mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [np.zeros((7, 5), bool), np.ones((7, 5), bool), np.ones((1, 1), bool), np.zeros((1, 1), bool)]
    for h, w in [(1, 9), (9, 1), (13, 17), (31, 7), (64, 65), (101, 3)]:
        for p in (0.02, 0.5, 0.97):
            out.append(rng.random((h, w)) < p)
    blob = np.zeros((257, 129), bool)
    blob[40:200, 10:100] = True  # long runs: multi-character counts and negative deltas
    blob[0, 0] = blob[-1, -1] = True
    out.append(blob)
    wrap = np.zeros((10, 6), bool)
    wrap[7:, 2] = True
    wrap[:2, 3] = True  # one run wrapping from column 2 into column 3
    out.append(wrap)
    return out


@pytest.mark.parametrize("mask", _masks(), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}-{int(m.sum())}")
def test_encode_matches_pycocotools_and_round_trips(mask: np.ndarray) -> None:
    ours = rle.encode(mask)
    ref = _coco(mask)
    assert ours["size"] == list(ref["size"])
    assert isinstance(ours["counts"], str)
    assert ours["counts"] == ref["counts"].decode()
    np.testing.assert_array_equal(rle.decode(ours), mask)
    np.testing.assert_array_equal(rle.decode(ref), mask)  # bytes counts
    np.testing.assert_array_equal(mask_api.decode({**ours, "counts": ours["counts"].encode()}).astype(bool), mask)
    assert rle.area(ours) == int(mask_api.area(ref))
    assert rle.to_bbox(ours) == mask_api.toBbox(ref).tolist()


def test_uncompressed_counts() -> None:
    mask = np.zeros((4, 3), bool)
    mask[1:3, 1] = True
    flat = mask.ravel(order="F").tolist()
    assert flat == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    uncompressed = {"size": [4, 3], "counts": [5, 2, 5]}
    np.testing.assert_array_equal(rle.decode(uncompressed), mask)
    assert rle.area(uncompressed) == 2
    assert rle.to_bbox(uncompressed) == [1.0, 1.0, 1.0, 2.0]
    ref = mask_api.frPyObjects(uncompressed, 4, 3)
    assert rle.encode(mask)["counts"] == ref["counts"].decode()
    full = {"size": [2, 2], "counts": [0, 4]}
    assert rle.decode(full).all()


def test_iou_matches_pycocotools() -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        a = rng.random((23, 31)) < 0.4
        b = a ^ (rng.random((23, 31)) < 0.2)
        ra, rb = rle.encode(a), rle.encode(b)
        ref = mask_api.iou([_coco(a)], [_coco(b)], [0])[0, 0]
        assert rle.iou(ra, rb) == pytest.approx(ref, abs=1e-12)
    empty = rle.encode(np.zeros((5, 5), bool))
    assert rle.iou(empty, empty) == 0.0
    assert rle.iou(rle.encode(np.ones((5, 5), bool)), rle.encode(np.ones((5, 5), bool))) == 1.0


def test_bad_input_is_reported() -> None:
    with pytest.raises(InputError, match="add up"):
        rle.decode({"size": [3, 3], "counts": [1, 2]})
    with pytest.raises(InputError, match=r"\(H, W\)"):
        rle.encode(np.zeros((2, 2, 2), bool))
    with pytest.raises(InputError, match="one size"):
        rle.iou(rle.encode(np.zeros((2, 3), bool)), rle.encode(np.zeros((3, 2), bool)))
    with pytest.raises(InputError):
        rle.decode({"size": [3, 3], "counts": "\x7f"})


def test_large_mask_round_trip() -> None:
    yy, xx = np.mgrid[:1200, :1800]
    mask = (yy - 600) ** 2 + (xx - 900) ** 2 < 400**2
    ours = rle.encode(mask)  # speed is measured by hand, not asserted (shared CPUs)
    assert ours["counts"] == _coco(mask)["counts"].decode()
    np.testing.assert_array_equal(rle.decode(ours), mask)
