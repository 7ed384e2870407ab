"""Referring segmentation (RefCOCO-style refs and the synthetic generator's test split).

Protocol: every sentence of every ref is one expression; ``predictor.predict(text=sentence)`` and its
best mask (masks are sorted best first for text) is compared with the union of the ref's target masks.
Metrics: mIoU, cIoU and P@0.5..0.9 over expressions (:func:`textsam.eval.metrics.refer_metrics`); when
the refs carry a ``kind`` (the synthetic generator's attribute / category / spatial phrases), the same
metrics per kind as well (``details["by phrase kind"]``).

Record of one image: ``{"key": "<image_id>", "predictions": [{"ref_id", "sent_idx", "text",
"segmentation": RLE (counts str), "score"}, ...]}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import rle as _rle
from ..errors import InputError
from .base import Benchmark, Scores, decode_rle, describe_keys, load_item, split_records
from .metrics import intersection_union, refer_metrics

__all__ = ["ReferBenchmark", "find_refer_files"]


def find_refer_files(root: Path, split: str | None = None) -> tuple[Path, Path, Path]:
    """``(refs_file, instances_file, image_dir)`` under ``root``.

    Layouts: ``root/{refs.json | refs(unc).p | refs(google).p | refs*.p}``, ``root/instances.json``
    and ``root/images/`` (refcocos_on_coco_tiny, the synthetic generator's split folders); a generator
    root with ``root/<split>/`` is entered first.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    if split is not None and (root / split / "refs.json").is_file():
        root = root / split
    refs = [root / "refs.json", root / "refs(unc).p", root / "refs(umd).p", root / "refs(google).p"]
    refs += sorted(root.glob("refs*.p")) + sorted(root.glob("refs*.json"))
    found = next((p for p in refs if p.is_file()), None)
    if found is None:
        raise InputError(f"no refs file (refs.json or refs(unc).p) in {root}")
    inst = next((p for p in (root / "instances.json", root / "annotations" / "instances.json") if p.is_file()), None)
    if inst is None:
        raise InputError(f"no instances.json (COCO instances for the refs) in {root}")
    images = root / "images"
    return found, inst, images if images.is_dir() else root


class ReferBenchmark(Benchmark):
    """mIoU / cIoU / P@k of text prompts on a :class:`textsam.data.refer.ReferDataset`."""

    name = "refer"

    def __init__(self, dataset: Any, *, templates: dict[str, Any] | None = None, name: str = "refer",
                 data_info: dict[str, Any] | None = None, absent: dict[int, list[str]] | None = None) -> None:
        self.dataset = dataset
        self.absent = absent or {}  # image id -> phrases naming nothing in it (presence negatives)
        self.templates = templates
        self.name = name
        self.data_info = data_info or {}
        self._by_image: dict[int, list[tuple[Any, int, str]]] = {}
        for ref, idx, text in dataset.expressions():
            self._by_image.setdefault(int(ref.image_id), []).append((ref, idx, text))
        for exprs in self._by_image.values():
            exprs.sort(key=lambda e: (e[0].ref_id, e[1]))

    def keys(self) -> list[str]:
        return [str(i) for i in sorted(self._by_image)]

    def describe(self) -> dict[str, Any]:
        return {
            "data": self.data_info,
            "protocol": "referring segmentation: one predict(text=sentence) per expression, best-ranked mask "
                        "vs the union of the ref's target masks; mIoU, cIoU (cumulative I / cumulative U), P@0.5-0.9"
                        + ("; presence: the share of expressions the predictor finds (presence over its threshold), "
                           "and of the absent phrases (naming nothing in the image) it finds" if self.absent else ""),
            "templates": self.templates,
        }

    def run_item(self, predictor: Any, key: str) -> dict[str, Any]:
        image_id = int(key)
        predictor.set_image(load_item(self.dataset.coco.load_image, image_id))
        preds = []
        for ref, idx, text in self._by_image[image_id]:
            out = predictor.predict(text=text)
            ranking = out.info.get("ranking")
            score = float(ranking[0]) if ranking is not None and len(ranking) else float(out.scores[0])
            preds.append({"ref_id": int(ref.ref_id), "sent_idx": idx, "text": text,
                          "segmentation": _rle.encode(out.masks[0]), "score": score,
                          **_presence(out)})
        absent = [{"text": text, **_presence(predictor.predict(text=text))} for text in self.absent.get(image_id, [])]
        return {"predictions": preds, **({"absent": absent} if absent else {})}

    def score(self, records: dict[str, dict[str, Any]], keys: Sequence[str]) -> Scores:
        ok, problems = split_records(records, keys)
        inters, unions = [], []
        kinds: list[str | None] = []
        missing_expr: list[str] = []
        no_target = 0
        for key in keys:
            exprs = self._by_image.get(int(key))
            if exprs is None:
                raise InputError(f"image {key} has no expressions in this data")
            rec = ok.get(key)
            by_expr: dict[tuple[int, int], Any] = {}
            if rec is not None:
                preds = rec.get("predictions")
                if not isinstance(preds, list):
                    raise InputError(f"record of image {key} has no 'predictions' list")
                for p in preds:
                    try:
                        by_expr[(int(p["ref_id"]), int(p.get("sent_idx", 0)))] = p["segmentation"]
                    except (KeyError, TypeError, ValueError) as err:
                        raise InputError(f"image {key}: a prediction needs ref_id, sent_idx, segmentation ({err})") from err
            for ref, idx, _text in exprs:
                kinds.append((getattr(ref, "extra", None) or {}).get("kind"))
                gt = self.dataset.target_mask(ref)
                no_target += not gt.any()
                segm = by_expr.get((int(ref.ref_id), idx))
                if segm is None:
                    if rec is not None:
                        missing_expr.append(f"ref {ref.ref_id} sentence {idx}")
                    inters.append(0)
                    unions.append(int(gt.sum()))
                    continue
                pred = decode_rle(segm, gt.shape, f"image {key}, ref {ref.ref_id}")
                i, u = intersection_union(pred, gt)
                inters.append(i)
                unions.append(u)
        if missing_expr:
            problems.append(f"{len(missing_expr)} expression(s) without a prediction, scored as IoU 0: "
                            f"{describe_keys(missing_expr)}")
        if no_target:
            problems.append(f"{no_target} expression(s) have no target (empty ground truth): IoU 1 only for an empty prediction")
        metrics = refer_metrics(inters, unions)
        counts = {"images": len(keys), "expressions": len(inters)}
        if self.absent:
            present = [p.get("found") for r in ok.values() for p in r.get("predictions", [])]
            absent = [a.get("found") for r in ok.values() for a in r.get("absent", [])]
            if present and all(f is not None for f in present + absent):
                metrics["presence: present found"] = sum(present) / len(present)
                metrics["presence: absent found"] = sum(absent) / max(1, len(absent))
                counts["absent phrases"] = len(absent)
        details: dict[str, Any] = {}
        if any(k is not None for k in kinds):
            by_kind: dict[str, Any] = {}
            for kind in sorted({str(k) for k in kinds}):
                rows = [i for i, k in enumerate(kinds) if str(k) == kind]
                by_kind[kind] = refer_metrics([inters[i] for i in rows], [unions[i] for i in rows])
                counts[f"{kind} expressions"] = len(rows)
            details["by phrase kind"] = by_kind
        return Scores(metrics, counts, problems, details)


def _presence(out: Any) -> dict[str, Any]:
    """The presence answer of a prediction (nothing when the predictor gives none)."""
    presence = getattr(out, "presence", None)
    if presence is None:
        return {}
    return {"presence": round(float(presence), 6), "found": bool(out.info.get("found", True))}
