"""`textsam segment` with text on a real (tiny, random) predictor: bad input gives one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import textsam
from textsam.cli import main
from textsam.config import TextHeadConfig
from textsam.factory import attach_text
from textsam.text.projector import TextProjector
from textsam.weights.format import ClipSpec, TextsamFile, write

from .tiny import tiny_sam


@pytest.fixture()
def image_file(tmp_path: Path) -> Path:
    img = np.zeros((90, 120, 3), np.uint8)
    img[20:60, 30:80] = (230, 40, 40)
    path = tmp_path / "shapes.png"
    Image.fromarray(img).save(path)
    return path


@pytest.fixture()
def tiny_factory(monkeypatch: pytest.MonkeyPatch):
    """create_model -> a tiny random SAM; --text-head goes through the real head checks."""

    def fake_create_model(name, *, checkpoint=None, pretrained=True, device=None, clip=None, text_head=None):
        model = tiny_sam(with_text=text_head is None)
        if text_head is not None:
            attach_text(model, clip=clip, pretrained=False, text_head=text_head)
        return model

    monkeypatch.setattr(textsam, "create_model", fake_create_model)


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_text_segment_writes_results(tiny_factory, image_file, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code, _ = _run(capsys, "segment", str(image_file), "--text", "red square", "--point", "50,40", "-o", str(out))
    assert code == 0
    data = json.loads((out / "shapes.json").read_text())
    assert data["results"] and data["results"][0]["segmentation"]["size"] == [90, 120]
    assert (out / "shapes_overlay.png").exists() and (out / "shapes_mask0.png").exists()


@pytest.mark.parametrize("phrase", ["", "   "])
def test_empty_phrase(tiny_factory, image_file, tmp_path, capsys, phrase) -> None:
    code, err = _run(capsys, "segment", str(image_file), "--text", phrase, "-o", str(tmp_path / "o"))
    assert code != 0 and "empty" in err


def test_long_and_non_ascii_phrases_work(tiny_factory, image_file, tmp_path, capsys) -> None:
    code, _ = _run(capsys, "segment", str(image_file), "--text", "Straße café 狗 🚗", "-o", str(tmp_path / "a"))
    assert code == 0
    long_phrase = " ".join(["very"] * 90) + " red square"
    code, _ = _run(capsys, "segment", str(image_file), "--text", long_phrase, "-o", str(tmp_path / "b"))
    assert code == 0  # (the notice that only the start of a long phrase is used: tests/test_text.py)


def test_missing_and_corrupt_images(tiny_factory, image_file, tmp_path, capsys) -> None:
    code, err = _run(capsys, "segment", str(tmp_path / "nope.jpg"), "--text", "x", "-o", str(tmp_path / "o"))
    assert code == 2 and "nope.jpg" in err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    code, err = _run(capsys, "segment", str(bad), str(image_file), "--text", "x", "-o", str(tmp_path / "o2"))
    assert code != 0 and "bad.jpg" in err
    assert (tmp_path / "o2" / "shapes.json").exists()  # the good image was still processed


def test_point_outside_image(tiny_factory, image_file, tmp_path, capsys) -> None:
    code, err = _run(capsys, "segment", str(image_file), "--text", "x", "--point", "500,40", "-o", str(tmp_path / "o"))
    assert code != 0 and "outside the 120x90 image" in err


def test_text_head_for_other_models(tiny_factory, image_file, tmp_path, capsys) -> None:
    config = TextHeadConfig(clip_dim=32, token_dim=256, num_tokens=2, hidden_dim=64)
    tensors = {f"text_projector.{k}": v for k, v in TextProjector(config).state_dict().items()}
    head = write(tmp_path / "head.safetensors",
                 TextsamFile("sam_vit_h", ClipSpec("ViT-L-14", "openai"), config, tensors))
    code, err = _run(
        capsys, "segment", str(image_file), "--text", "x", "--text-head", str(head), "-o", str(tmp_path / "o")
    )
    assert code == 2 and "trained for SAM model 'sam_vit_h'" in err and "--model sam_vit_h" in err
