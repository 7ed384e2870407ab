"""``textsam data download``: the dataset table, download, verification, resume, offline, unpacking.

``urllib.request.urlopen`` is replaced by a fake server that serves small zips built here from memory
(honouring ``Range``, failing mid-stream on demand), and the table by entries whose sizes and sha256 are
computed here; any real network call fails the test. The unpacked folders are read back with textsam's
own readers.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textsam.cli import main
from textsam.data import download as dl
from textsam.data.coco import CocoDataset
from textsam.data.refer import ReferDataset
from textsam.data.unpack import unpack_zip
from textsam.errors import DownloadError
from textsam.eval.refer import find_refer_files

from .fake_http import FakeResponse, no_network

BASE = "https://example.invalid/data"
REAL_DATASETS = dict(dl.DATASETS)  # before the autouse fixture swaps the table


def _jpeg(w: int = 32, h: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _instances(file_name: str, image_id: int) -> bytes:
    return json.dumps({
        "images": [{"id": image_id, "file_name": file_name, "height": 24, "width": 32}],
        "annotations": [{"id": 7, "image_id": image_id, "category_id": 1, "bbox": [4, 4, 10, 10], "area": 100,
                         "iscrowd": 0, "segmentation": [[4, 4, 14, 4, 14, 14, 4, 14]]}],
        "categories": [{"id": 1, "name": "box"}],
    }).encode()


REFS = [{"ref_id": 1, "ann_id": 7, "image_id": 2, "split": "train", "category_id": 1,
         "sentences": [{"sent": "the grey box", "raw": "the grey box", "tokens": [], "sent_id": 1}]}]

FILES = {  # URL -> bytes the fake server holds
    f"{BASE}/val2017.zip": _zip({"val2017/": b"", "val2017/000000000001.jpg": _jpeg()}),
    f"{BASE}/annotations_trainval2017.zip": _zip({
        "annotations/instances_val2017.json": _instances("000000000001.jpg", 1)}),
    f"{BASE}/refcoco.zip": _zip({"refcoco/instances.json": _instances("COCO_train2014_000000000002.jpg", 2),
                                 "refcoco/refs(unc).p": pickle.dumps(REFS, protocol=2)}),
    f"{BASE}/train2014.zip": _zip({"train2014/COCO_train2014_000000000002.jpg": _jpeg()}),
}


def _archive(key: str, filename: str, into: str, expect: tuple[str, ...], sha256: str | None = "") -> dl.Archive:
    data = FILES[f"{BASE}/{filename}"]
    sha = hashlib.sha256(data).hexdigest() if sha256 == "" else sha256
    return dl.Archive(key, f"{BASE}/{filename}", len(data), sha, into, expect)


def fake_table(val_sha256: str | None = "") -> dict[str, dl.Dataset]:
    train2014 = _archive("train2014", "train2014.zip", "coco", ("coco/train2014",))
    return {
        "coco": dl.Dataset("coco", "test COCO", (
            _archive("val2017", "val2017.zip", "coco", ("coco/val2017",), sha256=val_sha256),
            _archive("annotations", "annotations_trainval2017.zip", "coco",
                     ("coco/annotations/instances_val2017.json",)),
        )),
        "refcoco": dl.Dataset("refcoco", "test RefCOCO", (
            _archive("refs", "refcoco.zip", "", ("refcoco/refs(unc).p", "refcoco/instances.json")), train2014,
        ), (("refcoco/images", "coco/train2014"),)),
    }


class FakeServer:
    """Serves ``FILES`` (honouring ``Range``); ``fail[url]`` bytes breaks the next response for that URL."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.fail: dict[str, int] = {}

    def urlopen(self, request: urllib.request.Request, timeout: float | None = None) -> FakeResponse:
        url, rng = request.full_url, request.get_header("Range")
        self.requests.append((url, rng))
        data = FILES[url]
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
        return FakeResponse(data[start:], 206 if rng else 200, self.fail.pop(url, None), chunk=256)


@pytest.fixture(autouse=True)
def table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake table, online, and no network unless a test asks for the fake server."""
    monkeypatch.setattr(dl, "DATASETS", fake_table())
    monkeypatch.delenv("TEXTSAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setattr(urllib.request, "urlopen", fake.urlopen)
    return fake


def download(root: Path, *args: str) -> int:
    return main(["data", "download", *args, "--root", str(root), "--no-progress"])


def _user_error(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    """The one ``textsam: error:`` line and the other stderr lines."""
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("textsam: error:")]
    assert len(errors) == 1 and "Traceback" not in err and "unexpected" not in err, err
    return errors[0], [ln for ln in err.splitlines() if ln and not ln.startswith("textsam: error:")]


# ---- the real table -------------------------------------------------------------------------------


def test_real_table_is_complete_and_well_formed() -> None:
    assert list(REAL_DATASETS) == ["coco", "refcoco", "refcoco+", "refcocog", "lvis"]
    by_file: dict[str, dl.Archive] = {}
    for name, ds in REAL_DATASETS.items():
        assert ds.name == name and ds.archives
        for a in ds.archives:
            assert a.url.startswith(("http://", "https://")) and a.filename.endswith(".zip")
            assert a.size > 1_000_000 and a.expect
            assert a.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", a.sha256)
            assert by_file.setdefault(a.filename, a) == a  # a shared archive is the same entry everywhere
    assert {a.key for a in REAL_DATASETS["coco"].archives} == {"train2017", "val2017", "annotations"}
    assert REAL_DATASETS["coco"].archives[1].url == "http://images.cocodataset.org/zips/val2017.zip"
    for refer in ("refcoco", "refcoco+", "refcocog"):
        assert REAL_DATASETS[refer].links == ((f"{refer}/images", "coco/train2014"),)
        assert f"bvisionweb1.cs.unc.edu/licheng/referit/data/{refer}.zip" in REAL_DATASETS[refer].archives[0].url


def test_plan_refuses_unknown_names_and_keys(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unknown dataset 'voc': choose from coco, refcoco"):
        dl.plan(["voc"], tmp_path)
    with pytest.raises(DownloadError, match="--only 'train2017' is not a file of coco: choose from annotations, val2017"):
        dl.plan(["coco"], tmp_path, ["train2017"])
    shared = dl.plan(["refcoco", "coco"], tmp_path)
    assert [p.archive.filename for p in shared] == ["refcoco.zip", "train2014.zip", "val2017.zip",
                                                     "annotations_trainval2017.zip"]


# ---- download, verify, unpack -----------------------------------------------------------------------


def test_download_unpacks_a_layout_the_readers_take_as_is(
    tmp_path: Path, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    assert download(root, "coco", "refcoco") == 0
    out = capsys.readouterr().out
    assert "coco/val2017: verified and unpacked" in out and "ready in" in out
    coco = CocoDataset(root / "coco" / "annotations" / "instances_val2017.json", root / "coco" / "val2017")
    assert coco.load_image(1).shape == (24, 32, 3) and coco.mask(7).sum() == 100
    refer = ReferDataset(*find_refer_files(root / "refcoco"))
    assert refer.refs[0].sentences == ["the grey box"] and refer.load_image(1).shape == (24, 32, 3)
    assert refer.target_mask(1).sum() == 100
    assert (root / "refcoco" / "images").is_symlink()
    downloads = sorted(p.name for p in (root / "downloads").iterdir())
    assert downloads == sorted(f"{Path(u).name}.unpacked" for u in FILES)  # archives deleted, markers kept
    served = len(server.requests)
    assert served == 4 and all(rng is None for _, rng in server.requests)
    assert download(root, "coco", "refcoco") == 0  # everything there: nothing fetched again
    assert len(server.requests) == served and "already unpacked" in capsys.readouterr().out


def test_only_picks_files_and_keep_archives_keeps_them(tmp_path: Path, server: FakeServer) -> None:
    assert download(tmp_path, "coco", "--only", "val2017", "--keep-archives") == 0
    assert [u for u, _ in server.requests] == [f"{BASE}/val2017.zip"]
    assert (tmp_path / "downloads" / "val2017.zip").read_bytes() == FILES[f"{BASE}/val2017.zip"]
    assert not (tmp_path / "coco" / "annotations").exists()


def test_a_bad_hash_leaves_nothing_in_place(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dl, "DATASETS", fake_table(val_sha256="0" * 64))
    assert download(tmp_path, "coco", "--only", "val2017") == 2
    line, _ = _user_error(capsys)
    actual = hashlib.sha256(FILES[f"{BASE}/val2017.zip"]).hexdigest()
    assert f"is corrupt: expected sha256 {'0' * 64}, got {actual}" in line and "deleted" in line
    assert list((tmp_path / "downloads").iterdir()) == []  # neither the file, nor its .part, nor a marker
    assert not (tmp_path / "coco").exists()  # nothing unpacked


def test_an_unknown_sha256_checks_the_size_only(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dl, "DATASETS", fake_table(val_sha256=None))
    assert download(tmp_path, "coco", "--only", "val2017", "--dry-run") == 0
    assert "sha256 unknown" in capsys.readouterr().out
    assert download(tmp_path, "coco", "--only", "val2017") == 0
    assert (tmp_path / "coco" / "val2017" / "000000000001.jpg").is_file()


def test_an_interrupted_download_is_resumed_with_a_range_request(
    tmp_path: Path, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{BASE}/val2017.zip"
    server.fail[url] = 512
    assert download(tmp_path, "coco", "--only", "val2017") == 2
    line, missing = _user_error(capsys)
    part = tmp_path / "downloads" / "val2017.zip.part"
    assert part.stat().st_size == 512 and not (tmp_path / "downloads" / "val2017.zip").exists()
    assert len(missing) == 1 and "Connection reset by peer" in missing[0] and "run again to resume" in missing[0]
    assert url in missing[0] and f"place it at {tmp_path / 'downloads' / 'val2017.zip'}" in missing[0]
    assert "the download failed" in line
    assert download(tmp_path, "coco", "--only", "val2017") == 0
    assert server.requests[-1] == (url, "bytes=512-")
    assert not part.exists() and (tmp_path / "coco" / "val2017" / "000000000001.jpg").is_file()


def test_offline_names_each_missing_file_then_takes_a_file_placed_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEXTSAM_OFFLINE", "1")
    assert download(tmp_path, "coco", "refcoco") == 2  # urlopen is no_network: nothing was tried
    line, missing = _user_error(capsys)
    assert "4 of 4 files are missing and downloads are disabled (TEXTSAM_OFFLINE=1)" in line
    assert len(missing) == 4
    for url in FILES:  # one line per file: its URL and the exact path to place it at
        (text,) = [m for m in missing if f"download {url} " in m]
        assert text.startswith("missing ") and text.endswith(f"place it at {tmp_path / 'downloads' / Path(url).name}")
    placed = tmp_path / "downloads" / "val2017.zip"
    placed.write_bytes(FILES[f"{BASE}/val2017.zip"])
    assert download(tmp_path, "coco", "--only", "val2017") == 0
    assert (tmp_path / "coco" / "val2017" / "000000000001.jpg").is_file()
    assert placed.is_file()  # a file the user placed is theirs: not deleted after unpacking


def test_a_corrupt_file_placed_by_hand_is_refused_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEXTSAM_OFFLINE", "1")
    placed = tmp_path / "downloads" / "val2017.zip"
    placed.parent.mkdir()
    placed.write_bytes(b"x" * len(FILES[f"{BASE}/val2017.zip"]))
    assert download(tmp_path, "coco", "--only", "val2017") == 2
    line, _ = _user_error(capsys)
    assert f"Archive {placed} for 'coco/val2017' is corrupt" in line
    assert placed.is_file() and not (tmp_path / "coco").exists()


def test_dry_run_lists_everything_and_fetches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    assert download(root, "coco", "refcoco", "--dry-run") == 0  # urlopen is no_network
    out = capsys.readouterr().out
    for url, data in FILES.items():
        assert url in out and f"({len(data)} bytes), sha256 {hashlib.sha256(data).hexdigest()}" in out
        assert f"-> {root / 'downloads' / Path(url).name} [to fetch]" in out
    assert f"link {root / 'refcoco' / 'images'} -> {root / 'coco' / 'train2014'}" in out
    assert "would fetch 4 of 4 files" in out and not root.exists()


# ---- unpacking ------------------------------------------------------------------------------------


def test_a_half_unpacked_archive_is_redone(tmp_path: Path, server: FakeServer) -> None:
    assert download(tmp_path, "coco", "--only", "val2017", "--keep-archives") == 0
    image = tmp_path / "coco" / "val2017" / "000000000001.jpg"
    marker = tmp_path / "downloads" / "val2017.zip.unpacked"
    marker.unlink()  # as if killed before the unpack finished: a member gone, a .part left over
    image.unlink()
    (image.parent / (image.name + ".part")).write_bytes(b"half")
    served = len(server.requests)
    assert download(tmp_path, "coco", "--only", "val2017") == 0
    assert len(server.requests) == served  # the kept archive is verified and unpacked again, not fetched
    assert image.read_bytes() == _jpeg() and marker.is_file()


@pytest.mark.parametrize("name, words", [("../evil.txt", "climbs out"), ("/tmp/evil.txt", "absolute path"),
                                         ("a/../../evil.txt", "climbs out"), ("C:/evil.txt", "absolute path")])
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path: Path, name: str, words: str) -> None:
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip({"coco/ok.txt": b"fine", name: b"evil"}))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DownloadError, match=words):
        unpack_zip(archive, root / "coco", root=root)
    assert list(root.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_a_member_leading_out_through_a_link_or_a_link_member_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "coco").mkdir(parents=True)
    (root / "coco" / "out").symlink_to(tmp_path)
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip({"out/evil.txt": b"evil"}))
    with pytest.raises(DownloadError, match="outside"):
        unpack_zip(archive, root / "coco", root=root)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    archive.write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="symbolic link"):
        unpack_zip(archive, root / "coco", root=root)
    assert not (tmp_path / "evil.txt").exists() and not (root / "coco" / "link").exists()


def test_a_traversal_archive_from_the_server_is_refused_by_the_cli(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(FILES, f"{BASE}/val2017.zip", _zip({"val2017/a.jpg": _jpeg(), "../../escape.txt": b"x"}))
    monkeypatch.setattr(dl, "DATASETS", fake_table())
    root = tmp_path / "root"
    assert download(root, "coco", "--only", "val2017") == 2
    line, _ = _user_error(capsys)
    assert "'../../escape.txt' climbs out" in line and "nothing was unpacked" in line
    assert not (root / "coco").exists() and not (tmp_path / "escape.txt").exists()


def test_a_damaged_zip_is_a_user_error(tmp_path: Path) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DownloadError, match="not a readable zip archive"):
        unpack_zip(archive, tmp_path / "out", root=tmp_path)
