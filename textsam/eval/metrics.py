"""Evaluation metrics: mask IoU, referring-segmentation scores, semantic-segmentation confusion, COCO/LVIS AP.

Conventions
- Masks are ``(H, W)`` bool arrays (or COCO RLE dicts where noted).
- Referring segmentation: ``mIoU`` = mean of per-expression IoU; ``cIoU`` = cumulative intersection /
  cumulative union over all expressions; ``P@t`` = fraction of expressions with IoU > t (strictly,
  as in the LAVT/ReLA code), for t = 0.5, 0.6, 0.7, 0.8, 0.9. An expression whose target is empty
  (gRefCOCO "no target") and whose prediction is empty too has IoU 1 (a correct rejection, as
  gRefCOCO's gIoU counts it); it adds nothing to cIoU.
- Semantic segmentation: a confusion matrix ``(C, C + 1)`` (rows ground truth, columns prediction, the
  last column = "no prediction"); ground-truth pixels equal to ``ignore_index`` (or outside ``[0, C)``)
  are skipped. Per-class IoU = TP / (GT + Pred - TP); **a class absent from both the ground truth and
  the prediction has no IoU (NaN) and is excluded from mIoU**. Pixel accuracy = correct / counted pixels.
- COCO AP is never re-implemented: :func:`coco_eval` runs pycocotools' ``COCOeval`` and
  :func:`lvis_eval` runs the ``lvis`` package's ``LVISEval``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import rle as _rle
from ..errors import InputError, TextSamError

__all__ = [
    "PRECISION_THRESHOLDS", "mask_iou", "intersection_union", "refer_metrics", "confusion_matrix",
    "semseg_metrics", "coco_eval", "lvis_eval", "is_lvis", "COCO_STAT_NAMES",
]

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _as_mask(m: np.ndarray | Mapping[str, Any]) -> np.ndarray:
    if isinstance(m, Mapping):
        return _rle.decode(m)
    return np.asarray(m).astype(bool, copy=False)


def intersection_union(pred: np.ndarray | Mapping, gt: np.ndarray | Mapping) -> tuple[int, int]:
    """``(|pred & gt|, |pred | gt|)`` of two same-size masks (bool arrays or RLE dicts)."""
    p, g = _as_mask(pred), _as_mask(gt)
    if p.shape != g.shape:
        raise InputError(f"masks of different sizes: prediction {p.shape} vs ground truth {g.shape}")
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


def mask_iou(pred: np.ndarray | Mapping, gt: np.ndarray | Mapping) -> float:
    """Intersection over union of two masks; 0.0 when both are empty."""
    inter, union = intersection_union(pred, gt)
    return inter / union if union else 0.0


def refer_metrics(inters: Sequence[int], unions: Sequence[int]) -> dict[str, float]:
    """mIoU, cIoU and P@0.5..0.9 from per-expression intersections and unions (pixel counts).

    Returns fractions in [0, 1]: ``{"mIoU", "cIoU", "P@0.5", ..., "P@0.9"}``. Raises on an empty list
    (an empty evaluation must never look like a score).
    """
    i = np.asarray(inters, dtype=np.float64)
    u = np.asarray(unions, dtype=np.float64)
    if i.size == 0:
        raise InputError("no expressions to score")
    if i.shape != u.shape:
        raise InputError("intersections and unions differ in length")
    ious = np.divide(i, u, out=np.ones_like(i), where=u > 0)  # 0/0: empty target, empty prediction
    out = {"mIoU": float(ious.mean()), "cIoU": float(i.sum() / u.sum()) if u.sum() > 0 else 0.0}
    for t in PRECISION_THRESHOLDS:
        out[f"P@{t}"] = float((ious > t).mean())
    return out


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """``(C, C + 1)`` int64 counts: row = ground-truth class, column = predicted class (C = no prediction).

    ``gt`` and ``pred`` are ``(H, W)`` integer label maps. GT pixels equal to ``ignore_index`` or outside
    ``[0, C)`` are skipped; predicted values outside ``[0, C)`` (e.g. -1) count as "no prediction".
    """
    g = np.asarray(gt).astype(np.int64, copy=False).ravel()
    p = np.asarray(pred).astype(np.int64, copy=False).ravel()
    if g.shape != p.shape:
        raise InputError(f"label maps of different sizes: {np.shape(gt)} vs {np.shape(pred)}")
    keep = (g >= 0) & (g < num_classes)
    if ignore_index is not None:
        keep &= g != ignore_index
    g, p = g[keep], p[keep]
    p = np.where((p >= 0) & (p < num_classes), p, num_classes)
    counts = np.bincount(g * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def semseg_metrics(conf: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-class IoU, mIoU and pixel accuracy of a ``(C, C + 1)`` (or ``(C, C)``) confusion matrix.

    Classes present in neither ground truth nor prediction get IoU ``None`` and are left out of the mean.
    Returns ``{"mIoU", "pixel_accuracy", "mean_accuracy", "per_class_iou": {name: iou | None},
    "classes_scored": n}``; mIoU is None when no class is scored.
    """
    conf = np.asarray(conf, dtype=np.int64)
    c = conf.shape[0]
    tp = np.diag(conf[:, :c]).astype(np.float64)
    gt = conf.sum(axis=1).astype(np.float64)
    pred = conf[:, :c].sum(axis=0).astype(np.float64)
    union = gt + pred - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.full(c, np.nan), where=present)
    acc = np.divide(tp, gt, out=np.full(c, np.nan), where=gt > 0)
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise InputError(f"{len(names)} class names for a {c}-class confusion matrix")
    total = gt.sum()
    return {
        "mIoU": float(iou[present].mean()) if present.any() else None,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else None,
        "mean_accuracy": float(np.nanmean(acc)) if (gt > 0).any() else None,
        "classes_scored": int(present.sum()),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
    }


# ------------------------------------------------------------------------------------ COCO / LVIS
def _pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise TextSamError("COCO AP needs pycocotools: pip install 'textsam[eval]'") from err
    return COCO, COCOeval


def _load_gt(gt: str | Path | Any) -> Any:
    COCO, _ = _pycocotools()
    if isinstance(gt, (str, Path)):
        path = Path(gt)
        if not path.is_file():
            raise InputError(f"ground-truth file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path} is not valid JSON ({err})") from err
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    return gt


def coco_eval(
    gt: str | Path | Any,
    results: Sequence[Mapping[str, Any]],
    *,
    img_ids: Sequence[int] | None = None,
    cat_ids: Sequence[int] | None = None,
    iou_type: str = "segm",
) -> dict[str, float]:
    """COCO mask AP of ``results`` with pycocotools' ``COCOeval``.

    Args:
        gt: a COCO annotation file path or a ``pycocotools.coco.COCO`` object.
        results: COCO results ``[{image_id, category_id, segmentation: RLE (counts str), score}, ...]``.
        img_ids: evaluate only these images (default: every image of ``gt``).
        cat_ids: evaluate only these categories (default: every category of ``gt``).
        iou_type: ``"segm"`` (masks) or ``"bbox"``.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` exactly as ``COCOeval.stats[:6]`` (fractions;
        -1.0 where pycocotools finds no ground truth in that area range).
    """
    _, COCOeval = _pycocotools()
    if not results:
        raise InputError("no predictions to evaluate: COCO AP needs at least one result")
    coco_gt = _load_gt(gt)
    res = [dict(r) for r in results]
    for r in res:  # pycocotools wants bytes or str counts; keep ours as given
        if isinstance(r.get("segmentation"), Mapping):
            r["segmentation"] = dict(r["segmentation"])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(res))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        if cat_ids is not None:
            ev.params.catIds = sorted(int(i) for i in cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(COCO_STAT_NAMES, ev.stats[:6])}


def is_lvis(data: Mapping[str, Any]) -> bool:
    """True for LVIS annotation dicts (categories carry a ``frequency`` or images list non-exhaustive ids)."""
    cats = data.get("categories") or []
    imgs = data.get("images") or []
    return bool(
        (cats and isinstance(cats[0], Mapping) and "frequency" in cats[0])
        or (imgs and isinstance(imgs[0], Mapping) and "not_exhaustive_category_ids" in imgs[0])
    )


def lvis_eval(
    gt: str | Path,
    results: Sequence[Mapping[str, Any]],
    *,
    img_ids: Sequence[int] | None = None,
    cat_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """LVIS mask AP with the ``lvis`` package's ``LVISEval`` (``AP, AP50, AP75, APs, APm, APl, APr, APc, APf``).

    Raises a :class:`TextSamError` saying how to install it when the package is missing.
    """
    try:
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError as err:
        raise TextSamError(
            "this is an LVIS annotation file: LVIS AP needs the LVIS evaluator, which is not installed. "
            "Install it with `pip install lvis` (COCO's evaluator would score LVIS wrongly: it ignores "
            "the federated not-exhaustive/negative category lists)."
        ) from err
    if not results:
        raise InputError("no predictions to evaluate: LVIS AP needs at least one result")
    lvis_gt = LVIS(str(gt))
    lvis_dt = LVISResults(lvis_gt, [dict(r) for r in results])
    ev = LVISEval(lvis_gt, lvis_dt, "segm")
    if img_ids is not None:
        ev.params.img_ids = sorted(int(i) for i in img_ids)
    if cat_ids is not None:
        ev.params.cat_ids = sorted(int(i) for i in cat_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.run()
    return {k: float(v) for k, v in ev.get_results().items()}
