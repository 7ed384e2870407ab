"""Training data: targets (one mask and the phrase naming it) from COCO instances or referring expressions,
the checked opening of a ``[data]`` split, per-pixel class maps for the semantic loss, and the small image
helpers the samples use (greyscale views, CLIP crop input).

A target (:class:`Entry`) is one instance, or the union of a referring expression's instances; its samples are
made by :class:`~textsam.train.samples.SegmentationDataset`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, TextSamError

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["Entry", "CombinedSource", "coco_of", "build_entries", "open_source", "SemanticLabels", "ClipInput", "BASIC_COLOUR_WORDS",
           "colour_words", "names_no_colour", "greyscale", "rotate_hue", "crop_params"]


@dataclass(frozen=True)
class Entry:
    """One target: an image, the annotation ids whose union is the mask, and the phrase naming it."""

    image_id: int
    ann_ids: tuple[int, ...]
    phrase: str

    @property
    def key(self) -> str:
        """Cache key of the target (its annotation ids)."""
        return "_".join(str(a) for a in self.ann_ids)


@dataclass(frozen=True)
class CombinedSource:
    """A training split made of several sources over one COCO instances file and image folder.

    ``parts``: ``ReferDataset`` objects (one target per expression) and the ``CocoDataset`` itself (one target
    per instance) or ``"category"`` (one target per image and category: the union of its non-crowd instances,
    phrased by the category name). ``holdout``: image ids that never train (those of the refs' other splits).
    """

    coco: Any
    parts: tuple[Any, ...]
    holdout: frozenset[int] = frozenset()


def coco_of(source: Any) -> Any:
    """The ``CocoDataset`` behind a ``ReferDataset`` or :class:`CombinedSource` (``.coco``), or the
    ``CocoDataset`` itself."""
    return source.coco if hasattr(source, "refs") or isinstance(source, CombinedSource) else source


def build_entries(source: Any, img_size: int, min_area: float = 0.0) -> list[Entry]:
    """Targets of a ``ReferDataset`` (one per expression), a ``CocoDataset`` (one per non-crowd instance) or a
    :class:`CombinedSource` (its parts' targets in order, without those on held-out images).

    ``min_area``: minimum object area in pixels of the ``img_size`` input frame (COCO ``area`` scaled; of the
    union for several instances).
    """
    if isinstance(source, CombinedSource):
        entries = []
        for part in source.parts:
            found = (_category_entries(source.coco, img_size, min_area) if part == "category"
                     else build_entries(part, img_size, min_area))
            entries += [e for e in found if e.image_id not in source.holdout]
        return entries
    coco = coco_of(source)

    def big_enough(image_id: int, ann_ids: Sequence[int]) -> bool:
        im = coco.images[image_id]
        scale = img_size / max(im.height, im.width)
        area = sum(float(coco.annotations[a].area) for a in ann_ids)
        return area * scale * scale >= min_area and len(ann_ids) > 0

    entries: list[Entry] = []
    if hasattr(source, "refs"):
        for ref, _sent_idx, text in source.expressions():
            ids = tuple(int(a) for a in ref.ann_ids)
            if big_enough(int(ref.image_id), ids):
                entries.append(Entry(int(ref.image_id), ids, str(text)))
        return entries
    for image_id in coco.image_ids():
        for ann in coco.anns_for_image(image_id):
            if big_enough(image_id, (ann.id,)):
                entries.append(Entry(int(image_id), (int(ann.id),), coco.categories[ann.category_id]))
    return entries


def _category_entries(coco: Any, img_size: int, min_area: float) -> list[Entry]:
    """One target per image and category: the union of the category's non-crowd instances, phrased by its name."""
    entries: list[Entry] = []
    for image_id in coco.image_ids():
        im = coco.images[image_id]
        scale = img_size / max(im.height, im.width)
        groups: dict[int, list[Any]] = {}
        for ann in coco.anns_for_image(image_id):
            groups.setdefault(ann.category_id, []).append(ann)
        for category_id, anns in sorted(groups.items()):
            if sum(float(a.area) for a in anns) * scale * scale >= min_area:
                entries.append(Entry(int(image_id), tuple(int(a.id) for a in anns), coco.categories[category_id]))
    return entries


def open_source(config: TrainConfig, split: str, *, want_refs: bool, coco: Any = None) -> Any:
    """The ``ReferDataset`` (``want_refs`` and a refs file exists) or ``CocoDataset`` of ``split``; for the
    training split, a :class:`CombinedSource` when ``[data]`` adds sources (``extra_refs``,
    ``category_phrases``) or keeps images out (``refs_split_field``). ``coco``: the ``CocoDataset`` of the
    split's instances when it is read already (another split over the same file).

    Checks first that the files and folders exist, and after reading that every listed image is there;
    every problem is an InputError naming the file and the ``[data]`` key to fix.
    """
    d = config.data
    root = Path(d.root)
    instances, images = root / d.instances.format(split=split), root / d.images.format(split=split)
    refs = root / d.refs.format(split=split) if d.refs else None
    extra = [root / r.format(split=split) for r in d.extra_refs] if split == d.train_split else []
    no_val = " (or val_split = \"\" to train without validation)" if split == d.val_split else ""
    if not root.is_dir():
        raise InputError(f"the data folder {root} does not exist: set [data] root to the dataset folder (`textsam "
                         "data synth --out FOLDER` writes one)")
    if not instances.is_file():
        raise InputError(f"the {split} annotations {instances} do not exist: check [data] root and instances"
                         f"{no_val}")
    if not images.is_dir():
        raise InputError(f"the {split} image folder {images} does not exist: check [data] root and images{no_val}")
    for path in extra:
        if not path.is_file():
            raise InputError(f"the refs file {path} does not exist: check [data] root and extra_refs")
    use_refs = want_refs and refs is not None and refs.is_file()
    if config.recipe == "text" and want_refs and not use_refs:
        raise InputError(f"the text recipe needs referring expressions, but {refs} does not exist: check [data] "
                         "refs, or use recipe = 'clip_crops' or 'sam'")
    # refs files that hold every split: the images of their other splits stay out of training
    holdout_from = [p for p in ([refs] if refs is not None and refs.is_file() else []) + extra
                    if split == d.train_split and d.refs_split_field]
    try:
        from ..data.coco import CocoDataset
        from ..data.refer import ReferDataset, read_refs

        if coco is None:
            coco = CocoDataset(instances, images)
        parts: list[Any] = [ReferDataset(p, instances, images, split=split if d.refs_split_field else None, coco=coco)
                            for p in ([refs] if use_refs else []) + extra]
        held = {int(r["image_id"]) for p in holdout_from for r in read_refs(p) if str(r.get("split", "")) != split}
    except TextSamError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:  # a reader's unchecked field
        files = ", ".join(str(p) for p in [instances, *([refs] if use_refs else []), *extra])
        raise InputError(f"cannot read the {split} annotations ({files}): {type(err).__name__}: {err}; fix the "
                         "file (COCO instances / RefCOCO refs layout)") from err
    if not use_refs:
        parts.append(coco)
    if d.category_phrases and split == d.train_split:
        parts.append("category")
    holdout = frozenset(held) & frozenset(coco.images)
    source: Any = parts[0] if len(parts) == 1 and not holdout else CombinedSource(coco, tuple(parts), holdout)
    missing = [im.path for im in coco.images.values() if not Path(im.path).is_file()]
    if missing:
        raise InputError(f"{len(missing)} of the {len(coco.images)} images that {instances} lists are missing, e.g. "
                         f"{missing[0]}: put them in {images}, or fix [data] images / the file_name entries")
    return source


class SemanticLabels:
    """Per-pixel class maps of an image's instances, one channel per field (training-only supervision).

    ``fields``: ``"category"`` (the COCO category id) or the name of an annotation field kept in
    ``CocoAnnotation.extra`` (the synthetic data's ``colour`` and ``size``). Class ``c + 1`` is the ``c``-th
    sorted value of the field over the whole dataset; 0 is background (and objects that lack the field).
    Later annotations paint over earlier ones.
    """

    def __init__(self, coco: Any, fields: Sequence[str]) -> None:
        if not fields:
            raise ValueError("SemanticLabels needs at least one field")
        anns = list(coco.annotations.values())
        self.fields = tuple(fields)
        self.vocab: dict[str, dict[Any, int]] = {}
        for name in self.fields:
            values = {self.value(a, name) for a in anns} - {None}
            if not values:
                raise ValueError(f"no annotation has the field {name!r} (semantic_fields)")
            self.vocab[name] = {v: i + 1 for i, v in enumerate(sorted(values, key=str))}

    @staticmethod
    def value(ann: Any, name: str) -> Any:
        """The annotation's value of ``name`` (``extra[name]``, else an attribute of that name; None if absent)."""
        if name == "category":
            return ann.category_id
        extra = getattr(ann, "extra", None)
        if isinstance(extra, dict) and name in extra:
            return extra[name]
        return getattr(ann, name, None)

    @property
    def colour_fields(self) -> tuple[int, ...]:
        """Indices of the fields that name a colour (``colour``/``color``): unknowable in greyscale."""
        return tuple(i for i, f in enumerate(self.fields) if f.lower() in ("colour", "color"))

    def colour_words(self) -> set[str]:
        """The values of the colour fields, as lower-case words."""
        return {str(v).lower() for i in self.colour_fields for v in self.vocab[self.fields[i]]}

    @property
    def num_classes(self) -> tuple[int, ...]:
        """Classes per field, background included."""
        return tuple(len(self.vocab[f]) + 1 for f in self.fields)

    def maps(self, coco: Any, image_id: int, to_lowres: Any) -> torch.Tensor:
        """``(F, L, L)`` int64 class maps; ``to_lowres`` turns an ``(H, W)`` bool mask into ``(L, L)`` bool."""
        anns = coco.anns_for_image(image_id)
        out: torch.Tensor | None = None
        for ann in anns:
            region = to_lowres(np.asarray(coco.mask(ann), dtype=bool))
            if out is None:
                out = torch.zeros((len(self.fields), *region.shape), dtype=torch.long)
            for c, name in enumerate(self.fields):
                out[c][region] = self.vocab[name].get(self.value(ann, name), 0)
        if out is None:
            raise ValueError(f"image {image_id} has no annotations for its semantic maps")
        return out


@dataclass(frozen=True)
class ClipInput:
    """How crops become CLIP image-tower input (matches ``DenseClip.to_native`` for square crops)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def fill(self) -> np.ndarray:
        return np.round(np.asarray(self.mean) * 255.0).clip(0, 255).astype(np.uint8)

    def __call__(self, crop: np.ndarray) -> torch.Tensor:
        """``(s, s, 3)`` uint8 -> ``(3, size, size)`` float32 (bicubic antialiased, CLIP mean/std)."""
        pixels = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float()
        if pixels.shape[-1] != self.size or pixels.shape[-2] != self.size:
            pixels = F.interpolate(
                pixels, (self.size, self.size), mode="bicubic", align_corners=False, antialias=True
            ).clamp_(0.0, 255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels[0] / 255.0 - mean) / std


# Colour names that make a phrase unanswerable in greyscale (with the values of any colour field).
BASIC_COLOUR_WORDS = ("black", "blue", "brown", "colored", "coloured", "cyan", "golden", "gray", "green", "grey",
                      "magenta", "orange", "pink", "purple", "red", "silver", "violet", "white", "yellow")


def greyscale(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> the same shape with the ITU-R 601 luma in every channel."""
    luma = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def rotate_hue(image: np.ndarray, turn: float) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB with every pixel's hue turned by ``turn`` of a full circle (HSV; saturation and
    value kept, so greys stay grey): a colour the caption does not name becomes a nuisance, not a cue."""
    from PIL import Image

    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(turn * 256))) % 256
    return np.array(Image.fromarray(hsv, "HSV").convert("RGB"))  # writable, as torch.from_numpy wants


def crop_params(seed: int, key: str, variant: int, enlarge: tuple[float, float], grey_prob: float) -> tuple[float, bool]:
    """Enlargement factor and grey-out flag of crop ``variant`` of target ``key`` (deterministic)."""
    key_int = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, key_int, variant, 1])
    return float(rng.uniform(enlarge[0], enlarge[1])), bool(rng.random() < grey_prob)


def names_no_colour(phrase: str, words: frozenset[str] = frozenset(BASIC_COLOUR_WORDS)) -> bool:
    """Whether ``phrase`` names none of the colour ``words`` (so its target may be shown in greyscale)."""
    return not (set(re.findall(r"[a-z]+", phrase.lower())) & words)


def colour_words(semantic: SemanticLabels | None) -> frozenset[str]:
    """The words that name a colour: :data:`BASIC_COLOUR_WORDS` and the values of ``semantic``'s colour fields."""
    return frozenset(BASIC_COLOUR_WORDS) | frozenset(semantic.colour_words() if semantic is not None else ())
