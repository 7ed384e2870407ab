"""Training samples and batches as typed records, their collation, and the resumable step sampler.

Frames: images, masks and prompts are in the model *input* frame (``S x S``, the image resized so its longest
side is ``S`` and zero-padded, as ``TextSam.preprocess`` does); low-res masks are ``L x L`` over the same
frame (``L`` = 4x the embedding grid). Points are ``(x, y)``, boxes ``x0, y0, x1, y1`` (inclusive pixels).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["POINT", "BOX", "TEXT", "TEXT_POINT", "TEXT_KINDS", "Sample", "Batch", "collate", "StepSampler"]

POINT, BOX, TEXT, TEXT_POINT = range(4)  # the first prompt of a sample; -1 in evaluation samples
TEXT_KINDS = (TEXT, TEXT_POINT)


@dataclass
class Sample:
    """One target of a :class:`~textsam.train.samples.SegmentationDataset`.

    ``image (3, S, S)`` normalised pixels, or ``image_emb (C, h, w)`` the frozen encoder's cached embedding;
    ``mask (1, S, S)`` and ``mask_lowres (1, L, L)`` float in {0, 1}; ``point (2,)``, ``box (4,)`` float;
    ``input_size (2,)`` the resized image's (h, w) before padding. Optional: ``semantic (F, L, L)`` int64
    class maps (-100: ignored); a region locator's candidates ``regions (R, L, L)`` bool, ``region_valid``,
    ``region_target (R,)`` bool, ``region_colour (R, 6)``; ``text_emb (D,)`` the phrase's cached CLIP
    embedding; ``crop (3, n, n)`` / ``crop_emb (D,)`` the ``clip_crops`` recipe's CLIP input / its cached
    embedding (text-kind training samples only).
    """

    index: int
    image_id: int
    text: str
    kind: int
    input_size: Tensor
    mask: Tensor
    mask_lowres: Tensor
    point: Tensor
    box: Tensor
    image: Tensor | None = None
    image_emb: Tensor | None = None
    semantic: Tensor | None = None
    regions: Tensor | None = None
    region_valid: Tensor | None = None
    region_target: Tensor | None = None
    region_colour: Tensor | None = None
    text_emb: Tensor | None = None
    crop: Tensor | None = None
    crop_emb: Tensor | None = None


# fields that only some samples of a batch may have; their rows are in ``Batch.crop_rows``
_PARTIAL = ("crop", "crop_emb")


@dataclass
class Batch:
    """``B`` collated :class:`Sample` fields (stacked along a new first dimension; ``text`` a list), plus
    what :meth:`Recipe.prepare <textsam.train.recipes.Recipe.prepare>` adds for the text-kind rows
    ``prompt_rows (R,)``: their pooled CLIP embeddings ``prompt_emb (R, D)``, or their token ids
    ``prompt_ids (R, T)`` when the text tower trains, and the tower's per-token features
    ``prompt_words (R, T, W)`` with ``prompt_word_mask (R, T)`` when the locator reads them.
    ``crop_rows``: the rows that have ``crop`` / ``crop_emb``."""

    index: Tensor
    image_id: Tensor
    text: list[str]
    kind: Tensor
    input_size: Tensor
    mask: Tensor
    mask_lowres: Tensor
    point: Tensor
    box: Tensor
    image: Tensor | None = None
    image_emb: Tensor | None = None
    semantic: Tensor | None = None
    regions: Tensor | None = None
    region_valid: Tensor | None = None
    region_target: Tensor | None = None
    region_colour: Tensor | None = None
    text_emb: Tensor | None = None
    crop: Tensor | None = None
    crop_emb: Tensor | None = None
    crop_rows: Tensor | None = None
    prompt_rows: Tensor | None = None
    prompt_emb: Tensor | None = None
    prompt_ids: Tensor | None = None
    prompt_words: Tensor | None = None
    prompt_word_mask: Tensor | None = None

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def _map(self, fn: Any) -> Batch:
        return replace(self, **{f.name: fn(v) for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)})

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """Every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Every tensor in pinned memory (the DataLoader calls this with ``pin_memory=True``)."""
        return self._map(lambda t: t.pin_memory())


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a :class:`Batch`. ``crop`` / ``crop_emb`` may be missing from some samples: they are
    stacked over those that have them, whose row numbers go to ``crop_rows``."""
    out: dict[str, Any] = {}
    crop_rows: list[int] | None = None
    for f in fields(Sample):
        values = [getattr(s, f.name) for s in samples]
        rows = [i for i, v in enumerate(values) if v is not None]
        if not rows:
            continue
        if len(rows) != len(samples):
            if f.name not in _PARTIAL:
                raise ValueError(f"only some samples of the batch have {f.name!r}")
            crop_rows = rows
        values = [values[i] for i in rows]
        if isinstance(values[0], Tensor):
            out[f.name] = torch.stack(values)
        elif isinstance(values[0], (int, float)):
            out[f.name] = torch.tensor(values)
        else:
            out[f.name] = values
    if crop_rows is None and ("crop" in out or "crop_emb" in out):
        crop_rows = list(range(len(samples)))
    if crop_rows is not None:
        out["crop_rows"] = torch.tensor(crop_rows, dtype=torch.long)
    return Batch(**out)


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
