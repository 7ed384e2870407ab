"""Battery: ``textsam eval`` with broken data folders, bad options, output folders it must not write
into, malformed ``--predictions`` files and models that cannot be built.

Data: a small synthetic set (``textsam data synth``, 3 test images of 64 px) written once per module and
copied into a case's folder when the case damages it. Runs that predict use the points benchmark with one
click (``--clicks 1``) and the bundled ``shapes_tiny`` model, built once for the module.

Policy for images that cannot be read (missing or corrupt files): the run goes on, records them as failed,
lists them in the report and on stderr ("problem: ... missing or unreadable") and exits 0; a rerun retries
them. When not a single image could be read, the report is still written but the command exits 2 saying
to check --data.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from .harness import check, run_cli, snapshot

pytest.importorskip("pycocotools")

POINTS = ["--clicks", "1", "--model", "shapes_tiny", "--no-progress"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_battery") / "syn"
    outcome = run_cli(["data", "synth", "--out", str(root), "--train", "0", "--val", "0", "--test", "3",
                       "--size", "64", "--seed", "0"])
    assert outcome.rc == 0, outcome.text
    return root


_MODELS: dict = {}


@pytest.fixture(autouse=True)
def _one_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """shapes_tiny is built once; any other request (checkpoint, device, name) goes through create_model."""
    import textsam

    real = textsam.create_model

    def create_model(name: str, **kwargs):
        if name == "shapes_tiny" and not any(kwargs.get(k) for k in ("checkpoint", "clip", "text_head", "device")):
            if name not in _MODELS:
                _MODELS[name] = real(name)
            return _MODELS[name]
        return real(name, **kwargs)

    monkeypatch.setattr(textsam, "create_model", create_model)


@dataclass(frozen=True)
class Case:
    """``setup(tmp, synth)`` prepares the folders and returns the argv (``tmp/out`` is the usual --out)."""

    id: str
    setup: Callable[[Path, Path], list[str]]
    rc: int
    words: tuple[str, ...] = ()
    may_change: Callable[[Path], list[Path]] = field(default=lambda tmp: [])
    after: Callable[[Path], None] | None = None


# ------------------------------------------------------------------------------------------ helpers
def _copy(tmp: Path, synth: Path) -> Path:
    """A private copy of the synthetic test split (tmp/data)."""
    return Path(shutil.copytree(synth / "test", tmp / "data"))


def _points(data: Callable[[Path, Path], Path] | None = None, *extra: str,
            out: Callable[[Path], Path] = lambda t: t / "out") -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, synth: Path) -> list[str]:
        root = data(tmp, synth) if data is not None else synth / "test"
        return ["eval", "points", "--data", str(root), *POINTS, *extra, "--out", str(out(tmp))]
    return setup


def _damaged(change: Callable[[Path], None]) -> Callable[[Path, Path], Path]:
    def data(tmp: Path, synth: Path) -> Path:
        root = _copy(tmp, synth)
        change(root)
        return root
    return data


def _edit_json(name: str, edit: Callable[[object], object]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return change


def _first_image(root: Path) -> Path:
    return sorted((root / "images").glob("*.png"))[0]


def _report(tmp: Path) -> dict:
    return json.loads((tmp / "out" / "report.json").read_text())


def _lines(tmp: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp / "out" / "results.jsonl").read_text().splitlines()]


def _no_output(tmp: Path) -> None:
    assert not (tmp / "out").exists(), "an output folder was created"


def _no_results(tmp: Path) -> None:
    assert not (tmp / "out" / "results.jsonl").exists() and not (tmp / "out" / "report.json").exists()


# ---------------------------------------------------------------------------------- data problems
def _bad_image_listed(tmp: Path) -> None:
    report = _report(tmp)
    assert report["counts"]["images"] == 3
    assert any("1 image(s) missing or unreadable" in p for p in report["problems"]), report["problems"]
    failed = [r for r in _lines(tmp) if r.get("error")]
    assert len(failed) == 1 and len(_lines(tmp)) == 3


def _synthetic_without_split(tmp: Path, synth: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return ["eval", "synthetic", "--data", str(tmp / "empty"), "--model", "shapes_tiny", "--out", str(tmp / "out")]


def _refer(change: Callable[[Path], None], *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, synth: Path) -> list[str]:
        root = _damaged(change)(tmp, synth)
        return ["eval", "refer", "--data", str(root), "--model", "shapes_tiny", *extra, "--out", str(tmp / "out")]
    return setup


def _no_images_at_all(root: Path) -> None:
    for image in (root / "images").iterdir():
        image.unlink()


def _all_failed_listed(tmp: Path) -> None:
    assert all(r.get("error") for r in _lines(tmp)) and len(_lines(tmp)) == 3
    assert "3 image(s) missing or unreadable" in (tmp / "out" / "report.md").read_text()


# -------------------------------------------------------------------------------- output problems
def _after_earlier_run(*extra: str, rerun: tuple[str, ...] = ()) -> Callable[[Path, Path], list[str]]:
    """An earlier run (``extra``) in tmp/out, then the command with ``rerun`` options into the same folder."""

    def setup(tmp: Path, synth: Path) -> list[str]:
        base = ["eval", "points", "--data", str(synth / "test"), *POINTS, "--limit", "2"]
        outcome = run_cli([*base, *extra, "--out", str(tmp / "out")])
        assert outcome.rc == 0, outcome.text
        return [*base, *rerun, "--out", str(tmp / "out")]
    return setup


def _cut_last_line(tmp: Path, synth: Path) -> list[str]:
    argv = _after_earlier_run()(tmp, synth)
    results = tmp / "out" / "results.jsonl"
    data = results.read_bytes()
    results.write_bytes(data[: len(data) - 40])  # the kill cut the second record short
    for name in ("report.json", "report.md"):
        (tmp / "out" / name).unlink()  # the killed run never got there
    return argv


def _resumed(n: int) -> Callable[[Path], None]:
    def after(tmp: Path) -> None:
        assert _report(tmp)["timing"]["images_resumed_from_earlier_runs"] == n
        assert len(_lines(tmp)) == 2 and not any(r.get("error") for r in _lines(tmp))
    return after


def _foreign_files(tmp: Path) -> Path:
    (tmp / "out").mkdir()
    (tmp / "out" / "report.md").write_text("# my own notes")
    (tmp / "out" / "results.jsonl").write_text('{"key": "mine"}\n')
    return tmp / "out"


def _corrupt_run_json(tmp: Path, synth: Path) -> list[str]:
    argv = _after_earlier_run()(tmp, synth)
    (tmp / "out" / "run.json").write_bytes(b'{"benchmark": "poi')
    return argv


def _a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("mine")
    return tmp / "notes.txt"


def unwritable_folder(tmp: Path) -> Path:
    """A folder this user cannot write into: a read-only one, or (root ignores permissions) /sys/fs."""
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for folder in (ro, Path("/sys/fs")):
        try:
            (folder / ".probe").open("wb").close()
        except OSError:
            return folder
        (folder / ".probe").unlink()
    pytest.skip("no folder here refuses writes to this user")


# ---------------------------------------------------------------------------------- predictions
def _predictions(content: bytes | str | None, *, folder: bool = False,
                 out: Callable[[Path, Path], Path] | None = None) -> Callable[[Path, Path], list[str]]:
    """``--predictions`` file with ``content`` ({key} = the first image's id; None: no file)."""

    def setup(tmp: Path, synth: Path) -> list[str]:
        path = tmp / "preds.jsonl"
        if folder:
            path.mkdir()
        elif content is not None:
            key = sorted(int(p.stem) for p in (synth / "test" / "images").glob("*.png"))[0]
            path.write_bytes(content.replace("{key}", str(key)).encode() if isinstance(content, str) else content)
        target = out(tmp, synth) if out is not None else tmp / "out"
        return ["eval", "points", "--data", str(synth / "test"), "--clicks", "1", "--predictions", str(path),
                "--out", str(target)]
    return setup


def _scored_before(same_file: bool) -> Callable[[Path, Path], Path]:
    """tmp/out holds the report of scoring a predictions file (this case's file, or another one)."""

    def out(tmp: Path, synth: Path) -> Path:
        key = sorted(int(p.stem) for p in (synth / "test" / "images").glob("*.png"))[0]
        other = tmp / ("preds.jsonl" if same_file else "older.jsonl")
        other.write_text(json.dumps({"key": str(key), "masks": []}) + "\n")
        outcome = run_cli(["eval", "points", "--data", str(synth / "test"), "--clicks", "1", "--predictions",
                           str(other), "--out", str(tmp / "out")])
        assert outcome.rc == 0, outcome.text
        return tmp / "out"
    return out


def _into_model_run(tmp: Path, synth: Path) -> Path:
    _after_earlier_run()(tmp, synth)
    return tmp / "out"


CUDA = torch.cuda.is_available()
MPS = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def _checkpoint(content: bytes) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, synth: Path) -> list[str]:
        (tmp / "weights.pth").write_bytes(content)
        return ["eval", "points", "--data", str(synth / "test"), *POINTS, "--checkpoint", str(tmp / "weights.pth"),
                "--out", str(tmp / "out")]
    return setup


def _skip_if(condition: bool, reason: str, setup: Callable[[Path, Path], list[str]]) -> Callable[[Path, Path], list[str]]:
    def guarded(tmp: Path, synth: Path) -> list[str]:
        if condition:
            pytest.skip(reason)
        return setup(tmp, synth)
    return guarded


def _results_and_reports(tmp: Path) -> list[Path]:
    return [tmp / "out" / n for n in ("report.json", "report.md", "results.jsonl", "run.json")]


CASES = [
    # data folders and annotations
    Case("data-folder-missing", _points(lambda t, s: t / "nope"), 2, ("data folder not found", "nope"), after=_no_output),
    Case("refer-data-folder-missing", lambda t, s: ["eval", "refer", "--data", str(t / "nope"), "--out",
                                                    str(t / "out")], 2, ("data folder not found",), after=_no_output),
    Case("synthetic-without-test-split", _synthetic_without_split, 2, ("no 'test' split", "textsam"),
         after=_no_output),
    Case("data-is-a-text-file", _points(lambda t, s: (t / "x.txt").write_text("hello") and t / "x.txt"), 2,
         ("not a valid json", "x.txt"), after=_no_output),
    Case("annotations-malformed-json", _points(_damaged(lambda r: (r / "instances.json").write_text('{"images": ['))),
         2, ("instances.json", "not a valid json"), after=_no_output),
    Case("annotations-not-an-object", _points(_damaged(_edit_json("instances.json", lambda d: [d]))), 2,
         ("instances.json", "json object"), after=_no_output),
    Case("annotations-without-images-key", _points(_damaged(_edit_json(
        "instances.json", lambda d: {k: v for k, v in d.items() if k != "images"}))), 2,
         ("missing the coco key", "images"), after=_no_output),
    Case("annotation-of-unknown-image", _points(_damaged(_edit_json(
        "instances.json", lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 999}]}))), 2,
         ("points to image 999",), after=_no_output),
    Case("annotation-bad-segmentation", _points(_damaged(_edit_json(
        "instances.json", lambda d: {**d, "annotations": [{**d["annotations"][0], "segmentation": {"size": [64, 64],
                                                                                                    "counts": "#"}}]}))),
         2, ("annotation", "rle")),
    Case("refs-malformed-json", _refer(lambda r: (r / "refs.json").write_text("[{")), 2,
         ("refs.json", "not a valid json"), after=_no_output),
    Case("refs-target-unknown-annotation", _refer(_edit_json("refs.json", lambda d: [{**d[0], "ann_ids": [99999]}])),
         2, ("targets annotation 99999",), after=_no_output),
    Case("image-missing", _points(_damaged(lambda r: _first_image(r).unlink())), 0,
         ("problem: 1 image(s) missing or unreadable", "not found"), after=_bad_image_listed),
    Case("image-corrupt", _points(_damaged(lambda r: _first_image(r).write_text("<html>404</html>"))), 0,
         ("problem: 1 image(s) missing or unreadable", "cannot read"), after=_bad_image_listed),
    Case("image-folder-empty", _points(_damaged(_no_images_at_all)), 2,
         ("none of the 3 image(s) could be read", "check --data"), after=_all_failed_listed),
    Case("image-folder-missing", _points(_damaged(lambda r: shutil.rmtree(r / "images"))), 2,
         ("instances.json is there but its image folder",), after=_no_output),
    # options
    Case("unknown-benchmark", lambda t, s: ["eval", "detection", "--data", str(s), "--out", str(t / "out")], 2,
         ("invalid choice", "points")),
    Case("unknown-layout", lambda t, s: ["eval", "semseg", "--data", str(s), "--layout", "kitti", "--out",
                                         str(t / "out")], 2, ("invalid choice", "camvid")),
    Case("semseg-layout-unclear", lambda t, s: ["eval", "semseg", "--data", str(s / "test"), "--out", str(t / "out")],
         2, ("cannot tell the layout", "--layout")),
    Case("clicks-malformed", _points(None, "--clicks", "1,x"), 2, ("--clicks takes positive integers",)),
    Case("clicks-zero", _points(None, "--clicks", "0"), 2, ("--clicks takes positive integers",)),
    Case("categories-on-points", _points(None, "--categories", "circle"), 2, ("instances benchmark only",)),
    Case("templates-on-points", _points(None, "--templates", "single"), 2, ("no effect on the points",)),
    Case("templates-file-missing", lambda t, s: ["eval", "synthetic", "--data", str(s), "--templates",
                                                 str(t / "none.txt"), "--out", str(t / "out")], 2,
         ("neither a template set", "none.txt")),
    Case("templates-file-binary", lambda t, s: (t / "tpl.txt").write_bytes(b"\xff\xfe\x00a {}") and [
        "eval", "synthetic", "--data", str(s), "--templates", str(t / "tpl.txt"), "--out", str(t / "out")], 2,
         ("cannot read the templates file", "utf-8"), after=_no_output),
    Case("limit-zero", _points(None, "--limit", "0"), 2, ("--limit must be a positive",)),
    Case("limit-not-a-number", _points(None, "--limit", "all"), 2, ("invalid int value",)),
    Case("split-unknown", lambda t, s: ["eval", "synthetic", "--data", str(s), "--split", "holdout", "--out",
                                        str(t / "out")], 2, ("no 'holdout' split",)),
    # output folders
    Case("out-of-a-different-run", _after_earlier_run(rerun=("--clicks", "1,2")), 2,
         ("holds results of a different run", "protocol", "new --out folder")),
    Case("out-is-a-file", _points(None, out=_a_file), 2, ("is a file, not a folder",)),
    Case("out-under-a-file", _points(None, out=lambda t: _a_file(t) / "out"), 2, ("cannot create the --out folder",)),
    Case("out-not-writable", _points(None, out=lambda t: unwritable_folder(t) / "out"), 2,
         ("cannot create the --out folder",)),
    Case("out-holds-other-files", _points(None, out=_foreign_files), 2, ("no run.json", "nothing was changed")),
    Case("out-run-json-corrupt", _corrupt_run_json, 2, ("run.json is unreadable", "new --out folder")),
    Case("rerun-of-a-finished-run", _after_earlier_run(), 0, ("mIoU@1",),
         may_change=lambda t: [t / "out" / "report.json", t / "out" / "report.md"], after=_resumed(2)),
    Case("rerun-after-a-cut-line", _cut_last_line, 0, ("mIoU@1",), may_change=_results_and_reports,
         after=_resumed(1)),
    # --predictions
    Case("predictions-malformed-line", _predictions('{"key": "{key}", "masks": []}\n{"key": "1", "mas\n'), 2,
         ("line 2", "not valid json"), after=_no_output),
    Case("predictions-not-objects", _predictions("[1, 2, 3]\n"), 2, ("line 1", "json object with a 'key'"),
         after=_no_output),
    Case("predictions-missing", _predictions(None), 2, ("predictions file not found",), after=_no_output),
    Case("predictions-folder", _predictions(None, folder=True), 2, ("is a folder",), after=_no_output),
    Case("predictions-empty", _predictions(""), 2, ("is empty",), after=_no_output),
    Case("predictions-binary", _predictions(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"), 2, ("not a utf-8 text file",),
         after=_no_output),
    Case("predictions-bad-rle", _predictions('{"key": "{key}", "masks": [{"ann_id": 1, "best": '
                                             '[{"size": [64, 64], "counts": "#"}], "oracle": []}]}\n'), 2,
         ("rle",), after=_no_output),
    Case("predictions-of-another-benchmark", _predictions('{"key": "{key}", "predictions": []}\n'), 2,
         ("has no 'masks' list",), after=_no_output),
    Case("predictions-coco-results-bad-image-id", lambda t, s: (t / "res.json").write_text(
        '[{"image_id": "cat.jpg", "category_id": 1, "segmentation": {}, "score": 1}]') and [
        "eval", "instances", "--data", str(s / "test"), "--predictions", str(t / "res.json"), "--out", str(t / "out")],
         2, ("res.json", "image ids are integers"), after=_no_output),
    Case("predictions-coco-results-not-a-list", lambda t, s: (t / "res.json").write_text('{"image_id": 1}') and [
        "eval", "instances", "--data", str(s / "test"), "--predictions", str(t / "res.json"), "--out", str(t / "out")],
         2, ("res.json",), after=_no_output),
    Case("predictions-into-another-scoring", _predictions('{"key": "{key}", "masks": []}\n',
                                                          out=_scored_before(same_file=False)), 2,
         ("already holds a report of another run",)),
    Case("predictions-scored-again", _predictions('{"key": "{key}", "masks": []}\n', out=_scored_before(True)), 0,
         ("mIoU@1",), may_change=lambda t: [t / "out" / "report.json", t / "out" / "report.md"]),
    Case("predictions-into-a-model-run", _predictions('{"key": "{key}", "masks": []}\n', out=_into_model_run), 2,
         ("is the folder of a model run", "new --out folder")),
    # models and devices
    Case("unknown-model", _points(None, "--model", "sam_vit_z"), 2, ("unknown model 'sam_vit_z'", "sam_vit_b"),
         after=_no_output),
    Case("device-cuda", _skip_if(CUDA, "this machine has CUDA", _points(None, "--device", "cuda")), 2,
         ("no cuda device", "--device cpu"), after=_no_output),
    Case("device-mps", _skip_if(MPS, "this machine has MPS", _points(None, "--device", "mps")), 2,
         ("mps", "--device cpu"), after=_no_output),
    Case("device-unknown", _points(None, "--device", "tpu"), 2, ("unknown device",), after=_no_output),
    Case("checkpoint-random-bytes", _checkpoint(bytes(range(256)) * 8), 2,
         ("cannot read", "neither a zip archive nor a pickle"), after=_no_results),
    Case("checkpoint-html-page", _checkpoint(b"<!DOCTYPE html><html>login</html>"), 2, ("html",),
         after=_no_results),
    Case("checkpoint-missing", lambda t, s: ["eval", "points", "--data", str(s / "test"), *POINTS, "--checkpoint",
                                             str(t / "none.pth"), "--out", str(t / "out")], 2,
         ("checkpoint file not found",), after=_no_results),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_eval(case: Case, tmp_path: Path, synth: Path) -> None:
    argv = case.setup(tmp_path, synth)
    before = snapshot(tmp_path)
    outcome = run_cli(argv)
    check(f"eval/{case.id}", outcome, rc=case.rc, words=case.words, before=before,
          may_change=case.may_change(tmp_path), extra=None if case.after is None else lambda: case.after(tmp_path))
    assert "weights_only" not in outcome.text and "pickled" not in outcome.text.lower()


def test_a_failed_model_does_not_block_the_corrected_command(tmp_path: Path, synth: Path) -> None:
    """A run that stopped before its first image (a bad checkpoint) left run.json; the fixed command runs."""
    argv = _checkpoint(b"not weights at all")(tmp_path, synth)
    assert run_cli(argv).rc == 2
    fixed = [a for a in argv if a not in ("--checkpoint", str(tmp_path / "weights.pth"))]
    outcome = run_cli([*fixed, "--limit", "1"])
    check("eval/corrected-after-a-bad-checkpoint", outcome, rc=0, words=("mIoU@1",))


def test_disk_full_while_writing_results(tmp_path: Path, synth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up halfway through the second image's record: one line saying what to do; once space is
    freed the same command goes on, keeping the first image and redoing the cut one."""
    import builtins

    from textsam.eval import base

    class FillsUp:
        """results.jsonl on a disk with room for one record and a half."""

        def __init__(self, f) -> None:
            self.f, self.records = f, 0

        def write(self, data) -> int:
            self.records += 1
            if self.records == 2:
                self.f.write(bytes(data[: len(data) // 2]))
                raise OSError(28, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name: str):
            return getattr(self.f, name)

    def fake_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return FillsUp(f) if str(file).endswith("results.jsonl") and "a" in mode else f

    argv = _points()(tmp_path, synth)
    monkeypatch.setattr(base, "open", fake_open, raising=False)
    outcome = run_cli(argv)
    monkeypatch.delattr(base, "open")
    check("eval/disk-full-while-writing-results", outcome, rc=2,
          words=("results.jsonl", "no space left on device", "run the same command again", "finished images are kept"))
    assert not (tmp_path / "out" / "results.jsonl").read_bytes().endswith(b"\n")  # the cut record is there
    outcome = run_cli(argv)
    check("eval/rerun-after-disk-full", outcome, rc=0, words=("mIoU@1",), may_change=_results_and_reports(tmp_path))
    assert _report(tmp_path)["timing"]["images_resumed_from_earlier_runs"] == 1
    assert len(_lines(tmp_path)) == 3
