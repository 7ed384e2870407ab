"""``textsam segment``: run one prompt over image files and folders and write the results.

The parser lives in :mod:`textsam.cli` (``_add_segment_parser``); this module is imported only when
the command runs. It is a thin client of the public API: ``textsam.create_model``,
``textsam.TextSamPredictor`` and :func:`textsam.results.write_results`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, TextSamError

if TYPE_CHECKING:
    from .results import MaskResult

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

__all__ = ["run_segment", "collect_images", "prediction_to_results", "IMAGE_SUFFIXES"]


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named in ``inputs``, folders expanded (not recursively) to their images, sorted.

    Raises:
        InputError: listing every input that does not exist, or when no image is found at all.
    """
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        listed = "\n  ".join(missing)
        raise InputError(f"{len(missing)} input(s) not found:\n  {listed}\nCheck the paths.")
    images: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                logger.warning("no images (%s) in folder %s", ", ".join(IMAGE_SUFFIXES), path)
        else:
            found = [path]
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                images.append(p)
    if not images:
        raise InputError(
            f"no images found in {', '.join(str(p) for p in inputs)} (looked for {', '.join(IMAGE_SUFFIXES)})."
        )
    return images


def _stems(paths: Sequence[Path]) -> list[str]:
    """Unique output stems: the file stem, made unique with its suffix and a counter when needed."""
    used: set[str] = set()
    stems = []
    for p in paths:
        stem = p.stem or "image"
        if stem in used:
            stem = f"{p.stem}_{p.suffix.lstrip('.').lower()}" if p.suffix else stem
        base, n = stem, 2
        while stem in used:
            stem, n = f"{base}_{n}", n + 1
        used.add(stem)
        stems.append(stem)
    return stems


def prediction_to_results(
    prediction: Any, *, label: str, multimask: bool, all_instances: bool
) -> list[MaskResult]:
    """MaskResults from a Prediction (``masks`` (C, H, W) bool, ``scores`` (C,)).

    ``all_instances`` or ``multimask``: every mask, best score first; otherwise only the best mask.
    A ``boxes`` (C, 4) attribute on the prediction, when present, is kept as the result boxes.
    """
    from .results import MaskResult

    masks = np.asarray(prediction.masks)
    scores = np.asarray(prediction.scores, dtype=np.float64).reshape(-1)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[0] != scores.shape[0]:
        raise InputError(f"the predictor returned masks {masks.shape} with scores {scores.shape}")
    boxes = getattr(prediction, "boxes", None)
    boxes = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if boxes is not None and boxes.shape[0] != masks.shape[0]:
        boxes = None
    order = np.argsort(-scores, kind="stable")
    if not (multimask or all_instances):
        order = order[:1]
    return [
        MaskResult(
            mask=masks[i] != 0, score=float(scores[i]), label=label,
            box=None if boxes is None else boxes[i].tolist(),
        )
        for i in order
    ]


def _prompt(args: argparse.Namespace) -> dict:
    points = list(args.points or [])
    text = args.text
    if text is not None and not text.strip():
        raise InputError("--text is empty: give a phrase naming the object, e.g. --text 'red car'.")
    if args.negative_text is not None and not args.negative_text.strip():
        raise InputError("--negative-text is empty: give a phrase or leave the option out.")
    if text is None and not points and args.box is None:
        raise InputError("give a prompt: --text PHRASE, --point X,Y[,LABEL] and/or --box X0,Y0,X1,Y1.")
    return {
        "text": text,
        "negative_text": args.negative_text,
        "point_coords": [[x, y] for x, y, _ in points] or None,
        "point_labels": [label for _, _, label in points] or None,
        "box": list(args.box) if args.box is not None else None,
        "multimask": bool(args.multimask),
        "instances": "all" if args.all_instances else None,
    }


def _predict_kwargs(prompt: dict) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "text": prompt["text"],
        "point_coords": None if prompt["point_coords"] is None else np.asarray(prompt["point_coords"], np.float32),
        "point_labels": None if prompt["point_labels"] is None else np.asarray(prompt["point_labels"], np.int64),
        "box": None if prompt["box"] is None else np.asarray(prompt["box"], np.float32),
        "multimask_output": prompt["multimask"],
    }
    # Optional features of the predictor: passed only when asked for, so older predictors still work.
    if prompt["negative_text"] is not None:
        kwargs["negative_text"] = prompt["negative_text"]
    if prompt["instances"] is not None:
        kwargs["instances"] = prompt["instances"]
    return kwargs


def _build_predictor(args: argparse.Namespace) -> Any:
    import textsam
    from textsam.cli import create_model_from_args

    return textsam.TextSamPredictor(create_model_from_args(args))


def run_segment(args: argparse.Namespace) -> int:
    """Run ``textsam segment``; return 0, or 1 when any image failed (the others are still written)."""
    from tqdm import tqdm

    from .results import write_results
    from .transforms import load_image

    prompt = _prompt(args)
    images = collect_images(args.inputs)  # missing inputs fail here, before the model is built
    stems = _stems(images)
    predictor = _build_predictor(args)
    kwargs = _predict_kwargs(prompt)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)

    failed: list[tuple[Path, str]] = []
    written = 0
    bar = tqdm(
        list(zip(images, stems)), desc="segment", unit="img", disable=bool(args.no_progress), file=sys.stderr,
    )
    for path, stem in bar:
        try:
            image = load_image(path)
            predictor.set_image(image)
            prediction = predictor.predict(**kwargs)
            results = prediction_to_results(
                prediction, label=prompt["text"] or "", multimask=prompt["multimask"],
                all_instances=prompt["instances"] is not None,
            )
        except (TextSamError, OSError) as err:
            logger.warning("skipping %s: %s", path, err)
            failed.append((path, str(err)))
            continue
        asked = dict(prompt)
        located = (getattr(prediction, "info", None) or {}).get("prompts", {}).get("located")
        if located is not None:  # the text head's locator clicked here (x, y in image pixels)
            asked["located_click"] = [float(v) for v in located]
        write_results(out_dir, stem, image, results, prompt=asked, source=str(path))
        written += 1
        logger.info("%s: %d mask(s) -> %s", path, len(results), out_dir / f"{stem}.json")
    bar.close()

    print(f"wrote results for {written} of {len(images)} image(s) to {out_dir}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} image(s) failed:", file=sys.stderr)
        for path, reason in failed:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0
