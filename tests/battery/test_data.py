"""Battery: ``textsam data synth`` with bad sizes and counts, and output folders it must not write into;
``textsam data download`` with unknown names, offline, with the network down, and into folders it cannot use.

Each case: how the working folder is set up, the command line, the exit code and the words expected, and
what must hold afterwards. The harness checks every case for tracebacks, "unexpected" errors, one-line
user errors and files lost or overwritten (see harness.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .harness import check, run_cli, snapshot

SMALL = ["--train", "1", "--val", "1", "--test", "2", "--size", "64"]


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


@dataclass(frozen=True)
class Case:
    """``setup(tmp)`` makes the folder and returns the argv."""

    id: str
    setup: Callable[[Path], list[str]]
    rc: int
    words: tuple[str, ...] = ()
    after: Callable[[Path], None] | None = None


def _synth(*args: str, out: Callable[[Path], Path] = lambda t: t / "syn") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        return ["data", "synth", "--out", str(out(tmp)), *args]
    return setup


def _nothing_written(tmp: Path) -> None:
    assert not (tmp / "syn").exists(), "an output folder was left behind"


def _dataset(tmp: Path) -> None:
    meta = json.loads((tmp / "syn" / "meta.json").read_text())
    assert meta["counts"]["test"]["images"] == 2 and meta["image_size"] == 64
    assert len(list((tmp / "syn" / "test" / "images").glob("*.png"))) == 2
    assert not list((tmp / "syn").glob(".synth-partial-*")), "the staging folder was left"


def _earlier_dataset(tmp: Path) -> Path:
    assert run_cli(["data", "synth", "--out", str(tmp / "syn"), *SMALL]).rc == 0
    return tmp / "syn"


def _users_folder(tmp: Path) -> Path:
    (tmp / "syn").mkdir()
    (tmp / "syn" / "notes.txt").write_text("mine")
    (tmp / "syn" / "photos").mkdir()
    (tmp / "syn" / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not really")
    return tmp / "syn"


def _users_files_kept(tmp: Path) -> None:
    _dataset(tmp)
    assert (tmp / "syn" / "notes.txt").read_text() == "mine"


def _half_test(tmp: Path) -> Path:
    (tmp / "syn" / "test").mkdir(parents=True)  # what a killed older version could leave
    return tmp / "syn"


def _a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("mine")
    return tmp / "notes.txt"


def _under_a_file(tmp: Path) -> Path:
    return _a_file(tmp) / "syn"


CASES = [
    Case("ok", _synth(*SMALL), 0, ("test: 2 images", "written to"), after=_dataset),
    Case("size-too-small", _synth("--size", "8"), 2, ("between 32 and 4096", "got 8"), after=_nothing_written),
    Case("size-zero", _synth("--size", "0"), 2, ("between 32 and 4096",), after=_nothing_written),
    Case("size-negative", _synth("--size", "-64"), 2, ("between 32 and 4096",), after=_nothing_written),
    Case("size-too-large", _synth("--size", "100000"), 2, ("between 32 and 4096", "100000"),
         after=_nothing_written),
    Case("size-not-a-number", _synth("--size", "big"), 2, ("--size", "invalid int value"), after=_nothing_written),
    Case("size-fraction", _synth("--size", "64.5"), 2, ("invalid int value",), after=_nothing_written),
    Case("count-negative", _synth("--train", "-1"), 2, ("num_train must be >= 0",), after=_nothing_written),
    Case("seed-negative", _synth(*SMALL, "--seed", "-1"), 2, ("seed must be >= 0",), after=_nothing_written),
    Case("counts-all-zero", _synth("--train", "0", "--val", "0", "--test", "0"), 2, ("nothing to write",),
         after=_nothing_written),
    Case("workers-zero", _synth(*SMALL, "--workers", "0"), 2, ("workers must be >= 1",), after=_nothing_written),
    Case("out-missing", lambda t: ["data", "synth", *SMALL], 2, ("--out", "required")),
    Case("out-is-a-file", _synth(*SMALL, out=_a_file), 2, ("is a file", "notes.txt")),
    Case("out-under-a-file", _synth(*SMALL, out=_under_a_file), 2, ("cannot write", "notes.txt")),
    Case("out-not-writable", _synth(*SMALL, out=lambda t: unwritable_folder(t) / "syn"), 2,
         ("cannot write", "choose an --out folder")),
    Case("out-holds-a-dataset", _synth(*SMALL, "--seed", "1", out=_earlier_dataset), 2,
         ("already holds", "meta.json", "nothing was changed")),
    Case("out-holds-a-split", _synth(*SMALL, out=_half_test), 2, ("already holds test",)),
    Case("out-holds-users-files", _synth(*SMALL, out=_users_folder), 0, ("written to",), after=_users_files_kept),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_data(case: Case, tmp_path: Path) -> None:
    argv = case.setup(tmp_path)
    before = snapshot(tmp_path)
    outcome = run_cli(argv)
    check(f"data/{case.id}", outcome, rc=case.rc, words=case.words, before=before,
          extra=None if case.after is None else lambda: case.after(tmp_path))


def test_interrupted_synth_leaves_no_half_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from textsam.data import synthetic

    real, calls = synthetic._render_one, []

    def render(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(synthetic, "_render_one", render)
    before = snapshot(tmp_path)
    outcome = run_cli(["data", "synth", "--out", str(tmp_path / "syn"), *SMALL])
    check("data/interrupted", outcome, rc=130, words=("interrupted",), before=before, extra=lambda: _nothing_written(tmp_path))
    monkeypatch.setattr(synthetic, "_render_one", real)
    outcome = run_cli(["data", "synth", "--out", str(tmp_path / "syn"), *SMALL])
    check("data/rerun-after-interrupt", outcome, rc=0, before=snapshot(tmp_path), extra=lambda: _dataset(tmp_path))


# ---- textsam data download (the real table; urlopen is replaced, so nothing reaches the network) ----------

VAL_URL = "http://images.cocodataset.org/zips/val2017.zip"


@dataclass(frozen=True)
class DownloadCase:
    """``setup(tmp)`` makes the folder and returns the argv; ``env`` is set while it runs."""

    id: str
    setup: Callable[[Path], list[str]]
    rc: int
    words: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    after: Callable[[Path], None] | None = None


def _download(*args: str, root: Callable[[Path], Path] = lambda t: t / "data") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        return ["data", "download", *args, "--root", str(root(tmp)), "--no-progress"]
    return setup


def _no_data(tmp: Path) -> None:
    assert not (tmp / "data").exists(), "a dry run or a refused command created the data folder"


def _nothing_fetched(tmp: Path) -> None:
    assert [p.name for p in (tmp / "data" / "downloads").iterdir()] == [], "a file was left in downloads/"


OFFLINE = {"TEXTSAM_OFFLINE": "1"}
DOWNLOAD_CASES = [
    DownloadCase("download-unknown-dataset", _download("voc"), 2, ("invalid choice: 'voc'", "coco", "refcocog"),
                 after=_no_data),
    DownloadCase("download-no-dataset", _download(), 2, ("DATASET",), after=_no_data),
    DownloadCase("download-root-missing", lambda t: ["data", "download", "coco"], 2, ("--root", "required")),
    DownloadCase("download-unknown-only-key", _download("coco", "--only", "val2014"), 2,
                 ("--only 'val2014'", "train2017, val2017"), after=_no_data),
    DownloadCase("download-dry-run", _download("refcoco", "--dry-run"), 0,
                 ("refcoco.zip", "train2014.zip", "sha256 7f924bb7", "would fetch 2 of 2 files"), after=_no_data),
    DownloadCase("download-offline", _download("coco", "--only", "val2017,annotations"), 2,
                 (VAL_URL, "annotations_trainval2017.zip", "place it at", "val2017.zip", "TEXTSAM_OFFLINE=1"),
                 env=OFFLINE, after=_nothing_fetched),
    DownloadCase("download-network-down", _download("coco", "--only", "val2017"), 2,
                 (VAL_URL, "network error", "unreachable", "place it at", "the download failed"),
                 after=_nothing_fetched),
    DownloadCase("download-root-is-a-file", _download("coco", root=_a_file), 2, ("is a file", "notes.txt")),
    DownloadCase("download-root-under-a-file", _download("coco", root=_under_a_file), 2,
                 ("cannot write to the data folder", "notes.txt", "choose another --root")),
    DownloadCase("download-root-not-writable", _download("coco", root=lambda t: unwritable_folder(t) / "data"), 2,
                 ("cannot write to the data folder", "choose another --root")),
]


@pytest.mark.parametrize("case", DOWNLOAD_CASES, ids=[c.id for c in DOWNLOAD_CASES])
def test_data_download(case: DownloadCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(request: urllib.request.Request, timeout: float | None = None) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    monkeypatch.delenv("TEXTSAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    argv = case.setup(tmp_path)
    before = snapshot(tmp_path)
    outcome = run_cli(argv, env=case.env)
    check(f"data/{case.id}", outcome, rc=case.rc, words=case.words, before=before,
          extra=None if case.after is None else lambda: case.after(tmp_path))
