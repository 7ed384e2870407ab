"""SAM's single-point valid-mask protocol (SAM paper section 7.1 / App. D.1) on a COCO-format mask set.

Per ground-truth mask (crowd regions skipped; empty masks skipped and listed):

1. click 1 at the mask's "centre": the maximum of its interior distance transform
   (:func:`textsam.eval.clicks.first_click`);
2. ``predictor.predict(point_coords=all clicks so far, point_labels=..., mask_input=previous
   low-res logits of the most confident mask, multimask_output=True)`` -> 3 masks;
3. the "most confident" mask is the one with the highest predicted IoU; the "oracle" mask is the one
   of the 3 with the best IoU against the ground truth;
4. the next click goes to the farthest-from-boundary pixel of the larger error of the most confident
   mask (positive on a false negative, negative on a false positive;
   :func:`textsam.eval.clicks.next_click`); when the mask is perfect, the prediction is kept.

Scored at N = 1, 2, 3, 5, 9 clicks: mIoU over masks of the most confident and of the oracle mask.
Deviation from SAM, documented: multimask output is used at every N (SAM reports its 3 masks only
for ambiguous single clicks), so that an oracle exists at every N. Clicks are integer pixel positions.

Record of one image: ``{"key": "<image_id>", "masks": [{"ann_id", "clicks": [[x, y, label], ...],
"best": [RLE at each N], "oracle": [RLE at each N]}]}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import rle as _rle
from ..errors import InputError
from .base import Benchmark, Scores, decode_rle, describe_keys, load_item, split_records
from .clicks import first_click, next_click
from .metrics import mask_iou

__all__ = ["PointsBenchmark", "DEFAULT_CLICKS"]

DEFAULT_CLICKS = (1, 2, 3, 5, 9)


class PointsBenchmark(Benchmark):
    """Interactive-click mIoU (most confident and oracle mask) at N clicks on a CocoDataset."""

    name = "points"

    def __init__(self, dataset: Any, *, clicks: Sequence[int] = DEFAULT_CLICKS,
                 data_info: dict[str, Any] | None = None) -> None:
        clicks = sorted({int(n) for n in clicks})
        if not clicks or clicks[0] < 1:
            raise InputError(f"click counts must be positive integers, got {list(clicks)}")
        self.dataset = dataset
        self.clicks = clicks
        self.data_info = data_info or {}
        self._anns = {iid: sorted(a.id for a in dataset.anns_for_image(iid)) for iid in dataset.image_ids()}

    def keys(self) -> list[str]:
        return [str(i) for i, anns in sorted(self._anns.items()) if anns]

    def describe(self) -> dict[str, Any]:
        return {
            "data": self.data_info,
            "protocol": "SAM single-point protocol: first click at the mask centre (distance-transform max), later "
                        "clicks at the centre of the larger error region, previous low-res logits fed back, "
                        f"3 masks per call; mIoU of the most confident and the oracle mask at N = {self.clicks}; "
                        "non-crowd COCO masks",
            "templates": None,
        }

    def _simulate(self, predictor: Any, gt: np.ndarray) -> dict[str, Any]:
        x, y, lab = first_click(gt)
        clicks = [[x, y, lab]]
        prev_logits = None
        best_masks: dict[int, np.ndarray] = {}
        oracle_masks: dict[int, np.ndarray] = {}
        best = oracle = None
        nxt: tuple[int, int, int] | None = None
        for n in range(1, self.clicks[-1] + 1):
            if n > 1:
                nxt = next_click(gt, best)
                if nxt is not None:
                    clicks.append(list(nxt))
            if n == 1 or nxt is not None:
                pts = np.asarray([c[:2] for c in clicks], dtype=np.float64)
                labels = np.asarray([c[2] for c in clicks], dtype=np.int64)
                out = predictor.predict(point_coords=pts, point_labels=labels, mask_input=prev_logits,
                                        multimask_output=True)
                i_best = int(np.argmax(out.scores))
                ious = [mask_iou(m, gt) for m in out.masks]
                best, oracle = out.masks[i_best], out.masks[int(np.argmax(ious))]
                prev_logits = out.low_res_logits[i_best][None]
            if n in self.clicks:
                best_masks[n], oracle_masks[n] = best, oracle
        return {"clicks": clicks,
                "best": [_rle.encode(best_masks[n]) for n in self.clicks],
                "oracle": [_rle.encode(oracle_masks[n]) for n in self.clicks]}

    def run_item(self, predictor: Any, key: str) -> dict[str, Any]:
        image_id = int(key)
        predictor.set_image(load_item(self.dataset.load_image, image_id))
        masks = []
        for ann_id in self._anns[image_id]:
            gt = self.dataset.mask(ann_id)
            if not gt.any():
                masks.append({"ann_id": ann_id, "skipped": "empty ground-truth mask"})
                continue
            masks.append({"ann_id": ann_id, **self._simulate(predictor, gt)})
        return {"masks": masks}

    def score(self, records: dict[str, dict[str, Any]], keys: Sequence[str]) -> Scores:
        ok, problems = split_records(records, keys)
        ious: dict[str, list[list[float]]] = {"most_confident": [], "oracle": []}
        empty: list[str] = []
        missing: list[str] = []
        for key in keys:
            rec = ok.get(key)
            preds = {}
            if rec is not None:
                if not isinstance(rec.get("masks"), list):
                    raise InputError(f"record of image {key} has no 'masks' list")
                try:
                    preds = {int(m["ann_id"]): m for m in rec["masks"]}
                except (KeyError, TypeError, ValueError) as err:
                    raise InputError(f"record of image {key}: each entry of 'masks' needs an integer 'ann_id' "
                                     f"({type(err).__name__}: {err})") from None
            for ann_id in self._anns.get(int(key), []):
                gt = self.dataset.mask(ann_id)
                if not gt.any():
                    empty.append(str(ann_id))
                    continue
                m = preds.get(ann_id)
                if m is None or "best" not in m:
                    if rec is not None:
                        missing.append(str(ann_id))
                    for kind in ious:
                        ious[kind].append([0.0] * len(self.clicks))
                    continue
                for kind, field in (("most_confident", "best"), ("oracle", "oracle")):
                    segs = m.get(field)
                    if not isinstance(segs, list) or len(segs) != len(self.clicks):
                        raise InputError(f"image {key}, annotation {ann_id}: '{field}' needs one RLE per click "
                                         f"count {self.clicks}")
                    where = f"image {key}, annotation {ann_id}"
                    ious[kind].append([mask_iou(decode_rle(s, gt.shape, where), gt) for s in segs])
        if empty:
            problems.append(f"{len(empty)} empty ground-truth mask(s) skipped: annotation ids {describe_keys(empty)}")
        if missing:
            problems.append(f"{len(missing)} mask(s) without a prediction, scored as IoU 0: {describe_keys(missing)}")
        n_masks = len(ious["oracle"])
        if n_masks == 0:
            raise InputError("no ground-truth masks to score in the evaluated images")
        metrics = {kind: {f"mIoU@{n}": float(np.mean([row[j] for row in rows])) for j, n in enumerate(self.clicks)}
                   for kind, rows in ious.items()}
        return Scores(metrics, {"images": len(keys), "masks": n_masks}, problems)
