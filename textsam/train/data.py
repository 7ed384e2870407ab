"""Training samples from COCO instances or referring expressions, and a resumable step sampler.

A sample is one target mask (an instance, or the union of a referring expression's instances) with:

- the image in the model *input* frame: resized longest side to ``S`` (:func:`resize_longest_side`),
  normalised with SAM's pixel mean/std and zero-padded to ``S x S`` (exactly ``TextSam.preprocess``),
  or its cached image embedding;
- the target mask in the input frame ``(1, S, S)`` and at low resolution ``(1, L, L)``, ``L = 4 x`` the
  embedding grid (area-downsampled, thresholded at 0.5);
- prompts in the input frame: a random interior point ``(x, y)``, the mask's box ``x0, y0, x1, y1``
  (inclusive pixel indices) jittered by N(0, 10% of its side) up to 20 px at 1024 px, and a phrase;
- optionally (``semantic``), per-pixel class maps ``(F, L, L)`` of the whole image at low resolution, one
  channel per labelled field (the COCO category, or an annotation field such as ``colour``; 0 = no object),
  for the auxiliary semantic loss that teaches the image encoder what its objects are;
- for the ``clip_crops`` recipe, a square crop around the box enlarged by a random factor in
  ``crop_enlarge``, with probability ``crop_grey_prob`` the pixels outside the mask set to the CLIP mean
  colour, resized to the CLIP input size and normalised (or its cached CLIP embedding).

Everything random comes from ``numpy.random.default_rng([seed, epoch, index])``: a sample depends only on
``(seed, epoch, index)``, never on global RNG state, worker count or rank.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..model import PIXEL_MEAN, PIXEL_STD
from ..ops import deepest_points
from ..text.grounding_maps import square_crop
from ..text.locator import lowres_rgb, region_colours
from ..transforms import get_preprocess_shape, resize_longest_side

POINT, BOX, TEXT, TEXT_POINT = range(4)
TEXT_KINDS = (TEXT, TEXT_POINT)


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


def coco_of(source: Any) -> Any:
    """The ``CocoDataset`` behind a ``ReferDataset`` (``.coco``) or the ``CocoDataset`` itself."""
    return source.coco if hasattr(source, "refs") else source


def build_entries(source: Any, img_size: int, min_area: float = 0.0) -> list[Entry]:
    """Targets of a ``ReferDataset`` (one per expression) or a ``CocoDataset`` (one per non-crowd instance).

    ``min_area``: minimum object area in pixels of the ``img_size`` input frame (COCO ``area`` scaled).
    """
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


def crop_params(seed: int, key: str, variant: int, enlarge: tuple[float, float], grey_prob: float) -> tuple[float, bool]:
    """Enlargement factor and grey-out flag of crop ``variant`` of target ``key`` (deterministic)."""
    key_int = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, key_int, variant, 1])
    return float(rng.uniform(enlarge[0], enlarge[1])), bool(rng.random() < grey_prob)


class EmbeddingCache:
    """On-disk embeddings of frozen encoders under ``root``; see ``recipes.warm_cache``.

    ``images/<fingerprint>/<split>/<image_id>.pt`` ``(C, h, w)``; ``crops/<fingerprint>/<split>/<key>.pt``
    ``(V, D)`` (one row per crop variant); ``text/<fingerprint>.pt`` ``{phrase: (D,)}``. Fingerprints hash
    the encoder weights and the settings that shape the inputs, so stale files are never reused.
    """

    def __init__(self, root: str | Path | None, image_fp: str | None = None, clip_fp: str | None = None,
                 text_fp: str | None = None, text_table: dict[str, torch.Tensor] | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.image_fp, self.clip_fp, self.text_fp = image_fp, clip_fp, text_fp
        self._text = text_table  # in memory (no root), or loaded from text_path() on first use

    @classmethod
    def in_memory(cls, text_table: dict[str, torch.Tensor]) -> EmbeddingCache:
        """No files: only a phrase -> embedding table."""
        return cls(None, text_fp="memory", text_table=text_table)

    def image_path(self, split: str, image_id: int) -> Path:
        return Path(str(self.root)) / "images" / str(self.image_fp) / split / f"{image_id}.pt"

    def crop_path(self, split: str, key: str) -> Path:
        return Path(str(self.root)) / "crops" / str(self.clip_fp) / split / f"{key}.pt"

    def text_path(self) -> Path:
        return Path(str(self.root)) / "text" / f"{self.text_fp}.pt"

    def image(self, split: str, image_id: int) -> torch.Tensor:
        return torch.load(self.image_path(split, image_id), map_location="cpu", weights_only=True)

    def crops(self, split: str, key: str) -> torch.Tensor:
        return torch.load(self.crop_path(split, key), map_location="cpu", weights_only=True)

    def text(self, phrase: str) -> torch.Tensor:
        if self._text is None:
            self._text = torch.load(self.text_path(), map_location="cpu", weights_only=True)
        return self._text[phrase]


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples for one recipe; indexed by ``(epoch, index)`` (training) or ``index`` (evaluation).

    Args:
        source: a ``CocoDataset`` or ``ReferDataset`` (or anything with the same API).
        entries: the targets (:func:`build_entries`).
        img_size: model input side ``S``; ``lowres``: low-res mask side ``L`` (``S`` divisible by ``L``).
        probs: prompt-kind probabilities (``POINT, BOX, TEXT, TEXT_POINT``).
        train: random prompts; otherwise the deepest interior point, the exact box and no crops.
        clip_input: make crops for text-kind prompts (``clip_crops`` recipe).
        cache: use cached image embeddings (``use_image_cache``), crop and text embeddings.
        split: the split name (cache files are kept per split: image ids repeat across splits).
        semantic: add ``semantic`` class maps ``(F, L, L)`` of the whole image to every sample.
        greyscale_prob: in training, the chance that a point or box sample shows its image in greyscale
            (ITU-R 601 luma in all three channels; its colour class maps are then ignored, -100). Shape
            evidence without colour, so shape features do not lean on the colours seen with each shape.
            Drawn from its own stream.
        colour_words: text samples whose phrase names none of these words may be greyscale too ("the
            leftmost star" means the same in greyscale; ``greyscale_text``); without them text samples keep
            their colours.
        max_regions: > 0 adds the image's objects as candidates for a region locator: ``regions``
            ``(R, L, L)`` bool low-res masks, ``region_valid`` and ``region_target`` ``(R,)`` bool (R =
            ``max_regions``; targets are always kept) and ``region_colour`` ``(R, 6)`` (their pixels' colour
            statistics, :func:`~textsam.text.locator.region_colours`; greyscale samples give grey ones). In training the masks are jittered (one pixel of
            growth or erosion) and two non-object candidates are added: the union of two objects, and a
            patch of background.
        region_colour_shuffle: in training, the chance that a text sample whose phrase names none of
            ``colour_words`` takes its candidates' colours from the image with its R, G, B channels in a
            random order (so "the circle" cannot learn which colours circles came in).
    """

    def __init__(
        self,
        source: Any,
        entries: Sequence[Entry],
        *,
        img_size: int,
        lowres: int,
        probs: Sequence[float] = (0.5, 0.5, 0.0, 0.0),
        seed: int = 0,
        train: bool = True,
        clip_input: ClipInput | None = None,
        crop_variants: int = 8,
        crop_enlarge: tuple[float, float] = (1.0, 2.0),
        crop_grey_prob: float = 0.5,
        cache: EmbeddingCache | None = None,
        use_image_cache: bool = False,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        split: str = "train",
        semantic: SemanticLabels | None = None,
        greyscale_prob: float = 0.0,
        colour_words: Sequence[str] = (),
        max_regions: int = 0,
        region_colour_shuffle: float = 0.0,
        greyscale_text: bool = True,
    ) -> None:
        if img_size % lowres:
            raise ValueError(f"img_size {img_size} must be a multiple of the low-res size {lowres}")
        self.source, self.coco, self.entries = source, coco_of(source), list(entries)
        self.img_size, self.lowres = img_size, lowres
        self.probs = np.asarray(probs, dtype=np.float64) / float(np.sum(probs))
        self.seed, self.train = seed, train
        self.clip_input = clip_input
        self.crop_variants, self.crop_enlarge, self.crop_grey_prob = crop_variants, crop_enlarge, crop_grey_prob
        self.cache, self.use_image_cache, self.split = cache, use_image_cache, split
        self.semantic = semantic
        self.greyscale_prob = greyscale_prob
        self.colour_words = frozenset(w.lower() for w in colour_words)
        self.max_regions, self.region_colour_shuffle = max_regions, region_colour_shuffle
        self.greyscale_text = greyscale_text
        self.mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.entries)

    def target_mask(self, entry: Entry) -> np.ndarray:
        """``(H, W)`` bool union of the entry's instance masks (original frame)."""
        masks = [np.asarray(self.coco.mask(a), dtype=bool) for a in entry.ann_ids]
        return np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]

    def input_image(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 -> ``(3, S, S)`` float32, as ``TextSam.preprocess`` after resizing."""
        resized = torch.from_numpy(np.array(resize_longest_side(image, self.img_size)))
        x = (resized.permute(2, 0, 1).float() - self.mean) / self.std
        return F.pad(x, (0, self.img_size - x.shape[2], 0, self.img_size - x.shape[1]))

    def input_mask(self, mask: np.ndarray) -> torch.Tensor:
        """``(H, W)`` bool -> ``(S, S)`` bool in the padded input frame (bilinear resize, >= 0.5)."""
        h, w = get_preprocess_shape(mask.shape[0], mask.shape[1], self.img_size)
        m = mask
        if (h, w) != mask.shape:
            m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)) >= 128
        out = torch.zeros((self.img_size, self.img_size), dtype=torch.bool)
        out[:h, :w] = torch.from_numpy(np.ascontiguousarray(m))
        return out

    def lowres_mask(self, mask: np.ndarray) -> torch.Tensor:
        """``(H, W)`` bool -> ``(L, L)`` bool low-res mask (input frame, area-downsampled, >= 0.5)."""
        return self._pool_lowres(self.input_mask(mask))

    def _pool_lowres(self, target: torch.Tensor) -> torch.Tensor:
        """``(S, S)`` bool input-frame mask -> ``(L, L)`` bool (area-downsampled, >= 0.5)."""
        k = self.img_size // self.lowres
        return F.avg_pool2d(target[None, None].float(), k)[0, 0] >= 0.5

    def _names_no_colour(self, phrase: str) -> bool:
        return bool(self.colour_words) and not (set(re.findall(r"[a-z]+", phrase.lower())) & self.colour_words)

    def _may_be_grey(self, kind: int, phrase: str) -> bool:
        if kind in (POINT, BOX):
            return True
        return self.greyscale_text and self._names_no_colour(phrase)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (key if isinstance(key, tuple) else (0, key))
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, epoch, index, 0 if self.train else 1])
        info = self.coco.images[entry.image_id]
        mask = self.target_mask(entry)
        image = None
        sample: dict[str, Any] = {"index": index, "image_id": entry.image_id, "text": entry.phrase}
        kind = int(rng.choice(4, p=self.probs)) if self.train else -1
        grey = (self.train and self.greyscale_prob > 0 and self._may_be_grey(kind, entry.phrase)
                and np.random.default_rng([self.seed, epoch, index, 2]).random() < self.greyscale_prob)
        if self.use_image_cache and self.cache is not None and not grey:
            sample["image_emb"] = self.cache.image(self.split, entry.image_id)
        else:
            image = self.coco.load_image(entry.image_id)
            sample["image"] = self.input_image(greyscale(image) if grey else image)
        h, w = get_preprocess_shape(info.height, info.width, self.img_size)
        sample["input_size"] = torch.tensor([h, w])
        target = self.input_mask(mask)
        sample["mask"] = target[None].float()
        sample["mask_lowres"] = self._pool_lowres(target)[None].float()
        if self.semantic is not None:
            sample["semantic"] = self.semantic.maps(self.coco, entry.image_id, self.lowres_mask)
            if grey:
                sample["semantic"][list(self.semantic.colour_fields)] = -100
        sample["kind"] = kind
        sample["point"], sample["box"] = self._prompts(target, rng)
        if self.max_regions:
            region_rng = np.random.default_rng([self.seed, epoch, index, 3])
            sample["regions"], sample["region_valid"], sample["region_target"] = self._regions(entry, region_rng)
            pixels = self.coco.load_image(entry.image_id) if image is None else image
            rgb = lowres_rgb(greyscale(pixels) if grey else pixels, self.img_size, self.lowres)
            if (self.train and self.region_colour_shuffle > 0 and kind in TEXT_KINDS
                    and self._names_no_colour(entry.phrase) and region_rng.random() < self.region_colour_shuffle):
                rgb = rgb[torch.from_numpy(region_rng.permutation(3))]
            sample["region_colour"] = region_colours(rgb, sample["regions"])
        if self.cache is not None and self.cache.text_fp is not None:
            sample["text_emb"] = self.cache.text(entry.phrase)
        if self.train and self.clip_input is not None and kind in TEXT_KINDS:
            variant = int(rng.integers(self.crop_variants))
            if self.cache is not None and self.cache.clip_fp is not None:
                sample["crop_emb"] = self.cache.crops(self.split, entry.key)[variant]
            else:
                image = self.coco.load_image(entry.image_id) if image is None else image
                sample["crop"] = self.make_crop(image, mask, entry.key, variant)
        return sample

    def _regions(self, entry: Entry, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate masks ``(R, L, L)`` of the entry's image, their validity and which are targets."""
        anns = self.coco.anns_for_image(entry.image_id)
        targets = {int(a) for a in entry.ann_ids}
        order = [a for a in anns if int(a.id) in targets] + [a for a in anns if int(a.id) not in targets]
        masks = [self.lowres_mask(np.asarray(self.coco.mask(a), dtype=bool)) for a in order]
        is_target = [int(a.id) in targets for a in order]
        if self.train and len(masks) >= 2:  # candidates that are not one object
            i, j = rng.choice(len(masks), 2, replace=False)
            masks.append(masks[i] | masks[j])
            is_target.append(False)
        if self.train:
            ground = ~torch.stack(masks).any(0) if masks else torch.ones(self.lowres, self.lowres, dtype=torch.bool)
            side = max(2, self.lowres // 6)
            y, x = (int(v) for v in rng.integers(0, self.lowres - side, 2))
            patch = torch.zeros_like(ground)
            patch[y : y + side, x : x + side] = True
            if bool((patch & ground).any()):
                masks.append(patch & ground)
                is_target.append(False)
        keep = list(range(len(masks)))
        if len(keep) > self.max_regions:  # targets come first and stay
            keep = keep[: self.max_regions]
        out = torch.zeros(self.max_regions, self.lowres, self.lowres, dtype=torch.bool)
        valid = torch.zeros(self.max_regions, dtype=torch.bool)
        target = torch.zeros(self.max_regions, dtype=torch.bool)
        for slot, k in enumerate(rng.permutation(keep) if self.train else keep):
            m = masks[k].float()
            if self.train and rng.random() < 0.5:  # a decoder's mask is a pixel larger or smaller
                grow = rng.random() < 0.5
                pooled = F.max_pool2d((m if grow else 1 - m)[None, None], 3, stride=1, padding=1)[0, 0]
                m = pooled if grow else 1 - pooled
            out[slot], valid[slot], target[slot] = m > 0.5, bool(m.any()), is_target[k]
        return out, valid, target & valid

    def make_crop(self, image: np.ndarray, mask: np.ndarray, key: str, variant: int) -> torch.Tensor:
        """CLIP input ``(3, n, n)`` of crop ``variant`` of a target (see :func:`crop_params`)."""
        assert self.clip_input is not None
        enlarge, grey = crop_params(self.seed, key, variant, self.crop_enlarge, self.crop_grey_prob)
        return self.clip_input(square_crop(image, mask, enlarge, self.clip_input.fill, grey_outside=grey))

    def _prompts(self, target: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ys, xs = torch.nonzero(target, as_tuple=True)
        if len(xs) == 0:  # vanished when resized: a point and a box at the image centre
            c = self.img_size / 2.0
            return torch.tensor([c, c]), torch.tensor([c, c, c, c])
        box = torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=torch.float32)
        if not self.train:
            return deepest_points(target[None])[0].float(), box
        i = int(rng.integers(len(xs)))
        point = torch.tensor([float(xs[i]), float(ys[i])])
        side = torch.tensor([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2, dtype=torch.float32)
        limit = max(1.0, 20.0 * self.img_size / 1024.0)
        noise = torch.from_numpy(rng.normal(0.0, 0.1, size=4)).float() * side
        box = (box + noise.clamp(-limit, limit)).clamp(0, self.img_size - 1)
        x0, x1 = torch.minimum(box[0], box[2]), torch.maximum(box[0], box[2])
        y0, y1 = torch.minimum(box[1], box[3]), torch.maximum(box[1], box[3])
        return point, torch.stack([x0, y0, x1, y1])


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples; a key only some samples have (``crop``, ``crop_emb``) is stacked over those, with
    ``<key>_rows`` holding their row numbers."""
    out: dict[str, Any] = {}
    keys = dict.fromkeys(k for s in samples for k in s)
    for key in keys:
        rows = [i for i, s in enumerate(samples) if key in s]
        values = [samples[i][key] for i in rows]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
        if len(rows) != len(samples):
            out[f"{key}_rows"] = torch.tensor(rows, dtype=torch.long)
    return out


class StepSampler(torch.utils.data.Sampler):
    """Micro-batches of ``(epoch, index)`` keys for optimizer steps ``start_step .. steps - 1`` on one rank.

    The sample stream is the concatenation of per-epoch permutations (``default_rng([seed, epoch])``);
    step ``s`` consumes stream positions ``[s*B, (s+1)*B)`` for the global batch ``B``, split into
    ``grad_accum`` micro-steps and, within each, into ``world`` contiguous rank shards. So the samples of
    a step depend only on ``(seed, step)``: resuming at any step and changing the world size (at the same
    global batch) see the same data.
    """

    def __init__(self, n: int, *, seed: int, batch_size: int, grad_accum: int = 1, rank: int = 0,
                 world: int = 1, start_step: int = 0, steps: int) -> None:
        if n < 1:
            raise ValueError("the dataset is empty")
        if batch_size % (grad_accum * world):
            raise ValueError(
                f"batch_size {batch_size} must be divisible by grad_accum x world size = {grad_accum * world}"
            )
        self.n, self.seed, self.batch_size, self.grad_accum = n, seed, batch_size, grad_accum
        self.rank, self.world, self.start_step, self.steps = rank, world, start_step, steps
        self.micro = batch_size // (grad_accum * world)
        self._perm: tuple[int, np.ndarray] | None = None

    def key(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return epoch, int(self._perm[1][offset])

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.steps):
            for a in range(self.grad_accum):
                base = step * self.batch_size + (a * self.world + self.rank) * self.micro
                yield [self.key(base + j) for j in range(self.micro)]
