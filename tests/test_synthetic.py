"""Synthetic shapes data: determinism, held-out pairs, phrase semantics, exact visible masks, readers."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textsam import rle
from textsam.data.coco import CocoDataset
from textsam.data.refer import ReferDataset
from textsam.data.shapes_render import COLOURS, SHAPES, SceneObject, render_shape
from textsam.data.synthetic import SPLITS, generate, object_crops, split_pairs
from textsam.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = {"seed": 3, "num_train": 24, "num_val": 8, "num_test": 8, "image_size": 96}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth_a")
    generate(root, **SMALL)
    return root


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _load(root: Path, split: str) -> tuple[dict, list[dict]]:
    inst = json.loads((root / split / "instances.json").read_text())
    refs = json.loads((root / split / "refs.json").read_text())
    return inst, refs


def test_deterministic_and_worker_independent(synth: Path, tmp_path: Path) -> None:
    meta = generate(tmp_path, workers=2, **SMALL)
    a, b = _hashes(synth), _hashes(tmp_path)
    assert a == b and len(a) == 3 * 3 + 1 + 40  # per split: instances, refs, absent phrases
    assert meta == json.loads((synth / "meta.json").read_text())
    other = tmp_path / "other"
    generate(other, **{**SMALL, "seed": 4})
    assert _hashes(other) != a


def test_meta_and_layout(synth: Path) -> None:
    meta = json.loads((synth / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["image_size"] == 96 and meta["version"]
    assert {k: v["images"] for k, v in meta["counts"].items()} == {"train": 24, "val": 8, "test": 8}
    assert set(meta["vocab"]["shapes"]) == set(SHAPES) and len(SHAPES) >= 5 and len(COLOURS) >= 6
    for split in SPLITS:
        inst, refs = _load(synth, split)
        assert meta["counts"][split]["annotations"] == len(inst["annotations"])
        assert meta["counts"][split]["refs"] == len(refs)
        for im in inst["images"]:
            with Image.open(synth / split / "images" / im["file_name"]) as pil:
                assert pil.mode == "RGB" and pil.size == (96, 96) and pil.format == "PNG"
        per_image = np.bincount([a["image_id"] for a in inst["annotations"]])
        counts = per_image[[im["id"] for im in inst["images"]]]
        assert counts.min() >= 2 and counts.max() <= 6


def test_held_out_pairs_never_seen(synth: Path) -> None:
    meta = json.loads((synth / "meta.json").read_text())
    held = {tuple(p) for p in meta["held_out_pairs"]}
    seen, held2 = split_pairs(3)
    assert held == set(held2) and held.isdisjoint(seen)
    assert len(held) == round(0.2 * len(SHAPES) * len(COLOURS))
    assert {s for _, s in seen} == set(SHAPES) and {c for c, _ in seen} == set(COLOURS)
    pairs = {s: {(a["colour"], a["shape"]) for a in _load(synth, s)[0]["annotations"]} for s in SPLITS}
    assert pairs["test"] and pairs["test"] <= held
    assert pairs["train"] | pairs["val"] <= set(seen)
    assert split_pairs(3) == split_pairs(3) and split_pairs(3) != split_pairs(5)


# --------------------------------------------------------------------------- phrase semantics
_DIRECTION = {
    "leftmost": (0, 1), "left": (0, 1), "rightmost": (0, -1), "right": (0, -1),
    "topmost": (1, 1), "upper": (1, 1), "bottommost": (1, -1), "lower": (1, -1),
}  # fmt: skip
_FILLER = {"the", "all", "every", "on", "shape", "shapes", "object", "objects"}


def _parse(sentence: str) -> tuple[dict[str, str], tuple[int, int] | None]:
    """Attribute constraints and an optional (axis, sign) of a phrase; fails on any unknown word."""
    plural = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}
    desc: dict[str, str] = {}
    direction = None
    for tok in sentence.split():
        if tok in ("small", "large"):
            desc["size"] = tok
        elif tok in COLOURS:
            desc["colour"] = tok
        elif tok in SHAPES or tok in plural:
            desc["shape"] = plural.get(tok, tok)
        elif tok in _DIRECTION:
            direction = _DIRECTION[tok]
        else:
            assert tok in _FILLER, f"unknown word {tok!r} in {sentence!r}"
    return desc, direction


def test_phrases_identify_their_targets(synth: Path) -> None:
    meta = json.loads((synth / "meta.json").read_text())
    margin = meta["spatial_margin"] * meta["image_size"]
    kinds = set()
    for split in SPLITS:
        inst, refs = _load(synth, split)
        anns = {a["id"]: a for a in inst["annotations"]}
        by_image: dict[int, list[dict]] = {}
        for a in inst["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for ref in refs:
            kinds.add(ref["kind"])
            targets = ref["ann_ids"]
            assert targets and all(t in anns and anns[t]["image_id"] == ref["image_id"] for t in targets)
            assert ref["ann_id"] == (targets[0] if len(targets) == 1 else targets)
            assert (
                ref["split"] == split
                and ref["sentences"]
                and ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
            )
            objs = by_image[ref["image_id"]]
            for sent in ref["sentences"]:
                assert sent["sent"] == sent["raw"] and sent["tokens"] == sent["sent"].split()
                desc, direction = _parse(sent["sent"])
                group = [o for o in objs if all(o[k] == v for k, v in desc.items())]
                ids = sorted(o["id"] for o in group)
                if ref["kind"] == "attribute":
                    assert direction is None and ids == targets, sent["sent"]
                elif ref["kind"] == "category":
                    assert direction is None and len(ids) >= 2 and ids == sorted(targets), sent["sent"]
                    assert sent["sent"].startswith(("all ", "every "))
                else:
                    assert ref["kind"] == "spatial" and direction is not None and len(targets) == 1
                    axis, sign = direction
                    (target,) = targets
                    assert len(group) >= 2 and target in ids, sent["sent"]
                    lead = [sign * (o["position"][axis] - anns[target]["position"][axis]) for o in group]
                    assert all(d >= margin for o, d in zip(group, lead) if o["id"] != target), sent["sent"]
                    if sent["sent"].split()[1] not in ("leftmost", "rightmost", "topmost", "bottommost"):
                        assert len(group) == 2, sent["sent"]  # "the star on the left" only for pairs
    assert kinds == {"attribute", "category", "spatial"}


# --------------------------------------------------------------------------- masks
def _grow(m: np.ndarray) -> np.ndarray:
    """8-neighbour dilation by one pixel."""
    p = np.pad(m, 1)
    h, w = m.shape
    return np.logical_or.reduce(
        [p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    )


def test_masks_are_exact_visible_parts(synth: Path) -> None:
    meta = json.loads((synth / "meta.json").read_text())
    size = meta["image_size"]
    for split in SPLITS:
        inst, _ = _load(synth, split)
        for im in inst["images"]:
            pixels = np.asarray(Image.open(synth / split / "images" / im["file_name"]))
            anns = sorted((a for a in inst["annotations"] if a["image_id"] == im["id"]), key=lambda a: a["z"])
            full = [
                render_shape(SceneObject(a["shape"], a["colour"], a["size"], tuple(a["rgb"]), *a["center"],
                                         a["radius"], a["angle"]), size, size)
                for a in anns
            ]  # fmt: skip
            cover = np.zeros((size, size), bool)
            for a, f in zip(reversed(anns), reversed(full)):
                visible = f & ~cover
                cover |= f
                stored = rle.decode(a["segmentation"])
                assert np.array_equal(stored, visible), a["id"]
                assert isinstance(a["segmentation"]["counts"], str)  # compressed RLE
                assert (pixels[stored] == a["rgb"]).all()  # the painted colour, on every mask pixel
                assert a["area"] == rle.area(a["segmentation"]) == stored.sum()
                assert a["bbox"] == rle.to_bbox(a["segmentation"]) and a["iscrowd"] == 0
                assert a["visible_fraction"] >= 0.4 and stored.sum() >= meta["min_pixels"]
                assert np.abs(np.array(a["rgb"]) - COLOURS[a["colour"]]).max() <= 10
                ys, xs = np.nonzero(stored)
                assert a["position"] == [round(float(xs.mean()) + 0.5, 2), round(float(ys.mean()) + 0.5, 2)]
                assert inst["categories"][a["category_id"] - 1]["name"] == a["shape"]
            for i, a in enumerate(anns):  # objects of one colour never touch (they would look like one)
                grown = _grow(rle.decode(a["segmentation"]))
                for b in anns[i + 1 :]:
                    if b["colour"] == a["colour"]:
                        assert not (grown & rle.decode(b["segmentation"])).any(), (a["id"], b["id"])


def test_readers_load_the_output(synth: Path) -> None:
    try:
        from pycocotools.coco import COCO
    except ImportError:
        COCO = None  # our readers are still checked
    for split in SPLITS:
        base = synth / split
        ds = CocoDataset(base / "instances.json", base / "images")
        if COCO is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                pc = COCO(str(base / "instances.json"))
            assert sorted(pc.getImgIds()) == ds.image_ids() and len(pc.anns) == len(ds.annotations)
            for aid, ann in ds.annotations.items():
                assert np.array_equal(pc.annToMask(pc.anns[aid]).astype(bool), ds.mask(ann))
        for ann in ds.annotations.values():
            assert np.array_equal(ds.mask(ann, backend="numpy"), rle.decode(ann.segmentation))
            assert ds.mask(ann).sum() == ann.area
            assert ann.extra["colour"] in COLOURS
        assert ds.load_image(ds.image_ids()[0]).shape == (96, 96, 3)
        refer = ReferDataset(base / "refs.json", base / "instances.json", base / "images", split=split)
        raw = json.loads((base / "refs.json").read_text())
        assert len(refer.expressions()) == sum(len(r["sentences"]) for r in raw)
        for ref in refer.refs[:20]:
            union = np.zeros((96, 96), bool)
            for a in ref.ann_ids:
                union |= ds.mask(a)
            assert np.array_equal(refer.target_mask(ref), union) and ref.extra["kind"] in (
                "attribute",
                "category",
                "spatial",
            )


def test_object_crops(synth: Path) -> None:
    crops = object_crops(synth, "val", size=32)
    inst, _ = _load(synth, "val")
    assert len(crops) == len(inst["annotations"])
    for (crop, phrase), ann in zip(crops, inst["annotations"]):
        assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
        assert phrase == f"a {ann['size']} {ann['colour']} {ann['shape']}"
    assert len(object_crops(synth, "train", limit=5)) == 5
    with pytest.raises(InputError, match="split"):
        object_crops(synth, "dev")


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="num_train"):
        generate(tmp_path, num_train=-1)
    with pytest.raises(InputError, match="image_size"):
        generate(tmp_path, image_size=8)
    with pytest.raises(InputError, match="holdout_fraction"):
        generate(tmp_path, holdout_fraction=1.5)
