"""COCO and RefCOCO-style readers: real shared data, hand-made files, a py2-style refs pickle, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textsam import rle
from textsam.data.coco import CocoAnnotation, CocoDataset, polygons_to_mask, segmentation_to_mask
from textsam.data.refer import Ref, ReferDataset, read_refs
from textsam.errors import InputError

# pycocotools (numpy 2) warns about __array__ copy semantics inside its own decode
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _mask_bbox(m: np.ndarray) -> list[float]:
    """COCO [x, y, w, h] of a non-empty mask (pixel edges)."""
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# --------------------------------------------------------------------------- real COCO (shared data)
@pytest.fixture(scope="module")
def tiny_coco(shared_data: Path) -> CocoDataset:
    root = shared_data / "coco_val2017_tiny"
    return CocoDataset(root / "annotations" / "instances_val2017.json", root / "val2017")


@pytest.fixture(scope="module")
def pycoco(tiny_coco: CocoDataset):
    coco_api = pytest.importorskip("pycocotools.coco")
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_api.COCO(str(tiny_coco.annotation_file))


def test_coco_tiny_index(tiny_coco: CocoDataset) -> None:
    assert len(tiny_coco.images) == 50 and len(tiny_coco.annotations) == 382
    assert len(tiny_coco.categories) == 80 and tiny_coco.category_id("person") == 1
    ids = tiny_coco.image_ids()
    assert ids == sorted(ids) and len(ids) == 50
    assert sum(len(tiny_coco.anns_for_image(i, include_crowd=True)) for i in ids) == 382
    assert sum(len(tiny_coco.anns_for_image(i)) for i in ids) == 377  # 5 crowd regions left out
    assert sum(not tiny_coco.anns_for_image(i, include_crowd=True) for i in ids) == 2
    ann = tiny_coco.annotations[200887]
    assert ann.image_id == 397133 and ann.bbox == [388.66, 69.92, 109.41, 277.62]
    img = tiny_coco.load_image(397133)
    assert img.shape == (427, 640, 3) and img.dtype == np.uint8
    with pytest.raises(InputError, match="unknown category 'unicorn'"):
        tiny_coco.category_id("unicorn")


def test_coco_tiny_masks_equal_pycocotools(tiny_coco: CocoDataset, pycoco) -> None:
    from pycocotools import mask as mask_api

    kinds = set()
    for ann in tiny_coco.annotations.values():
        m = tiny_coco.mask(ann)
        info = tiny_coco.images[ann.image_id]
        assert m.shape == (info.height, info.width) and m.dtype == bool
        ref = pycoco.annToMask(pycoco.anns[ann.id]).astype(bool)
        assert np.array_equal(m, ref), ann.id
        coco_area = float(mask_api.area(pycoco.annToRLE(pycoco.anns[ann.id])))
        assert m.sum() == coco_area  # exact with pycocotools
        if not ann.iscrowd:  # a polygon's annotated area (its exact area) is close to the pixel count
            assert abs(m.sum() - ann.area) <= max(0.15 * ann.area, 8), ann.id
        kinds.add("rle" if isinstance(ann.segmentation, dict) else "polygon")
    assert kinds == {"rle", "polygon"}


def test_coco_tiny_numpy_backend(tiny_coco: CocoDataset) -> None:
    """Without pycocotools: RLE exact; polygons differ from pycocotools only on boundary pixels."""
    ious = []
    for ann in tiny_coco.annotations.values():
        m = tiny_coco.mask(ann, backend="numpy")
        try:
            ref = tiny_coco.mask(ann, backend="pycocotools")
        except InputError:
            ref = None  # no pycocotools here
        if isinstance(ann.segmentation, dict):  # uncompressed RLE (the crowd regions): exact
            assert ann.iscrowd == 1 and m.sum() == sum(ann.segmentation["counts"][1::2])
            assert ref is None or np.array_equal(m, ref)
            continue
        assert abs(m.sum() - ann.area) <= max(0.15 * ann.area, 8), ann.id
        if ref is None:
            continue
        ious.append((m & ref).sum() / max((m | ref).sum(), 1))
        bm, br = _mask_bbox(m), _mask_bbox(ref)
        assert np.abs(np.subtract(bm, br)).max() <= 2, ann.id
    if ious:
        assert np.median(ious) > 0.99 and np.mean(ious) > 0.98 and min(ious) > 0.8


# --------------------------------------------------------------------------- hand-made COCO files
def _write_coco(tmp: Path, **override) -> Path:
    (tmp / "img").mkdir(exist_ok=True)
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp / "img" / "a.png")
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp / "img" / "b.png")
    m2 = np.zeros((20, 30), bool)
    m2[5:9, 20:27] = True
    m3 = np.zeros((16, 16), bool)
    m3[2:10, 3:7] = True
    m3[12, 12] = True
    crowd = np.zeros((16, 16), bool)
    crowd[:, 14:] = True
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 20, "width": 30},
            {"id": 2, "file_name": "b.png", "height": 16, "width": 16},
            {"id": 3, "file_name": "missing.png", "height": 8, "width": 8},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 8, 6], "area": 48, "iscrowd": 0,
             "segmentation": [[2, 3, 10, 3, 10, 9, 2, 9]]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [20, 5, 7, 4], "area": 28, "iscrowd": 0,
             "segmentation": {"size": [20, 30], "counts": rle.counts_of(rle.encode(m2)).tolist()}},
            {"id": 12, "image_id": 2, "category_id": 1, "bbox": [3, 2, 10, 11], "area": 33, "iscrowd": 0,
             "segmentation": rle.encode(m3), "colour": "red"},
            {"id": 13, "image_id": 2, "category_id": 2, "bbox": [14, 0, 2, 16], "area": 32, "iscrowd": 1,
             "segmentation": rle.encode(crowd)},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }  # fmt: skip
    data.update(override)
    path = tmp / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_handmade_all_formats(tmp_path: Path) -> None:
    ds = CocoDataset(_write_coco(tmp_path), tmp_path / "img")
    poly = ds.mask(10)
    expect = np.zeros((20, 30), bool)
    expect[3:9, 2:10] = True  # pixel centres inside [2, 10] x [3, 9]
    assert np.array_equal(poly, expect)
    assert np.array_equal(ds.mask(10, backend="numpy"), expect)
    for backend in ("numpy", "auto"):
        assert ds.mask(11, backend=backend)[5:9, 20:27].all() and ds.mask(11, backend=backend).sum() == 28
        assert ds.mask(12, backend=backend).sum() == 33 and ds.mask(12, backend=backend)[12, 12]
    assert [a.id for a in ds.anns_for_image(2)] == [12]
    assert [a.id for a in ds.anns_for_image(2, include_crowd=True)] == [12, 13]
    assert ds.annotations[12].extra == {"colour": "red"}
    assert ds.category_id("dog") == 2
    assert ds.load_image(1).shape == (20, 30, 3)
    with pytest.raises(InputError, match="missing.png"):
        ds.load_image(3)
    with pytest.raises(InputError, match="annotation id 99"):
        ds.mask(99)
    ann = ds.annotations[10]
    assert isinstance(ann, CocoAnnotation) and np.array_equal(ds.mask(ann), expect)


def test_lvis_entries_find_their_image_from_coco_url(tmp_path: Path) -> None:
    """LVIS v1 images have no file_name, only coco_url: <image_dir>/<split>/<file>, or <image_dir>/<file> when
    the image folder is the split's folder."""
    images = [{"id": 1, "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg", "height": 20,
               "width": 30},
              {"id": 2, "coco_url": "http://images.cocodataset.org/train2017/000000000002.jpg", "height": 16,
               "width": 16}]
    path = _write_coco(tmp_path, images=images, annotations=[])
    for split, n, size in (("val2017", 1, (20, 30)), ("train2017", 2, (16, 16))):
        (tmp_path / "lvis" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(tmp_path / "lvis" / split / f"00000000000{n}.jpg")
    ds = CocoDataset(path, tmp_path / "lvis")
    assert ds.images[1].file_name == "val2017/000000000001.jpg" and ds.load_image(2).shape == (16, 16, 3)
    split_dir = CocoDataset(path, tmp_path / "lvis" / "val2017")  # as `eval instances --split val` opens it
    assert split_dir.images[1].path == tmp_path / "lvis" / "val2017" / "000000000001.jpg"
    assert split_dir.load_image(1).shape == (20, 30, 3)
    assert split_dir.load_image(2).shape == (16, 16, 3)  # LVIS val also draws from train2017


def test_polygon_rasteriser_rules() -> None:
    tri = polygons_to_mask([[0, 0, 8, 0, 0, 8]], 8, 8)
    yy, xx = np.mgrid[0:8, 0:8] + 0.5
    assert np.array_equal(tri, xx + yy < 8)  # centres strictly below the diagonal (none lie on it)
    assert not polygons_to_mask([[-5, -5, -1, -5, -1, -1]], 4, 4).any()  # outside the image
    assert polygons_to_mask([[-5, -5, 50, -5, 50, 50, -5, 50]], 4, 4).all()
    with pytest.raises(InputError, match="at least 3"):
        segmentation_to_mask([[1, 2, 3, 4]], 4, 4, backend="numpy")
    with pytest.raises(InputError, match="does not match"):
        segmentation_to_mask(rle.encode(np.zeros((3, 3), bool)), 4, 4)
    with pytest.raises(InputError, match="backend"):
        segmentation_to_mask([], 4, 4, backend="opencv")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"images": [], "annotations": []}), r"missing the COCO key\(s\) \['categories'\]"),
        (
            json.dumps({"images": [], "categories": [{"id": 1, "name": "a"}],
                        "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "segmentation": []}]}),
            "points to image 5",
        ),
        (
            json.dumps({"images": [{"id": 5, "file_name": "x.png", "height": 2, "width": 2}], "categories": [],
                        "annotations": [{"id": 1, "image_id": 5, "category_id": 7, "segmentation": []}]}),
            "category 7",
        ),
    ],
)  # fmt: skip
def test_coco_malformed(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        CocoDataset(path, tmp_path)
    assert "bad.json" in str(err.value)


def test_coco_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        CocoDataset(tmp_path / "nope.json", tmp_path)


# --------------------------------------------------------------------------- refs: real shared data
def test_refcocos_tiny(shared_data: Path) -> None:
    root = shared_data / "refcocos_on_coco_tiny"
    ds = ReferDataset(root / "refs.json", root / "instances.json", root / "images")
    assert len(ds.refs) == 8 and ds.splits() == ["test"]
    exprs = ds.expressions()
    assert len(exprs) == 8 and exprs[0][1] == 0 and exprs[0][2] == exprs[0][0].sentences[0]
    assert ds.expressions("val") == []
    raw = {r["ref_id"]: r for r in json.loads((root / "refs.json").read_text())}
    for ref in ds.refs:
        assert isinstance(ref, Ref) and len(ref.ann_ids) == 1 and ref.ann_ids[0] == raw[ref.ref_id]["ann_id"]
        m = ds.target_mask(ref)
        assert np.array_equal(m, ds.coco.mask(ref.ann_ids[0]))
        x, y, w, h = ref.extra["bbox"]
        mx, my, mw, mh = _mask_bbox(m)  # pixel edges of the rasterised mask vs the float box
        assert (
            abs(mx - x) <= 1 and abs(my - y) <= 1 and abs(mx + mw - x - w) <= 1 and abs(my + mh - y - h) <= 1
        )
        assert ds.coco.annotations[ref.ann_ids[0]].category_id == ref.category_id
    assert ds.load_image(ds.refs[0]).shape[2] == 3
    with pytest.raises(InputError, match="no refs in split 'train'"):
        ReferDataset(root / "refs.json", root / "instances.json", root / "images", split="train")


# --------------------------------------------------------------------------- refs: pickles and JSON
def _py2_pickle(obj: object) -> bytes:
    """Protocol-2 bytes as Python 2 writes them: ``str`` as 8-bit BINSTRING, not unicode."""
    out = bytearray(b"\x80\x02")

    def put(o: object) -> None:
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, str):
            b = o.encode("latin1")
            out.extend((b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b)
        elif isinstance(o, list):
            out.extend(b"](")
            for x in o:
                put(x)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            out.extend(b"u")
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


def _refcoco_refs() -> list[dict]:
    def sents(*texts: str, start: int) -> list[dict]:
        return [
            {"tokens": t.split(), "raw": t, "sent_id": start + i, "sent": t} for i, t in enumerate(texts)
        ]  # fmt: skip

    return [
        {"image_id": 1, "split": "train", "sentences": sents("left cat", "the café cat", start=0),
         "file_name": "COCO_train2014_000000000001_10.jpg", "category_id": 1, "ann_id": 10, "sent_ids": [0, 1],
         "ref_id": 0},
        {"image_id": 1, "split": "testA", "sentences": sents("both animals", start=2), "file_name": "a.png",
         "category_id": 1, "ann_id": [10, 11], "sent_ids": [2], "ref_id": 1},
        {"image_id": 2, "split": "testA", "sentences": sents("the unicorn", start=3), "file_name": "b.png",
         "category_id": 1, "ann_id": [-1], "sent_ids": [3], "ref_id": 2},
        {"image_id": 2, "split": "val", "sentences": sents("red thing", "small one", start=4), "file_name": "b.png",
         "ann_id": 12, "sent_ids": [4, 5], "ref_id": 3},
    ]  # fmt: skip


def test_refer_py2_pickle(tmp_path: Path) -> None:
    inst = _write_coco(tmp_path)
    refs_file = tmp_path / "refs(unc).p"
    refs_file.write_bytes(_py2_pickle(_refcoco_refs()))
    ds = ReferDataset(refs_file, inst, tmp_path / "img")
    assert [r.ann_ids for r in ds.refs] == [[10], [10, 11], [], [12]]
    assert ds.refs[0].sentences == ["left cat", "the café cat"]  # latin-1 bytes decoded
    assert ds.refs[3].category_id == 1  # taken from the annotation when the ref has none
    assert ds.refs[0].extra["file_name"].startswith("COCO_train2014")
    assert ds.splits() == ["testA", "train", "val"]
    assert np.array_equal(ds.target_mask(ds.refs[1]), ds.coco.mask(10) | ds.coco.mask(11))
    assert not ds.target_mask(2).any() and ds.target_mask(2).shape == (16, 16)
    assert [(r.ref_id, i, s) for r, i, s in ds.expressions("testA")] == [
        (1, 0, "both animals"),
        (2, 0, "the unicorn"),
    ]
    assert len(ds.expressions()) == 6
    only = ReferDataset(refs_file, inst, tmp_path / "img", split="val")
    assert [r.ref_id for r in only.refs] == [3] and only.splits() == ["val"]


def test_refer_py3_pickle_and_json(tmp_path: Path) -> None:
    inst = _write_coco(tmp_path)
    p3 = tmp_path / "refs(google).p"
    p3.write_bytes(pickle.dumps(_refcoco_refs(), protocol=4))
    js = tmp_path / "refs.json"
    js.write_text(json.dumps([{**r, "ann_ids": [11]} if r["ref_id"] == 0 else r for r in _refcoco_refs()]))
    a, b = ReferDataset(p3, inst, tmp_path / "img"), ReferDataset(js, inst, tmp_path / "img")
    assert [r.ann_ids for r in a.refs] == [[10], [10, 11], [], [12]]
    assert b.refs[0].ann_ids == [11]  # "ann_ids" wins over "ann_id"
    assert read_refs(p3) == _refcoco_refs()


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (pickle.dumps([_Evil()]), "references .*getcwd"),
        (pickle.dumps({"refs": []}), "list of ref dicts"),
        (pickle.dumps([1, 2]), r"refs\[0\] is a int"),
        (b"not a pickle at all", "cannot read"),
    ],
)
def test_refer_bad_pickles(tmp_path: Path, payload: bytes, message: str) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(payload)
    with pytest.raises(InputError, match=message) as err:
        read_refs(path)
    assert "refs(unc).p" in str(err.value)


def test_refer_bad_refs(tmp_path: Path) -> None:
    inst = _write_coco(tmp_path)
    bad = tmp_path / "refs.json"
    cases = [
        ([{"ref_id": 0, "image_id": 1, "ann_id": 99, "sentences": []}], "annotation 99"),
        ([{"ref_id": 0, "image_id": 1, "ann_id": 12, "sentences": []}], "annotation 12 is on image 2"),
        ([{"ref_id": 0, "image_id": 7, "ann_id": 10, "sentences": []}], "image 7"),
        ([{"ref_id": 0, "image_id": 1, "sentences": []}], "neither 'ann_ids' nor 'ann_id'"),
        ([{"image_id": 1, "ann_id": 10}], "no 'ref_id'"),
        ([{"ref_id": 0, "image_id": 1, "ann_id": 10, "sentences": [3]}], "sentence"),
    ]
    for refs, message in cases:
        bad.write_text(json.dumps(refs))
        with pytest.raises(InputError, match=message):
            ReferDataset(bad, inst, tmp_path / "img")
    bad.write_text("{")
    with pytest.raises(InputError, match="not a valid JSON"):
        ReferDataset(bad, inst, tmp_path / "img")
    with pytest.raises(InputError, match="not found"):
        ReferDataset(tmp_path / "none.p", inst, tmp_path / "img")
