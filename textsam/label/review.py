"""A static review page: one overlay PNG per image and one HTML page that lists them.

Files::

    OUT/review/<stem>.png    the image with every mask tinted in its class colour, outlined, and tagged
                             "class score" at the top-left of its box (higher scores drawn on top)
    OUT/review/index.html    totals per class, then one card per image (overlay, file, per-class counts);
                             plain HTML and CSS, relative links, opens from the file system

``<stem>`` is :func:`textsam.label.outputs.output_stems`'s; colours are ``textsam.viz.palette`` in vocabulary
order, as in the PNG class maps and the Label Studio config.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ..errors import InputError
from ..ops import mask_box
from ..viz import _boundary, _draw_label
from .outputs import class_colours, class_index, hex_colour, image_path, output_stems, write_png, write_text
from .types import LabeledImage

__all__ = ["write_review", "class_overlay"]


def _load_rgb(image: LabeledImage, image_root: Path | None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of the image, upright (EXIF) when that is what matches its recorded size."""
    path = image_path(image, image_root)
    try:
        with Image.open(path) as pil:
            pil.load()
            if pil.size != (image.width, image.height):
                pil = ImageOps.exif_transpose(pil)
            rgb = pil.convert("RGB")
    except OSError as err:
        raise InputError(f"cannot read image {path} for the review overlay ({err}); pass image_root=") from err
    if rgb.size != (image.width, image.height):
        raise InputError(f"{path} is {rgb.size[0]}x{rgb.size[1]}, labelled as {image.width}x{image.height}")
    return np.asarray(rgb)


def class_overlay(
    rgb: np.ndarray, image: LabeledImage, colours: dict[str, tuple[int, int, int]], *, alpha: float = 0.45
) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``rgb`` with each instance tinted and outlined in ``colours[category]`` and tagged.

    Instances are drawn in increasing score, so where masks overlap the higher score shows.
    """
    h, w = rgb.shape[:2]
    out = rgb.copy()
    line = max(1, round(max(h, w) / 400))
    order = sorted(range(len(image.instances)), key=lambda i: (image.instances[i].score, -i))
    tags = []
    for i in order:
        inst = image.instances[i]
        m = inst.mask()
        box = mask_box(m)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        crop_m, crop = m[y0:y1, x0:x1], out[y0:y1, x0:x1]
        c = np.asarray(colours[inst.category], dtype=np.float32)
        crop[crop_m] = np.clip(np.rint(crop[crop_m] * (1.0 - alpha) + c * alpha), 0, 255).astype(np.uint8)
        crop[_boundary(crop_m, line)] = colours[inst.category]
        tags.append((f"{inst.category} {inst.score:.2f}", (x0, y0), colours[inst.category]))
    result = Image.fromarray(out)
    draw = ImageDraw.Draw(result)
    font_size = max(10, round(max(h, w) / 45))
    for text, anchor, colour in tags:
        _draw_label(draw, text, anchor, colour, font_size, (w, h))
    return np.asarray(result)


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:middle;border:1px solid #555}
.grid{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;background:#fff;border:1px solid #ddd;padding:.5em;width:320px}
figure img{max-width:100%;height:auto;display:block}figcaption{font-size:.85em;word-break:break-all}
.none{color:#a00}"""


def _swatch(rgb: Sequence[int]) -> str:
    return f'<span class="swatch" style="background:{hex_colour(rgb)}"></span>'


def _page(images: Sequence[LabeledImage], stems: Sequence[str], categories: Sequence[str],
          colours: dict[str, tuple[int, int, int]]) -> str:
    counts = [Counter(inst.category for inst in im.instances) for im in images]
    totals: Counter[str] = Counter()
    for c in counts:
        totals.update(c)
    esc = html.escape
    rows = "\n".join(
        f"<tr><td>{_swatch(colours[name])}{esc(name)}</td><td>{totals[name]}</td>"
        f"<td>{sum(1 for c in counts if c[name])}</td></tr>"
        for name in categories
    )
    empty = sum(1 for im in images if not im.instances)
    cards = []
    for im, stem, c in zip(images, stems, counts):
        href = quote(f"{stem}.png")
        listed = ", ".join(f"{_swatch(colours[n])}{esc(n)} {c[n]}" for n in categories if c[n])
        cards.append(
            f'<figure id="{esc(stem, quote=True)}"><a href="{href}"><img src="{href}" loading="lazy" '
            f'alt="{esc(im.file, quote=True)}"></a><figcaption>{esc(im.file)}<br>'
            + (listed if listed else '<span class="none">no instance</span>')
            + "</figcaption></figure>"
        )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>textsam labels: review</title>\n<style>\n" + _CSS + "\n</style>\n</head>\n<body>\n"
        f"<h1>Review: {len(images)} images, {sum(totals.values())} instances</h1>\n"
        f"<p>{empty} images without any instance.</p>\n"
        "<table>\n<tr><th>class</th><th>instances</th><th>images</th></tr>\n" + rows + "\n</table>\n"
        '<div class="grid">\n' + "\n".join(cards) + "\n</div>\n</body>\n</html>\n"
    )


def write_review(
    images: Sequence[LabeledImage],
    categories: Sequence[str],
    out: Path,
    *,
    polygons: bool = False,
    image_root: Path | None = None,
) -> list[Path]:
    """Write ``OUT/review/<stem>.png`` per image and ``OUT/review/index.html``; returns the files written.

    ``image_root``: the folder relative ``file`` paths are relative to (the images are read to draw on).
    ``polygons`` is accepted for the common writer signature; overlays show the masks themselves.
    """
    folder = Path(out) / "review"
    class_index(images, categories)
    colours = dict(zip(categories, class_colours(categories)))
    stems = output_stems(images)
    written: list[Path] = []
    for im, stem in zip(images, stems):
        drawn = class_overlay(_load_rgb(im, image_root), im, colours)
        written.append(write_png(folder / f"{stem}.png", Image.fromarray(drawn)))
    written.append(write_text(folder / "index.html", _page(images, stems, categories, colours)))
    return written
