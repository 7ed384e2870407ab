"""Image loading and SAM's resize-longest-side geometry.

Frames used throughout textsam:
- *original*: pixels of the image as the user gave it, ``(H, W)``; points are ``(x, y)``.
- *input*: the image resized so its longest side is ``long_side`` (1024 for SAM), ``(newh, neww)``,
  then zero-padded bottom/right to ``long_side`` x ``long_side`` after normalisation.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

# Largest image accepted by default (pixels). PIL's own bomb check is at ~179 MP; we stop earlier
# with a clear message. Callers may pass max_pixels=None to lift the limit.
DEFAULT_MAX_PIXELS = 120_000_000


def load_image(
    source: np.ndarray | Image.Image | str | Path | bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Return any supported image as an ``(H, W, 3)`` uint8 RGB array.

    Accepts a path, encoded bytes, a PIL image of any mode (RGB, RGBA, LA, L, I;16, I, F, P, CMYK,
    YCbCr, 1) or an array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` of uint8, uint16,
    bool or float in [0, 1]. EXIF orientation is applied to files and PIL images. Alpha is dropped (SAM
    sees the colour channels), palette images are expanded, 16-bit images are scaled to 8 bits.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"image file not found: {path}. Check the path.")
        if path.is_dir():
            raise InputError(f"{path} is a folder, not an image file.")
        if not path.is_file():  # a FIFO, socket or device would block or never end
            raise InputError(f"{path} is not a regular file (a pipe or a device?): give an image file.")
        if path.stat().st_size == 0:
            raise InputError(f"{path} is empty (0 bytes): the file was not written completely. Give an image file.")
        return _decode(lambda: Image.open(path), max_pixels, str(path), readable_hint=True)
    if isinstance(source, bytes):
        if not source:
            raise InputError("the data is empty (0 bytes): give the bytes of an image file.")
        return _decode(lambda: Image.open(io.BytesIO(source)), max_pixels, "the uploaded data")
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, max_pixels, "the PIL image")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels)
    raise InputError(
        f"unsupported image type {type(source).__name__}: give an HxWx3 uint8 RGB array, a PIL image or a path."
    )


def _decode(opener: Callable[[], Image.Image], max_pixels: int | None, what: str, *,
            readable_hint: bool = False) -> np.ndarray:
    """Open an encoded image, check its size from the header (before any pixel is decoded), then decode
    it to RGB. PIL's own decompression-bomb checks are replaced by ``max_pixels``."""
    hint = " Give a JPEG, PNG, TIFF, BMP or WebP file." if readable_hint else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with opener() as im:  # reads the header only
                _check_size(im.height, im.width, max_pixels, what)
                im.load()
                return _pil_to_rgb(im, max_pixels, what)
    except InputError:
        raise
    except PermissionError:
        raise InputError(f"cannot read {what}: permission denied. Check the file's permissions.") from None
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f" ({int(found.group(1)) / 1e6:.0f} megapixels)" if found else ""
        raise InputError(f"{what} claims a size far beyond any photo{size}: it was not decoded (a decompression "
                         "bomb?). Downscale it, or give another image.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        if readable_hint:
            raise InputError(f"cannot read {what} as an image ({err}).{hint}") from None
        raise InputError(f"{what} is not a readable image ({err}).") from None


def _check_size(h: int, w: int, max_pixels: int | None, what: str) -> None:
    if h < 1 or w < 1:
        raise InputError(f"{what} is empty ({h}x{w} pixels).")
    if max_pixels is not None and h * w > max_pixels:
        raise InputError(
            f"{what} has {w}x{h} = {h * w / 1e6:.1f} megapixels, more than the limit of "
            f"{max_pixels / 1e6:.0f} MP. Downscale it first (SAM works at 1024 px on the long side anyway)."
        )


def _pil_to_rgb(im: Image.Image, max_pixels: int | None, what: str) -> np.ndarray:
    _check_size(im.height, im.width, max_pixels, what)
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _array_to_rgb(np.asarray(im), max_pixels)
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def _array_to_rgb(arr: np.ndarray, max_pixels: int | None) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputError(
            f"image array has shape {tuple(arr.shape)}; expected (H, W), (H, W, 3) or (H, W, 4)."
        )
    _check_size(arr.shape[0], arr.shape[1], max_pixels, "the image array")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint8:
        pass
    elif arr.dtype in (np.uint16, np.int32, np.uint32, np.int64):
        top = 65535.0 if arr.dtype == np.uint16 or arr.max() > 255 else 255.0
        arr = np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError("image array contains NaN or infinite values.")
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        arr = np.clip(arr.astype(np.float64) * scale + 0.5, 0, 255).astype(np.uint8)
    else:
        raise InputError(f"unsupported image dtype {arr.dtype}; use uint8 RGB.")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def get_preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Size ``(newh, neww)`` with the longest side ``long_side``, rounded half up (SAM's rule)."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 image with PIL bilinear so its longest side is ``long_side``.

    Matches segment-anything's ``ResizeLongestSide.apply_image`` exactly.
    """
    newh, neww = get_preprocess_shape(image.shape[0], image.shape[1], long_side)
    if (newh, neww) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))


def apply_coords(
    coords: np.ndarray | torch.Tensor, original_size: tuple[int, int], long_side: int
) -> torch.Tensor:
    """Map ``(..., 2)`` (x, y) points from the original frame to the input frame (float32 tensor)."""
    old_h, old_w = original_size
    new_h, new_w = get_preprocess_shape(old_h, old_w, long_side)
    out = torch.as_tensor(coords, dtype=torch.float64).clone()
    out[..., 0] = out[..., 0] * (new_w / old_w)
    out[..., 1] = out[..., 1] * (new_h / old_h)
    return out.float()


def apply_boxes(
    boxes: np.ndarray | torch.Tensor, original_size: tuple[int, int], long_side: int
) -> torch.Tensor:
    """Map ``(B, 4)`` x0,y0,x1,y1 boxes from the original frame to the input frame (float32 tensor)."""
    boxes_t = torch.as_tensor(boxes, dtype=torch.float64)
    return apply_coords(boxes_t.reshape(-1, 2, 2), original_size, long_side).reshape(-1, 4)
