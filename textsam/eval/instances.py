"""Text-prompted instance segmentation on COCO / LVIS, scored with the official evaluators.

Protocol: on every image, every category name is a prompt (ensembled over the prompt templates by the
predictor's ``TextOptions(scoring=ScoringOptions(templates=...))``); ``predictor.predict(text=name, instances="all")`` returns
the instances best first, each becoming a COCO result ``{image_id, category_id, segmentation (RLE,
counts str), score = info["ranking"][i]}``. AP comes from pycocotools' ``COCOeval`` (iouType "segm") or,
for LVIS annotation files, from the ``lvis`` package (a clear error when it is not installed).
Placeholder categories named ``_background_`` / ``__ignore__`` (labelme exports) are not prompted.

Record of one image: ``{"key": "<image_id>", "results": [COCO result, ...]}``. ``--predictions``
also accepts a plain COCO results JSON list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import rle as _rle
from ..errors import InputError
from .base import Benchmark, Scores, describe_keys, load_item, split_records
from .metrics import coco_eval, is_lvis, lvis_eval

__all__ = ["InstancesBenchmark", "find_coco_files", "SKIPPED_CATEGORY_NAMES"]

SKIPPED_CATEGORY_NAMES = frozenset({"_background_", "__ignore__"})


def find_coco_files(root: Path, split: str | None = None) -> tuple[Path, Path]:
    """``(annotation_file, image_dir)`` under ``root``.

    Layouts, tried in order: ``annotations/instances_{split}.json`` + ``{split}/`` (COCO, default split
    val2017), ``annotations/lvis_v1_{split}.json`` + ``{split}2017/`` or ``{split}/`` (LVIS),
    ``annotations.json`` + root (labelme COCO export), ``instances.json`` + ``images/``.
    """
    root = Path(root)
    if root.is_file():
        return root, root.parent
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    s = split or "val2017"
    candidates = [
        (root / "annotations" / f"instances_{s}.json", root / s),
        (root / "annotations" / f"lvis_v1_{s}.json", root / f"{s}2017"),
        (root / "annotations" / f"lvis_v1_{s}.json", root / s),
        (root / "annotations.json", root),
        (root / "instances.json", root / "images"),
    ]
    for ann, images in candidates:
        if ann.is_file() and images.is_dir():
            return ann, images
    for ann, images in candidates:
        if ann.is_file():
            raise InputError(f"{ann} is there but its image folder {images} is not: put the images there, or "
                             "point --data at the annotation JSON itself (its images are then looked up next to it)")
    tried = ", ".join(str(a.relative_to(root)) for a, _ in candidates)
    raise InputError(f"no COCO annotation file found in {root} (tried {tried}); pass --split or point --data at the JSON")


class InstancesBenchmark(Benchmark):
    """COCO (or LVIS) mask AP of text-prompted "all instances" predictions on a CocoDataset."""

    name = "instances"

    def __init__(self, dataset: Any, *, templates: dict[str, Any] | None = None,
                 data_info: dict[str, Any] | None = None, categories: Sequence[str] | None = None) -> None:
        self.dataset = dataset
        self.ann_file = Path(dataset.annotation_file)
        self.templates = templates
        self.data_info = data_info or {}
        with open(self.ann_file, encoding="utf-8") as f:
            self.lvis = is_lvis(json.load(f))
        self.prompted = {cid: name for cid, name in sorted(dataset.categories.items())
                         if name not in SKIPPED_CATEGORY_NAMES}
        self.subset = None
        if categories is not None:  # evaluate a subset: only these are prompted and scored
            ids = sorted({dataset.category_id(name) for name in categories})  # InputError for unknown names
            self.prompted = {cid: dataset.categories[cid] for cid in ids}
            self.subset = [dataset.categories[cid] for cid in ids]
        if not self.prompted:
            raise InputError(f"{self.ann_file} has no categories to prompt")

    def keys(self) -> list[str]:
        return [str(i) for i in self.dataset.image_ids()]

    def describe(self) -> dict[str, Any]:
        evaluator = "lvis LVISEval (segm)" if self.lvis else "pycocotools COCOeval (segm)"
        which = "every category name" if self.subset is None else \
            f"{len(self.subset)} of {len(self.dataset.categories)} categories (AP over these only): {', '.join(self.subset)}"
        return {
            "data": self.data_info,
            "protocol": f"instances: {which} prompted on every image with predict(text=name, "
                        f"instances='all'); score = predictor ranking; AP by {evaluator}",
            "templates": self.templates,
        }

    def run_item(self, predictor: Any, key: str) -> dict[str, Any]:
        image_id = int(key)
        predictor.set_image(load_item(self.dataset.load_image, image_id))
        results = []
        for cid, name in self.prompted.items():
            out = predictor.predict(text=name, instances="all")
            ranking = out.info.get("ranking")
            for i in range(len(out.masks)):
                if not out.masks[i].any():
                    continue
                score = float(ranking[i]) if ranking is not None else float(out.scores[i])
                results.append({"image_id": image_id, "category_id": cid,
                                "segmentation": _rle.encode(out.masks[i]), "score": score})
        return {"results": results}

    def load_predictions(self, path: Path) -> dict[str, dict[str, Any]]:
        """A results JSONL, or a COCO results JSON list (grouped by image_id)."""
        text = Path(path).read_text(encoding="utf-8").strip()
        if not text:
            raise InputError(f"the predictions file {path} is empty: it holds no predictions to score")
        if text.startswith("["):
            try:
                results = json.loads(text)
            except json.JSONDecodeError as err:
                raise InputError(f"{path} is not a valid COCO results JSON ({err})") from err
            if not results:
                raise InputError(f"the COCO results file {path} is an empty list: no predictions to score")
            records: dict[str, dict[str, Any]] = {}
            if not isinstance(results, list):
                raise InputError(f"{path} is not a COCO results list")
            for n, r in enumerate(results):
                if not isinstance(r, dict) or "image_id" not in r:
                    raise InputError(f"{path}: result {n} is not a COCO result with an image_id")
                try:
                    key = str(int(r["image_id"]))
                except (TypeError, ValueError):
                    raise InputError(f"{path}: result {n} has image_id {r['image_id']!r}; image ids are integers") from None
                records.setdefault(key, {"key": key, "results": []})["results"].append(r)
            return records
        return super().load_predictions(path)

    def _check_results(self, key: str, results: Any, unknown: set[int]) -> list[dict[str, Any]]:
        if not isinstance(results, list):
            raise InputError(f"record of image {key} has no 'results' list")
        image = self.dataset.images[int(key)]
        out = []
        for n, r in enumerate(results):
            where = f"image {key}, result {n}"
            try:
                cid, segm, score = int(r["category_id"]), dict(r["segmentation"]), float(r["score"])
            except (KeyError, TypeError, ValueError) as err:
                raise InputError(f"{where}: a COCO result needs category_id, segmentation (RLE) and score ({err})") from err
            if int(r.get("image_id", key)) != int(key):
                raise InputError(f"{where}: image_id {r.get('image_id')} in the record of image {key}")
            if cid not in self.dataset.categories:
                unknown.add(cid)
                continue
            if self.subset is not None and cid not in self.prompted:
                continue
            if [int(v) for v in segm.get("size", [])] != [image.height, image.width]:
                raise InputError(f"{where}: RLE size {segm.get('size')} is not the image size {[image.height, image.width]}")
            if not isinstance(segm.get("counts"), str):  # uncompressed or bytes -> the COCO string form
                segm = {"size": segm["size"], "counts": _rle.counts_to_string(_rle.counts_of(segm))}
            out.append({"image_id": int(key), "category_id": cid, "segmentation": segm, "score": score})
        return out

    def score(self, records: dict[str, dict[str, Any]], keys: Sequence[str]) -> Scores:
        known = set(self.keys())
        bad = [k for k in keys if k not in known]
        if bad:
            raise InputError(f"images {describe_keys(bad)} are not in {self.ann_file}")
        ok, problems = split_records(records, keys)
        unknown: set[int] = set()
        results = [r for k in keys if k in ok for r in self._check_results(k, ok[k].get("results"), unknown)]
        if unknown:
            problems.append(f"results with unknown category id(s) {sorted(unknown)} ignored")
        img_ids = [int(k) for k in keys]
        cat_ids = None if self.subset is None else sorted(self.prompted)
        counts = {"images": len(keys), "results": len(results), "ground-truth instances": sum(
            1 for i in img_ids for a in self.dataset.anns_for_image(i) if cat_ids is None or a.category_id in cat_ids)}
        if not results:
            problems.append("no predictions at all on the evaluated images: AP is 0 by definition, not measured")
            names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
            return Scores({n: 0.0 for n in names}, counts, problems)
        if self.lvis:
            metrics = lvis_eval(self.ann_file, results, img_ids=img_ids, cat_ids=cat_ids)
        else:
            metrics = coco_eval(self.ann_file, results, img_ids=img_ids, cat_ids=cat_ids)
        return Scores(metrics, counts, problems)

