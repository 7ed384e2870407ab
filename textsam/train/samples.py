"""Training samples: one target mask with its image, prompts and extras, deterministic per ``(seed, epoch, index)``.

A sample (:class:`~textsam.train.batches.Sample`) is one target (an instance, or the union of a referring
expression's instances) with:

- the image in the model *input* frame: resized longest side to ``S`` (:func:`resize_longest_side`),
  normalised with SAM's pixel mean/std and zero-padded to ``S x S`` (exactly ``TextSam.preprocess``),
  or its cached image embedding;
- the target mask in the input frame ``(1, S, S)`` and at low resolution ``(1, L, L)``, ``L = 4 x`` the
  embedding grid (area-downsampled, thresholded at 0.5);
- prompts in the input frame: a random interior point ``(x, y)``, the mask's box ``x0, y0, x1, y1``
  (inclusive pixel indices) jittered by N(0, 10% of its side) up to 20 px at 1024 px, and a phrase;
- optionally (``semantic``), per-pixel class maps ``(F, L, L)`` of the whole image at low resolution;
- optionally (``max_regions``), the image's objects as a region locator's candidates;
- for the ``clip_crops`` recipe, a square crop around the box enlarged by a random factor in
  ``crop_enlarge``, with probability ``crop_grey_prob`` the pixels outside the mask set to the CLIP mean
  colour, resized to the CLIP input size and normalised (or its cached CLIP embedding).

Everything random comes from ``numpy.random.default_rng([seed, epoch, index, stream])``: a sample depends only
on ``(seed, epoch, index)``, never on global RNG state, worker count or rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
from .batches import BOX, POINT, TEXT_KINDS, Sample
from .cache import EmbeddingCache
from .data import ClipInput, Entry, SemanticLabels, coco_of, crop_params, greyscale, names_no_colour

__all__ = ["SampleOptions", "SegmentationDataset"]


@dataclass(frozen=True)
class SampleOptions:
    """How a :class:`SegmentationDataset` makes its samples.

    img_size: model input side ``S``; lowres: low-res mask side ``L`` (``S`` divisible by ``L``). probs:
    prompt-kind probabilities (``POINT, BOX, TEXT, TEXT_POINT``). train: random prompts; otherwise the deepest
    interior point, the exact box and no crops. split: the split name (cache files are kept per split: image ids
    repeat across splits). pixel_mean, pixel_std: the model's normalisation. clip_input: make crops for
    text-kind prompts (``clip_crops`` recipe), ``crop_variants`` per target (see
    :func:`~textsam.train.data.crop_params`). semantic: add class maps ``(F, L, L)`` of the whole image.
    greyscale_prob: in training, the chance that a point or box sample shows its image in greyscale (ITU-R 601
    luma in all three channels; its colour class maps are then ignored, -100), drawn from its own stream.
    colour_words: text samples whose phrase names none of these words may be greyscale too when
    ``greyscale_text`` ("the leftmost star" means the same in greyscale). max_regions: > 0 adds the image's
    objects as candidates for a region locator: ``regions (R, L, L)`` bool low-res masks, ``region_valid`` and
    ``region_target (R,)`` bool (R = ``max_regions``; targets are always kept) and ``region_colour (R, 6)``
    (their pixels' colour statistics; greyscale samples give grey ones). In training the masks are jittered
    (one pixel of growth or erosion) and two non-object candidates are added: the union of two objects, and a
    patch of background. region_colour_shuffle: in training, the chance that a text sample whose phrase names
    none of ``colour_words`` takes its candidates' colours from the image with its R, G, B channels in a
    random order.
    """

    img_size: int
    lowres: int
    probs: tuple[float, ...] = (0.5, 0.5, 0.0, 0.0)
    seed: int = 0
    train: bool = True
    split: str = "train"
    pixel_mean: tuple[float, ...] = PIXEL_MEAN
    pixel_std: tuple[float, ...] = PIXEL_STD
    clip_input: ClipInput | None = None
    crop_variants: int = 8
    crop_enlarge: tuple[float, float] = (1.0, 2.0)
    crop_grey_prob: float = 0.5
    semantic: SemanticLabels | None = field(default=None, compare=False)
    greyscale_prob: float = 0.0
    greyscale_text: bool = True
    colour_words: frozenset[str] = frozenset()
    max_regions: int = 0
    region_colour_shuffle: float = 0.0

    def __post_init__(self) -> None:
        if self.img_size % self.lowres:
            raise ValueError(f"img_size {self.img_size} must be a multiple of the low-res size {self.lowres}")
        object.__setattr__(self, "colour_words", frozenset(w.lower() for w in self.colour_words))


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples of ``entries`` (:func:`~textsam.train.data.build_entries`) of ``source`` (a ``CocoDataset`` or
    ``ReferDataset``, or anything with the same API), made per ``options``; indexed by ``(epoch, index)``
    (training) or ``index`` (evaluation). ``cache``: cached image embeddings (used when it has an image
    fingerprint), crop and text embeddings."""

    def __init__(self, source: Any, entries: Sequence[Entry], options: SampleOptions,
                 cache: EmbeddingCache | None = None) -> None:
        self.source, self.coco, self.entries = source, coco_of(source), list(entries)
        self.options, self.cache = options, cache
        self.img_size, self.lowres, self.split = options.img_size, options.lowres, options.split
        self.probs = np.asarray(options.probs, dtype=np.float64) / float(np.sum(options.probs))
        self.mean = torch.tensor(options.pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(options.pixel_std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def use_image_cache(self) -> bool:
        return self.cache is not None and self.cache.image_fp is not None

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
        words = self.options.colour_words
        return bool(words) and names_no_colour(phrase, words)

    def _may_be_grey(self, kind: int, phrase: str) -> bool:
        if kind in (POINT, BOX):
            return True
        return self.options.greyscale_text and self._names_no_colour(phrase)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        opt = self.options
        epoch, index = (key if isinstance(key, tuple) else (0, key))
        entry = self.entries[index]
        rng = np.random.default_rng([opt.seed, epoch, index, 0 if opt.train else 1])
        info = self.coco.images[entry.image_id]
        mask = self.target_mask(entry)
        kind = int(rng.choice(4, p=self.probs)) if opt.train else -1
        grey = (opt.train and opt.greyscale_prob > 0 and self._may_be_grey(kind, entry.phrase)
                and np.random.default_rng([opt.seed, epoch, index, 2]).random() < opt.greyscale_prob)
        image = image_tensor = image_emb = None
        if self.use_image_cache and not grey:
            image_emb = self.cache.image(self.split, entry.image_id)  # type: ignore[union-attr]
        else:
            image = self.coco.load_image(entry.image_id)
            image_tensor = self.input_image(greyscale(image) if grey else image)
        h, w = get_preprocess_shape(info.height, info.width, self.img_size)
        target = self.input_mask(mask)
        sample = Sample(index=index, image_id=entry.image_id, text=entry.phrase, kind=kind,
                        input_size=torch.tensor([h, w]), mask=target[None].float(),
                        mask_lowres=self._pool_lowres(target)[None].float(), point=torch.empty(0),
                        box=torch.empty(0), image=image_tensor, image_emb=image_emb)
        if opt.semantic is not None:
            sample.semantic = opt.semantic.maps(self.coco, entry.image_id, self.lowres_mask)
            if grey:
                sample.semantic[list(opt.semantic.colour_fields)] = -100
        sample.point, sample.box = self._prompts(target, rng)
        if opt.max_regions:
            region_rng = np.random.default_rng([opt.seed, epoch, index, 3])
            sample.regions, sample.region_valid, sample.region_target = self._regions(entry, region_rng)
            pixels = self.coco.load_image(entry.image_id) if image is None else image
            rgb = lowres_rgb(greyscale(pixels) if grey else pixels, self.img_size, self.lowres)
            if (opt.train and opt.region_colour_shuffle > 0 and kind in TEXT_KINDS
                    and self._names_no_colour(entry.phrase) and region_rng.random() < opt.region_colour_shuffle):
                rgb = rgb[torch.from_numpy(region_rng.permutation(3))]
            sample.region_colour = region_colours(rgb, sample.regions)
        if self.cache is not None and self.cache.text_fp is not None:
            sample.text_emb = self.cache.text(entry.phrase)
        if opt.train and opt.clip_input is not None and kind in TEXT_KINDS:
            variant = int(rng.integers(opt.crop_variants))
            if self.cache is not None and self.cache.clip_fp is not None:
                sample.crop_emb = self.cache.crops(self.split, entry.key)[variant]
            else:
                image = self.coco.load_image(entry.image_id) if image is None else image
                sample.crop = self.make_crop(image, mask, entry.key, variant)
        return sample

    def _regions(self, entry: Entry, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate masks ``(R, L, L)`` of the entry's image, their validity and which are targets."""
        train, size, limit = self.options.train, self.lowres, self.options.max_regions
        anns = self.coco.anns_for_image(entry.image_id)
        targets = {int(a) for a in entry.ann_ids}
        order = [a for a in anns if int(a.id) in targets] + [a for a in anns if int(a.id) not in targets]
        masks = [self.lowres_mask(np.asarray(self.coco.mask(a), dtype=bool)) for a in order]
        is_target = [int(a.id) in targets for a in order]
        if train and len(masks) >= 2:  # candidates that are not one object
            i, j = rng.choice(len(masks), 2, replace=False)
            masks.append(masks[i] | masks[j])
            is_target.append(False)
        if train:
            ground = ~torch.stack(masks).any(0) if masks else torch.ones(size, size, dtype=torch.bool)
            side = max(2, size // 6)
            y, x = (int(v) for v in rng.integers(0, size - side, 2))
            patch = torch.zeros_like(ground)
            patch[y : y + side, x : x + side] = True
            if bool((patch & ground).any()):
                masks.append(patch & ground)
                is_target.append(False)
        keep = list(range(len(masks)))[:limit]  # targets come first and stay
        out = torch.zeros(limit, size, size, dtype=torch.bool)
        valid = torch.zeros(limit, dtype=torch.bool)
        target = torch.zeros(limit, dtype=torch.bool)
        for slot, k in enumerate(rng.permutation(keep) if train else keep):
            m = masks[k].float()
            if train and rng.random() < 0.5:  # a decoder's mask is a pixel larger or smaller
                grow = rng.random() < 0.5
                pooled = F.max_pool2d((m if grow else 1 - m)[None, None], 3, stride=1, padding=1)[0, 0]
                m = pooled if grow else 1 - pooled
            out[slot], valid[slot], target[slot] = m > 0.5, bool(m.any()), is_target[k]
        return out, valid, target & valid

    def make_crop(self, image: np.ndarray, mask: np.ndarray, key: str, variant: int) -> torch.Tensor:
        """CLIP input ``(3, n, n)`` of crop ``variant`` of a target (see :func:`crop_params`)."""
        opt = self.options
        if opt.clip_input is None:
            raise ValueError("this dataset makes no crops (SampleOptions.clip_input is None)")
        enlarge, grey = crop_params(opt.seed, key, variant, opt.crop_enlarge, opt.crop_grey_prob)
        return opt.clip_input(square_crop(image, mask, enlarge, opt.clip_input.fill, grey_outside=grey))

    def _prompts(self, target: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ys, xs = torch.nonzero(target, as_tuple=True)
        if len(xs) == 0:  # vanished when resized: a point and a box at the image centre
            c = self.img_size / 2.0
            return torch.tensor([c, c]), torch.tensor([c, c, c, c])
        box = torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=torch.float32)
        if not self.options.train:
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
