"""Overlays of masks, boxes, clicks and labels on an image, for the CLI and the app.

Frames: everything is in pixels of the original image; boxes are ``x0, y0, x1, y1``, points ``(x, y)``.
Marker, line and font sizes scale with the image so labels stay legible on large photos.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .ops import mask_box

__all__ = ["overlay", "mask_to_png", "palette"]

# Well-separated first colours (Tableau-like), then golden-ratio hues for any further masks.
_BASE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127),
]
_POSITIVE = (0, 220, 0)
_NEGATIVE = (230, 0, 0)


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours; the same ``n`` always gives the same list (prefix-stable)."""
    if n < 0:
        raise InputError(f"palette size must be >= 0, got {n}")
    colours = list(_BASE[:n])
    golden = 0.618033988749895
    for i in range(len(colours), n):
        hue = (0.11 + i * golden) % 1.0
        sat = 0.65 + 0.3 * ((i * 7) % 3) / 2
        val = 0.95 - 0.25 * ((i * 5) % 2)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def mask_to_png(mask: np.ndarray) -> Image.Image:
    """An ``(H, W)`` mask (bool, or non-zero = set) as a mode ``"L"`` image of 0 and 255."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"mask_to_png takes one (H, W) mask, got shape {m.shape}")
    return Image.fromarray(np.where(m != 0, 255, 0).astype(np.uint8))


# ------------------------------------------------------------------------------------ helpers
def _boundary(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels of ``mask`` within ``thickness`` pixels of its edge (4-neighbour erosion).

    Pixels on the array border count as edge pixels (the outside is taken as background).
    """
    inner = mask.copy()
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    for _ in range(thickness):
        eroded = inner.copy()
        eroded[1:, :] &= inner[:-1, :]
        eroded[:-1, :] &= inner[1:, :]
        eroded[:, 1:] &= inner[:, :-1]
        eroded[:, :-1] &= inner[:, 1:]
        inner = eroded
    return mask & ~inner


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` pixels (the bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError, AttributeError):
        return ImageFont.load_default()


def _label_text(i: int, labels: Sequence[str] | None, scores: Sequence[float] | None) -> str:
    parts = []
    if labels is not None and labels[i]:
        parts.append(str(labels[i]))
    if scores is not None:
        parts.append(f"{float(scores[i]):.2f}")
    return " ".join(parts)


def _draw_label(
    draw: ImageDraw.ImageDraw, text: str, anchor: tuple[int, int], colour: tuple[int, int, int],
    font_size: int, size: tuple[int, int],
) -> None:
    """A filled tag with ``text`` just above ``anchor`` (x, y), moved inside the image when needed."""
    font = _font(font_size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, font_size // 5)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    w, h = size
    x = min(max(0, anchor[0]), max(0, w - tw))
    y = anchor[1] - th if anchor[1] - th >= 0 else anchor[1]
    y = min(max(0, y), max(0, h - th))
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=colour)
    draw.text((x + pad - left, y + pad - top), text, fill=ink, font=font)


# ------------------------------------------------------------------------------------ overlay
def overlay(
    image: np.ndarray,
    masks: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
    boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
    points: np.ndarray | Sequence[Sequence[float]] | None = None,
    point_labels: np.ndarray | Sequence[int] | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw masks (tinted, outlined), boxes, clicks and "label score" tags on a copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(N, H, W)`` bool (an ``(H, W)`` mask is taken as ``N = 1``); mask ``i`` gets
            ``palette(N)[i]``.
        labels: ``N`` phrases; scores: ``N`` floats. Together they make a tag like ``"dog 0.93"``
            at the top-left of each mask's box.
        boxes: ``(N, 4)`` x0, y0, x1, y1 pixels, drawn as rectangles in the mask's colour.
        points: ``(K, 2)`` (x, y) clicks; point_labels: ``(K,)`` 1 = foreground (green),
            0 = background (red); default all foreground.
        alpha: opacity of the mask tint, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB; pixels outside every mask, box, marker and tag are unchanged.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"overlay needs an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != (h, w):
        raise InputError(f"masks must be (N, {h}, {w}) to match the image, got {np.asarray(masks).shape}")
    m = m != 0
    n = m.shape[0]
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    for name, seq in (("labels", labels), ("scores", scores)):
        if seq is not None and len(seq) != n:
            raise InputError(f"{name} has {len(seq)} entries for {n} masks")
    box_arr = None
    if boxes is not None:
        box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
        if box_arr.shape[0] != n:
            raise InputError(f"boxes must be ({n}, 4), got {np.asarray(boxes).shape}")

    colours = palette(n)
    scale = max(h, w)
    line = max(1, round(scale / 400))
    out = img.copy()
    for i in range(n):
        box = mask_box(m[i])
        if box is None:
            continue
        x0, y0, x1, y1 = box  # work inside the mask's box only: cheap for small masks on big images
        crop_m, crop = m[i, y0:y1, x0:x1], out[y0:y1, x0:x1]
        c = np.asarray(colours[i], dtype=np.float32)
        tinted = crop[crop_m].astype(np.float32) * (1.0 - alpha) + c * alpha
        crop[crop_m] = np.clip(np.rint(tinted), 0, 255).astype(np.uint8)
        crop[_boundary(crop_m, line)] = colours[i]
    result = Image.fromarray(out)
    draw = ImageDraw.Draw(result)

    if box_arr is not None:
        for i, (x0, y0, x1, y1) in enumerate(box_arr):
            if x1 > x0 and y1 > y0:
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colours[i], width=line)

    if points is not None:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        pl = np.ones(len(pts), dtype=int) if point_labels is None else np.asarray(point_labels).reshape(-1)
        if pl.shape[0] != pts.shape[0]:
            raise InputError(f"point_labels has {pl.shape[0]} entries for {pts.shape[0]} points")
        radius = max(3, round(scale / 120))
        rim = max(1, radius // 3)
        for (x, y), lab in zip(pts, pl):
            fill = _POSITIVE if int(lab) == 1 else _NEGATIVE
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline=(255, 255, 255), width=rim)

    if labels is not None or scores is not None:
        font_size = max(10, round(scale / 45))
        for i in range(n):
            text = _label_text(i, labels, scores)
            if not text:
                continue
            anchor_box = tuple(int(round(v)) for v in box_arr[i]) if box_arr is not None else mask_box(m[i])
            if anchor_box is None or anchor_box[2] <= anchor_box[0]:
                anchor_box = mask_box(m[i])
            if anchor_box is None:
                continue  # an empty mask without a box has nowhere to put its tag
            _draw_label(draw, text, (anchor_box[0], anchor_box[1]), colours[i], font_size, (w, h))
    return np.asarray(result)
