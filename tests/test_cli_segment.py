"""``textsam segment`` with a fake model and predictor: arguments, files written, error handling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from PIL import Image

import textsam
from textsam.cli import main


class FakePrediction(NamedTuple):
    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


class FakePredictor:
    """Returns 3 known masks: a rectangle grown by 0, 5 and 10 pixels, scores 0.5, 0.9, 0.7.

    The CLI keeps the predictor's order (the predictor ranks text results itself and keeps SAM's order
    for clicks): it never re-sorts by score, and without --multimask or --all it writes the first mask.
    """

    instances: list[FakePredictor] = []

    def __init__(self, model: Any) -> None:
        self.model = model
        self.images: list[np.ndarray] = []
        self.calls: list[dict[str, Any]] = []
        self.returned: list[FakePrediction] = []
        FakePredictor.instances.append(self)

    def set_image(self, image: np.ndarray) -> None:
        self.images.append(image)

    def predict(self, **kwargs: Any) -> FakePrediction:
        self.calls.append(kwargs)
        h, w = self.images[-1].shape[:2]
        masks = np.zeros((3, h, w), bool)
        for i, grow in enumerate((0, 5, 10)):
            masks[i, 10 - grow // 2 : 20 + grow, 10 - grow // 2 : 30 + grow] = True
        pred = FakePrediction(masks, np.array([0.5, 0.9, 0.7], np.float32), np.zeros((3, 8, 8), np.float32))
        self.returned.append(pred)
        return pred


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    created: dict[str, Any] = {}

    def create_model(name: str, **kwargs: Any) -> str:
        created["name"], created["kwargs"] = name, kwargs
        return "fake-model"

    FakePredictor.instances = []
    monkeypatch.setattr(textsam, "create_model", create_model)
    monkeypatch.setattr(textsam, "TextSamPredictor", FakePredictor)
    return created


def _image(path: Path, size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (10, 120, 200)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def test_segment_one_image(tmp_path: Path, fake: dict[str, Any]) -> None:
    img = _image(tmp_path / "photo.png")
    out = tmp_path / "out"
    code = main([
        "segment", str(img), "--text", "red circle", "--point", "10,20", "--point", "30,40,0",
        "--box", "1,2,50,60", "-o", str(out), "--no-progress",
    ])
    assert code == 0
    assert fake["name"] == "sam_vit_b"
    assert fake["kwargs"]["checkpoint"] is None
    (pred,) = FakePredictor.instances
    assert pred.model == "fake-model"
    assert pred.images[0].shape == (48, 64, 3) and pred.images[0].dtype == np.uint8
    (call,) = pred.calls
    assert call["text"] == "red circle"
    np.testing.assert_array_equal(call["point_coords"], [[10, 20], [30, 40]])
    np.testing.assert_array_equal(call["point_labels"], [1, 0])
    np.testing.assert_array_equal(call["box"], [1, 2, 50, 60])
    assert call["multimask_output"] is False
    assert "negative_text" not in call and "instances" not in call

    assert sorted(p.name for p in out.iterdir()) == ["photo.json", "photo_mask0.png", "photo_overlay.png"]
    doc = json.loads((out / "photo.json").read_text())
    (result,) = doc["results"]
    assert result["label"] == "red circle"
    assert result["score"] == pytest.approx(0.5)  # the predictor's first mask when --multimask is off
    first = pred.returned[-1].masks[0]
    assert result["area"] == int(first.sum())
    np.testing.assert_array_equal(np.asarray(Image.open(out / "photo_mask0.png")) == 255, first)
    assert doc["prompt"]["point_labels"] == [1, 0]


def test_segment_multimask_all_and_options(tmp_path: Path, fake: dict[str, Any]) -> None:
    img = _image(tmp_path / "a.jpg")
    ckpt = tmp_path / "w.pth"
    code = main([
        "segment", str(img), "-t", "dog", "--negative-text", "cat", "--multimask", "--model", "shapes_tiny",
        "--checkpoint", str(ckpt), "--clip", "ViT-B-16-quickgelu/openai", "--device", "cpu",
        "-o", str(tmp_path / "o"), "--no-progress",
    ])
    assert code == 0
    assert fake["name"] == "shapes_tiny"
    assert fake["kwargs"] == {"checkpoint": ckpt, "device": "cpu", "clip": "ViT-B-16-quickgelu/openai",
                              "text_head": None}
    call = FakePredictor.instances[0].calls[0]
    assert call["negative_text"] == "cat" and call["multimask_output"] is True
    doc = json.loads((tmp_path / "o" / "a.json").read_text())
    assert [r["score"] for r in doc["results"]] == pytest.approx([0.5, 0.9, 0.7])  # the predictor's order

    code = main(["segment", str(img), "-t", "dog", "--all", "-o", str(tmp_path / "p"), "--no-progress"])
    assert code == 0
    assert FakePredictor.instances[-1].calls[0]["instances"] == "all"
    assert len(json.loads((tmp_path / "p" / "a.json").read_text())["results"]) == 3


def test_clip_given_as_a_file_or_folder_reaches_the_model(tmp_path: Path, fake: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``--clip NAME/@/FILE`` and ``--clip local-dir:FOLDER`` (what the no-network message tells users to give)
    pass to ``create_model`` as given, with a leading ``~`` expanded."""
    img = _image(tmp_path / "a.jpg")
    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"weights")
    (tmp_path / "open_clip_config.json").write_text("{}")
    for spec, expected in [(f"ViT-B-32/@/{weights}", f"ViT-B-32/@/{weights}"),
                           (f"local-dir:{tmp_path}", f"local-dir:{tmp_path}")]:
        assert main(["segment", str(img), "-t", "dog", "--clip", spec, "-o", str(tmp_path / "o"), "--no-progress"]) == 0
        assert fake["kwargs"]["clip"] == expected
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = f"ViT-B-32/@/~/{weights.name}"
    assert main(["segment", str(img), "-t", "dog", "--clip", spec, "-o", str(tmp_path / "p"), "--no-progress"]) == 0
    assert fake["kwargs"]["clip"] == f"ViT-B-32/@/{weights}"


def test_segment_folder(tmp_path: Path, fake: dict[str, Any]) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "c.webp"):
        _image(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["segment", str(folder), "--point", "5,5", "-o", str(out), "--no-progress"]) == 0
    assert len(FakePredictor.instances[0].images) == 3
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "b.json", "c.json"]


def test_missing_input(tmp_path: Path, fake: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    img = _image(tmp_path / "ok.png")
    missing = tmp_path / "nope.png"
    code = main(["segment", str(img), str(missing), "-t", "x", "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    assert "name" not in fake  # nothing was built
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option,value", [("--point", "1,2,3,4"), ("--point", "a,b"), ("--box", "1,2,3")])
def test_bad_prompt_syntax(
    tmp_path: Path, fake: dict[str, Any], capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    img = _image(tmp_path / "ok.png")
    code = main(["segment", str(img), option, value, "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert ("X,Y or X,Y,LABEL" if option == "--point" else "X0,Y0,X1,Y1") in err
    assert value in err and "Traceback" not in err


def test_no_prompt(tmp_path: Path, fake: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    img = _image(tmp_path / "ok.png")
    assert main(["segment", str(img), "-o", str(tmp_path / "out")]) == 2
    assert "--text" in capsys.readouterr().err


def test_corrupt_image_among_good_ones(
    tmp_path: Path, fake: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    _image(folder / "a.png")
    bad = folder / "b.png"
    bad.write_bytes(b"this is not a png")
    _image(folder / "c.png")
    out = tmp_path / "out"
    code = main(["segment", str(folder), "-t", "thing", "-o", str(out), "--no-progress"])
    assert code != 0
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "c.json"]
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
