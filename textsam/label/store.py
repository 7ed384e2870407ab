"""The labeller's resumable store: one JSON per labelled image, kept in ``OUT/.textsam-label/``.

Layout::

    OUT/.textsam-label/run.json        the request (vocabulary, model, mode), its hash, the shard, the images
    OUT/.textsam-label/images/<key>.json  one image's every mask (COCO RLE), score, presence; or why it was skipped
    OUT/.textsam-label/outputs.json    the dataset files textsam wrote in OUT (sha256 each) and what they came from

``key`` = sha256 of the request hash and the image's bytes: an image is labelled once per request, whatever
its name, and a changed image is labelled again. Every file is written to a temporary name and renamed, so a
killed run leaves only whole records; the final dataset files are rebuilt from the records at the end. No
record holds a time stamp, so the same request gives the same bytes.

``outputs.json`` is how a run knows which files of OUT are its own: a file there that it does not list (or
whose bytes changed since) is the user's, and the labeller refuses to write into that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textsam.errors import InputError

__all__ = ["Store", "STORE_DIR", "digest_file", "dumps", "request_hash", "image_key", "write_if_changed"]

STORE_DIR = ".textsam-label"
FORMAT = 1  # bump when a record's layout changes (an old store is then another request)
_TMP = re.compile(r"^\..+\.tmp$")  # temporary names (textsam.results.atomic_write's, the writers')


def dumps(obj: Any, *, indent: int | None = None) -> bytes:
    """Canonical JSON bytes (sorted keys, ASCII, a final newline): equal objects give equal bytes."""
    seps = (",", ": ") if indent is not None else (",", ":")
    return (json.dumps(obj, sort_keys=True, indent=indent, separators=seps, ensure_ascii=True) + "\n").encode()


def request_hash(request: dict[str, Any]) -> str:
    return hashlib.sha256(dumps({"request": request, "format": FORMAT})).hexdigest()


def image_key(request_digest: str, image_digest: str) -> str:
    return hashlib.sha256(f"{request_digest}:{image_digest}".encode()).hexdigest()


def digest_file(path: Path) -> str:
    """sha256 of a file's bytes (OSError when it cannot be read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (temporary name, then rename) unless the file already holds exactly it.

    Returns whether it wrote: an unchanged file keeps its bytes and its modification time.
    """
    from textsam.results import atomic_write

    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class Store:
    """The store of one output folder ``out`` (nothing is created until something is written)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.root = self.out / STORE_DIR
        self.records = self.root / "images"

    # ------------------------------------------------------------------------------ run
    def read_run(self) -> dict[str, Any] | None:
        """``run.json``, or None when there is none (or it is not textsam's)."""
        doc = _read(self.root / "run.json")
        return doc if doc is not None and isinstance(doc.get("textsam"), dict) else None

    def write_run(self, doc: dict[str, Any]) -> None:
        write_if_changed(self.root / "run.json", dumps({"textsam": {"store": FORMAT}, **doc}, indent=1))

    # ------------------------------------------------------------------------------ records
    def path(self, key: str) -> Path:
        return self.records / f"{key}.json"

    def read(self, key: str) -> dict[str, Any] | None:
        """The record of ``key``, or None when it is missing or not whole."""
        doc = _read(self.path(key))
        return doc if doc is not None and doc.get("key") == key else None

    def has(self, key: str) -> bool:
        return self.read(key) is not None

    def write(self, key: str, record: dict[str, Any]) -> None:
        write_if_changed(self.path(key), dumps({**record, "key": key}))

    def copy_from(self, other: Store, key: str) -> bool:
        """Copy ``other``'s record of ``key`` here (unless it is here already); False when ``other`` lacks it."""
        if self.has(key):
            return True
        record = other.read(key)
        if record is None:
            return False
        self.write(key, record)
        return True

    def remove_leftovers(self) -> None:
        """Delete temporary files a killed run left in the store."""
        for folder in (self.root, self.records):
            if folder.is_dir():
                for p in folder.iterdir():
                    if _TMP.match(p.name):
                        p.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------ outputs
    def read_outputs(self) -> dict[str, Any]:
        doc = _read(self.root / "outputs.json")
        return doc if doc is not None else {"files": {}, "dataset": None, "pending": False}

    def write_outputs(self, doc: dict[str, Any]) -> None:
        write_if_changed(self.root / "outputs.json", dumps(doc, indent=1))

    def dataset_files(self) -> dict[str, str]:
        """``{relative path: sha256}`` of every file in OUT outside the store (temporary leftovers aside)."""
        found = {}
        if not self.out.is_dir():
            return found
        for dirpath, dirnames, filenames in os.walk(self.out):
            here = Path(dirpath)
            if here == self.out:
                dirnames[:] = [d for d in dirnames if d != STORE_DIR]
            for name in filenames:
                p = here / name
                if _TMP.match(name) or not (p.is_file() or p.is_symlink()):
                    continue
                rel = p.relative_to(self.out).as_posix()
                try:
                    found[rel] = digest_file(p) if p.exists() else "broken-link"
                except OSError:
                    found[rel] = "unreadable"
        return found

    def foreign_files(self) -> list[str]:
        """Files in OUT that textsam did not write, or that changed since it wrote them."""
        outputs = self.read_outputs()
        files = outputs.get("files") or {}
        if outputs.get("pending"):  # a run was killed while writing the dataset: what it left is its own
            return []
        return sorted(rel for rel, sha in self.dataset_files().items() if sha not in files.get(rel, ()))

    def record_outputs(self, dataset: str | None, *, pending: bool, also: Iterable[tuple[str, str]] = ()) -> None:
        """Record every file now in OUT as textsam's (``pending``: the dataset is being written)."""
        files: dict[str, list[str]] = {rel: [sha] for rel, sha in self.dataset_files().items()}
        for rel, sha in also:
            files.setdefault(rel, [])
            if sha not in files[rel]:
                files[rel].append(sha)
        self.write_outputs({"textsam": {"store": FORMAT}, "dataset": dataset, "pending": pending, "files": files})

    def check_request(self, request_digest: str, shard: list[int] | None) -> None:
        """Refuse (InputError) when OUT holds another request's store, or another shard's, or foreign files."""
        run = self.read_run()
        if run is None:
            if self.root.exists() and any(self.records.glob("*.json")):
                raise InputError(f"{self.out} holds a textsam label store without its run.json: give another "
                                 "output folder with -o (nothing was written)")
        elif run.get("request_hash") != request_digest:
            raise InputError(f"{self.out} holds the labels of another request (other classes, model or options): "
                             "give another output folder with -o (nothing was written)")
        elif run.get("shard") != shard:
            have = "the whole set" if run.get("shard") is None else "shard {}/{}".format(*run["shard"])
            raise InputError(f"{self.out} holds {have}'s labels: give each shard and the merge their own output "
                             "folder with -o (nothing was written)")
        foreign = self.foreign_files()
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise InputError(f"{self.out} holds files that textsam label did not write (or that changed since: "
                             f"{shown}): give another output folder with -o (nothing was written)")
