"""What the labeller produces per image, the one structure every writer takes.

Frames: masks and boxes are pixels of the original image (x to the right, y down); ``rle`` is a COCO RLE of an
``(H, W)`` bool mask with ``counts`` as a str (``textsam.rle.encode``), ``box_xywh`` its tight box
(x, y, width, height), as COCO writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Instance", "LabeledImage"]


@dataclass(frozen=True)
class Instance:
    """One object found: its saved class name (after the ontology), the phrase that found it, its mask."""

    category: str
    phrase: str
    rle: dict[str, Any]
    score: float
    presence: float | None
    box_xywh: tuple[float, float, float, float]

    def mask(self) -> np.ndarray:
        """The ``(H, W)`` bool mask."""
        from textsam import rle

        return rle.decode(self.rle).astype(bool)

    @property
    def area(self) -> int:
        from textsam import rle

        return int(rle.area(self.rle))


@dataclass(frozen=True)
class LabeledImage:
    """One labelled image: ``file`` (the CLI: relative to the folder the writers get as ``image_root``; the
    Python API: the path as given), its size, and every instance of every class, in vocabulary order then by
    score."""

    file: str
    width: int
    height: int
    instances: tuple[Instance, ...] = field(default_factory=tuple)
    image_id: int = 0
