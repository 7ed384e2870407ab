"""Object proposals: SAM's automatic mask generation, with the official semantics.

``generate_proposals(model, image, options)`` gives what segment-anything's ``SamAutomaticMaskGenerator``
gives for the same checkpoint and image: a grid of single positive clicks (per crop layer), each decoded
into SAM's three masks in batches of ``points_per_batch``; masks kept when their predicted IoU is above
``pred_iou_thresh`` and their stability score (IoU of the masks thresholded at +-``stability_score_offset``
around 0) is at least ``stability_score_thresh``; boxes near an inner crop edge dropped; box NMS per crop,
then across crops (smaller crops first); optionally small holes and islands removed. Records
(:func:`to_records`) carry ``segmentation``, ``area``, ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``,
``stability_score`` and ``crop_box`` (XYWH), in the official order.

Two things are cheaper here than in the reference, with the same results: the IoU filter runs before masks
are upsampled to the image (a mask that fails it is never upsampled), and the upsampling runs a few clicks
at a time. Frames: points and boxes are pixels of the original image (x, y); masks are ``(H, W)`` bool.

:func:`quick_proposals` is the text engine's variant for one image on a CPU: the same grid, decode and
filters, but the stability score, the boxes and the NMS are computed on the decoder's low-resolution masks
(256 x 256 for SAM) and only the best ``limit`` proposals are upsampled to the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..precision import autocast
from ..transforms import get_preprocess_shape

if TYPE_CHECKING:
    from ..predictor import TextSamPredictor

__all__ = ["ProposalOptions", "Proposals", "generate_proposals", "quick_proposals", "to_records"]

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# full-resolution logits upsampled at once: two or three masks of a 1800 x 1200 photo, which a CPU thresholds
# (and scores for stability) while they are still in its cache; ten at a time were 20-30% slower (32 masks: 109
# against 81-87 ms; generate(points_per_side=16) with mobile_sam and every mask kept: 10.3 against 8.6-9.0 s)
UPSAMPLE_FLOATS = 1 << 23


@dataclass(frozen=True)
class ProposalOptions:
    """``SamAutomaticMaskGenerator``'s keyword arguments, with its defaults (tuned for ViT-H)."""

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[np.ndarray, ...] | None = field(default=None, compare=False)
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        if (self.points_per_side is None) == (self.point_grids is None):
            raise InputError("give exactly one of points_per_side and point_grids")
        if self.points_per_side is not None and self.points_per_side < 1:
            raise InputError(f"points_per_side must be >= 1, got {self.points_per_side}")
        if self.points_per_batch < 1 or self.crop_n_layers < 0 or self.crop_n_points_downscale_factor < 1:
            raise InputError("points_per_batch and crop_n_points_downscale_factor must be >= 1, crop_n_layers >= 0")
        if self.output_mode not in OUTPUT_MODES:
            raise InputError(f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}")
        if self.point_grids is not None and len(self.point_grids) != self.crop_n_layers + 1:
            raise InputError(f"point_grids needs one grid per crop layer ({self.crop_n_layers + 1}), got "
                             f"{len(self.point_grids)}")

    def grids(self) -> list[np.ndarray]:
        """The click grid of each crop layer, ``(n, 2)`` x, y in [0, 1]."""
        if self.point_grids is not None:
            return [np.asarray(g, dtype=np.float64) for g in self.point_grids]
        assert self.points_per_side is not None
        return [point_grid(int(self.points_per_side / (self.crop_n_points_downscale_factor ** i)))
                for i in range(self.crop_n_layers + 1)]


@dataclass
class Proposals:
    """The masks found in one image, best kept by NMS; ``N`` of them.

    masks: ``(N, H, W)`` bool, original frame. boxes: ``(N, 4)`` x0, y0, x1, y1 (inclusive ends, as SAM's
    ``batched_mask_to_box``). predicted_iou, stability: ``(N,)``. points: ``(N, 2)`` the click that made
    each mask (x, y pixels). crop_boxes: ``(N, 4)`` x0, y0, x1, y1 of the crop it was found in.
    """

    masks: Tensor
    boxes: Tensor
    predicted_iou: Tensor
    stability: Tensor
    points: Tensor
    crop_boxes: Tensor

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def select(self, keep: Tensor) -> Proposals:
        return Proposals(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))

    @staticmethod
    def cat(parts: list[Proposals], size: tuple[int, int]) -> Proposals:
        if not parts:
            return Proposals(torch.zeros(0, *size, dtype=torch.bool), torch.zeros(0, 4, dtype=torch.long),
                             torch.zeros(0), torch.zeros(0), torch.zeros(0, 2, dtype=torch.float64),
                             torch.zeros(0, 4, dtype=torch.long))
        return Proposals(*(torch.cat([getattr(p, f) for p in parts]) for f in Proposals.__dataclass_fields__))


def point_grid(n: int) -> np.ndarray:
    """``(n * n, 2)`` x, y in [0, 1]: cell centres of an ``n`` x ``n`` grid, row by row (SAM's grid)."""
    offset = 1 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    return np.stack([np.tile(side[None, :], (n, 1)), np.tile(side[:, None], (1, n))], axis=-1).reshape(-1, 2)


def crop_boxes(size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """Crop boxes x0, y0, x1, y1 of every layer (layer i: 2^i x 2^i overlapping crops) and their layers."""
    h, w = size
    boxes, layers = [[0, 0, w, h]], [0]
    for layer in range(n_layers):
        n = 2 ** (layer + 1)
        overlap = int(overlap_ratio * min(h, w) * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + h) / n))
        for x0, y0 in product([int((crop_w - overlap) * i) for i in range(n)],
                              [int((crop_h - overlap) * i) for i in range(n)]):
            boxes.append([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)])
            layers.append(layer + 1)
    return boxes, layers


def stability_score(logits: Tensor, offset: float, threshold: float = 0.0) -> Tensor:
    """IoU of each mask thresholded at ``threshold + offset`` and ``threshold - offset``: ``(..., H, W) -> (...)``."""
    inter = (logits > threshold + offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    union = (logits > threshold - offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inter / union


def masks_to_boxes(masks: Tensor) -> Tensor:
    """``(N, H, W)`` bool -> ``(N, 4)`` x0, y0, x1, y1 with inclusive ends; ``[0, 0, 0, 0]`` for an empty mask."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.long, device=masks.device)
    n, h, w = masks.shape
    # the reductions on a uint8 view: the same answer as bool .any(), about 15x faster on a CPU
    flat = (masks if masks.dtype == torch.bool else masks != 0).view(torch.uint8)
    rows, cols = flat.amax(dim=-1) > 0, flat.amax(dim=-2) > 0
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    bottom = (rows * ys).amax(-1)
    top = (rows * ys + h * ~rows).amin(-1)
    right = (cols * xs).amax(-1)
    left = (cols * xs + w * ~cols).amin(-1)
    out = torch.stack([left, top, right, bottom], dim=-1)
    empty = (right < left) | (bottom < top)
    return out * ~empty[:, None]


def _near_crop_edge(boxes: Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0) -> Tensor:
    """Boxes (crop frame) that touch an edge of the crop which is not an edge of the image."""
    crop = torch.as_tensor(crop_box, dtype=torch.float)
    full = torch.as_tensor(image_box, dtype=torch.float)
    boxes = (boxes + torch.tensor([[crop_box[0], crop_box[1], crop_box[0], crop_box[1]]])).float()
    near_crop = torch.isclose(boxes, crop[None], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, full[None], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_image, dim=1)


def _nms(boxes: Tensor, scores: Tensor, threshold: float) -> Tensor:
    from torchvision.ops import batched_nms

    return batched_nms(boxes.float(), scores, torch.zeros(len(boxes)), iou_threshold=threshold)


def _decode_points(predictor: TextSamPredictor, points: np.ndarray, crop_box: list[int], full_size: tuple[int, int],
                   options: ProposalOptions) -> Proposals:
    """One batch of clicks (crop frame) on the predictor's current image (the crop ``crop_box`` of an image of
    ``full_size`` (H, W)): the masks that pass the filters, in the crop frame."""
    size = predictor.original_size
    assert size is not None and predictor.input_size is not None
    model = predictor.model
    new_h, new_w = get_preprocess_shape(size[0], size[1], model.img_size)
    coords = np.array(points, dtype=np.float64)  # as ResizeLongestSide.apply_coords: float64 arithmetic
    coords[:, 0] = coords[:, 0] * (new_w / size[1])
    coords[:, 1] = coords[:, 1] * (new_h / size[0])
    in_points = torch.as_tensor(coords, device=model.device)[:, None]
    in_labels = torch.ones(len(coords), 1, dtype=torch.int, device=model.device)
    threshold = options.pred_iou_thresh if options.pred_iou_thresh > 0.0 else -math.inf
    with torch.inference_mode():
        iou, low, rows = model.decode_confident(predictor.get_image_embedding(), (in_points, in_labels), threshold)
    m = iou.shape[1]
    # the reference's order: click by click, SAM's three masks each; then the IoU filter (strict)
    keep = iou[rows].flatten() > options.pred_iou_thresh if options.pred_iou_thresh > 0.0 else \
        torch.ones(len(rows) * m, dtype=torch.bool)
    flat_rows = rows.repeat_interleave(m)[keep.to(rows.device)]
    flat_masks = torch.arange(len(rows) * m, device=low.device)[keep.to(low.device)]
    kept_iou = iou[rows].flatten()[keep.to(iou.device)].float().cpu()
    masks, stability = [], []
    per_mask = size[0] * size[1] + model.img_size ** 2
    step = max(1, UPSAMPLE_FLOATS // per_mask)
    low_flat = low.flatten(0, 1)
    for start in range(0, len(flat_masks), step):
        chunk = low_flat[flat_masks[start : start + step]][:, None]
        logits = model.postprocess_masks(chunk, predictor.input_size, size)[:, 0]
        stability.append(stability_score(logits, options.stability_score_offset, model.mask_threshold).cpu())
        masks.append((logits > model.mask_threshold).cpu())
    h, w = size
    masks_t = torch.cat(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool)
    stab = torch.cat(stability) if stability else torch.zeros(0)
    pts = torch.as_tensor(points, dtype=torch.float64)[flat_rows.cpu()]
    keep2 = stab >= options.stability_score_thresh if options.stability_score_thresh > 0.0 else \
        torch.ones(len(stab), dtype=torch.bool)
    masks_t, kept_iou, stab, pts = masks_t[keep2], kept_iou[keep2], stab[keep2], pts[keep2]
    boxes = masks_to_boxes(masks_t)
    edge = _near_crop_edge(boxes, crop_box, [0, 0, full_size[1], full_size[0]])
    if edge.any():
        masks_t, boxes, kept_iou, stab, pts = masks_t[~edge], boxes[~edge], kept_iou[~edge], stab[~edge], pts[~edge]
    crops = torch.tensor([crop_box] * len(boxes), dtype=torch.long).reshape(-1, 4)
    return Proposals(masks_t, boxes, kept_iou, stab, pts, crops)


def _uncrop(p: Proposals, crop_box: list[int], size: tuple[int, int]) -> Proposals:
    x0, y0, x1, y1 = crop_box
    h, w = size
    masks = p.masks
    if not (x0 == 0 and y0 == 0 and x1 == w and y1 == h):
        masks = torch.nn.functional.pad(masks, (x0, w - x1, y0, h - y1), value=False)
    boxes = p.boxes + torch.tensor([[x0, y0, x0, y0]])
    points = p.points + torch.tensor([[x0, y0]], dtype=torch.float64)
    return Proposals(masks, boxes, p.predicted_iou, p.stability, points, p.crop_boxes)


def generate_proposals(predictor: TextSamPredictor, options: ProposalOptions) -> Proposals:
    """Proposals for the predictor's current image (see the module docstring).

    Crop layer 0 uses the predictor's own image embedding; deeper layers embed each crop with a second
    predictor on the same model, so the caller's predictor keeps its image.
    """
    image = predictor.image
    if image is None or predictor.original_size is None:
        raise InputError("no image is set: call predictor.set_image(image) before generating proposals")
    size = predictor.original_size
    grids = options.grids()
    boxes_, layers = crop_boxes(size, options.crop_n_layers, options.crop_overlap_ratio)
    found = []
    helper = None
    for crop_box, layer in zip(boxes_, layers):
        x0, y0, x1, y1 = crop_box
        if layer == 0 and crop_box == [0, 0, size[1], size[0]]:
            current = predictor
        else:
            if helper is None:  # a predictor of the same kind, on the same model
                helper = type(predictor)(predictor.model, image_precision=predictor.image_precision)
            helper.set_image(image[y0:y1, x0:x1])
            current = helper
        crop_size = (y1 - y0, x1 - x0)
        points = grids[layer] * np.array(crop_size)[None, ::-1]
        parts = [_decode_points(current, points[i : i + options.points_per_batch], crop_box, size, options)
                 for i in range(0, len(points), options.points_per_batch)]
        data = Proposals.cat(parts, crop_size)
        data = data.select(_nms(data.boxes, data.predicted_iou, options.box_nms_thresh))
        found.append(_uncrop(data, crop_box, size))
    data = Proposals.cat(found, size)
    if len(boxes_) > 1:
        area = (data.crop_boxes[:, 2] - data.crop_boxes[:, 0]) * (data.crop_boxes[:, 3] - data.crop_boxes[:, 1])
        data = data.select(_nms(data.boxes, 1 / area, options.crop_nms_thresh))
    if options.min_mask_region_area > 0:
        data = _remove_small_regions(data, options.min_mask_region_area,
                                     max(options.box_nms_thresh, options.crop_nms_thresh))
    return data


def quick_proposals(predictor: TextSamPredictor, options: ProposalOptions, limit: int,
                    points: np.ndarray | None = None, precision: str = "fp32") -> Proposals:
    """Proposals of the predictor's current image without crop layers, filtered and de-duplicated at the
    decoder's low resolution; the best ``limit`` by predicted IoU are upsampled to the image (see the module
    docstring). ``points (P, 2)``: the clicks (x, y, original pixels; default: the options' first grid).
    ``options.crop_n_layers`` and ``min_mask_region_area`` do not apply here. ``precision``: the clicks' decoder
    calls run in it (:func:`textsam.precision.autocast`; their logits are returned to fp32 before filtering)."""
    size, input_size = predictor.original_size, predictor.input_size
    if size is None or input_size is None:
        raise InputError("no image is set: call predictor.set_image(image) before generating proposals")
    model = predictor.model
    h, w = size
    points = options.grids()[0] * np.array([w, h])[None] if points is None else np.asarray(points, np.float64)
    new_h, new_w = input_size
    lows, ious, stabs, pts = [], [], [], []
    for start in range(0, len(points), options.points_per_batch):
        batch = points[start : start + options.points_per_batch]
        coords = np.array(batch, dtype=np.float64)
        coords[:, 0] *= new_w / w
        coords[:, 1] *= new_h / h
        in_points = torch.as_tensor(coords, device=model.device)[:, None]
        in_labels = torch.ones(len(coords), 1, dtype=torch.int, device=model.device)
        threshold = options.pred_iou_thresh if options.pred_iou_thresh > 0.0 else -math.inf
        with torch.inference_mode(), autocast(model.device, precision):
            iou, low, rows = model.decode_confident(predictor.get_image_embedding(), (in_points, in_labels), threshold)
        iou, low = iou.float(), low.float()
        m = iou.shape[1]
        keep = iou[rows].flatten() > options.pred_iou_thresh if options.pred_iou_thresh > 0.0 else \
            torch.ones(len(rows) * m, dtype=torch.bool, device=iou.device)
        flat = low.flatten(0, 1)[keep]
        side = flat.shape[-1]
        valid_h = math.ceil(new_h * side / model.img_size)
        valid_w = math.ceil(new_w * side / model.img_size)
        stab = stability_score(flat[:, :valid_h, :valid_w], options.stability_score_offset, model.mask_threshold)
        good = stab >= options.stability_score_thresh if options.stability_score_thresh > 0.0 else \
            torch.ones_like(stab, dtype=torch.bool)
        lows.append(flat[good].cpu())
        ious.append(iou[rows].flatten()[keep][good].float().cpu())
        stabs.append(stab[good].cpu())
        pts.append(torch.as_tensor(batch, dtype=torch.float64)[rows.repeat_interleave(m)[keep][good].cpu()])
    low_all = torch.cat(lows) if lows else torch.zeros(0, 1, 1)
    iou_all, stab_all, pts_all = torch.cat(ious), torch.cat(stabs), torch.cat(pts)
    if len(low_all) == 0:
        return Proposals.cat([], size)
    side = low_all.shape[-1]
    # boxes of the low-res masks, in original pixels (inclusive ends, as masks_to_boxes)
    boxes_low = masks_to_boxes(low_all > model.mask_threshold).double()
    sx = (model.img_size / side) * (w / new_w)
    sy = (model.img_size / side) * (h / new_h)
    boxes = torch.stack([(boxes_low[:, 0] * sx).floor(), (boxes_low[:, 1] * sy).floor(),
                         ((boxes_low[:, 2] + 1) * sx).ceil() - 1, ((boxes_low[:, 3] + 1) * sy).ceil() - 1], dim=1)
    boxes = torch.minimum(boxes.clamp_min(0), torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=torch.float64)).long()
    keep = _nms(boxes, iou_all, options.box_nms_thresh)
    keep = keep[torch.argsort(iou_all[keep], descending=True, stable=True)][:limit]
    masks = torch.empty(len(keep), h, w, dtype=torch.bool)
    step = max(1, UPSAMPLE_FLOATS // (h * w + model.img_size ** 2))
    with torch.inference_mode():  # a few masks at a time: a whole batch of float logits is slower to threshold
        for start in range(0, len(keep), step):
            chunk = low_all[keep[start : start + step]][:, None].to(model.device)
            masks[start : start + step] = (model.postprocess_masks(chunk, input_size, size)[:, 0]
                                           > model.mask_threshold).cpu()
    crops = torch.tensor([[0, 0, w, h]] * len(keep), dtype=torch.long).reshape(-1, 4)
    return Proposals(masks, masks_to_boxes(masks), iou_all[keep], stab_all[keep], pts_all[keep], crops)


def _remove_small_regions(data: Proposals, min_area: int, nms_thresh: float) -> Proposals:
    """Fill holes and remove islands smaller than ``min_area`` pixels (8-connectivity), then NMS again
    preferring masks that did not change (as the reference's ``postprocess_small_regions``)."""
    if len(data) == 0:
        return data
    try:
        from scipy import ndimage
    except ImportError as err:
        raise InputError("min_mask_region_area > 0 needs scipy: pip install scipy (or 'textsam[eval]')") from err

    def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
        return ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))  # 8-connectivity, as the reference

    masks, unchanged = [], []
    for mask in data.masks.numpy():
        new, changed_holes = _fill_small(mask, min_area, holes=True, label=label)
        new, changed_islands = _fill_small(new, min_area, holes=False, label=label)
        masks.append(torch.from_numpy(new))
        unchanged.append(float(not (changed_holes or changed_islands)))
    new_masks = torch.stack(masks)
    boxes = masks_to_boxes(new_masks)
    keep = _nms(boxes, torch.as_tensor(unchanged), nms_thresh)
    out = data.select(keep)
    changed = torch.as_tensor(unchanged)[keep] == 0
    out.masks[changed] = new_masks[keep][changed]
    out.boxes[changed] = boxes[keep][changed]
    return out


def _fill_small(mask: np.ndarray, area: int, *, holes: bool, label: Any) -> tuple[np.ndarray, bool]:
    working = mask ^ holes
    regions, n = label(working)
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area]
    if not small:
        return mask, False
    fill = [0, *small]
    if not holes:
        fill = [i for i in range(n + 1) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def to_records(data: Proposals, output_mode: str = "binary_mask") -> list[dict[str, Any]]:
    """``SamAutomaticMaskGenerator.generate``'s records for ``data`` (see the module docstring)."""
    from .. import rle

    records = []
    for i in range(len(data)):
        mask = data.masks[i].numpy()
        if output_mode == "binary_mask":
            segmentation: Any = mask
        elif output_mode == "coco_rle":
            segmentation = rle.encode(mask)
        else:
            segmentation = {"size": list(mask.shape), "counts": rle.counts_of(rle.encode(mask)).tolist()}
        x0, y0, x1, y1 = (int(v) for v in data.boxes[i])
        cx0, cy0, cx1, cy1 = (int(v) for v in data.crop_boxes[i])
        records.append({
            "segmentation": segmentation,
            "area": int(mask.sum()),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "predicted_iou": float(data.predicted_iou[i]),
            "point_coords": [[float(v) for v in data.points[i]]],
            "stability_score": float(data.stability[i]),
            "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
        })
    return records
