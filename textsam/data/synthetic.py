"""Synthetic referring-segmentation data: coloured shapes on textured backgrounds, exact masks, phrases.

``generate(root, seed=...)`` writes, for each split in train / val / test::

    root/{split}/images/{id:06d}.png   uint8 RGB, image_size x image_size
    root/{split}/instances.json        COCO: compressed-RLE visible masks, category = shape, plus the
                                       fields shape, colour, size, rgb, center, radius, angle, position
                                       (visible-mask centroid, x y pixels), visible_fraction, z (paint order)
    root/{split}/refs.json             RefCOCO-like refs + ``ann_ids`` (all targets) + ``kind``
    root/{split}/absent.json           phrases naming what is NOT in the image (presence negatives):
                                       ``[{"image_id", "file_name", "sentences": [str, ...]}]``
    root/meta.json                     seed, counts, vocabulary, held-out pairs, generator version

Objects: 2-6 per image from :data:`~textsam.data.shapes_render.SHAPES` x
:data:`~textsam.data.shapes_render.COLOURS`, rotated, overlapping; later objects occlude earlier ones,
masks are the visible parts, objects under 40% visible (or under ``min_pixels``) are not painted at all.
Sizes are absolute bins of the circumradius (``small``: 6-9% of the image side, ``large``: 14-20%).

Phrases (``kind``):

- ``attribute``: "the small red circle", "blue star", "the white shape" - emitted only when exactly one
  object in the image has those attributes; one ref per object, one sentence per unique description.
- ``category``: "all triangles", "every red shape", "all small hearts" - every object matching (>= 2).
- ``spatial``: "the leftmost star", "the topmost red shape", and for groups of two also "the square on
  the right", "the upper circle" - the extreme object along x or y (``position``, the visible centroid)
  of a group (>= 2 members, same shape and/or colour) that leads the runner-up by at least 8% of the
  image side, so it is unique by construction.

Absent phrases (``absent.json``, drawn from a random stream of their own, so the rest is unchanged): per
image, "the {colour} {shape}" for a shape in the image in a colour it does not have there, a colour in the
image on a shape that does not have it (in train and val only seen pairs: a held-out pair is never named
there, not even as a negative), and "the {shape}" for a shape not in the image.

Everything is written into a hidden ``root/.synth-partial-<pid>/`` folder first and moved into place at
the end, so an interrupted run leaves no half-written dataset; a root that already holds any of these
names is refused (nothing is ever replaced).

Splits: ~20% of the (colour, shape) pairs (seeded) are held out; train and val use only seen pairs, test
only held-out ones. Output is byte-identical for the same arguments (per-image seeds, so also for any
``workers``).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import rle as _rle
from ..errors import InputError
from .coco import CocoDataset
from .shapes_render import BACKGROUNDS, COLOURS, SHAPES, SIZES, background, paint, sample_scene

__all__ = ["GENERATOR_VERSION", "SPLITS", "split_pairs", "make_phrases", "absent_phrases", "generate", "object_crops"]

logger = logging.getLogger(__name__)

# 1.1: absent.json (presence negatives); 1.2: train's and val's absent phrases name only seen pairs (test, and
# everything else, as 1.1)
GENERATOR_VERSION = "1.2"
SPLITS: tuple[str, ...] = ("train", "val", "test")
MIN_VISIBLE = 0.4
MAX_IMAGE_SIZE = 4096  # pixels per side; larger images take gigabytes per worker
SPATIAL_MARGIN = 0.08  # fraction of the image side by which a spatial extreme must lead

_DIRECTIONS = {  # name -> (axis, sign, superlative, template for a group of two)
    "left": (0, 1, "leftmost", "the {} on the left"),
    "right": (0, -1, "rightmost", "the {} on the right"),
    "top": (1, 1, "topmost", "the upper {}"),
    "bottom": (1, -1, "bottommost", "the lower {}"),
}


def _plural(shape: str) -> str:
    return shape + "es" if shape.endswith(("s", "x", "ch", "sh")) else shape + "s"


def split_pairs(
    seed: int, holdout_fraction: float = 0.2
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(seen, held_out)`` lists of (colour, shape) pairs, deterministic from ``seed``.

    At most ``ceil(n_held / n_shapes)`` pairs per shape and ``ceil(n_held / n_colours)`` per colour are
    held out, so every shape and every colour keeps seen pairs.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise InputError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}.")
    pairs = [(c, s) for s in SHAPES for c in COLOURS]
    n_hold = max(1, round(holdout_fraction * len(pairs)))
    cap_s, cap_c = math.ceil(n_hold / len(SHAPES)), math.ceil(n_hold / len(COLOURS))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    order = [pairs[i] for i in rng.permutation(len(pairs))]
    held: list[tuple[str, str]] = []
    for c, s in order:
        if (
            len(held) < n_hold
            and sum(h[1] == s for h in held) < cap_s
            and sum(h[0] == c for h in held) < cap_c
        ):
            held.append((c, s))
    held += [p for p in order if p not in held][: n_hold - len(held)]
    held_set = set(held)
    return [p for p in pairs if p not in held_set], sorted(held, key=pairs.index)


def make_phrases(
    objects: list[dict[str, Any]], rng: np.random.Generator, image_size: int
) -> list[dict[str, Any]]:
    """Referring phrases for one image's objects (dicts with shape, colour, size, position).

    Returns ``[{"kind", "targets": [object indices], "sentences": [str]}]``, one entry per target set and
    kind; see the module docstring for the rules.
    """
    attrs = ("size", "colour", "shape")
    out: dict[tuple[str, tuple[int, ...]], list[str]] = {}

    def add(kind: str, targets: list[int], sentence: str) -> None:
        sents = out.setdefault((kind, tuple(targets)), [])
        if sentence not in sents:
            sents.append(sentence)

    def noun(desc: dict[str, str], plural: bool = False) -> str:
        words = [desc[a] for a in ("size", "colour") if a in desc]
        if "shape" in desc:
            words.append(_plural(desc["shape"]) if plural else desc["shape"])
        else:
            words.append(
                ("shapes", "objects")[int(rng.integers(2))]
                if plural
                else ("shape", "object")[int(rng.integers(2))]
            )
        return " ".join(words)

    def members(desc: dict[str, str]) -> list[int]:
        return [i for i, o in enumerate(objects) if all(o[a] == v for a, v in desc.items())]

    combos = [c for r in range(1, 4) for c in itertools.combinations(attrs, r)]
    for i, o in enumerate(objects):  # attribute: descriptions that fit this object alone
        for combo in combos:
            desc = {a: o[a] for a in combo}
            if members(desc) == [i]:
                add("attribute", [i], ("the " if rng.random() < 0.7 else "") + noun(desc))
    seen: set[tuple[tuple[str, str], ...]] = set()
    for combo in [(), *combos]:  # category: every object sharing the attributes (at least two)
        for o in objects:
            desc = {a: o[a] for a in combo}
            key = tuple(desc.items())
            if key in seen:
                continue
            seen.add(key)
            group = members(desc)
            if len(group) >= 2:
                form = int(rng.integers(3))
                text = ("all ", "every ", "all the ")[form] + noun(desc, plural=form != 1)
                add("category", group, text)
    margin = SPATIAL_MARGIN * image_size
    for combo in (("shape",), ("colour",), ("colour", "shape")):  # spatial: extremes of a group
        done: set[tuple[str, ...]] = set()
        for o in objects:
            desc = {a: o[a] for a in combo}
            if tuple(desc.values()) in done:
                continue
            done.add(tuple(desc.values()))
            group = members(desc)
            if len(group) < 2:
                continue
            for axis, sign, superlative, pair_template in _DIRECTIONS.values():
                ranked = sorted(group, key=lambda j: sign * objects[j]["position"][axis])
                a, b = (objects[j]["position"][axis] for j in ranked[:2])
                if abs(a - b) < margin:
                    continue
                if len(group) == 2 and rng.random() < 0.5:
                    text = pair_template.format(noun(desc))
                else:
                    text = f"the {superlative} {noun(desc)}"
                add("spatial", [ranked[0]], text)
    return [{"kind": k, "targets": list(t), "sentences": s} for (k, t), s in out.items()]


def _image_rng(seed: int, split_index: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, split_index + 1, index]))


def _render_one(task: tuple[Any, ...]) -> dict[str, Any]:
    """Draw one image, write its PNG, return its objects (annotation fields) and phrases."""
    seed, split_index, index, pairs, size, min_pixels, png_path = task
    rng = _image_rng(seed, split_index, index)
    canvas, kind = background(rng, size, size)
    objects, full = sample_scene(rng, pairs, size, min_visible=MIN_VISIBLE, min_pixels=min_pixels)
    img, visible = paint(canvas, objects, full)
    Image.fromarray(img).save(png_path, format="PNG", compress_level=1)
    anns = []
    for z, (obj, m, fm) in enumerate(zip(objects, visible, full)):
        enc = _rle.encode(m)
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]  # == rle.to_bbox
        position = [round(float(xs.mean()) + 0.5, 2), round(float(ys.mean()) + 0.5, 2)]
        anns.append(
            {
                "segmentation": enc,
                "area": int(xs.size),
                "bbox": bbox,
                "shape": obj.shape,
                "colour": obj.colour,
                "size": obj.size,
                "rgb": list(obj.rgb),
                "center": [obj.cx, obj.cy],
                "radius": obj.radius,
                "angle": obj.angle,
                "position": position,
                "visible_fraction": round(int(m.sum()) / max(int(fm.sum()), 1), 4),
                "z": z,
            }
        )
    # train and val name only their own (seen) pairs; test's negatives may name any pair
    allowed = None if SPLITS[split_index] == "test" else {tuple(p) for p in pairs}
    absent = absent_phrases(anns, np.random.default_rng(np.random.SeedSequence([seed, split_index + 1, index, 7])),
                            allowed)
    return {"background": kind, "anns": anns, "phrases": make_phrases(anns, rng, size), "absent": absent}


def absent_phrases(objects: list[dict[str, Any]], rng: np.random.Generator,
                   pairs: set[tuple[str, str]] | None = None) -> list[str]:
    """Phrases naming nothing in the image (see the module docstring): at most three. ``pairs``: the (colour,
    shape) pairs a "the {colour} {shape}" phrase may name (None: any; train and val give their seen pairs, so
    a held-out pair is never named in them, not even as a negative)."""
    present = {(o["colour"], o["shape"]) for o in objects}
    shapes, colours = sorted({o["shape"] for o in objects}), sorted({o["colour"] for o in objects})
    out = []
    shape = shapes[int(rng.integers(len(shapes)))]
    others = [c for c in COLOURS if (c, shape) not in present and (pairs is None or (c, shape) in pairs)]
    if others:
        out.append(f"the {others[int(rng.integers(len(others)))]} {shape}")
    colour = colours[int(rng.integers(len(colours)))]
    others = [s for s in SHAPES if (colour, s) not in present and (pairs is None or (colour, s) in pairs)]
    if others:
        out.append(f"the {colour} {others[int(rng.integers(len(others)))]}")
    missing = [s for s in SHAPES if s not in shapes]
    if missing:
        out.append(f"the {missing[int(rng.integers(len(missing)))]}")
    return list(dict.fromkeys(out))


def _union_bbox(boxes: list[list[float]]) -> list[float]:
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


def _dump(obj: Any, path: Path, indent: int | None = None) -> None:
    seps = (",", ":") if indent is None else (",", ": ")
    path.write_text(
        json.dumps(obj, indent=indent, separators=seps, ensure_ascii=True) + "\n", encoding="utf-8"
    )


def generate(
    root: str | Path,
    *,
    seed: int = 0,
    num_train: int = 2000,
    num_val: int = 200,
    num_test: int = 200,
    image_size: int = 128,
    workers: int = 1,
    holdout_fraction: float = 0.2,
) -> dict[str, Any]:
    """Write the synthetic dataset under ``root`` (see the module docstring); return ``meta.json``'s dict.

    Image, annotation, ref and sentence ids are unique across splits (images and annotations from 1).
    """
    counts_in = {"train": num_train, "val": num_val, "test": num_test}
    for name, n in counts_in.items():
        if n < 0:
            raise InputError(f"num_{name} must be >= 0, got {n}.")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}.")
    if not sum(counts_in.values()):
        raise InputError("num_train, num_val and num_test are all 0: there is nothing to write.")
    if not 32 <= image_size <= MAX_IMAGE_SIZE:
        raise InputError(f"image_size must be between 32 and {MAX_IMAGE_SIZE} pixels, got {image_size}.")
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}.")
    root = Path(root)
    seen, held = split_pairs(seed, holdout_fraction)
    _check_root(root)
    stage = root / f".synth-partial-{os.getpid()}"  # renamed into place only when everything is written
    made_root = not root.exists()
    done = False
    try:
        stage.mkdir(parents=True)
        meta = _write(stage, seed, counts_in, image_size, workers, holdout_fraction, seen, held)
        for name in (*SPLITS, "meta.json"):
            os.replace(stage / name, root / name)
        done = True
    except OSError as err:
        raise InputError(f"cannot write the synthetic data into {root}: {err.strerror or err}. Choose an --out "
                         "folder you can write to, with enough free space.") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if made_root and not done and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    return meta


def _check_root(root: Path) -> None:
    """Refuse a file, or a folder that already holds what :func:`generate` writes (nothing is replaced)."""
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file, not a folder: give a new folder for the synthetic data.")
    taken = [name for name in (*SPLITS, "meta.json") if (root / name).exists()]
    if taken:
        raise InputError(f"{root} already holds {', '.join(taken)} (a dataset written before?): choose a new "
                         "folder, or delete those first. Nothing was changed.")


def _write(
    root: Path,
    seed: int,
    counts_in: dict[str, int],
    image_size: int,
    workers: int,
    holdout_fraction: float,
    seen: list[tuple[str, str]],
    held: list[tuple[str, str]],
) -> dict[str, Any]:
    """The body of :func:`generate`, writing into ``root`` (a fresh folder)."""
    min_pixels = max(12, round(40 * (image_size / 128) ** 2))
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    cat_id = {s: i + 1 for i, s in enumerate(SHAPES)}
    next_image, next_ann, next_ref, next_sent = 1, 1, 0, 0
    counts: dict[str, dict[str, int]] = {}
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for split_index, split in enumerate(SPLITS):
            n = counts_in[split]
            pairs = held if split == "test" else seen
            img_dir = root / split / "images"
            img_dir.mkdir(parents=True, exist_ok=True)
            ids = list(range(next_image, next_image + n))
            tasks = [
                (seed, split_index, k, pairs, image_size, min_pixels, img_dir / f"{iid:06d}.png")
                for k, iid in enumerate(ids)
            ]
            results = pool.map(_render_one, tasks, chunksize=16) if pool else map(_render_one, tasks)
            images, annotations, refs, absent = [], [], [], []
            for iid, res in zip(ids, results):
                file_name = f"{iid:06d}.png"
                images.append(
                    {"id": iid, "file_name": file_name, "height": image_size, "width": image_size,
                     "background": res["background"]}
                )  # fmt: skip
                ann_ids = []
                for a in res["anns"]:
                    ann = {
                        "id": next_ann,
                        "image_id": iid,
                        "category_id": cat_id[a["shape"]],
                        "iscrowd": 0,
                        **a,
                    }
                    annotations.append(ann)
                    ann_ids.append(next_ann)
                    next_ann += 1
                absent.append({"image_id": iid, "file_name": file_name, "sentences": res["absent"]})
                for ph in res["phrases"]:
                    targets = [ann_ids[t] for t in ph["targets"]]
                    sents = []
                    for text in ph["sentences"]:
                        sents.append(
                            {"sent_id": next_sent, "sent": text, "raw": text, "tokens": text.split()}
                        )
                        next_sent += 1
                    first = res["anns"][ph["targets"][0]]
                    refs.append(
                        {
                            "ref_id": next_ref,
                            "ann_id": targets[0] if len(targets) == 1 else targets,
                            "ann_ids": targets,
                            "image_id": iid,
                            "category_id": cat_id[first["shape"]],
                            "split": split,
                            "file_name": file_name,
                            "sent_ids": [s["sent_id"] for s in sents],
                            "sentences": sents,
                            "bbox": _union_bbox([res["anns"][t]["bbox"] for t in ph["targets"]]),
                            "kind": ph["kind"],
                        }
                    )
                    next_ref += 1
            next_image += n
            _dump({"images": images, "annotations": annotations, "categories": categories},
                  root / split / "instances.json")  # fmt: skip
            _dump(refs, root / split / "refs.json")
            _dump(absent, root / split / "absent.json")
            counts[split] = {
                "images": n,
                "annotations": len(annotations),
                "refs": len(refs),
                "sentences": sum(len(r["sentences"]) for r in refs),
                "absent_sentences": sum(len(a["sentences"]) for a in absent),
                **{
                    f"refs_{k}": sum(r["kind"] == k for r in refs)
                    for k in ("attribute", "category", "spatial")
                },
            }
            logger.info("synthetic %s: %s", split, counts[split])
    finally:
        if pool is not None:
            pool.shutdown()
    meta = {
        "generator": "textsam.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "counts": counts,
        "vocab": {
            "shapes": list(SHAPES),
            "colours": {k: list(v) for k, v in COLOURS.items()},
            "sizes": {k: {"radius_fraction": list(v)} for k, v in SIZES.items()},
            "size_rule": "absolute circumradius bins as a fraction of image_size",
            "backgrounds": list(BACKGROUNDS),
            "kinds": ["attribute", "category", "spatial"],
        },
        "holdout_fraction": holdout_fraction,
        "held_out_pairs": [list(p) for p in held],
        "seen_pairs": [list(p) for p in seen],
        "split_pairs": {"train": "seen", "val": "seen", "test": "held_out"},
        "min_visible_fraction": MIN_VISIBLE,
        "min_pixels": min_pixels,
        "spatial_margin": SPATIAL_MARGIN,
    }
    _dump(meta, root / "meta.json", indent=2)
    return meta


def object_crops(
    root: str | Path, split: str, size: int = 64, *, pad: float = 0.15, limit: int | None = None
) -> list[tuple[np.ndarray, str]]:
    """``(crop, phrase)`` pairs for contrastive (CLIP-style) pre-training, one per object of a split.

    The crop is a square ``(size, size, 3)`` uint8 RGB window centred on the object's box, ``pad`` of its
    longer side added on every side (zero outside the image), resized bilinearly; the phrase is
    ``"a {size} {colour} {shape}"``, e.g. "a small red circle".
    """
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}.")
    base = Path(root) / split
    ds = CocoDataset(base / "instances.json", base / "images")
    out: list[tuple[np.ndarray, str]] = []
    for iid in ds.image_ids():
        anns = ds.anns_for_image(iid)
        if not anns:
            continue
        img = Image.fromarray(ds.load_image(iid))
        for a in anns:
            x, y, w, h = a.bbox
            side = max(w, h) * (1 + 2 * pad)
            cx, cy = x + w / 2, y + h / 2
            box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
            crop = img.crop(box).resize((size, size), Image.BILINEAR)
            e = a.extra
            out.append((np.asarray(crop, dtype=np.uint8), f"a {e['size']} {e['colour']} {e['shape']}"))
            if limit is not None and len(out) >= limit:
                return out
    return out
