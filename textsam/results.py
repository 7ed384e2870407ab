"""Writing segmentation results to disk: mask PNGs, an overlay PNG and a JSON with COCO RLEs.

Used by the CLI (``textsam segment``) and the app. For an image with stem ``s`` in ``out_dir``:

- ``s_mask{i}.png``: mode "L", 0/255, one per result, in result order;
- ``s_overlay.png``: the image with every mask, box and the prompt's clicks drawn on it;
- ``s.json``: ``{"image": {...}, "prompt": {...}, "results": [...]}`` (see :func:`write_results`).

Every file is written to a temporary file in ``out_dir`` and renamed over its target, so a crash
never leaves a half-written file; the JSON is written last. Existing outputs with the same names are
replaced; no other file is ever deleted.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import rle
from .errors import InputError

__all__ = ["MaskResult", "write_results", "mask_box_xyxy", "atomic_write"]


def mask_box_xyxy(mask: np.ndarray) -> list[float]:
    """Box ``[x0, y0, x1, y1]`` around the set pixels, in pixel-edge coordinates (``x1 = last col + 1``).

    ``[0, 0, 0, 0]`` for an empty mask. Consistent with the COCO ``[x, y, w, h]`` of the same mask.
    """
    m = np.asarray(mask) != 0
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(m.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


@dataclass
class MaskResult:
    """One mask of a prediction.

    mask: ``(H, W)`` bool in the original image frame.
    score: predicted IoU (or any confidence in [0, 1]).
    label: the phrase (or another name) it answers; may be empty.
    box: ``[x0, y0, x1, y1]`` pixels; computed from the mask (pixel edges) when not given.
    """

    mask: np.ndarray
    score: float
    label: str = ""
    box: list[float] | None = field(default=None)

    def __post_init__(self) -> None:
        m = np.asarray(self.mask)
        if m.ndim != 2:
            raise InputError(f"MaskResult.mask must be (H, W), got shape {m.shape}")
        self.mask = m if m.dtype == bool else m != 0
        self.score = float(self.score)
        self.label = "" if self.label is None else str(self.label)
        if self.box is None:
            self.box = mask_box_xyxy(self.mask)
        else:
            box = [float(v) for v in np.asarray(self.box, dtype=np.float64).reshape(-1)]
            if len(box) != 4:
                raise InputError(f"MaskResult.box must be [x0, y0, x1, y1], got {self.box!r}")
            self.box = box


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _save_png(path: Path, image: Any) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback for numpy values and paths in a prompt."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _prompt_points(prompt: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Clicks stored in a prompt dict as ``point_coords`` (K, 2) and ``point_labels`` (K,)."""
    coords = prompt.get("point_coords")
    if coords is None or len(coords) == 0:
        return None, None
    pts = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    labels = prompt.get("point_labels")
    lab = np.ones(len(pts), dtype=int) if labels is None else np.asarray(labels, dtype=int).reshape(-1)
    return pts, lab


def write_results(
    out_dir: Path,
    stem: str,
    image: np.ndarray,
    results: list[MaskResult],
    *,
    prompt: dict,
    source: str | None = None,
) -> dict:
    """Write masks, an overlay and a JSON for one image; return the JSON dict.

    Args:
        out_dir: folder to write into (created if missing).
        stem: file name stem, e.g. the image's stem.
        image: ``(H, W, 3)`` uint8 RGB the masks belong to.
        results: masks in the order to number them.
        prompt: what was asked, stored as is in the JSON (numpy values are converted). Clicks given
            as ``point_coords`` / ``point_labels`` are drawn on the overlay.
        source: optional path of the input image, stored as ``image.file``.

    Returns:
        ``{"image": {"file", "height", "width"}, "prompt": prompt, "overlay": "<stem>_overlay.png",
        "results": [{"label", "score", "box_xyxy", "bbox_xywh", "area", "segmentation", "mask_file"}]}``
        where ``segmentation`` is a COCO RLE with ``counts`` as a str (``pycocotools.mask.decode``
        reads it back once ``counts`` is encoded to bytes).
    """
    from . import viz

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"write_results needs an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    if not stem or "/" in stem or "\\" in stem or stem in (".", ".."):
        raise InputError(f"stem must be a plain file name, got {stem!r}")
    h, w = img.shape[:2]
    for i, r in enumerate(results):
        if r.mask.shape != (h, w):
            raise InputError(f"result {i} has a {r.mask.shape} mask for a {(h, w)} image")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    entries = []
    for i, r in enumerate(results):
        name = f"{stem}_mask{i}.png"
        _save_png(out_dir / name, viz.mask_to_png(r.mask))
        seg = rle.encode(r.mask)
        entries.append({
            "label": r.label,
            "score": r.score,
            "box_xyxy": list(r.box or [0.0, 0.0, 0.0, 0.0]),
            "bbox_xywh": rle.to_bbox(seg),
            "area": rle.area(seg),
            "segmentation": seg,
            "mask_file": name,
        })

    pts, pl = _prompt_points(prompt)
    masks = np.stack([r.mask for r in results]) if results else np.zeros((0, h, w), dtype=bool)
    drawn = viz.overlay(
        img, masks,
        labels=[r.label for r in results], scores=[r.score for r in results],
        boxes=[r.box for r in results] if results else None,
        points=pts, point_labels=pl,
    )
    from PIL import Image

    overlay_name = f"{stem}_overlay.png"
    _save_png(out_dir / overlay_name, Image.fromarray(drawn))

    doc = {
        "image": {"file": source, "height": h, "width": w},
        "prompt": prompt,
        "overlay": overlay_name,
        "results": entries,
    }
    text = json.dumps(doc, indent=2, default=_jsonable)
    atomic_write(out_dir / f"{stem}.json", lambda f: f.write(text.encode("utf-8")))
    return json.loads(text)
