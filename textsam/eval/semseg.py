"""Open-vocabulary semantic segmentation by prompting class names (ADE20K, VOC, Pascal Context, CamVid).

Protocols (always named in the report):

- ``full``: every class is prompted on every image (the full-vocabulary, open-vocabulary protocol).
- ``oracle``: only the classes present in the image's ground truth are prompted (an upper bound that
  removes recognition errors; NOT comparable with full-vocabulary numbers).

Per class, ``predictor.predict(text=prompt_name)`` gives its best mask and that mask's ranking score
(``info["ranking"][0]``: SAM's IoU head + CLIP's score of the mask region). **Combination rule**: a pixel
gets the class with the highest ranking score among the classes whose best mask covers it (mask logit
> 0); ties go to the lower class index. A pixel covered by no mask is "not confident": it gets the
dataset's background class when it has one (VOC, Pascal Context-60: index 0, which is then not
prompted), else "no prediction", which counts as a miss for the ground-truth class.
Prompt names: class names with ``_`` as spaces and CamelCase split ("SignSymbol" -> "sign symbol").

Metrics: per-class IoU from the confusion matrix summed over images, mIoU over classes present in the
ground truth or the prediction, pixel accuracy (:func:`textsam.eval.metrics.semseg_metrics`).

Record of one image: ``{"key": stem, "<protocol>": [{"class": index, "segmentation": RLE}, ...]}``
(disjoint regions of the predicted label map; ``"class"`` may also be a class name).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import rle as _rle
from ..errors import InputError
from .base import Benchmark, ItemError, Scores, decode_rle, load_item, split_records
from .metrics import confusion_matrix, semseg_metrics

__all__ = ["SemsegBenchmark", "PROTOCOLS", "prompt_name", "combine_masks"]

PROTOCOLS = ("full", "oracle")


def prompt_name(name: str) -> str:
    """A class name as a prompt: ``_``/``-`` to spaces, CamelCase split, lower case, trimmed."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.replace("_", " ")).strip()
    return " ".join(text.split()).lower() or name


def combine_masks(
    masks: Sequence[np.ndarray], scores: Sequence[float], classes: Sequence[int], shape: tuple[int, int],
    fill: int = -1,
) -> np.ndarray:
    """Label map: each pixel takes the class of the highest-scoring mask covering it (ties: first in
    ``classes`` order, which callers keep ascending); uncovered pixels get ``fill``."""
    label = np.full(shape, fill, dtype=np.int64)
    best = np.full(shape, -np.inf)
    for mask, score, cls in zip(masks, scores, classes):
        take = mask & (score > best)
        label[take] = cls
        best[take] = score
    return label


class SemsegBenchmark(Benchmark):
    """mIoU and pixel accuracy of class-name prompts on a :class:`textsam.data.semseg.SemsegDataset`."""

    name = "semseg"

    def __init__(self, dataset: Any, *, protocols: Sequence[str] = PROTOCOLS,
                 templates: dict[str, Any] | None = None, data_info: dict[str, Any] | None = None) -> None:
        bad = [p for p in protocols if p not in PROTOCOLS]
        if bad or not protocols:
            raise InputError(f"unknown semseg protocol(s) {bad}; use {', '.join(PROTOCOLS)}")
        self.dataset = dataset
        self.protocols = [p for p in PROTOCOLS if p in protocols]
        self.templates = templates
        self.data_info = data_info or {}
        bg = dataset.background_index
        self.prompted = [i for i in range(dataset.num_classes) if i != bg]

    def keys(self) -> list[str]:
        return self.dataset.stems()

    def describe(self) -> dict[str, Any]:
        names = {"full": "full vocabulary (every class prompted on every image)",
                 "oracle": "oracle vocabulary (only the classes present in the ground truth prompted)"}
        bg = self.dataset.background_index
        fill = (f"background class {self.dataset.class_names[bg]!r}" if bg is not None else "no prediction (a miss)")
        return {
            "data": self.data_info,
            "protocol": "semantic segmentation, " + " + ".join(names[p] for p in self.protocols)
                        + "; per pixel the class whose best mask covers it with the highest ranking score; "
                        + f"uncovered pixels: {fill}; mIoU over classes in GT or prediction",
            "templates": self.templates,
            "classes": [prompt_name(n) for n in self.dataset.class_names],
        }

    def run_item(self, predictor: Any, key: str) -> dict[str, Any]:
        ds = self.dataset
        label = ds.load_label(key)
        image = load_item(ds.load_image, key)
        if image.shape[:2] != label.shape:
            raise ItemError(f"{key}: image is {image.shape[1]}x{image.shape[0]} but its label is "
                             f"{label.shape[1]}x{label.shape[0]}")
        predictor.set_image(image)
        present = set(ds.present_classes(label))
        wanted = self.prompted if "full" in self.protocols else [c for c in self.prompted if c in present]
        masks, scores = {}, {}
        for c in wanted:
            out = predictor.predict(text=prompt_name(ds.class_names[c]))
            ranking = out.info.get("ranking")
            masks[c] = np.asarray(out.masks[0], dtype=bool)
            scores[c] = float(ranking[0]) if ranking is not None else float(out.scores[0])
        fill = -1 if ds.background_index is None else ds.background_index
        record: dict[str, Any] = {}
        for proto in self.protocols:
            classes = [c for c in wanted if proto == "full" or c in present]
            pred = combine_masks([masks[c] for c in classes], [scores[c] for c in classes], classes, label.shape, fill)
            record[proto] = [{"class": int(c), "segmentation": _rle.encode(pred == c)}
                             for c in np.unique(pred).tolist() if c >= 0]
            record[f"{proto}_scores"] = {ds.class_names[c]: scores[c] for c in classes}
        return record

    def _label_map(self, segments: Any, shape: tuple[int, int], key: str, proto: str) -> np.ndarray:
        if not isinstance(segments, list):
            raise InputError(f"record of {key} has no {proto!r} list of segments")
        pred = np.full(shape, -1, dtype=np.int64)
        for n, seg in enumerate(segments):
            where = f"{key}, {proto} segment {n}"
            if not isinstance(seg, dict) or "class" not in seg or "segmentation" not in seg:
                raise InputError(f"{where}: a segment needs 'class' (index or name) and 'segmentation' (RLE)")
            cls = seg["class"]
            if isinstance(cls, str):
                idx = self.dataset.class_index(cls)
            elif isinstance(cls, int) and 0 <= cls < self.dataset.num_classes:
                idx = cls
            else:
                raise InputError(f"{where}: unknown class {cls!r} (there are {self.dataset.num_classes} classes)")
            mask = decode_rle(seg["segmentation"], shape, where)
            if (pred[mask] >= 0).any():
                raise InputError(f"{where}: segments overlap; a label map gives each pixel one class")
            pred[mask] = idx
        return pred

    def score(self, records: dict[str, dict[str, Any]], keys: Sequence[str]) -> Scores:
        ds = self.dataset
        ok, problems = split_records(records, keys)
        n = ds.num_classes
        conf = {p: np.zeros((n, n + 1), dtype=np.int64) for p in self.protocols}
        for key in keys:
            gt = ds.load_label(key)
            for proto in self.protocols:
                if key in ok:
                    if proto not in ok[key]:
                        raise InputError(f"record of {key} has no {proto!r} prediction; score it with the "
                                         f"protocol(s) it has")
                    pred = self._label_map(ok[key][proto], gt.shape, key, proto)
                else:
                    pred = np.full(gt.shape, -1, dtype=np.int64)
                conf[proto] += confusion_matrix(gt, pred, n, ds.ignore_index)
        metrics, per_class = {}, {}
        names = [prompt_name(c) for c in ds.class_names]
        for proto in self.protocols:
            m = semseg_metrics(conf[proto], names)
            per_class[proto] = m.pop("per_class_iou")
            metrics[proto] = m
        gt_pixels = conf[self.protocols[0]].sum(axis=1)
        table = {name: {f"IoU {p}": per_class[p][name] for p in self.protocols}
                 for i, name in enumerate(names) if gt_pixels[i] > 0 or any(per_class[p][name] is not None
                                                                            for p in self.protocols)}
        counts = {"images": len(keys), "classes": n, "classes in ground truth": int((gt_pixels > 0).sum())}
        return Scores(metrics, counts, problems, {"per-class IoU": table})
