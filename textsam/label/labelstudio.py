"""Label Studio pre-annotations: tasks to import into a project, and the labelling config they match.

Files::

    OUT/labelstudio_tasks.json    a JSON list, one task per image (one per line):
                                  {"data": {"image": URL, "file": file}, "predictions": [{"model_version": "textsam",
                                   "score": mean instance score, "result": [region, ...]}]}
    OUT/labelstudio_config.xml    <Image name="image" value="$image"/> and <BrushLabels name="label"> (or
                                  <PolygonLabels> with ``polygons=True``), one <Label> per class in its colour

Regions: ``brushlabels`` with Label Studio's brush RLE (``label_studio_sdk.converter.brush.mask2rle`` of the
mask as 0/255), or ``polygonlabels`` with ``points`` in percent of the image size (x / W * 100 of the
largest external contour's pixel indices, as label-studio-sdk's own brush -> polygon export reads them);
each with ``score`` (the mask's score, clipped to [0, 1]) and ``original_width`` / ``original_height``.

Serving local images. ``data.image`` is a Label Studio local-files URL, ``/data/local-files/?d=<path>``:
start Label Studio with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<root>``, add a "Local files" source storage whose absolute path is
inside ``<root>`` (Settings -> Cloud Storage; no need to sync it), then import the tasks JSON. ``<path>`` is
``file`` relative to ``image_root`` (so ``<root>`` = ``image_root``) when ``file`` is relative or lies under
``image_root``; otherwise it is the absolute path without its leading ``/`` (``<root>`` = ``/``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from .outputs import class_colours, class_index, hex_colour, mask_polygon, write_text
from .types import Instance, LabeledImage

__all__ = ["write_labelstudio", "labelstudio_config", "labelstudio_task", "local_files_url"]

FROM_NAME = "label"
TO_NAME = "image"
MODEL_VERSION = "textsam"
TASKS_FILE = "labelstudio_tasks.json"
CONFIG_FILE = "labelstudio_config.xml"


def _brush() -> Any:
    try:
        from label_studio_sdk.converter import brush
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("Label Studio output needs label-studio-sdk: pip install 'textsam[label]'") from err
    return brush


def labelstudio_config(categories: Sequence[str], *, polygons: bool = False) -> str:
    """The labelling config XML (built by label-studio-sdk's ``LabelInterface.create``)."""
    from label_studio_sdk.label_interface import LabelInterface

    tag = "PolygonLabels" if polygons else "BrushLabels"
    labels = tuple(
        ("Label", {"value": str(name), "background": hex_colour(colour)}, ())
        for name, colour in zip(categories, class_colours(categories))
    )
    return LabelInterface.create(
        {TO_NAME: ("Image", {"zoom": "true"}), FROM_NAME: (tag, {"toName": TO_NAME}, labels)}
    )


def local_files_url(image: LabeledImage, image_root: Path | None) -> str:
    """``/data/local-files/?d=<path>`` for the image (see the module docstring for ``<path>``)."""
    p = Path(image.file)
    if p.is_absolute() and image_root is not None:
        try:
            p = p.relative_to(Path(image_root))
        except ValueError:
            pass
    d = p.as_posix().lstrip("/")
    return "/data/local-files/?d=" + quote(d, safe="/")


def _region(inst: Instance, k: int, image: LabeledImage, polygons: bool) -> dict[str, Any] | None:
    mask = inst.mask()
    w, h = image.width, image.height
    region: dict[str, Any] = {
        "id": f"{image.image_id}_{k}",
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "score": float(min(max(inst.score, 0.0), 1.0)),
    }
    if polygons:
        poly = mask_polygon(mask)
        if poly is None:
            return None
        pct = poly.astype(np.float64) / np.array([w, h]) * 100.0
        points = [[round(float(x), 4), round(float(y), 4)] for x, y in pct]
        region.update(type="polygonlabels", value={"points": points, "polygonlabels": [inst.category]})
    else:
        if not mask.any():
            return None
        rle = _brush().mask2rle(np.where(mask, 255, 0).astype(np.uint8))
        region.update(type="brushlabels", value={"format": "rle", "rle": [int(v) for v in rle],
                                                 "brushlabels": [inst.category]})
    return region


def labelstudio_task(image: LabeledImage, *, polygons: bool = False, image_root: Path | None = None) -> dict[str, Any]:
    """One Label Studio task with its prediction (regions in instance order; empty masks are left out)."""
    regions = [r for k, inst in enumerate(image.instances) if (r := _region(inst, k, image, polygons)) is not None]
    prediction: dict[str, Any] = {"model_version": MODEL_VERSION, "result": regions}
    if regions:
        prediction["score"] = round(float(np.mean([r["score"] for r in regions])), 6)
    return {"data": {"image": local_files_url(image, image_root), "file": image.file}, "predictions": [prediction]}


def write_labelstudio(
    images: Sequence[LabeledImage],
    categories: Sequence[str],
    out: Path,
    *,
    polygons: bool = False,
    image_root: Path | None = None,
) -> list[Path]:
    """Write ``OUT/labelstudio_tasks.json`` and ``OUT/labelstudio_config.xml``; returns both paths.

    ``polygons``: polygonlabels instead of brushlabels. ``image_root``: the folder relative ``file`` paths are
    relative to, and the Label Studio document root the URLs are relative to. Images are not read.
    """
    out = Path(out)
    class_index(images, categories)  # checks the vocabulary and every instance's class
    tasks = [labelstudio_task(im, polygons=polygons, image_root=image_root) for im in images]
    lines = [json.dumps(t, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for t in tasks]
    text = "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
    config = labelstudio_config(categories, polygons=polygons)
    return [write_text(out / TASKS_FILE, text), write_text(out / CONFIG_FILE, config)]
