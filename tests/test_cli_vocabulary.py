"""`textsam segment` with a vocabulary (`--text` given several times, `--classes a,b,c` or a file), and every
text mode of the CLI over the real photos in ../shared/data (the bundled shapes_tiny: its SAM, CLIP, text head
and the training-free engine run the same code as the published models, much faster)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from textsam import rle
from textsam.cli import main
from textsam.cli.segment import example_images


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _masks(doc: dict) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for r in doc["results"]:
        out.setdefault(r["label"], []).append(rle.decode(r["segmentation"]))
    return out


@pytest.mark.parametrize("negative", [[], ["--negative-text", "blue square"]])
def test_a_vocabulary_equals_one_run_per_phrase(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                negative: list[str]) -> None:
    """A vocabulary's masks, presence and found equal one run per phrase (with the same --negative-text, what
    none of the phrases is)."""
    phrases = ["red circle", "green triangle", "all the circles"]  # present, absent, a group
    code, _ = _run(capsys, "segment", "--example", "-t", phrases[0], "--classes", ",".join(phrases[1:]), *negative,
                   "-o", str(tmp_path / "voc"))
    assert code == 0
    doc = json.loads((tmp_path / "voc" / "shapes.json").read_text())
    answers = doc["prompt"]["answers"]
    assert [a["text"] for a in answers] == phrases and doc["prompt"]["phrases"] == phrases
    got = _masks(doc)
    assert sum(a["masks"] for a in answers) == len(doc["results"])
    for phrase, answer in zip(phrases, answers):
        code, _ = _run(capsys, "segment", "--example", "-t", phrase, *negative,
                       "-o", str(tmp_path / phrase.replace(" ", "_")))
        assert code == 0
        single = json.loads((tmp_path / phrase.replace(" ", "_") / "shapes.json").read_text())
        assert single["found"] == answer["found"] and single["presence"] == pytest.approx(answer["presence"], abs=1e-4)
        mine = _masks(single).get(phrase, [])
        assert len(mine) == len(got.get(phrase, [])) == answer["masks"]
        for a, b in zip(mine, got.get(phrase, [])):
            assert (a == b).all()


def test_classes_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("# shapes to find\nred circle\n\n  blue square  \nred circle\n", encoding="utf-8")
    code, _ = _run(capsys, "segment", "--example", "--classes", str(classes), "-o", str(tmp_path / "a"))
    assert code == 0
    code, _ = _run(capsys, "segment", "--example", "--classes", "red circle,blue square", "-o", str(tmp_path / "b"))
    assert code == 0
    a, b = (json.loads((tmp_path / d / "shapes.json").read_text()) for d in "ab")
    assert a["prompt"]["phrases"] == ["red circle", "blue square"] and a["results"] == b["results"]


@pytest.mark.parametrize("argv, words", [
    (["--classes", "red circle,blue square", "--point", "10,10"], "go with one phrase"),
    (["--classes", "red circle,blue square", "--negative-text", " "], "--negative-text is empty"),
    (["--classes", "red circle,,blue square"], "empty phrase"),
    (["--classes", "missing_classes.txt"], "does not exist"),
    (["-t", "red circle", "--classes", "blue square", "--everything"], "--everything"),
])
def test_vocabulary_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                        words: str) -> None:
    code, err = _run(capsys, "segment", "--example", *argv, "-o", str(tmp_path / "out"))
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "shapes.json").exists()


def test_an_empty_classes_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("# nothing yet\n\n", encoding="utf-8")
    code, err = _run(capsys, "segment", "--example", "--classes", str(classes), "-o", str(tmp_path / "out"))
    assert code == 2 and "holds no phrase" in err


MODES = {
    "head": ["-t", "the dog"],
    "engine": ["-t", "the dog on the left", "--no-text-head"],
    "engine-all": ["-t", "every dog", "--all", "--no-text-head"],
    "vocabulary": ["--classes", "dog,person,car,the biggest fruit,a zebra", "--no-text-head"],
    "text+click": ["-t", "the dog", "--point", "20,20"],
    "everything": ["--everything"],
}


def _photos(shared_data: Path, every: bool) -> list[Path]:
    folders = ["sam_demo_images", "lang_sam_images", "mobilesam_app_images"]
    photos = [p for f in folders for p in sorted((shared_data / f).glob("*.jp*g"))]
    return photos if every else photos[:1]


def _every_mode(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str,
                every: bool) -> None:
    photos = _photos(shared_data, every)
    assert photos
    out = tmp_path / mode
    code, err = _run(capsys, "segment", *map(str, photos), *MODES[mode], "--model", "shapes_tiny", "-o", str(out))
    assert code == 0, err
    for p in photos:
        doc = json.loads((out / f"{p.stem}.json").read_text())
        assert (doc["image"]["height"], doc["image"]["width"]) == rle.decode(
            doc["results"][0]["segmentation"]).shape if doc["results"] else True
        if mode != "everything":
            assert "presence" in doc or "answers" in doc["prompt"]


@pytest.mark.parametrize("mode", list(MODES))
def test_every_text_mode_runs_over_real_photos(shared_data: Path, tmp_path: Path, capsys, mode: str) -> None:
    _every_mode(shared_data, tmp_path, capsys, mode, every=False)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_every_text_mode_runs_over_every_real_photo(shared_data: Path, tmp_path: Path, capsys, mode: str) -> None:
    _every_mode(shared_data, tmp_path, capsys, mode, every=True)


def test_the_example_image_is_shipped() -> None:
    assert [p.name for p in example_images()] == ["shapes.png"]
