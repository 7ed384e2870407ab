"""Reading what the user sends: uploaded image files (checked before they are decoded) and the
``segment`` API's points and boxes given as numbers or JSON text.

Frames: points are ``(x, y)`` pixels of the original image, boxes ``x0, y0, x1, y1`` pixels.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from textsam.errors import InputError

from .serving import short_message

DEFAULT_MAX_PIXELS = 20_000_000  # uploads above this are refused with a message (phones: 12-48 MP)


def _payload_path(payload: Any) -> tuple[Path | None, str]:
    """(path, display name) of an upload: a Gradio FileData dict/object, a path, or neither."""
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
    name = payload.get("orig_name") if isinstance(payload, dict) else getattr(payload, "orig_name", None)
    if isinstance(payload, (str, Path)):
        path = payload
    if path is None:
        return None, "image"
    return Path(path), str(name or Path(path).name)


def read_upload(payload: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """An upload as ``(H, W, 3)`` uint8 RGB plus its file name; InputError with a clear message otherwise.

    The pixel count is checked from the header, before decoding, so a huge image costs nothing.
    """
    from PIL import Image, UnidentifiedImageError

    from textsam import transforms

    if payload is None:
        raise InputError("No image: upload one (PNG, JPEG, WebP, BMP or TIFF) or pick an example.")
    if isinstance(payload, (np.ndarray, Image.Image)):
        return transforms.load_image(payload, max_pixels=max_pixels), "image"
    path, name = _payload_path(payload)
    if path is None or not path.exists():
        raise InputError("The upload did not arrive; please upload the image again.")
    if not path.is_file():  # reading a FIFO or a device would block
        raise InputError(f"{name} is not a regular file (a pipe or a device?): upload an image file.")
    if path.stat().st_size == 0:
        raise InputError(f"{name} is empty (0 bytes): the upload did not complete. Upload the image again.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
    except Image.DecompressionBombError:
        raise InputError(f"{name} is far too large to open safely. Downscale it and upload it again.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError(f"{name} is not an image this app can read. Upload a PNG, JPEG, WebP, BMP or "
                         "TIFF file.") from None
    if width * height > max_pixels:
        raise InputError(f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels; this app "
                         f"accepts at most {max_pixels / 1e6:.0f} MP. Downscale it (SAM works at 1024 px "
                         "on the long side anyway) and upload it again.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return transforms.load_image(path, max_pixels=max_pixels), name
    except InputError as err:
        raise InputError(f"{name} could not be decoded (is the file complete?): "
                         f"{short_message(err).replace(str(path), name)}") from None



def _from_json(value: Any, what: str, form: str) -> Any:
    """``value``, or the JSON it holds when it is a string ("" = nothing)."""
    import json

    if not isinstance(value, str):
        return value
    try:
        return json.loads(value) if value.strip() else None
    except ValueError:
        raise InputError(f"{what} must be JSON like {form}; got {value[:80]!r}") from None


def _numbers(vals: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals)


def parse_points(points: Any) -> list[tuple[float, float, int]]:
    """``[[x, y], [x, y, label], ...]`` (label 1 = foreground, default; 0 = background)."""
    points = _from_json(points, "points", "[[x, y, label], ...]")
    if points is not None and not isinstance(points, (list, tuple)):
        raise InputError(f"points must be a list [[x, y, label], ...] in pixels; got {points!r}")
    out = []
    for p in points or []:
        vals = list(p) if isinstance(p, (list, tuple)) else []
        if len(vals) not in (2, 3) or not _numbers(vals) or (len(vals) == 3 and vals[2] not in (0, 1)):
            raise InputError(f"each point must be [x, y] or [x, y, label] with finite pixel numbers and label 0 "
                             f"or 1; got {p!r}")
        out.append((float(vals[0]), float(vals[1]), int(vals[2]) if len(vals) == 3 else 1))
    return out


def parse_box(box: Any) -> list[float] | None:
    """``[x0, y0, x1, y1]`` pixels (top-left, bottom-right); ``None`` / ``[]`` for no box.

    A box given as numbers must have x0 <= x1 and y0 <= y1, as everywhere in textsam (a box drawn by two
    clicks on the page is sorted by :func:`box_from_corners` instead).
    """
    box = _from_json(box, "box", "[x0, y0, x1, y1]")
    if box is None or (isinstance(box, (list, tuple)) and len(box) == 0):
        return None
    vals = list(box) if isinstance(box, (list, tuple)) else []
    if len(vals) != 4 or not _numbers(vals):
        raise InputError(f"box must be [x0, y0, x1, y1]: four finite numbers in pixels; got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in vals)
    if x0 > x1 or y0 > y1:
        raise InputError(f"box {[x0, y0, x1, y1]} has x0 > x1 or y0 > y1: give it as x0, y0, x1, y1 "
                         "(top-left, bottom-right)")
    return [x0, y0, x1, y1]


def box_from_corners(a: tuple[float, float], b: tuple[float, float]) -> list[float]:
    """The box spanned by two opposite corners clicked in any order."""
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])]

