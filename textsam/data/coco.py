"""COCO instance annotations: images, annotations, categories and per-instance masks.

A small reader for the official ``instances_*.json`` layout (and the files textsam's synthetic generator
writes). Masks are ``(H, W)`` bool arrays in the image's pixel frame. ``segmentation`` may be

- polygons: ``[[x1, y1, x2, y2, ...], ...]`` in pixels (pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``),
- uncompressed RLE: ``{"size": [H, W], "counts": [int, ...]}`` (column-major, as pycocotools),
- compressed RLE: ``{"size": [H, W], "counts": "str"}``.

With pycocotools installed masks are exactly ``COCO.annToMask``. Without it, RLEs are decoded by
:mod:`textsam.rle` (bit-exact) and polygons by :func:`polygons_to_mask`, which sets a pixel when its
centre is inside the polygon. pycocotools instead traces the outline on a 5x upsampled grid with
rounding, so the two differ on a few boundary pixels: on coco_val2017_tiny the median IoU is 0.995 and
the mean area difference under one pixel (PIL's ``ImageDraw.polygon`` is worse, it also fills the
boundary pixels: median IoU 0.94).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import rle as _rle
from ..errors import InputError
from ..transforms import load_image as _load_image

__all__ = [
    "CocoImage",
    "CocoAnnotation",
    "CocoDataset",
    "segmentation_to_mask",
    "polygons_to_mask",
    "read_json",
]

logger = logging.getLogger(__name__)


@dataclass
class CocoImage:
    """One entry of ``images``; ``path`` is ``image_dir / file_name``."""

    id: int
    file_name: str
    path: Path
    height: int
    width: int


@dataclass
class CocoAnnotation:
    """One entry of ``annotations``; ``bbox`` is ``[x, y, w, h]`` pixels; ``extra`` keeps any other keys."""

    id: int
    image_id: int
    category_id: int
    bbox: list[float]
    area: float
    iscrowd: int
    segmentation: object
    extra: dict[str, Any] = field(default_factory=dict)


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file, turning every failure into an :class:`InputError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: {p}. Check the path.")
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{p} is not a valid JSON {what} ({err}).") from err


def _coco_mask_api() -> Any | None:
    try:
        from pycocotools import mask as mask_api
    except ImportError:
        return None
    return mask_api


def polygons_to_mask(polygons: list[Any], height: int, width: int) -> np.ndarray:
    """``(height, width)`` bool mask of COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` (pixels).

    Pixel ``(col i, row j)`` is set when its centre ``(i + 0.5, j + 0.5)`` lies inside a polygon (even-odd
    rule within one polygon, union across polygons). Vectorised scanline: one crossing per (edge, row).
    """
    out = np.zeros((height, width), dtype=bool)
    yc = np.arange(height, dtype=np.float64) + 0.5
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).ravel()
        if xy.size < 6 or xy.size % 2 or not np.isfinite(xy).all():
            raise InputError(f"a polygon needs at least 3 finite (x, y) points, got {xy.size} numbers.")
        xy = xy.reshape(-1, 2)
        x0, y0 = xy[:, 0], xy[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        # rows whose centre lies in [min(y0, y1), max(y0, y1)) of each edge; horizontal edges cross none
        r0 = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
        r1 = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64)
        n = np.maximum(r1 - r0, 0)
        total = int(n.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(n.size), n)
        rows = np.repeat(r0, n) + np.arange(total) - np.repeat(np.cumsum(n) - n, n)
        t = (yc[rows] - y0[edge]) / (y1[edge] - y0[edge])
        xs = x0[edge] + t * (x1[edge] - x0[edge])
        cols = np.clip(np.ceil(xs - 0.5), 0, width).astype(np.int64)
        top, bottom = int(rows.min()), int(rows.max()) + 1  # only the rows the polygon spans
        flat = (rows - top) * (width + 1) + cols
        toggles = np.bincount(flat, minlength=(bottom - top) * (width + 1)).reshape(bottom - top, width + 1)
        out[top:bottom] |= (np.cumsum(toggles[:, :width], axis=1) & 1).astype(bool)
    return out


def segmentation_to_mask(segm: object, height: int, width: int, *, backend: str = "auto") -> np.ndarray:
    """``(height, width)`` bool mask of a COCO ``segmentation`` (polygons, RLE list or RLE string).

    ``backend``: ``"auto"`` (pycocotools when importable), ``"pycocotools"`` or ``"numpy"``
    (:mod:`textsam.rle` for RLE, PIL for polygons; see the module docstring for the difference).
    """
    if backend not in ("auto", "pycocotools", "numpy"):
        raise InputError(f"backend must be 'auto', 'pycocotools' or 'numpy', got {backend!r}.")
    api = None if backend == "numpy" else _coco_mask_api()
    if backend == "pycocotools" and api is None:
        raise InputError("backend='pycocotools' needs pycocotools: pip install 'textsam[eval]'.")
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise InputError("an RLE segmentation needs 'size' and 'counts'.")
        size = [int(v) for v in segm["size"]]
        if size != [height, width]:
            raise InputError(f"RLE size {size} does not match the image size {[height, width]}.")
        counts = segm["counts"]
        if api is None:
            return _rle.decode(segm)
        if isinstance(counts, list):
            rle = api.frPyObjects(segm, height, width)
        else:
            _rle.counts_of(segm)  # validates before pycocotools sees it
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        return api.decode(rle).astype(bool)
    if isinstance(segm, list):
        if not segm:
            return np.zeros((height, width), dtype=bool)
        polys = segm if isinstance(segm[0], (list, tuple)) else [segm]
        if api is None:
            return polygons_to_mask(polys, height, width)
        for poly in polys:
            if len(poly) < 6 or len(poly) % 2:
                raise InputError(f"a polygon needs at least 3 (x, y) points, got {len(poly)} numbers.")
        rles = api.frPyObjects([list(map(float, p)) for p in polys], height, width)
        return api.decode(api.merge(rles)).astype(bool)
    raise InputError(f"unsupported segmentation of type {type(segm).__name__}: use polygons or an RLE dict.")


def _int(entry: dict[str, Any], key: str, where: str) -> int:
    try:
        return int(entry[key])
    except KeyError as err:
        raise InputError(f"{where} has no '{key}'.") from err
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: '{key}' must be an integer, got {entry[key]!r}.") from err


class CocoDataset:
    """A COCO instances file plus the folder its images live in.

    Attributes: ``images`` (id -> :class:`CocoImage`), ``annotations`` (id -> :class:`CocoAnnotation`),
    ``categories`` (id -> name). Raises :class:`InputError` naming the file for malformed input.
    """

    _ANN_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation")

    def __init__(self, annotation_file: str | Path, image_dir: str | Path) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        data = read_json(self.annotation_file, "COCO annotation file")
        src = str(self.annotation_file)
        if not isinstance(data, dict):
            raise InputError(f"{src}: a COCO file is a JSON object, got {type(data).__name__}.")
        missing = [k for k in ("images", "annotations", "categories") if k not in data]
        if missing:
            raise InputError(
                f"{src} is missing the COCO key(s) {missing}; it needs images, annotations, categories."
            )
        for key in ("images", "annotations", "categories"):
            if not isinstance(data[key], list):
                raise InputError(f"{src}: '{key}' must be a list.")
        self.categories: dict[int, str] = {}
        for i, c in enumerate(data["categories"]):
            where = f"{src}: categories[{i}]"
            if not isinstance(c, dict) or "name" not in c:
                raise InputError(f"{where} needs 'id' and 'name'.")
            self.categories[_int(c, "id", where)] = str(c["name"])
        self.images: dict[int, CocoImage] = {}
        for i, im in enumerate(data["images"]):
            where = f"{src}: images[{i}]"
            if not isinstance(im, dict) or ("file_name" not in im and "coco_url" not in im):
                raise InputError(f"{where} needs 'id', 'file_name', 'height' and 'width'.")
            iid = _int(im, "id", where)
            if iid in self.images:
                raise InputError(f"{where}: duplicate image id {iid}.")
            name, path = self._image_file(im)
            self.images[iid] = CocoImage(iid, name, path, _int(im, "height", where), _int(im, "width", where))
        self.annotations: dict[int, CocoAnnotation] = {}
        self._by_image: dict[int, list[int]] = {iid: [] for iid in self.images}
        for i, a in enumerate(data["annotations"]):
            where = f"{src}: annotations[{i}]"
            if not isinstance(a, dict):
                raise InputError(f"{where} is not an object.")
            aid, iid, cid = _int(a, "id", where), _int(a, "image_id", where), _int(a, "category_id", where)
            if iid not in self.images:
                raise InputError(f"{where} (id {aid}) points to image {iid}, which is not in 'images'.")
            if cid not in self.categories:
                raise InputError(f"{where} (id {aid}) has category {cid}, which is not in 'categories'.")
            if aid in self.annotations:
                raise InputError(f"{where}: duplicate annotation id {aid}.")
            if "segmentation" not in a:
                raise InputError(f"{where} (id {aid}) has no 'segmentation'.")
            bbox = [float(v) for v in a.get("bbox", [0, 0, 0, 0])]
            extra = {k: v for k, v in a.items() if k not in self._ANN_KEYS}
            self.annotations[aid] = CocoAnnotation(
                aid,
                iid,
                cid,
                bbox,
                float(a.get("area", 0.0)),
                int(a.get("iscrowd", 0)),
                a["segmentation"],
                extra,
            )
            self._by_image[iid].append(aid)
        self._name_to_id = {name: cid for cid, name in sorted(self.categories.items(), reverse=True)}
        logger.debug("%s: %d images, %d annotations", src, len(self.images), len(self.annotations))


    def _image_file(self, im: dict[str, Any]) -> tuple[str, Path]:
        """An image entry's file name and path. LVIS v1 entries have no ``file_name``, only ``coco_url``
        (``http://images.cocodataset.org/<split>/<file>``): the file is ``<image_dir>/<file>`` when the image
        folder is that split's folder, else ``<split>/<file>`` beside it (LVIS val also draws from train2017)
        or inside it."""
        if "file_name" in im:
            name = str(im["file_name"])
            return name, self.image_dir / name
        split, base = str(im["coco_url"]).rstrip("/").split("/")[-2:]
        if self.image_dir.name == split:
            return base, self.image_dir / base
        if (self.image_dir.parent / split).is_dir():  # LVIS val draws from train2017 as well as val2017
            return f"{split}/{base}", self.image_dir.parent / split / base
        return f"{split}/{base}", self.image_dir / split / base
    def __len__(self) -> int:
        return len(self.images)

    def image_ids(self) -> list[int]:
        """All image ids, sorted."""
        return sorted(self.images)

    def anns_for_image(self, image_id: int, *, include_crowd: bool = False) -> list[CocoAnnotation]:
        """Annotations of one image in file order (crowd regions only with ``include_crowd``)."""
        if image_id not in self.images:
            raise InputError(f"image id {image_id} is not in {self.annotation_file}.")
        anns = [self.annotations[a] for a in self._by_image[image_id]]
        return anns if include_crowd else [a for a in anns if not a.iscrowd]

    def annotation(self, ann: CocoAnnotation | int) -> CocoAnnotation:
        """The annotation itself, given it or its id."""
        if isinstance(ann, CocoAnnotation):
            return ann
        try:
            return self.annotations[int(ann)]
        except KeyError as err:
            raise InputError(f"annotation id {ann} is not in {self.annotation_file}.") from err

    def mask(self, ann: CocoAnnotation | int, *, backend: str = "auto") -> np.ndarray:
        """``(H, W)`` bool mask of one annotation (``H, W`` of its image)."""
        a = self.annotation(ann)
        im = self.images[a.image_id]
        try:
            return segmentation_to_mask(a.segmentation, im.height, im.width, backend=backend)
        except InputError as err:
            raise InputError(f"{self.annotation_file}: annotation {a.id}: {err}") from err

    def load_image(self, image_id: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB pixels of an image (InputError naming the path when it is missing)."""
        if image_id not in self.images:
            raise InputError(f"image id {image_id} is not in {self.annotation_file}.")
        info = self.images[image_id]
        if not info.path.is_file():
            raise InputError(f"image file not found: {info.path} (image id {image_id}); check the image folder.")
        return _load_image(info.path)

    def category_id(self, name: str) -> int:
        """Id of a category name (the smallest id when a name repeats)."""
        try:
            return self._name_to_id[name]
        except KeyError as err:
            names = sorted(self._name_to_id)
            known = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise InputError(f"unknown category {name!r} in {self.annotation_file}; known: {known}.") from err
