"""YOLO-seg output, ultralytics layout::

    OUT/images/<stem><suffix>   a byte copy of each image (copies, not links: the dataset stays valid when
                                the source folder moves or is cleaned, and works on every file system)
    OUT/labels/<stem>.txt       one line per instance: ``class x1 y1 x2 y2 ...``, the largest external
                                contour of its mask, x / W and y / H of its pixel indices (5 decimals);
                                an empty file for an image without instances
    OUT/data.yaml               path (OUT, absolute), train and val (both ``images``), nc, names

``<stem>`` comes from :func:`textsam.label.outputs.output_stems` (flat, unique). Class index = position
in ``categories``. Polygons come from ``supervision.mask_to_polygons`` and each line is formatted by
supervision's own YOLO serialiser, so ``sv.DetectionDataset.from_yolo`` and ultralytics read it back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .outputs import class_index, copy_file, image_path, mask_polygon, output_stems, write_text
from .types import LabeledImage

__all__ = ["write_yolo", "yolo_lines"]

log = logging.getLogger(__name__)


def _supervision_yolo() -> Any:
    try:
        from supervision.dataset.formats import yolo
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("YOLO-seg output needs supervision: pip install 'textsam[label]'") from err
    return yolo


def yolo_lines(image: LabeledImage, classes: dict[str, int]) -> list[str]:
    """The label-file lines of one image (``classes``: name -> index); empty masks are skipped."""
    sv_yolo = _supervision_yolo()
    lines: list[str] = []
    for inst in image.instances:
        polygon = mask_polygon(inst.mask())
        if polygon is None:
            log.warning("%s: empty %s mask skipped in YOLO labels", image.file, inst.category)
            continue
        xyxy = np.array([*polygon.min(axis=0), *polygon.max(axis=0)], dtype=np.float32)
        lines.append(
            sv_yolo.object_to_yolo(
                xyxy=xyxy, class_id=classes[inst.category], image_shape=(image.height, image.width),
                polygon=polygon.astype(np.float64),
            )
        )
    return lines


def write_yolo(
    images: Sequence[LabeledImage],
    categories: Sequence[str],
    out: Path,
    *,
    polygons: bool = False,
    image_root: Path | None = None,
) -> list[Path]:
    """Write the YOLO-seg dataset under ``out``; returns every file written (images, labels, data.yaml).

    ``polygons`` is accepted for the common writer signature; YOLO-seg is always polygons.
    ``image_root``: the folder relative ``file`` paths are relative to.
    """
    import yaml

    out = Path(out)
    classes = class_index(images, categories)
    written: list[Path] = []
    for im, stem in zip(images, output_stems(images)):
        src = image_path(im, image_root)
        written.append(copy_file(src, out / "images" / f"{stem}{src.suffix}"))
        lines = yolo_lines(im, classes)
        written.append(write_text(out / "labels" / f"{stem}.txt", "".join(f"{line}\n" for line in lines)))
    data = {
        "path": str(out.resolve()),
        "train": "images",
        "val": "images",
        "nc": len(categories),
        "names": {k: str(name) for k, name in enumerate(categories)},
    }
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    written.append(write_text(out / "data.yaml", text))
    return written
