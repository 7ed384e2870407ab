"""Checking user prompts and mapping them to the model's input frame.

User frame: (x, y) pixels of the original ``(H, W)`` image. Model frame: the resized image whose long
side is the model input size (1024 for SAM).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import transforms
from .errors import InputError


def _as_float_array(value: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be numeric, got {value!r}") from err
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def check_points_and_box(
    point_coords: object | None,
    point_labels: object | None,
    box: object | None,
    image_size: tuple[int, int],
    *,
    batched: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate prompts against an ``(H, W)`` image.

    Single mode: coords ``(N, 2)``, labels ``(N,)``, box ``(4,)`` or ``(1, 4)`` -> box ``(1, 4)``.
    Batched mode: coords ``(B, N, 2)``, labels ``(B, N)``, boxes ``(B, 4)``.
    Raises :class:`InputError` with a message that says what to change.
    """
    h, w = image_size
    coords = labels = boxes = None
    if (point_coords is None) != (point_labels is None):
        raise InputError("point_coords and point_labels go together: give both (labels 1 = foreground, 0 = background)")
    if point_coords is not None:
        coords = _as_float_array(point_coords, "point_coords")
        labels = _as_float_array(point_labels, "point_labels")
        want = "(B, N, 2)" if batched else "(N, 2)"
        if coords.ndim != (3 if batched else 2) or coords.shape[-1] != 2:
            raise InputError(f"point_coords must have shape {want} of (x, y) pixels, got {coords.shape}")
        if labels.shape != coords.shape[:-1]:
            raise InputError(f"point_labels must have shape {coords.shape[:-1]} (one label per point), got {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise InputError("point_labels must be 1 (foreground) or 0 (background)")
        _check_inside(coords.reshape(-1, 2), h, w, "point")
    if box is not None:
        boxes = _as_float_array(box, "box")
        if batched:
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise InputError(f"boxes must have shape (B, 4) as x0, y0, x1, y1 pixels, got {boxes.shape}")
        else:
            if boxes.size != 4:
                raise InputError(f"box must have 4 numbers x0, y0, x1, y1 (pixels), got shape {boxes.shape}")
            boxes = boxes.reshape(1, 4)
        bad = (boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])
        if bad.any():
            raise InputError(
                f"box {boxes[bad][0].tolist()} has x0 > x1 or y0 > y1: give it as x0, y0, x1, y1 (top-left, bottom-right)"
            )
        _check_inside(boxes.reshape(-1, 2), h, w, "box corner")
    if batched and coords is not None and boxes is not None and coords.shape[0] != boxes.shape[0]:
        raise InputError(f"{coords.shape[0]} point sets but {boxes.shape[0]} boxes: the batch sizes must match")
    return coords, labels, boxes


def _check_inside(xy: np.ndarray, h: int, w: int, what: str) -> None:
    outside = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if outside.any():
        x, y = xy[outside][0].tolist()
        raise InputError(
            f"{what} ({x:g}, {y:g}) is outside the {w}x{h} image: x must be in [0, {w}] and y in [0, {h}] (pixels)"
        )


def check_mask_input(mask_input: object | None, size: tuple[int, int], *, batch: int) -> np.ndarray | None:
    """``mask_input`` as ``(batch, 1, h, w)`` float32, from ``(h, w)``, ``(1, h, w)`` or ``(B, 1, h, w)``."""
    if mask_input is None:
        return None
    arr = _as_float_array(mask_input, "mask_input").astype(np.float32)
    if arr.shape[-2:] != tuple(size):
        raise InputError(
            f"mask_input must be low-res logits of size {size[0]}x{size[1]} (low_res_logits of a previous "
            f"prediction), got shape {arr.shape}"
        )
    arr = arr.reshape(-1, 1, *size)
    if arr.shape[0] != batch:
        raise InputError(f"mask_input has {arr.shape[0]} masks for {batch} prompts")
    return arr


@dataclass
class PromptBatch:
    """Prompts in the model's input frame, as tensors ready for the prompt encoder."""

    points: tuple[torch.Tensor, torch.Tensor] | None
    boxes: torch.Tensor | None
    masks: torch.Tensor | None
    size: int

    @classmethod
    def from_original(
        cls,
        coords: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        masks: np.ndarray | None,
        original_size: tuple[int, int],
        long_side: int,
        device: torch.device,
    ) -> PromptBatch:
        """Map ``(B, N, 2)`` coords, ``(B, N)`` labels, ``(B, 4)`` boxes and masks to tensors."""
        points = None
        size = 1
        if coords is not None and labels is not None:
            c = transforms.apply_coords(coords, original_size, long_side).to(device)
            points = (c, torch.as_tensor(labels, dtype=torch.int, device=device))
            size = c.shape[0]
        box_t = None
        if boxes is not None:
            box_t = transforms.apply_boxes(boxes, original_size, long_side).to(device)
            size = box_t.shape[0]
        mask_t = torch.as_tensor(masks, device=device) if masks is not None else None
        if mask_t is not None:
            size = mask_t.shape[0]
        return cls(points, box_t, mask_t, size)

    def rows(self, start: int, stop: int) -> PromptBatch:
        """Prompts ``start:stop`` of the batch (a batch of one shared prompt part is kept whole)."""
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return t if t is None or t.shape[0] == 1 else t[start:stop]

        points = None if self.points is None else (cut(self.points[0]), cut(self.points[1]))
        return PromptBatch(points, cut(self.boxes), cut(self.masks), min(stop, self.size) - start)
