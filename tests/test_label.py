"""`textsam label` and `textsam.label`: the COCO dataset, the per-image store (resume after a kill, a rerun that
changes nothing, shards + merge equal to one run), the ontology, bad input.

The bundled shapes_tiny labels three small images (the example image, its mirror and a crop). Its answers are
computed once per image for the whole module (the store tests then run the labeller's own code around the same
answers), so the module stays fast on a small CPU.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from textsam import rle
from textsam.cli import main
from textsam.errors import InputError

from .tiny import label_images

CLASSES = "circle,square"
_MODEL: dict = {}
_ANSWERS: dict = {}
CALLS: list[str] = []


def _share(monkeypatch: pytest.MonkeyPatch) -> None:
    """shapes_tiny built once; each image's answer computed once (keyed by its pixels, phrases and mode)."""
    import textsam
    import textsam.label.run as run

    real_create, real_label_image = textsam.create_model, run.label_image

    def create_model(name: str, **kwargs):
        key = (name, kwargs.get("text_head"))
        if key not in _MODEL:
            _MODEL[key] = real_create(name, **kwargs)
        return _MODEL[key]

    def label_image(predictor, image, phrases, *, instances="all", negative_text=None):
        arr = np.asarray(image)
        key = (hashlib.sha256(arr.tobytes()).hexdigest(), arr.shape, tuple(phrases), instances,
               predictor.model.text_projector is None, negative_text)
        CALLS.append(key[0])
        if key not in _ANSWERS:
            _ANSWERS[key] = real_label_image(predictor, image, phrases, instances=instances,
                                             negative_text=negative_text)
        return json.loads(json.dumps(_ANSWERS[key]))

    monkeypatch.setattr(textsam, "create_model", create_model)
    monkeypatch.setattr(run, "label_image", label_image)


@pytest.fixture(autouse=True)
def _shared_model_and_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    _share(monkeypatch)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three images, one in a subfolder."""
    return label_images(tmp_path_factory.mktemp("label_in") / "imgs")


def _label(*argv: object, capsys: pytest.CaptureFixture[str] | None = None) -> int:
    code = main(["label", *map(str, argv), "--model", "shapes_tiny", "--no-progress"])
    if capsys is not None:
        assert "Traceback" not in capsys.readouterr().err
    return code


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dataset(folder: Path) -> dict[str, bytes]:
    """The dataset files and the store's records (run.json and outputs.json name the shard and differ)."""
    return {k: v for k, v in _files(folder).items() if not k.endswith(("run.json", "outputs.json"))}


@pytest.fixture(scope="module")
def reference(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run into a fresh folder."""
    out = tmp_path_factory.mktemp("label_ref") / "out"
    with pytest.MonkeyPatch.context() as mp:
        _share(mp)
        assert _label(images, "--classes", CLASSES, "-o", out) == 0
    return out


def test_cli_writes_a_coco_dataset_that_pycocotools_reads(reference: Path, images: Path) -> None:
    from pycocotools.coco import COCO

    doc = json.loads((reference / "instances.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == ["a.png", "b.png", "sub/c.png"]
    assert [im["id"] for im in doc["images"]] == [1, 2, 3]
    assert doc["categories"] == [{"id": 1, "name": "circle", "supercategory": "object"},
                                 {"id": 2, "name": "square", "supercategory": "object"}]
    assert doc["annotations"], "shapes_tiny finds circles and squares on the example image"
    assert [a["id"] for a in doc["annotations"]] == list(range(1, len(doc["annotations"]) + 1))
    assert json.loads((reference / "skipped.json").read_text()) == []
    coco = COCO(str(reference / "instances.json"))
    for a in doc["annotations"]:
        mask = coco.annToMask(coco.loadAnns(a["id"])[0]).astype(bool)
        assert (mask == rle.decode(a["segmentation"])).all()
        assert a["area"] == int(mask.sum()) and a["bbox"] == rle.to_bbox(a["segmentation"])
        assert 0 <= a["score"] <= 1 and 0 <= a["presence"] <= 1
        assert a["phrase"] == ["circle", "square"][a["category_id"] - 1]
    # the Python API gives the same instances, and its writer the same annotations
    import textsam

    labelled = textsam.label(images, CLASSES, model="shapes_tiny")
    assert [im.file for im in labelled] == [str(images / f) for f in ("a.png", "b.png", "sub/c.png")]
    out = textsam.label.write_coco(labelled, ["circle", "square"], reference.parent / "api")
    assert json.loads(out[0].read_text())["annotations"] == doc["annotations"]


def test_resume_after_a_kill_gives_the_same_bytes(reference: Path, images: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import textsam.label.run as run

    answer = run.label_image
    calls = []

    def dies_on_the_second_image(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return answer(*args, **kwargs)

    monkeypatch.setattr(run, "label_image", dies_on_the_second_image)
    out = tmp_path / "out"
    assert _label(images, "--classes", CLASSES, "-o", out) == 130
    assert len(list((out / ".textsam-label" / "images").glob("*.json"))) == 1
    assert not (out / "instances.json").exists()
    monkeypatch.setattr(run, "label_image", answer)
    CALLS.clear()
    assert _label(images, "--classes", CLASSES, "-o", out) == 0
    assert len(CALLS) == 2, "only the two images not done are labelled again"
    assert _files(out) == _files(reference)


def test_a_finished_run_again_changes_no_file(reference: Path, images: Path) -> None:
    def state() -> dict[str, tuple[bytes, int]]:
        return {p.as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in reference.rglob("*") if p.is_file()}

    before, folder_mtime = state(), reference.stat().st_mtime_ns
    CALLS.clear()
    assert _label(images, "--classes", CLASSES, "-o", reference) == 0
    assert CALLS == [] and state() == before and reference.stat().st_mtime_ns == folder_mtime


def test_two_shards_and_a_merge_equal_one_run(reference: Path, images: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(2):
        assert _label(images, "--classes", CLASSES, "--shard", f"{i}/2", "-o", tmp_path / f"s{i}") == 0
    assert not (tmp_path / "s0" / "instances.json").exists()
    assert len(list((tmp_path / "s0" / ".textsam-label" / "images").glob("*.json"))) == 2  # a.png, sub/c.png
    assert main(["label", "merge", str(tmp_path / "s0"), "-o", str(tmp_path / "m"), "--no-progress"]) == 2
    assert "shard(s) 1/2 missing" in capsys.readouterr().err
    assert main(["label", "merge", str(tmp_path / "s1"), str(tmp_path / "s0"), "-o", str(tmp_path / "m")]) == 0
    assert _files(tmp_path / "m") == _files(reference)
    assert _dataset(tmp_path / "s0").keys() < _dataset(reference).keys()


def test_ontology_maps_phrases_to_saved_classes(images: Path, tmp_path: Path) -> None:
    import textsam
    from textsam.label.ontology import Ontology, read_ontology

    (tmp_path / "o.json").write_text(json.dumps({"circle": "round thing", "square": "box"}))
    (tmp_path / "o.yaml").write_text("circle: round thing\nsquare: box\n")
    (tmp_path / "c.txt").write_text("# classes\ncircle\n\nsquare\n")
    expected = Ontology(("circle", "square"), ("round thing", "box"))
    assert read_ontology(tmp_path / "o.json") == read_ontology(tmp_path / "o.yaml") == expected
    assert read_ontology(tmp_path / "c.txt") == read_ontology("circle, square") == read_ontology(["circle", "square"])
    assert Ontology(("red car", "blue car"), ("car", "car")).categories == ("car",)
    out = tmp_path / "out"
    assert _label(images / "a.png", "--ontology", tmp_path / "o.json", "-o", out) == 0
    doc = json.loads((out / "instances.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["round thing", "box"]
    plain = textsam.label([images / "a.png"], ["circle", "square"], model="shapes_tiny")[0]
    assert [(a["category_id"], a["phrase"], a["segmentation"]) for a in doc["annotations"]] == [
        ({"circle": 1, "square": 2}[i.phrase], i.phrase, i.rle) for i in plain.instances]
    # the thresholds filter what the store holds, without new inference
    CALLS.clear()
    assert _label(images / "a.png", "--ontology", tmp_path / "o.json", "--min-score", "0.99", "-o", out) == 0
    strict = json.loads((out / "instances.json").read_text())["annotations"]
    assert CALLS == [] and all(a["score"] >= 0.99 for a in strict) and len(strict) < len(doc["annotations"])


@pytest.mark.parametrize("classes, words", [
    ("circle,,square", "empty"), ("circle,circle", "twice"), ("", "empty"), ("missing.txt", "does not exist"),
])
def test_bad_classes_are_one_line_exit_2(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         classes: str, words: str) -> None:
    assert _label(images, "--classes", classes, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("textsam: error:")] and words in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_negative_text_steers_every_class_and_is_another_request(images: Path, reference: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``--negative-text``: what none of the classes is, passed to every phrase's request (the engine then keeps
    keeps the example image's red circle out of its circles); the store takes it as another request; an empty
    one is exit 2."""
    import textsam
    from textsam.label import label

    model = textsam.create_model("shapes_tiny", text_head=False)
    plain = label([images / "a.png"], "circle", model=model)[0]
    steered = label([images / "a.png"], "circle", model=model, negative_text="red circle")[0]
    assert [i for i in plain.instances if _mean_colour(images / "a.png", i.rle)[0] > 150], "a red circle is there"
    assert not [i for i in steered.instances if _mean_colour(images / "a.png", i.rle)[0] > 150]
    before = _files(reference)
    assert _label(images, "--classes", CLASSES, "--negative-text", "red square", "-o", reference) == 2
    assert "another request" in capsys.readouterr().err and _files(reference) == before
    assert _label(images, "--classes", CLASSES, "--negative-text", " ", "-o", tmp_path / "out") == 2
    assert "--negative-text is empty" in capsys.readouterr().err and not (tmp_path / "out").exists()
    out = tmp_path / "neg"
    assert _label(images, "--classes", CLASSES, "--no-text-head", "--negative-text", "red square", "-o", out) == 0
    run = json.loads((out / ".textsam-label" / "run.json").read_text())
    assert run["request"]["negative_text"] == "red square"


def _mean_colour(path: Path, mask_rle: dict) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))[rle.decode(mask_rle)].mean(0)


def test_bad_output_folders_are_refused_untouched(images: Path, reference: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert _label(images, "--classes", CLASSES, "-o", theirs) == 2
    assert "did not write" in capsys.readouterr().err and _files(theirs) == {"notes.txt": b"mine"}
    before = _files(reference)
    assert _label(images, "--classes", "circle,square,star", "-o", reference) == 2  # another request
    assert "another request" in capsys.readouterr().err
    assert _label(images, "--classes", CLASSES, "--format", "pdf", "-o", reference) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert _label(images, "--classes", CLASSES, "--shard", "2/2", "-o", tmp_path / "x") == 2
    assert _files(reference) == before


def test_new_bundled_weights_are_another_request(images: Path, reference: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The store keys a bundled model by its weights file's bytes, not its name: the same bytes reuse every
    answer; new weights under the same name are refused as another request (no stale labels)."""
    import shutil

    import textsam.weights.pretrained as pretrained

    before, package = _files(reference), tmp_path / "package"
    package.mkdir()
    shutil.copy(pretrained.bundled_path("shapes_tiny"), package / pretrained.BUNDLED["shapes_tiny"])
    monkeypatch.setattr(pretrained, "PACKAGE_WEIGHTS", package)
    CALLS.clear()
    assert _label(images, "--classes", CLASSES, "-o", reference, capsys=capsys) == 0  # same bytes, new place
    assert CALLS == [] and _files(reference) == before
    weights = package / pretrained.BUNDLED["shapes_tiny"]
    weights.write_bytes(weights.read_bytes() + b" ")  # other bytes, same name
    assert _label(images, "--classes", CLASSES, "-o", reference) == 2
    assert "another request" in capsys.readouterr().err and CALLS == [] and _files(reference) == before


def test_an_unreadable_image_is_skipped_and_listed(images: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes((images / "a.png").read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    assert _label(folder, "--classes", CLASSES, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and len([ln for ln in err.splitlines() if ln.startswith("textsam: error:")]) == 1
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert [s["file"] for s in skipped] == ["broken.png"] and str(folder) not in skipped[0]["reason"]
    doc = json.loads((tmp_path / "out" / "instances.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == ["a.png"]


def test_inputs_lists_and_coco_files(images: Path, tmp_path: Path) -> None:
    from textsam.label.inputs import collect_inputs

    (tmp_path / "list.txt").write_text(f"# two images\n{images / 'b.png'}\n{images / 'sub' / 'c.png'}\n")
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "sub/c.png"}],
            "annotations": [], "categories": []}
    (images / "gt.json").write_text(json.dumps(coco))
    try:
        got = collect_inputs([tmp_path / "list.txt", images / "gt.json"])
    finally:
        (images / "gt.json").unlink()
    assert [r.file for r in got.images] == ["a.png", "b.png", "sub/c.png"] and got.root == images
    scanned = collect_inputs([images], exclude=[images / "sub"])
    assert [r.file for r in scanned.images] == ["a.png", "b.png"]


def test_writer_dispatch_and_polygons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pycocotools import mask as mask_util

    from textsam.label import writers
    from textsam.label.coco import coco_dict, mask_to_polygons
    from textsam.label.shards import parse_shard
    from textsam.label.types import Instance, LabeledImage

    assert writers.get_writer("coco").__name__ == "write_coco"
    monkeypatch.setitem(writers.WRITERS, "yolo", ("textsam.label.not_there", "write_yolo"))
    with pytest.raises(InputError, match="not part of this textsam"):
        writers.get_writer("yolo")
    with pytest.raises(InputError, match="unknown format"):
        writers.get_writer("pdf")
    for bad in ("2/2", "1", "a/b", "0/0"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)
    yy, xx = np.mgrid[:60, :80]
    mask = ((xx - 30) ** 2 + (yy - 25) ** 2 < 15**2) | ((xx > 60) & (yy > 40))
    polys = mask_to_polygons(mask)
    back = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, 60, 80))).astype(bool)
    assert len(polys) == 2 and (back & mask).sum() / (back | mask).sum() > 0.95
    code = rle.encode(mask)
    image = LabeledImage("x.png", 80, 60, (Instance("round", "circle", code, 0.9, 0.5, tuple(rle.to_bbox(code))),))
    doc = coco_dict([image], ["round"], polygons=True)
    assert doc["annotations"][0]["segmentation"] == polys and doc["annotations"][0]["score"] == 0.9
    with pytest.raises(InputError, match="not one of the categories"):
        coco_dict([image], ["square"])


def test_label_builds_a_named_model_on_the_device_asked_for(monkeypatch, images: Path) -> None:
    """``textsam.label(..., model="name", device="cuda")`` builds the model there (the CLI's --device does the same
    through its predictor); without ``device`` it is create_model's default."""
    import textsam

    built = []
    real = textsam.create_model

    def create(name, **kwargs):  # noqa: ANN001, ANN003, ANN202
        built.append(kwargs.get("device"))
        return real(name, **{**kwargs, "device": "cpu"})

    monkeypatch.setattr(textsam, "create_model", create)
    first = sorted(images.glob("*.png"))[:1]
    textsam.label(first, ["red circle"], model="shapes_tiny", device="cuda")
    textsam.label(first, ["red circle"], model="shapes_tiny")
    assert built == ["cuda", None]
