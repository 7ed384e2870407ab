"""What the YOLO-seg, Label Studio, PNG-mask and review writers share: file names, atomic writes, colours,
and the mask -> polygon conversion.

Frames: masks are ``(H, W)`` bool in pixels of the original image; a polygon is ``(K, 2)`` int32 ``(x, y)``
*pixel indices* of the mask's boundary pixels (OpenCV's ``findContours`` convention, through
``supervision.mask_to_polygons``), which is what ultralytics, supervision and label-studio-sdk's own
brush -> polygon conversion use: ``cv2.fillPoly`` of the polygon gives the mask back.

Writes go to a hidden temporary file in the destination folder, then ``os.replace``; a file that already
holds exactly the bytes to write is left untouched (a rerun changes no file, not even its mtime).
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..errors import InputError
from .types import LabeledImage

__all__ = [
    "write_bytes", "write_text", "write_png", "copy_file", "image_path", "output_stems", "class_index",
    "class_colours", "hex_colour", "mask_polygon",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ atomic writes
def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename; unchanged files are not touched."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """UTF-8 text, ``\\n`` line ends, written as :func:`write_bytes` does."""
    return write_bytes(path, text.encode("utf-8"))


def write_png(path: Path, image: Any) -> Path:
    """A PIL image as PNG (no metadata, fixed compression: the same pixels give the same bytes)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return write_bytes(path, buf.getvalue())


def copy_file(src: Path, dst: Path) -> Path:
    """Copy the bytes of ``src`` to ``dst`` (no metadata) through a temporary file; skip an identical ``dst``."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"image {src} does not exist: pass image_root= (the folder the file paths are relative to).")
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


# ------------------------------------------------------------------------------------ names
def image_path(image: LabeledImage, image_root: Path | None) -> Path:
    """Where the image's pixels are: ``file`` itself when absolute, else ``image_root / file`` (or ``file``
    relative to the working folder when ``image_root`` is None)."""
    p = Path(image.file)
    if p.is_absolute() or image_root is None:
        return p
    return Path(image_root) / p


def output_stems(images: Sequence[LabeledImage]) -> list[str]:
    """One unique, flat file stem per image, in input order (deterministic for the same list).

    A relative ``file`` keeps its folders, joined by ``__`` (``"a/b/x.jpg"`` -> ``"a__b__x"``), so images
    of a recursive folder do not collide; an absolute one gives its stem. A stem met again gets
    ``-2``, ``-3``, ... (case-insensitively, for case-insensitive file systems).
    """
    seen: set[str] = set()
    stems: list[str] = []
    for im in images:
        p = PurePath(im.file.replace("\\", "/"))
        parts = [q for q in p.parent.parts if q not in ("", ".", "..", "/")] if not p.is_absolute() else []
        base = "__".join([*parts, p.stem]) or f"image{im.image_id}"
        stem, n = base, 1
        while stem.lower() in seen:
            n += 1
            stem = f"{base}-{n}"
        seen.add(stem.lower())
        stems.append(stem)
    return stems


# ------------------------------------------------------------------------------------ classes
def class_index(images: Sequence[LabeledImage], categories: Sequence[str]) -> dict[str, int]:
    """``{class name: index}`` in vocabulary order; raises when names repeat or an instance's class is not
    among ``categories``."""
    index: dict[str, int] = {}
    for k, name in enumerate(categories):
        if not name or name in index:
            raise InputError(f"class names must be non-empty and unique, got {list(categories)!r}")
        index[name] = k
    for im in images:
        for inst in im.instances:
            if inst.category not in index:
                raise InputError(
                    f"{im.file}: instance of class {inst.category!r} is not in the categories {list(categories)!r}"
                )
    return index


def class_colours(categories: Sequence[str]) -> list[tuple[int, int, int]]:
    """One RGB colour per class, ``textsam.viz.palette`` in vocabulary order (the same in every output)."""
    from ..viz import palette

    return palette(len(categories))


def hex_colour(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` -> ``"#rrggbb"``."""
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


# ------------------------------------------------------------------------------------ polygons
def mask_polygon(mask: np.ndarray) -> np.ndarray | None:
    """The largest external contour of an ``(H, W)`` mask as ``(K, 2)`` int32 ``(x, y)`` pixel indices.

    Contours come from ``supervision.mask_to_polygons`` (OpenCV, external, simple chain); the largest by
    area wins (the first on ties). A mask whose components are all under 3 contour points (a dot, a line)
    gives its tight box corners ``(x0, y0), (x1, y0), (x1, y1), (x0, y1)`` (``x1``, ``y1`` the last set
    column/row). ``None`` for an empty mask. Holes are not kept (YOLO-seg and Label Studio polygons are
    single rings).
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    try:
        import supervision as sv
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("polygon output needs supervision: pip install 'textsam[label]'") from err
    import cv2

    polygons = sv.mask_to_polygons(m)
    if polygons:
        areas = [abs(cv2.contourArea(p.reshape(-1, 1, 2).astype(np.float32))) for p in polygons]
        best = max(range(len(polygons)), key=lambda i: (areas[i], len(polygons[i]), -i))
        return np.asarray(polygons[best], dtype=np.int32).reshape(-1, 2)
    ys, xs = np.nonzero(m)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    log.debug("mask too thin for a contour, writing its box corners")
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.int32)
