"""textsam.viz overlays and textsam.results files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textsam import viz
from textsam.errors import InputError
from textsam.results import MaskResult, write_results

# pycocotools (numpy 2) warns about __array__ copy semantics inside its own decode
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _scene(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), 90, np.uint8)
    masks = np.zeros((2, h, w), bool)
    masks[0, 30:60, 20:50] = True
    masks[1, 70:100, 90:140] = True
    return image, masks


def test_palette_distinct_and_stable() -> None:
    colours = viz.palette(30)
    assert len(set(colours)) == 30
    assert viz.palette(5) == colours[:5]
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)


def test_overlay_changes_only_masks_and_markers() -> None:
    image, masks = _scene()
    out = viz.overlay(
        image, masks, labels=["red circle", "cat"], scores=[0.93, 0.5],
        boxes=np.array([[20, 30, 50, 60], [90, 70, 140, 100]]),
        points=np.array([[35, 45], [115, 85]]), point_labels=np.array([1, 0]),
    )
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[masks[0]] != image[masks[0]]).any(axis=-1).all()  # every mask pixel tinted
    assert (out[masks[1]] != image[masks[1]]).any(axis=-1).all()
    assert not np.array_equal(out[45, 35], out[85, 115])  # distinct colours / markers
    assert tuple(out[45, 35]) == (0, 220, 0)  # positive click: green
    assert tuple(out[85, 115]) == (230, 0, 0)  # negative click: red
    far = np.zeros(image.shape[:2], bool)
    far[105:, :60] = True  # bottom-left corner: no mask, box, marker or tag
    np.testing.assert_array_equal(out[far], image[far])
    np.testing.assert_array_equal(image, 90)  # input untouched


def test_overlay_large_image_and_checks() -> None:
    image = np.zeros((900, 1400, 3), np.uint8)
    mask = np.zeros((900, 1400), bool)
    mask[300:600, 500:900] = True
    out = viz.overlay(image, mask, labels=["thing"], scores=[0.7])
    assert out.shape == image.shape
    assert (out[:300, :500] == 0).all()
    with pytest.raises(InputError):
        viz.overlay(image, mask[:10])
    with pytest.raises(InputError):
        viz.overlay(image, mask, labels=["a", "b"])


def test_mask_to_png() -> None:
    _, masks = _scene()
    png = viz.mask_to_png(masks[0])
    assert png.mode == "L"
    arr = np.asarray(png)
    assert set(np.unique(arr)) == {0, 255}
    np.testing.assert_array_equal(arr == 255, masks[0])


def test_mask_result_box_from_mask() -> None:
    _, masks = _scene()
    r = MaskResult(masks[0], 0.9, "x")
    assert r.box == [20.0, 30.0, 50.0, 60.0]
    assert MaskResult(np.zeros((4, 4), bool), 0.1).box == [0.0, 0.0, 0.0, 0.0]


def test_write_results(tmp_path: Path) -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    image, masks = _scene()
    results = [MaskResult(masks[0], 0.93, "red circle"), MaskResult(masks[1], 0.5, "red circle", [1, 2, 3, 4])]
    other = tmp_path / "keep.txt"
    other.write_text("unrelated")
    (tmp_path / "img_mask0.png").write_bytes(b"stale")  # replaced
    prompt = {"text": "red circle", "point_coords": np.array([[10.0, 20.0]]), "point_labels": [1]}
    doc = write_results(tmp_path, "img", image, results, prompt=prompt, source="in/img.png")

    for name in ("img_mask0.png", "img_mask1.png", "img_overlay.png", "img.json"):
        assert (tmp_path / name).is_file(), name
    assert other.read_text() == "unrelated"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    on_disk = json.loads((tmp_path / "img.json").read_text())
    assert on_disk == doc
    assert doc["image"] == {"file": "in/img.png", "height": 120, "width": 160}
    assert doc["prompt"]["point_coords"] == [[10.0, 20.0]]
    assert [r["label"] for r in doc["results"]] == ["red circle", "red circle"]
    assert doc["results"][0]["score"] == pytest.approx(0.93)
    assert doc["results"][0]["box_xyxy"] == [20.0, 30.0, 50.0, 60.0]
    assert doc["results"][0]["bbox_xywh"] == [20.0, 30.0, 30.0, 30.0]
    assert doc["results"][1]["box_xyxy"] == [1.0, 2.0, 3.0, 4.0]
    for i, entry in enumerate(doc["results"]):
        seg = entry["segmentation"]
        assert isinstance(seg["counts"], str)
        decoded = mask_api.decode({"size": seg["size"], "counts": seg["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), masks[i])
        assert entry["area"] == int(masks[i].sum())
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"img_mask{i}.png")) == 255, masks[i])
    overlay = np.asarray(Image.open(tmp_path / "img_overlay.png").convert("RGB"))
    assert overlay.shape == image.shape


def test_write_results_no_masks(tmp_path: Path) -> None:
    image, _ = _scene()
    doc = write_results(tmp_path / "new", "empty", image, [], prompt={"text": "nothing"})
    assert doc["results"] == []
    assert (tmp_path / "new" / "empty_overlay.png").is_file()
