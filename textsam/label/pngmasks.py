"""PNG mask output: per image an instance-index map and a class-index map, with a legend.

Files::

    OUT/instances/<stem>.png   (H, W) instance index: 0 background, i + 1 for ``image.instances[i]``;
                               8-bit grey ("L") up to 255 instances, 16-bit grey ("I;16") beyond
    OUT/classes/<stem>.png     (H, W) class index: 0 background, k + 1 for ``categories[k]``; a palette-mode
                               PNG ("P") coloured by class (index 0 black) up to 255 classes, 16-bit grey beyond
    OUT/legend.json            {"background": 0, "classes": [{"index", "name", "colour": [r, g, b], "hex"}]}
    OUT/instances.json         per image: file, stem, size and each instance's index, class, phrase, score, presence

Where instances overlap, the higher score wins in both maps (on equal scores, the earlier instance).
``<stem>`` is :func:`textsam.label.outputs.output_stems`'s. Colours are ``textsam.viz.palette`` in
vocabulary order, as in the review overlays and the Label Studio config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from .outputs import class_colours, class_index, hex_colour, output_stems, write_png, write_text
from .types import LabeledImage

__all__ = ["write_masks", "index_maps"]


def index_maps(image: LabeledImage, classes: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(instance_map, class_map)``, both ``(H, W)`` int64: instance ``i`` -> ``i + 1``, class ``k`` -> ``k + 1``.

    Instances are painted in increasing score (ties: later instances first), so the higher score wins.
    """
    inst_map = np.zeros((image.height, image.width), dtype=np.int64)
    cls_map = np.zeros_like(inst_map)
    order = sorted(range(len(image.instances)), key=lambda i: (image.instances[i].score, -i))
    for i in order:
        inst = image.instances[i]
        m = inst.mask()
        if m.shape != inst_map.shape:
            raise InputError(f"{image.file}: mask of {inst.category!r} is {m.shape}, the image {inst_map.shape}")
        inst_map[m] = i + 1
        cls_map[m] = classes[inst.category] + 1
    return inst_map, cls_map


def _grey(arr: np.ndarray, top: int) -> Image.Image:
    """8-bit grey when ``top`` <= 255, else 16-bit grey."""
    if top <= 255:
        return Image.fromarray(arr.astype(np.uint8))  # mode "L"
    return Image.fromarray(arr.astype(np.uint16))  # mode "I;16"


def write_masks(
    images: Sequence[LabeledImage],
    categories: Sequence[str],
    out: Path,
    *,
    polygons: bool = False,
    image_root: Path | None = None,
) -> list[Path]:
    """Write the instance and class maps of every image, ``legend.json`` and ``instances.json``.

    Returns the files written. ``polygons`` and ``image_root`` are accepted for the common writer signature:
    masks are written as they are and the images are not read.
    """
    out = Path(out)
    classes = class_index(images, categories)
    colours = class_colours(categories)
    palette_mode = len(categories) <= 255
    flat_palette = [0, 0, 0] + [c for rgb in colours for c in rgb] if palette_mode else []
    written: list[Path] = []
    table = []
    for im, stem in zip(images, output_stems(images)):
        inst_map, cls_map = index_maps(im, classes)
        written.append(write_png(out / "instances" / f"{stem}.png", _grey(inst_map, len(im.instances))))
        if palette_mode:
            cls_png = _palette_image(cls_map, flat_palette)
        else:
            cls_png = _grey(cls_map, len(categories))
        written.append(write_png(out / "classes" / f"{stem}.png", cls_png))
        table.append({
            "file": im.file, "stem": stem, "image_id": im.image_id, "width": im.width, "height": im.height,
            "instances": [
                {"index": i + 1, "category": inst.category, "phrase": inst.phrase,
                 "score": float(inst.score), "presence": None if inst.presence is None else float(inst.presence)}
                for i, inst in enumerate(im.instances)
            ],
        })
    legend = {
        "background": 0,
        "classes": [
            {"index": k + 1, "name": str(name), "colour": list(rgb), "hex": hex_colour(rgb)}
            for k, (name, rgb) in enumerate(zip(categories, colours))
        ],
    }
    written.append(write_text(out / "legend.json", json.dumps(legend, indent=2, sort_keys=True) + "\n"))
    written.append(write_text(out / "instances.json", json.dumps(table, indent=2, sort_keys=True) + "\n"))
    return written


def _palette_image(cls_map: np.ndarray, flat_palette: list[int]) -> Image.Image:
    """A mode "P" image whose pixel values are the class indices and whose palette is the class colours."""
    arr = np.ascontiguousarray(cls_map, dtype=np.uint8)
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    img.putpalette(flat_palette)
    return img
