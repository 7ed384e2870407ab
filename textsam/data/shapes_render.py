"""Rendering for the synthetic shapes data: vocabulary, shape outlines, textured backgrounds, scenes.

Everything is vectorised numpy and deterministic given a ``numpy.random.Generator``. Shapes are polygons
filled by :func:`textsam.data.coco.polygons_to_mask` (pixel set when its centre is inside), so a shape's
mask is exactly the pixels painted in its colour. Objects are painted in order; later ones occlude
earlier ones and an object's stored mask is its visible part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .coco import polygons_to_mask

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "BACKGROUNDS",
    "SceneObject",
    "shape_polygon",
    "render_shape",
    "background",
    "sample_scene",
    "paint",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "heart", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (35, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 220, 30),
    "purple": (145, 45, 190),
    "orange": (250, 135, 20),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
}
# Size bins: circumradius as a fraction of the image side. "small" and "large" are absolute, with a gap
# between the bins so a phrase's size word is never borderline.
SIZES: dict[str, tuple[float, float]] = {"small": (0.06, 0.09), "large": (0.14, 0.20)}
BACKGROUNDS: tuple[str, ...] = ("noise", "stripes", "gradient", "checker")
COLOUR_JITTER = 10  # +- per channel, uniform, per object
SAME_COLOUR_GAP = 2  # pixels kept between objects of one colour name, so each stays a separate blob


@dataclass
class SceneObject:
    """One painted object: centre ``(cx, cy)`` and circumradius ``radius`` in pixels, ``angle`` in radians."""

    shape: str
    colour: str
    size: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    radius: float
    angle: float


def _regular(n: int, phase: float) -> np.ndarray:
    t = phase + np.arange(n) * (2 * np.pi / n)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _unit_outline(shape: str) -> np.ndarray:
    """``(N, 2)`` outline of a shape with circumradius 1 around the origin, y pointing down."""
    if shape == "circle":
        return _regular(64, 0.0)
    if shape == "square":
        return _regular(4, np.pi / 4)
    if shape == "triangle":
        return _regular(3, -np.pi / 2)
    if shape == "hexagon":
        return _regular(6, 0.0)
    if shape == "star":
        pts = _regular(10, -np.pi / 2)
        pts[1::2] *= 0.45
        return pts
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y + 2.5], axis=1)
        return pts / np.abs(pts).max()
    if shape == "cross":
        a = 0.33
        return np.array(
            [
                (-a, -1),
                (a, -1),
                (a, -a),
                (1, -a),
                (1, a),
                (a, a),
                (a, 1),
                (-a, 1),
                (-a, a),
                (-1, a),
                (-1, -a),
                (-a, -a),
            ],
            dtype=np.float64,
        )
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


_OUTLINES = {s: _unit_outline(s) for s in SHAPES}


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """``(N, 2)`` x, y pixel vertices of a shape rotated by ``angle`` (radians, clockwise on screen)."""
    c, s = np.cos(angle), np.sin(angle)
    pts = _OUTLINES[shape] @ np.array([[c, s], [-s, c]])
    return pts * radius + np.array([cx, cy])


def render_shape(obj: SceneObject, height: int, width: int) -> np.ndarray:
    """``(height, width)`` bool mask of the whole (unoccluded) object, clipped to the image."""
    poly = shape_polygon(obj.shape, obj.cx, obj.cy, obj.radius, obj.angle)
    return polygons_to_mask([poly.ravel()], height, width)


def _tone(rng: np.random.Generator) -> np.ndarray:
    """A muted colour: grey level 70..170 with a small tint, so saturated objects stand out."""
    return rng.uniform(70, 170) + rng.uniform(-18, 18, size=3)


def background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """``(H, W, 3)`` uint8 textured background and its kind (one of :data:`BACKGROUNDS`)."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    a, b = _tone(rng), _tone(rng)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    if kind == "noise":
        cell = int(rng.integers(4, 17))
        gh, gw = -(-height // cell) + 1, -(-width // cell) + 1
        coarse = rng.random((gh, gw))
        fine = np.kron(coarse, np.ones((cell, cell)))[:height, :width]
        t = 0.7 * fine + 0.3 * rng.random((height, width), dtype=np.float32)
    elif kind == "stripes":
        period = rng.uniform(6, 24)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
    elif kind == "gradient":
        u = np.broadcast_to(u, (height, width))
        span = np.ptp(u) or 1.0
        t = (u - u.min()) / span
    else:  # checker
        cell = rng.uniform(6, 20)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    img = a.astype(np.float32) + (b - a).astype(np.float32) * t[..., None]
    img += 4.0 * rng.standard_normal(size=img.shape, dtype=np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), kind


def paint(
    canvas: np.ndarray, objects: list[SceneObject], full_masks: list[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paint objects in order on a copy of ``canvas``; return the image and each object's visible mask."""
    img = canvas.copy()
    for obj, m in zip(objects, full_masks):
        img[m] = obj.rgb
    visible: list[np.ndarray] = []
    cover = np.zeros(canvas.shape[:2], dtype=bool)
    for m in reversed(full_masks):
        visible.append(m & ~cover)
        cover |= m
    return img, visible[::-1]


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Square (Chebyshev) dilation of a bool mask by ``r`` pixels."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy or dx:
                out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] |= mask[
                    max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
                ]
    return out


def _pick_pair(
    rng: np.random.Generator, pairs: list[tuple[str, str]], chosen: list[tuple[str, str]]
) -> tuple[str, str]:
    """A (colour, shape) pair; often sharing the colour or shape of one already chosen (for phrases)."""
    if chosen:
        r = rng.random()
        ref = chosen[int(rng.integers(len(chosen)))]
        if r < 0.35:
            same = [p for p in pairs if p[1] == ref[1]]
            return same[int(rng.integers(len(same)))]
        if r < 0.6:
            same = [p for p in pairs if p[0] == ref[0]]
            return same[int(rng.integers(len(same)))]
    return pairs[int(rng.integers(len(pairs)))]


def sample_scene(
    rng: np.random.Generator,
    pairs: list[tuple[str, str]],
    image_size: int,
    *,
    min_objects: int = 2,
    max_objects: int = 6,
    min_visible: float = 0.4,
    min_pixels: int = 40,
    max_tries: int = 50,
) -> tuple[list[SceneObject], list[np.ndarray]]:
    """Objects (paint order) and their full masks; every object ends at least ``min_visible`` visible.

    Objects failing the visibility rule (fraction of their in-image pixels left visible, or fewer than
    ``min_pixels`` visible pixels) are left out entirely (never painted); dropping later objects only
    uncovers earlier ones, so one pass suffices. Objects of the same colour name never touch (at least
    :data:`SAME_COLOUR_GAP` pixels apart; an object with no such place in 8 tries is skipped).
    Resamples until at least ``min_objects`` remain.
    """
    s = image_size
    objects: list[SceneObject] = []
    masks: list[np.ndarray] = []
    for _ in range(max_tries):
        n = int(rng.integers(min_objects, max_objects + 1))
        objects, masks, chosen = [], [], []
        for _ in range(n):
            colour, shape = _pick_pair(rng, pairs, chosen)
            size = "small" if rng.random() < 0.5 else "large"
            lo, hi = SIZES[size]
            radius = float(rng.uniform(lo, hi) * s)
            angle = float(rng.uniform(-0.5, 0.5) if shape == "heart" else rng.uniform(0, 2 * np.pi))
            jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
            rgb = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + jitter, 0, 255))
            same = [m for o, m in zip(objects, masks) if o.colour == colour]
            for _ in range(8):  # same-coloured objects must not touch: they would merge into one blob
                cx, cy = (float(v) for v in rng.uniform(0.75 * radius, s - 0.75 * radius, size=2))
                obj = SceneObject(shape, colour, size, rgb, cx, cy, radius, angle)  # type: ignore[arg-type]
                mask = render_shape(obj, s, s)
                grown = _dilate(mask, SAME_COLOUR_GAP)
                if not any((grown & m).any() for m in same):
                    objects.append(obj)
                    masks.append(mask)
                    chosen.append((colour, shape))
                    break
        cover = np.zeros((s, s), dtype=bool)
        keep = [False] * len(objects)
        for i in range(len(objects) - 1, -1, -1):
            full = int(masks[i].sum())
            vis = int((masks[i] & ~cover).sum())
            keep[i] = full > 0 and vis >= min_pixels and vis >= min_visible * full
            if keep[i]:  # a dropped object is never painted, so it covers nothing
                cover |= masks[i]
        objects = [o for o, k in zip(objects, keep) if k]
        masks = [m for m, k in zip(masks, keep) if k]
        if len(objects) >= min_objects:
            break
    return objects, masks
