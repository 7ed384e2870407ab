"""The labeller's YOLO-seg, Label Studio, PNG-mask and review outputs, read back with the field's libraries."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from textsam import rle
from textsam.label.labelstudio import CONFIG_FILE, TASKS_FILE, write_labelstudio
from textsam.label.pngmasks import write_masks
from textsam.label.review import write_review
from textsam.label.types import Instance, LabeledImage
from textsam.label.yolo import write_yolo

sv = pytest.importorskip("supervision")
brush = pytest.importorskip("label_studio_sdk.converter.brush")
mask_utils = pytest.importorskip("pycocotools.mask")

CLASSES = ["square", "disc", "triangle"]
H, W = 72, 96


def _mask(draw) -> np.ndarray:
    canvas = np.zeros((H, W), np.uint8)
    draw(canvas)
    return canvas.astype(bool)


def _instance(category: str, mask: np.ndarray, score: float) -> Instance:
    r = rle.encode(mask)
    return Instance(category, f"a {category}", r, score, 0.9, tuple(rle.to_bbox(r)))


def _scene(tmp_path: Path) -> tuple[list[LabeledImage], Path, dict[str, list[np.ndarray]]]:
    """Three images under ``root``: two shapes apart, an overlapping pair, none at all."""
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / name)
    square = _mask(lambda c: cv2.rectangle(c, (5, 6), (30, 28), 1, -1))
    disc = _mask(lambda c: cv2.circle(c, (65, 40), 18, 1, -1))
    tri = _mask(lambda c: cv2.fillPoly(c, [np.array([[10, 65], [50, 35], [60, 68]], np.int32)], 1))
    disc2 = _mask(lambda c: cv2.circle(c, (45, 50), 16, 1, -1))  # overlaps the triangle
    masks = {"a.png": [square, disc], "sub/b.png": [tri, disc2], "c.png": []}
    images = [
        LabeledImage("a.png", W, H, (_instance("square", square, 0.95), _instance("disc", disc, 0.8)), 1),
        LabeledImage("sub/b.png", W, H, (_instance("triangle", tri, 0.7), _instance("disc", disc2, 0.9)), 2),
        LabeledImage("c.png", W, H, (), 3),
    ]
    return images, root, masks


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def _digests(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


WRITERS = [write_yolo, write_labelstudio, write_masks, write_review]


@pytest.mark.parametrize("writer", WRITERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("polygons", [False, True])
def test_writing_twice_gives_identical_files(tmp_path, writer, polygons):
    images, root, _ = _scene(tmp_path)
    out = tmp_path / "out"
    first = writer(images, CLASSES, out, polygons=polygons, image_root=root)
    assert first and all(p.is_file() for p in first)
    before = _digests(first)
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    second = writer(images, CLASSES, out, polygons=polygons, image_root=root)
    assert second == first and _digests(second) == before
    assert {p: p.stat().st_mtime_ns for p in second} == mtimes  # unchanged files are not rewritten
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_yolo_round_trip_through_supervision(tmp_path):
    images, root, masks = _scene(tmp_path)
    out = tmp_path / "yolo"
    write_yolo(images, CLASSES, out, image_root=root)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.png", "c.png", "sub__b.png"]
    assert (out / "labels" / "c.txt").read_text() == ""  # an image without instances: an empty label file
    data = (out / "data.yaml").read_text()
    assert "train: images" in data and f"path: {out.resolve()}" in data
    ds = sv.DetectionDataset.from_yolo(
        images_directory_path=str(out / "images"), annotations_directory_path=str(out / "labels"),
        data_yaml_path=str(out / "data.yaml"), force_masks=True,
    )
    assert ds.classes == CLASSES
    by_name = {Path(p).name: det for p, _, det in ds}
    for im, name in zip(images, ["a.png", "sub__b.png", "c.png"]):
        det = by_name[name]
        assert len(det) == len(im.instances)
        for k, inst in enumerate(im.instances):
            got = det.mask[k]
            assert CLASSES[int(det.class_id[k])] == inst.category
            assert _iou(got, masks[im.file][k]) >= 0.98
            # ... and against the same instance as pycocotools decodes its COCO RLE
            coco = mask_utils.decode({"size": inst.rle["size"], "counts": inst.rle["counts"].encode()}).astype(bool)
            assert _iou(got, coco) >= 0.98
    line = (out / "labels" / "a.txt").read_text().splitlines()[0].split()
    assert line[0] == "0" and len(line) % 2 == 1 and all(0.0 <= float(v) <= 1.0 for v in line[1:])


def _ls_interface(out: Path):
    from label_studio_sdk.label_interface import LabelInterface

    li = LabelInterface((out / CONFIG_FILE).read_text())
    li.validate()  # the config passes the SDK's schema checks
    return li


def test_labelstudio_brush_tasks_decode_exactly(tmp_path):
    images, root, masks = _scene(tmp_path)
    out = tmp_path / "ls"
    write_labelstudio(images, CLASSES, out, image_root=root)
    li = _ls_interface(out)
    assert li.get_control("label").labels == CLASSES and li.get_control("label").tag == "BrushLabels"
    tasks = json.loads((out / TASKS_FILE).read_text())
    assert len(tasks) == 3
    assert tasks[1]["data"]["image"] == "/data/local-files/?d=sub/b.png"
    for task, im in zip(tasks, images):
        (pred,) = task["predictions"]
        assert li.validate_prediction(pred, return_errors=True) == []
        assert len(pred["result"]) == len(im.instances)
        for region, inst, mask in zip(pred["result"], im.instances, masks[im.file]):
            assert region["value"]["brushlabels"] == [inst.category]
            assert region["score"] == pytest.approx(inst.score)
            decoded = brush.decode_rle(region["value"]["rle"]).reshape(H, W, 4)[:, :, 3]
            np.testing.assert_array_equal(decoded > 0, mask)
        # the SDK's annotation decoder reads the regions too (it takes the flat annotation-export form)
        flat = [{"type": r["type"], "rle": r["value"]["rle"], "brushlabels": r["value"]["brushlabels"],
                 "original_width": W, "original_height": H} for r in pred["result"]]
        layers = brush.decode_from_annotation("label", flat)
        assert len(layers) == len(im.instances)
    assert tasks[2]["predictions"][0]["result"] == [] and "score" not in tasks[2]["predictions"][0]


def test_labelstudio_polygon_tasks(tmp_path):
    images, root, masks = _scene(tmp_path)
    out = tmp_path / "lsp"
    write_labelstudio(images, CLASSES, out, polygons=True, image_root=root)
    li = _ls_interface(out)
    assert li.get_control("label").tag == "PolygonLabels"
    tasks = json.loads((out / TASKS_FILE).read_text())
    for task, im in zip(tasks, images):
        (pred,) = task["predictions"]
        assert li.validate_prediction(pred, return_errors=True) == []
        for region, inst, mask in zip(pred["result"], im.instances, masks[im.file]):
            assert region["type"] == "polygonlabels" and region["value"]["polygonlabels"] == [inst.category]
            pts = np.asarray(region["value"]["points"]) / 100.0 * np.array([W, H])
            got = sv.polygon_to_mask(np.round(pts).astype(np.int32), (W, H)).astype(bool)
            assert _iou(got, mask) >= 0.98
    # a class the config does not list fails the SDK's check: the validation is not vacuous
    bad = json.loads(json.dumps(tasks[0]["predictions"][0]))
    bad["result"][0]["value"]["polygonlabels"] = ["hexagon"]
    assert li.validate_prediction(bad, return_errors=True)


def test_png_masks_read_back(tmp_path):
    images, root, masks = _scene(tmp_path)
    out = tmp_path / "masks"
    write_masks(images, CLASSES, out, image_root=root)
    legend = json.loads((out / "legend.json").read_text())
    assert [c["name"] for c in legend["classes"]] == CLASSES and [c["index"] for c in legend["classes"]] == [1, 2, 3]
    # a: apart, so both maps equal the masks exactly
    inst_a = np.asarray(Image.open(out / "instances" / "a.png"))
    cls_png = Image.open(out / "classes" / "a.png")
    assert cls_png.mode == "P" and cls_png.getpalette()[3:6] == legend["classes"][0]["colour"]
    cls_a = np.asarray(cls_png)
    square, disc = masks["a.png"]
    expected = np.zeros((H, W), np.uint8)
    expected[square], expected[disc] = 1, 2
    np.testing.assert_array_equal(inst_a, expected)
    expected_cls = np.zeros((H, W), np.uint8)
    expected_cls[square], expected_cls[disc] = 1, 2  # square is class 0, disc class 1
    np.testing.assert_array_equal(cls_a, expected_cls)
    # b: the disc (0.9) overlaps the triangle (0.7): the higher score wins the shared pixels
    tri, disc2 = masks["sub/b.png"]
    inst_b = np.asarray(Image.open(out / "instances" / "sub__b.png"))
    cls_b = np.asarray(Image.open(out / "classes" / "sub__b.png"))
    assert (tri & disc2).any()
    assert (inst_b[disc2] == 2).all() and (inst_b[tri & ~disc2] == 1).all() and (inst_b[~(tri | disc2)] == 0).all()
    assert (cls_b[disc2] == 2).all() and (cls_b[tri & ~disc2] == 3).all()
    # c: no instance
    assert not np.asarray(Image.open(out / "instances" / "c.png")).any()
    table = json.loads((out / "instances.json").read_text())
    assert table[1]["instances"][1] == {"index": 2, "category": "disc", "phrase": "a disc", "score": 0.9,
                                        "presence": 0.9}


def test_png_masks_sixteen_bit_beyond_255_instances(tmp_path):
    n = 300
    masks = []
    for i in range(n):
        m = np.zeros((20, 20), bool)
        m.flat[i] = True
        masks.append(m)
    image = LabeledImage("x.png", 20, 20, tuple(_instance("square", m, 0.5) for m in masks))
    write_masks([image], CLASSES, tmp_path)
    inst = np.asarray(Image.open(tmp_path / "instances" / "x.png"))
    assert inst.dtype == np.uint16 and inst.max() == n
    assert inst.flat[299] == 300 and inst.flat[0] == 1


def test_review_page_lists_every_overlay(tmp_path):
    images, root, masks = _scene(tmp_path)
    out = tmp_path / "rev"
    written = write_review(images, CLASSES, out, image_root=root)
    page = (out / "review" / "index.html").read_text()
    overlays = [p for p in written if p.suffix == ".png"]
    assert len(overlays) == 3
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted(p.name for p in overlays) and all((out / "review" / s).is_file() for s in srcs)
    assert "<script" not in page and "no instance" in page
    assert re.search(r"<td>.*disc</td><td>2</td><td>2</td>", page)  # class counts: 2 discs in 2 images
    src = np.asarray(Image.open(root / "a.png").convert("RGB"))
    drawn = np.asarray(Image.open(out / "review" / "a.png"))
    assert drawn.shape == src.shape
    outside = ~(masks["a.png"][0] | masks["a.png"][1])
    outside[:22, :] = False  # the tags sit above each mask's box (the disc's starts at y = 22)
    np.testing.assert_array_equal(drawn[outside], src[outside])
    assert (drawn[masks["a.png"][1]] != src[masks["a.png"][1]]).any()


def test_unknown_class_is_refused(tmp_path):
    images, root, _ = _scene(tmp_path)
    with pytest.raises(ValueError, match="not in the categories"):
        write_masks(images, ["square"], tmp_path / "x", image_root=root)


def test_labelstudio_converter_reads_polygon_tasks(tmp_path, monkeypatch):
    """label-studio-sdk's own Converter turns the tasks (predictions accepted as annotations, as Label Studio
    exports them) into COCO, resolving the local-files URLs against the document root, and pycocotools reads it."""
    from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io
    from label_studio_sdk.converter import Converter
    from pycocotools.coco import COCO

    images, root, masks = _scene(tmp_path)
    out = tmp_path / "lsc"
    write_labelstudio(images, CLASSES, out, polygons=True, image_root=root)
    tasks = json.loads((out / TASKS_FILE).read_text())
    export = [{"id": i + 1, "data": t["data"], "annotations": [{"id": i + 1, "result": t["predictions"][0]["result"]}]}
              for i, t in enumerate(tasks)]
    (out / "export.json").write_text(json.dumps(export))
    monkeypatch.setattr(ls_io, "LOCAL_FILES_DOCUMENT_ROOT", str(root))  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    conv = Converter((out / CONFIG_FILE).read_text(), project_dir=str(out), download_resources=False)
    conv.convert(str(out / "export.json"), str(out / "coco"), "COCO", is_dir=False)
    coco = COCO(str(out / "coco" / "result.json"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert sorted(names.values()) == sorted(CLASSES)
    assert [(im["width"], im["height"]) for im in coco.loadImgs(coco.getImgIds())] == [(W, H)] * 3
    for img_id, im in zip(sorted(coco.getImgIds()), images):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        assert [names[a["category_id"]] for a in anns] == [inst.category for inst in im.instances]
        for a, mask in zip(anns, masks[im.file]):
            # pycocotools fills a polygon through boundary-pixel indices to about half of those pixels:
            # close to, not at, the 0.98 that the pixel-index fill reaches on these small shapes
            assert _iou(coco.annToMask(a).astype(bool), mask) >= 0.85
