"""Battery: ``textsam label`` with bad and awkward input, as a new user would try it (bundled shapes_tiny).

Each case: how the working folder is set up, the command line, the exit code and the words of the message
expected, and what else must hold. The harness checks every case for tracebacks, "unexpected" errors, one-line
user errors and files lost or overwritten (see harness.py). Only two cases label an image (the model's time);
the others are refused before any model is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import files
from .harness import check, run_cli, snapshot
from .test_segment import _one_model_per_run  # noqa: F401 - the bundled model built once for the battery

MODEL = ["--model", "shapes_tiny", "--no-progress"]


@dataclass(frozen=True)
class Case:
    """One command. ``setup(tmp)`` makes the inputs and returns the argv."""

    id: str
    setup: Callable[[Path], list[str]]
    rc: int
    words: tuple[str, ...] = ()
    may_change: Callable[[Path], list[Path]] = field(default=lambda tmp: [])
    after: Callable[[Path], None] | None = None


def _good(*extra: str, classes: str | None = "red circle") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        path = files.write("good_png", tmp / "in")
        voc = ["--classes", classes] if classes is not None else []
        return ["label", str(path), *voc, *extra, "-o", str(tmp / "out"), *MODEL]
    return setup


def _ontology(text: str, name: str = "ontology.yaml") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / name).write_text(text)
        return _good("--ontology", str(tmp / name), classes=None)(tmp)
    return setup


def _out_is_file(tmp: Path) -> list[str]:
    (tmp / "out").write_text("my notes")
    return _good()(tmp)


def _foreign(tmp: Path) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "instances.json").write_text('{"mine": true}')
    return _good()(tmp)


def _empty_folder(tmp: Path) -> list[str]:
    (tmp / "in").mkdir()
    return ["label", str(tmp / "in"), "--classes", "car", "-o", str(tmp / "out"), *MODEL]


def _merge(*folders: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        for f in folders:
            (tmp / f).mkdir()
            (tmp / f / "notes.txt").write_text("not a shard")
        return ["label", "merge", *(str(tmp / f) for f in folders), "-o", str(tmp / "out")]
    return setup


def _mixed_folder(tmp: Path) -> list[str]:
    folder = tmp / "in"
    for kind in ("good_png", "zero_byte", "text_as_png"):
        files.write(kind, folder)
    return ["label", str(folder), "--classes", "red circle", "-o", str(tmp / "out"), *MODEL]


def _mixed_after(tmp: Path) -> None:
    skipped = json.loads((tmp / "out" / "skipped.json").read_text())
    assert [s["file"] for s in skipped] == ["empty.png", "notes.png"], skipped
    doc = json.loads((tmp / "out" / "instances.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == ["good.png"]


def _coco_with_a_missing_image(tmp: Path) -> list[str]:
    files.write("good_png", tmp / "data" / "images")
    coco = {"images": [{"id": 1, "file_name": "good.png", "width": 96, "height": 72},
                       {"id": 2, "file_name": "gone.png", "width": 96, "height": 72}],
            "annotations": [], "categories": [{"id": 1, "name": "disc"}]}
    (tmp / "data" / "instances.json").write_text(json.dumps(coco))
    return ["label", str(tmp / "data" / "instances.json"), "--classes", "red circle", "-o", str(tmp / "out"), *MODEL]


def _coco_after(tmp: Path) -> None:
    skipped = json.loads((tmp / "out" / "skipped.json").read_text())
    assert [s["file"] for s in skipped] == ["gone.png"] and "cannot read" in skipped[0]["reason"]


CASES = [
    Case("no-classes", _good(classes=None), 2, ("give the classes",)),
    Case("empty-class", _good(classes="car,,person"), 2, ("empty",)),
    Case("only-commas", _good(classes=",,"), 2, ("empty",)),
    Case("duplicate-class", _good(classes="car,person,car"), 2, ("'car'", "twice")),
    Case("classes-and-ontology", _good("--ontology", "x.json"), 2, ("not allowed with",)),
    Case("unknown-format", _good("--format", "voc"), 2, ("invalid choice", "coco")),
    Case("shard-out-of-range", _good("--shard", "3/2"), 2, ("--shard", "0 <= I < N")),
    Case("shard-not-a-fraction", _good("--shard", "half"), 2, ("--shard",)),
    Case("min-score-above-1", _good("--min-score", "1.5"), 2, ("between 0 and 1",)),
    Case("missing-input", lambda tmp: ["label", str(tmp / "nope"), "--classes", "car", "-o", str(tmp / "o"), *MODEL],
         2, ("not found",)),
    Case("empty-folder", _empty_folder, 2, ("no images",)),
    Case("classes-file-missing", _good(classes="classes.txt"), 2, ("does not exist",)),
    Case("ontology-bad-yaml", _ontology("car: [unclosed\n"), 2, ("not valid yaml",)),
    Case("ontology-bad-json", _ontology("{'car': 1}", "o.json"), 2, ("not valid json",)),
    Case("ontology-a-number", _ontology("42\n"), 2, ("holds no classes",)),
    Case("ontology-duplicate-key", _ontology('{"car": "a", "car": "b"}', "o.json"), 2, ("twice",)),
    Case("ontology-empty-class", _ontology("red car: ''\n"), 2, ("empty",)),
    Case("ontology-not-json-or-yaml", _ontology("car\n", "o.txt"), 2, (".json, .yaml",)),
    Case("output-is-a-file", _out_is_file, 2, ("is a file",)),
    Case("output-holds-user-files", _foreign, 2, ("did not write", "instances.json")),
    Case("merge-nothing", lambda tmp: ["label", "merge", "-o", str(tmp / "out")], 2, ("give the shards",)),
    Case("merge-not-a-store", _merge("a", "b"), 2, ("not an output folder",)),
    Case("merge-missing-folder", lambda tmp: ["label", "merge", str(tmp / "x"), "-o", str(tmp / "out")], 2,
         ("not found",)),
    Case("unreadable-images-skipped", _mixed_folder, 2, ("could not be read", "skipped.json", "empty.png"),
         after=_mixed_after),
    Case("coco-with-a-missing-image", _coco_with_a_missing_image, 2, ("could not be read",), after=_coco_after),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_label(case: Case, tmp_path: Path) -> None:
    argv = case.setup(tmp_path)
    before, may_change = snapshot(tmp_path), case.may_change(tmp_path)
    outcome = run_cli(argv)
    check(f"label/{case.id}", outcome, rc=case.rc, words=case.words, before=before, may_change=may_change,
          extra=None if case.after is None else lambda: case.after(tmp_path))
