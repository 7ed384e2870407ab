"""The public datasets textsam trains and evaluates on: where each file comes from, and fetching them.

``DATASETS`` names what ``textsam data download`` fetches; each is a few :class:`Archive` s (URL, size in
bytes, sha256) that unpack into one layout under ``ROOT``, the layout textsam's readers take as is::

    ROOT/downloads/<archive>              the archives (one this command downloaded is deleted once
                                          unpacked unless keep_archives; <archive>.unpacked marks it done)
    ROOT/coco/{train2017,val2017}/*.jpg   COCO 2017 images
    ROOT/coco/annotations/instances_{train,val}2017.json
    ROOT/coco/train2014/COCO_train2014_*.jpg   the COCO 2014 train images RefCOCO/+/g refer to
    ROOT/refcoco/{refs(unc).p, refs(google).p, instances.json, images -> ../coco/train2014}
    ROOT/refcoco+/{refs(unc).p, instances.json, images -> ../coco/train2014}
    ROOT/refcocog/{refs(umd).p, refs(google).p, instances.json, images -> ../coco/train2014}
    ROOT/lvis/annotations/lvis_v1_{train,val}.json, ROOT/lvis/{train2017,val2017} -> ../coco/...

So ``CocoDataset(ROOT/coco/annotations/instances_val2017.json, ROOT/coco/val2017)``, ``textsam eval
instances --data ROOT/coco`` and ``textsam eval refer --data ROOT/refcoco`` read it directly.

Sources, and where each size and sha256 was read (none is computed here; a hash no public source
states would be ``None``, and only the size would be checked):

- COCO 2017 (``train2017.zip``, ``val2017.zip``, ``annotations_trainval2017.zip``) and COCO 2014
  ``train2014.zip``: http://images.cocodataset.org, the official host. Size and sha256 from TensorFlow
  Datasets, tensorflow/datasets ``tensorflow_datasets/url_checksums/coco.txt`` (the 2017 image zips also
  in ``tensorflow_datasets/object_detection/lvis/checksums.tsv``).
- RefCOCO / RefCOCO+ / RefCOCOg: the original UNC archives of the REFER API (lichengunc/refer),
  ``https://bvisionweb1.cs.unc.edu/licheng/referit/data/{refcoco,refcoco+,refcocog}.zip``. That host is
  offline, so the URLs are the Internet Archive's captures of them, served byte for byte
  (``.../web/<time>id_/<original>``; the same captures hustvl/EVF-SAM's README links). Size and sha256
  from TarunTomar122/attention-is-all-you-need-for-vlms ``docs/datasets.md`` (the same three sha256 in
  its ``docs/gpu-runbook.md``; the refcoco.zip sha256 also in two other public projects' scripts).
- LVIS v1 (``lvis_v1_train.json.zip``, ``lvis_v1_val.json.zip``): https://dl.fbaipublicfiles.com/LVIS,
  the LVIS team's host; size and sha256 from tensorflow/datasets
  ``tensorflow_datasets/object_detection/lvis/checksums.tsv`` (recorded for the same objects' S3 URL,
  s3-us-west-2.amazonaws.com/dl.fbaipublicfiles.com/LVIS/...). LVIS images are COCO 2017's: its val
  split draws from both train2017 and val2017. LVIS v1 image entries name their file by ``coco_url``
  only (no ``file_name``); :class:`textsam.data.coco.CocoDataset` finds the file from it.

Nothing here touches the network at import time; :func:`fetch` downloads through the downloader the
weights use (:mod:`textsam.download`: ``.part`` file, ``Range`` resume, size and sha256 check).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..download import (
    RemoteFile,
    Wording,
    check_writable,
    download_file,
    format_size,
    is_network_failure,
    part_path,
    verify_file,
)
from ..errors import DownloadError
from .unpack import unpack_zip

__all__ = ["Archive", "Dataset", "DATASETS", "Planned", "Missing", "plan", "fetch", "make_links", "check_root"]

logger = logging.getLogger(__name__)

_WORDING = Wording(error=DownloadError, noun="Archive", folder="the data folder",
                   elsewhere="choose another --root folder")


@dataclass(frozen=True)
class Archive:
    """One downloadable zip: ``key`` (what ``--only`` names), ``url``, ``size`` (bytes), ``sha256`` (hex, or
    ``None`` where no public source states it), ``into`` (the folder under ROOT it unpacks into, ``""`` for
    ROOT itself) and ``expect`` (paths under ROOT that exist once it is unpacked)."""

    key: str
    url: str
    size: int
    sha256: str | None
    into: str
    expect: tuple[str, ...]

    @property
    def filename(self) -> str:
        """The archive's file name: the last part of its URL."""
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Dataset:
    """A dataset: its archives and the folder links (``link -> target``, paths under ROOT) that point its
    readers at shared images."""

    name: str
    description: str
    archives: tuple[Archive, ...]
    links: tuple[tuple[str, str], ...] = ()


_COCO = "http://images.cocodataset.org"
_UNC = "https://bvisionweb1.cs.unc.edu/licheng/referit/data"
_LVIS = "https://dl.fbaipublicfiles.com/LVIS"

TRAIN2017 = Archive("train2017", f"{_COCO}/zips/train2017.zip", 19_336_861_798,
                    "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929", "coco", ("coco/train2017",))
VAL2017 = Archive("val2017", f"{_COCO}/zips/val2017.zip", 815_585_330,
                  "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05", "coco", ("coco/val2017",))
ANNOTATIONS2017 = Archive(
    "annotations", f"{_COCO}/annotations/annotations_trainval2017.zip", 252_907_541,
    "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268", "coco",
    ("coco/annotations/instances_train2017.json", "coco/annotations/instances_val2017.json"),
)
TRAIN2014 = Archive("train2014", f"{_COCO}/zips/train2014.zip", 13_510_573_713,
                    "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775", "coco", ("coco/train2014",))


def _refs(name: str, capture: str, size: int, sha256: str, refs_file: str) -> Dataset:
    archive = Archive("refs", f"https://web.archive.org/web/{capture}id_/{_UNC}/{name}.zip", size, sha256, "",
                      (f"{name}/{refs_file}", f"{name}/instances.json"))
    return Dataset(
        name, f"{name} referring expressions ({refs_file}, instances.json) on the COCO train2014 images",
        (archive, TRAIN2014), ((f"{name}/images", "coco/train2014"),),
    )


def _lvis(split: str, size: int, sha256: str) -> Archive:
    return Archive(f"lvis_v1_{split}", f"{_LVIS}/lvis_v1_{split}.json.zip", size, sha256, "lvis/annotations",
                   (f"lvis/annotations/lvis_v1_{split}.json",))


DATASETS: dict[str, Dataset] = {
    "coco": Dataset("coco", "COCO 2017 images and instance annotations", (TRAIN2017, VAL2017, ANNOTATIONS2017)),
    "refcoco": _refs("refcoco", "20220413011718", 53_993_993,
                     "7f924bb7ed8dc4568058e4ff626281918d56e5206f4c868c5a80f088f38c8bf0", "refs(unc).p"),
    "refcoco+": _refs("refcoco+", "20220413011656", 45_613_210,
                      "5f1238112d63199e68da54a28f201471909b21ded7ed79a57d51b4c1443c6b45", "refs(unc).p"),
    "refcocog": _refs("refcocog", "20220413012904", 56_712_951,
                      "3d1f7e5b2ff2205940bf59de55f861f5f2cc1403fb980669933a7f9af1aa8211", "refs(umd).p"),
    "lvis": Dataset(
        "lvis", "LVIS v1 annotations on the COCO 2017 images",
        (_lvis("train", 350_264_821, "334a4caa374030a7817cf050364525e910f7960f9b6968cef47cffbf3893f8ba"),
         _lvis("val", 64_026_968, "5cae9a3c79aadb667550c2b5dcf7f4d86e059a41ec91ef690225b667e28e9ba5"),
         TRAIN2017, VAL2017),
        (("lvis/train2017", "coco/train2017"), ("lvis/val2017", "coco/val2017")),
    ),
}

State = Literal["unpacked", "present", "partial", "missing"]


@dataclass(frozen=True)
class Planned:
    """One archive of a download plan: ``path`` (``ROOT/downloads/<file>``, where it is downloaded or
    placed by hand), ``into`` (the folder it unpacks into) and its ``state`` when planned: ``unpacked``
    (done: skipped), ``present`` (placed or kept: verified, then unpacked), ``partial`` (a ``.part`` to
    resume) or ``missing``."""

    datasets: tuple[str, ...]
    archive: Archive
    path: Path
    into: Path
    state: State

    @property
    def label(self) -> str:
        """``"coco/val2017"``: the first dataset naming the archive, and its key."""
        return f"{self.datasets[0]}/{self.archive.key}"

    @property
    def remote(self) -> RemoteFile:
        """What the shared downloader fetches and checks."""
        return RemoteFile(self.label, self.archive.url, self.archive.size, self.archive.sha256)


@dataclass(frozen=True)
class Missing:
    """An archive that could not be fetched: ``reason`` is the offline setting or the network error."""

    planned: Planned
    reason: str

    def line(self) -> str:
        """One line: what is missing, its URL, size and sha256, and the exact path to place it at."""
        a = self.planned.archive
        sha = a.sha256 or "unknown"
        return (f"missing {self.planned.label} ({self.reason}): download {a.url} ({format_size(a.size)}, "
                f"{a.size} bytes, sha256 {sha}) and place it at {self.planned.path}")


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".unpacked")


def _is_unpacked(archive: Archive, path: Path, root: Path) -> bool:
    """The marker says this very archive (same sha256, or size when the hash is unknown) was unpacked, and
    what it unpacks to is there."""
    try:
        done = json.loads(_marker(path).read_text())
    except (OSError, ValueError):
        return False
    same = done.get("sha256") == archive.sha256 if archive.sha256 else done.get("size") == archive.size
    return bool(same) and all((root / p).exists() for p in archive.expect)


def plan(names: Sequence[str], root: Path, only: Sequence[str] | None = None) -> list[Planned]:
    """The archives ``names`` need under ``root`` (each once, in table order), optionally only the ``only``
    keys; raises :class:`DownloadError` for an unknown dataset name or key."""
    root = Path(root)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise DownloadError(f"unknown dataset {unknown[0]!r}: choose from {', '.join(DATASETS)}.")
    keys = {a.key for n in names for a in DATASETS[n].archives}
    bad = [k for k in only or () if k not in keys]
    if bad:
        raise DownloadError(f"--only {bad[0]!r} is not a file of {', '.join(names)}: choose from "
                            f"{', '.join(sorted(keys))}.")
    by_file: dict[str, tuple[list[str], Archive]] = {}
    for n in names:
        for a in DATASETS[n].archives:
            if only and a.key not in only:
                continue
            by_file.setdefault(a.filename, ([], a))[0].append(n)
    out = []
    for filename, (owners, a) in by_file.items():
        path = root / "downloads" / filename
        state: State
        if _is_unpacked(a, path, root):
            state = "unpacked"
        elif path.is_file():
            state = "present"
        elif part_path(path).is_file():
            state = "partial"
        else:
            state = "missing"
        out.append(Planned(tuple(owners), a, path, root / a.into if a.into else root, state))
    return out


def check_root(root: Path) -> None:
    """Create ``root/downloads`` and make sure files can be written there (:class:`DownloadError` if not)."""
    check_writable(Path(root) / "downloads" / ".probe", _WORDING)


def fetch(item: Planned, root: Path, *, offline: bool, progress: bool = True,
          keep_archives: bool = False) -> str | Missing:
    """Put one planned archive in place: download (unless present), verify, unpack, mark done.

    Returns what happened (``"skipped"``, ``"unpacked"``) or a :class:`Missing` when offline or the
    network failed (a partial download is kept for the next try). Raises :class:`DownloadError` for a
    corrupt file (a download is deleted, a file placed by hand is left for the user), an unsafe archive,
    or a folder that cannot be written.
    """
    root = Path(root)
    if _is_unpacked(item.archive, item.path, root):
        return "skipped"
    placed = item.path.is_file()
    if placed:
        digest = verify_file(item.path, item.remote, _WORDING)
    elif offline:
        return Missing(item, "offline")
    else:
        try:
            digest = download_file(item.remote, item.path, progress=progress, wording=_WORDING)
        except DownloadError as err:
            if not is_network_failure(err):
                raise
            kept = ", partial file kept: run again to resume" if part_path(item.path).is_file() else ""
            return Missing(item, f"network error: {err.__cause__}{kept}")
    files = unpack_zip(item.path, item.into, root=root)
    lost = [p for p in item.archive.expect if not (root / p).exists()]
    if lost:
        raise DownloadError(f"{item.path} was unpacked into {item.into} but {root / lost[0]} is not there: it is "
                            "not the archive this table describes. Delete it and download it again.")
    _marker(item.path).write_text(json.dumps({"sha256": digest, "size": item.archive.size, "files": files}) + "\n")
    if not placed and not keep_archives:
        item.path.unlink()
    return "unpacked"


def make_links(names: Sequence[str], root: Path) -> list[str]:
    """Create each dataset's folder links (relative symlinks) whose target is there; return one line per
    link made or left as the user made it."""
    root = Path(root)
    notes = []
    for n in names:
        for link_rel, target_rel in DATASETS[n].links:
            link, target = root / link_rel, root / target_rel
            if not target.is_dir() or (link.is_symlink() and link.resolve() == target.resolve()):
                continue
            if link.exists() or link.is_symlink():
                notes.append(f"{link} already exists (not a link to {target}): left as it is")
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
            except OSError as err:
                notes.append(f"cannot link {link} -> {target} ({err.strerror or err}): copy or link the images "
                             "there yourself")
                continue
            notes.append(f"linked {link} -> {target}")
    return notes
