"""The click canvas: the image drawn with its masks, clicks, box and pending corner, at a display scale,
and the mapping of a click on it back to the image's pixels.
"""

from __future__ import annotations

import numpy as np

DISPLAY_LONG_SIDE = 960  # the click canvas is drawn at most this large
_BOX_COLOUR, _CORNER_COLOUR = (255, 215, 0), (255, 215, 0)


def display_factor(shape: tuple[int, ...], long_side: int = DISPLAY_LONG_SIDE) -> float:
    """Scale of the click canvas: large images shrink to ``long_side``; small ones grow 1-4x (the
    browser never upscales an image, and a 12 MP canvas would be slow to encode on every click)."""
    m = max(1, max(shape[:2]))
    return long_side / m if m > long_side else float(max(1, min(4, 480 // m)))


def to_image_xy(x: float, y: float, shape: tuple[int, ...]) -> tuple[float, float]:
    """A click on the canvas (display pixels) -> the pixel ``(x, y)`` of the original image."""
    f, (h, w) = display_factor(shape), shape[:2]
    if f >= 1:
        return float(min(w - 1, x // f)), float(min(h - 1, y // f))
    return (float(min(w - 1, max(0, round((x + 0.5) / f - 0.5)))),
            float(min(h - 1, max(0, round((y + 0.5) / f - 0.5)))))


def draw_canvas(
    image: np.ndarray, masks: np.ndarray | None = None, labels: list[str] | None = None,
    scores: list[float] | None = None, points: list | None = None, box: list[float] | None = None,
    corner: tuple[float, float] | None = None, factor: float = 1.0,
) -> np.ndarray:
    """The image with masks (tinted, "label score" tags), clicks, the prompt box and a pending corner,
    drawn at ``factor`` times the image size (coordinates are original pixels)."""
    from PIL import Image, ImageDraw

    from textsam import viz

    h, w = image.shape[:2]
    m = masks if masks is not None and len(masks) else np.zeros((0, h, w), dtype=bool)
    if factor != 1.0:
        dw, dh = max(1, round(w * factor)), max(1, round(h * factor))
        cols = np.minimum(((np.arange(dw) + 0.5) / factor).astype(int), w - 1)
        rows = np.minimum(((np.arange(dh) + 0.5) / factor).astype(int), h - 1)
        image = (image[rows][:, cols] if factor > 1 else
                 np.asarray(Image.fromarray(image).resize((dw, dh), Image.BILINEAR)))
        m = m[:, rows][:, :, cols]
        h, w = dh, dw
    pts = np.asarray([[(p[0] + 0.5) * factor - 0.5, (p[1] + 0.5) * factor - 0.5] for p in points]) if points else None
    pl = np.asarray([p[2] for p in points], int) if points else None
    out = viz.overlay(image, m, labels=labels if len(m) else None, scores=scores if len(m) else None,
                      points=pts, point_labels=pl)
    if box is None and corner is None:
        return out
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    line = max(1, round(max(h, w) / 300))
    if box is not None:
        b = [v * factor for v in box]
        draw.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], outline=_BOX_COLOUR, width=line)
    if corner is not None:
        r = max(3, round(max(h, w) / 120))
        x, y = ((v + 0.5) * factor - 0.5 for v in corner)
        draw.line([x - r, y, x + r, y], fill=_CORNER_COLOUR, width=line)
        draw.line([x, y - r, x, y + r], fill=_CORNER_COLOUR, width=line)
    return np.asarray(pil)
