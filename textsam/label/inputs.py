"""What the labeller labels: image files, folders (recursive), text files of paths, COCO JSON files.

:func:`collect_inputs` turns the inputs into :class:`ImageRef` s sorted by ``file``: the image's path relative
to the labelling root (the deepest folder holding every image), with ``/`` separators. ``file`` is what the
dataset files record (COCO ``file_name``, ...) and what sorting, shard assignment and image ids follow, so
they do not depend on the order the inputs were given in.

- a folder: every image below it (suffixes :data:`IMAGE_SUFFIXES`), hidden folders and ``exclude`` skipped;
- ``*.txt`` / ``*.lst``: one path per line (relative paths are relative to the text file's folder; blank
  lines and ``#`` comments skipped);
- ``*.json``: a COCO file's ``images``; ``file_name`` is looked up beside the JSON, then in ``images/`` beside
  it (an image that is in neither is labelled as missing: the labeller lists it in ``skipped.json``);
- anything else: an image file (one that cannot be read is skipped later, with the reason).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from textsam.errors import InputError

__all__ = ["ImageRef", "LabelInputs", "collect_inputs", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LIST_SUFFIXES = (".txt", ".lst")


@dataclass(frozen=True)
class ImageRef:
    """One image to label: ``path`` as reachable from the inputs given (relative to the working folder when they
    were), and its ``file`` name relative to the labelling root (posix)."""

    path: Path
    file: str


@dataclass(frozen=True)
class LabelInputs:
    """The images, sorted by ``file``, and the root folder their ``file`` names are relative to."""

    images: tuple[ImageRef, ...]
    root: Path


def _under(path: Path, folders: Iterable[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def _scan(folder: Path, exclude: Sequence[Path]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _under(here / d, exclude))
        found += [here / f for f in filenames if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith(".")]
    return found


def _from_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the list of images {path} ({err}): give a UTF-8 text file, one path a "
                         "line") from None
    entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not entries:
        raise InputError(f"the list of images {path} holds no path: write one image path per line")
    return [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]


def _from_coco(path: Path) -> list[Path]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {path} as a COCO JSON ({err}): give a COCO instances file") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(isinstance(im, dict) and "file_name" in im for im in images):
        raise InputError(f"{path} is not a COCO file: it needs a list 'images' of entries with 'file_name'")
    out = []
    for im in images:
        name = Path(str(im["file_name"]))
        beside, inside = path.parent / name, path.parent / "images" / name
        out.append(inside if not beside.exists() and inside.exists() else beside)
    return out


def collect_inputs(inputs: Sequence[str | Path], *, exclude: Sequence[Path] = ()) -> LabelInputs:
    """The images named by ``inputs`` (see the module docstring), without duplicates, sorted by ``file``.

    ``exclude``: folders never scanned (the output folder, so a rerun does not label its own files).

    Raises:
        InputError: an input that does not exist, an unreadable list or COCO file, no image at all.
    """
    if not inputs:
        raise InputError("give the images to label: image files, folders, a .txt list of paths or a COCO JSON")
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise InputError(f"input(s) not found: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                         "check the paths")
    skip = [Path(os.path.abspath(p)) for p in exclude]
    paths: list[Path] = []  # as given
    for item in map(Path, inputs):
        if item.is_dir():
            found = _scan(item, skip)
            if not found:
                raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder {item}: check the path")
            paths += found
        elif item.suffix.lower() in LIST_SUFFIXES:
            paths += _from_list(item)
        elif item.suffix.lower() == ".json":
            paths += _from_coco(item)
        else:
            paths.append(item)
    unique = {Path(os.path.abspath(p)): p for p in reversed(paths)}  # the first spelling of each file
    if not unique:
        raise InputError("no images to label in the inputs given")
    root = Path(os.path.commonpath([str(p.parent) for p in unique]))
    refs = sorted((ImageRef(p, a.relative_to(root).as_posix()) for a, p in unique.items()), key=lambda r: r.file)
    return LabelInputs(tuple(refs), root)
