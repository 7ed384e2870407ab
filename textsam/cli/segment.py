"""``textsam segment``: run one prompt over image files and folders and write the results.

A thin client of the public API (``textsam.create_model``, ``textsam.TextSamPredictor``) and of
:func:`textsam.results.write_results`. Results are kept in the predictor's order (for text its ranking,
for clicks and boxes SAM's mask order); one mask is the predictor's first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textsam.errors import InputError, TextSamError

from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Subparsers,
    add_command,
    add_model_options,
    add_no_progress,
    parse_box,
    parse_point,
    predictor_from_args,
    resolve_fast_model,
)

if TYPE_CHECKING:
    from textsam.results import MaskResult

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

__all__ = ["add_parser", "run_segment", "collect_images", "prediction_to_results", "read_phrases", "vocabulary_results",
           "IMAGE_SUFFIXES"]


def add_parser(subparsers: Subparsers) -> None:
    """``textsam segment IMAGE|FOLDER ... -o OUT``: masks, overlays and JSON for each image."""
    p = add_command(
        subparsers, "segment", "segment images from a phrase, clicks and/or a box",
        description=(
            "Segment each image (folders are scanned for .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp) and write "
            "<stem>_mask<i>.png, <stem>_overlay.png and <stem>.json (COCO RLE) into the output folder. "
            "Only files textsam wrote are ever replaced; images already done for the same request are skipped, "
            "so the same command again resumes. Exit status: 0 every image done, 2 some inputs could not be "
            "read (listed; the others are written) or a bad argument, 1 an unexpected error, 130 interrupted."
        ),
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--example", action="store_true",
                   help="also segment the example image shipped with textsam (default model then: shapes_tiny)")
    p.add_argument("-t", "--text", metavar="PHRASE", action="append",
                   help="what to segment, e.g. 'red car'; given several times, a vocabulary (one pass per image)")
    p.add_argument("--classes", metavar="A,B,C|FILE",
                   help="a vocabulary: comma-separated phrases, or a text file with one phrase per line; every "
                        "phrase is answered on every image in one pass (masks labelled with their phrase)")
    p.add_argument("--negative-text", metavar="PHRASE", help="what not to segment, e.g. 'shadow'")
    p.add_argument(
        "--point", dest="points", action="append", type=parse_point, default=[], metavar="X,Y[,LABEL]",
        help="a click in pixels; LABEL 1 = foreground (default), 0 = background; repeatable",
    )
    p.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="a box in pixels")
    p.add_argument("--all", dest="all_instances", action="store_true", help="segment every instance of the phrase")
    p.add_argument("--everything", action="store_true",
                   help="every object: SAM's automatic mask generator (its default settings), no prompt needed")
    p.add_argument("--multimask", action="store_true",
                   help="write SAM's 3 candidate masks (in the predictor's order: for text, best first)")
    add_model_options(p, default=None, fast=True, example=True)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="folder to write results into")
    add_no_progress(p)
    p.set_defaults(handler=run_segment)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named in ``inputs``, folders expanded (not recursively) to their images, sorted.

    A folder's files that textsam wrote itself (masks and overlays of an earlier run) are not images to
    segment; files named explicitly always are.

    Raises:
        InputError: listing every input that does not exist, or when no image is found at all.
    """
    from textsam.results import is_own_output

    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        listed = "\n  ".join(missing)
        raise InputError(f"{len(missing)} input(s) not found:\n  {listed}\nCheck the paths.")
    images: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not is_own_output(p))
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
    """MaskResults from a Prediction (``masks`` (C, H, W) bool, ``scores`` (C,)), in the predictor's order.

    ``all_instances`` or ``multimask``: every mask; otherwise the predictor's first. The order is never
    changed here: the predictor ranks text results itself and keeps SAM's order for clicks and boxes.
    A ``boxes`` (C, 4) attribute on the prediction, when present, is kept as the result boxes.
    """
    import numpy as np

    from textsam.results import MaskResult

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
    count = masks.shape[0] if multimask or all_instances else min(1, masks.shape[0])
    return [
        MaskResult(
            mask=masks[i] != 0, score=float(scores[i]), label=label,
            box=None if boxes is None else boxes[i].tolist(),
        )
        for i in range(count)
    ]


def read_phrases(texts: Sequence[str] | str | None, classes: str | None) -> list[str]:
    """The phrases of ``--text`` (given once or more) and ``--classes`` (``a,b,c``, or a file with one phrase per
    line; blank lines and ``#`` comments skipped), in order, duplicates dropped.

    Raises:
        InputError: an empty phrase, an unreadable or empty classes file.
    """
    if isinstance(texts, str):
        texts = [texts]
    phrases: list[str] = []
    for text in texts or []:
        if not text.strip():
            raise InputError("--text is empty: give a phrase naming the object, e.g. --text 'red car'.")
        phrases.append(text)
    if classes is not None:
        from textsam.label.ontology import read_names

        phrases.extend(read_names(classes, what="phrase"))
    return list(dict.fromkeys(phrases))


def _prompt(args: argparse.Namespace) -> dict:
    points = list(args.points or [])
    phrases = read_phrases(args.text, getattr(args, "classes", None))
    text = phrases[0] if len(phrases) == 1 else None
    vocabulary = phrases if len(phrases) > 1 else None
    if vocabulary and (points or args.box is not None):
        raise InputError("clicks and a box go with one phrase: give a single --text, or leave them out to answer "
                         "the whole vocabulary")
    if args.negative_text is not None and not args.negative_text.strip():
        raise InputError("--negative-text is empty: give a phrase or leave the option out.")
    everything = bool(getattr(args, "everything", False))
    if everything and (phrases or points or args.box is not None or args.all_instances):
        raise InputError("--everything segments every object without a prompt: leave out --text, --point, --box "
                         "and --all.")
    if not phrases and not points and args.box is None and not everything:
        raise InputError("give a prompt: --text PHRASE, --point X,Y[,LABEL] and/or --box X0,Y0,X1,Y1 (or "
                         "--everything).")
    return {
        **({"everything": True} if everything else {}),
        **({"phrases": vocabulary} if vocabulary else {}),
        "text": text,
        "negative_text": args.negative_text,
        "point_coords": [[x, y] for x, y, _ in points] or None,
        "point_labels": [label for _, _, label in points] or None,
        "box": list(args.box) if args.box is not None else None,
        "multimask": bool(args.multimask),
        "instances": "all" if args.all_instances else None,
    }


def _predict_kwargs(prompt: dict) -> dict[str, Any]:
    import numpy as np

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
    return predictor_from_args(args)


def vocabulary_results(predictor: Any, prompt: dict) -> tuple[list[MaskResult], list[dict[str, Any]]]:
    """Every phrase of ``prompt["phrases"]`` on the predictor's current image: the masks of the phrases found
    (labelled with their phrase, in vocabulary order) and one answer per phrase (``text``, ``found``,
    ``presence``, ``masks``: how many of the results are its).

    One phrase is one mask (``predict_phrases``: a single text batch, one ranking and one decoder batch for the
    whole vocabulary); with ``instances="all"`` each phrase is ``predict(text=..., instances="all")`` on the
    same cached proposals and crop embeddings.
    """
    phrases = prompt["phrases"]
    if prompt["instances"] == "all":
        predictions = [predictor.predict(text=p, instances="all") for p in phrases]
    else:
        # --negative-text: what none of the phrases is (passed only when given, so older predictors still work)
        negative = {"negative_text": prompt["negative_text"]} if prompt.get("negative_text") is not None else {}
        predictions = predictor.predict_phrases(phrases, multimask_output=prompt["multimask"], **negative)
    results: list[MaskResult] = []
    answers = []
    for phrase, pred in zip(phrases, predictions):
        presence = getattr(pred, "presence", None)
        found = bool((getattr(pred, "info", None) or {}).get("found", True))
        mine = prediction_to_results(pred, label=phrase, multimask=prompt["multimask"],
                                     all_instances=prompt["instances"] is not None) if found else []
        results.extend(mine)
        answers.append({"text": phrase, "found": found, "masks": len(mine),
                        "presence": None if presence is None else round(float(presence), 4),
                        **_query(pred)})
    return results, answers


def example_images() -> list[Path]:
    """The example image(s) shipped inside the package (``textsam segment --example``)."""
    return sorted(EXAMPLES.glob("*.png"))


def prepare_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it is writable before any model is loaded (InputError otherwise)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"the output path {out_dir} is a file: give a folder with -o (it is created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".textsam-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        raise InputError(f"cannot write to the output folder {out_dir} ({reason}): give a folder you can "
                         "write to with -o") from None


def _file_digest(path: Path) -> str | None:
    """sha256 of a regular file's bytes (None for anything else: it will fail later with a clear message)."""
    try:
        if not path.is_file():
            return None
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


def _bundled_weights_digest(model: str) -> str | None:
    """sha256 of the weights file a bundled model name loads (None: not a bundled model, or no such file)."""
    from textsam.config import MODEL_CONFIGS
    from textsam.weights.pretrained import BUNDLED, PACKAGE_WEIGHTS

    config = MODEL_CONFIGS.get(model)
    if config is None or config.weights not in BUNDLED:
        return None
    return _file_digest(PACKAGE_WEIGHTS / BUNDLED[config.weights])


def _model_key(args: argparse.Namespace) -> dict[str, Any]:
    """What names the model in a request (a checkpoint or head file is named by path, size and mtime; a bundled
    model by its weights file's sha256, so that new bundled weights are a new request)."""
    def file_key(value: Any) -> Any:
        if value is None:
            return None
        p = Path(value)
        st = p.stat() if p.is_file() else None
        return [str(p), st.st_size if st else None, st.st_mtime_ns if st else None]

    key = {"model": args.model, "checkpoint": file_key(args.checkpoint), "clip": getattr(args, "clip", None),
           "text_head": file_key(getattr(args, "text_head", None))}
    bundled = _bundled_weights_digest(args.model) if args.checkpoint is None else None
    if bundled is not None:  # a bundled model's bytes change with the package: the name alone does not pin them
        key["weights"] = bundled
    if getattr(args, "fast", False):  # only when given, so requests written before --fast keep their keys
        key["fast"] = True
    return key


def request_key(prompt: dict, model_key: dict, source_digest: str | None) -> str | None:
    """A fingerprint of one image's request: the prompt, the model and the image's bytes (None: unknown)."""
    from textsam import __version__

    if source_digest is None:
        return None
    blob = json.dumps({"prompt": prompt, "model": model_key, "image": source_digest, "version": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_finished(out_dir: Path, stem: str, request: str | None) -> bool:
    """Whether ``out_dir`` already holds this image's complete result for the same request."""
    from textsam.results import read_own_json

    if request is None:
        return False
    doc = read_own_json(out_dir / f"{stem}.json")
    if doc is None or doc["textsam"].get("request") != request:
        return False
    files = [doc.get("overlay")] + [r.get("mask_file") for r in doc.get("results", [])]
    return all(isinstance(f, str) and (out_dir / f).is_file() for f in files)


def _query(prediction: Any) -> dict[str, Any]:
    """``{"query": ...}``, how the engine read the phrase it chose for (``Prediction.info["query"]``), or ``{}``."""
    query = (getattr(prediction, "info", None) or {}).get("query")
    return {"query": query} if isinstance(query, dict) else {}


def _located_click(prediction: Any) -> list[float] | None:
    """The text head's click (x, y image pixels) when the prediction reports one (single-object requests)."""
    prompts = (getattr(prediction, "info", None) or {}).get("prompts")
    located = prompts.get("located") if isinstance(prompts, dict) else None
    return None if located is None else [float(v) for v in located]


def run_segment(args: argparse.Namespace) -> int:
    """Run ``textsam segment``.

    Returns 0 when every image was segmented; 2 when some inputs could not be read (each is listed, the
    others are written); 1 after an unexpected error on some image; 130 when interrupted (finished images
    are kept: the same command again finishes the rest). Images whose complete result for the same request
    is already in the output folder are skipped, so a rerun resumes. Files of the user's in the output
    folder are never replaced: the run stops before writing anything if a result would replace one.
    """
    from tqdm import tqdm

    from textsam.factory import check_device
    from textsam.results import MaskResult, foreign_outputs, remove_leftovers, write_results
    from textsam.transforms import load_image

    prompt = _prompt(args)
    inputs = list(args.inputs) + (example_images() if getattr(args, "example", False) else [])
    if not inputs:
        raise InputError("give the images or folders to segment (or --example for the bundled example image).")
    if args.model is None and getattr(args, "example", False):
        args.model = "shapes_tiny"
    resolve_fast_model(args, "sam_vit_b")
    out_dir = Path(args.output)
    check_device(getattr(args, "device", None))
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"the output path {out_dir} is a file: give a folder with -o (it is created if missing)")
    images = collect_images(inputs)  # missing inputs fail here, before the model is built
    prepare_output_dir(out_dir)
    stems = _stems(images)
    foreign = foreign_outputs(out_dir, stems)
    if foreign:
        shown = ", ".join(p.name for p in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(f"{out_dir} holds files that textsam did not write and the results would replace "
                         f"({shown}): give another output folder with -o (nothing was written)")
    remove_leftovers(out_dir, stems)
    model_key = _model_key(args)
    todo = []
    for path, stem in zip(images, stems):
        request = request_key(prompt, model_key, _file_digest(path))
        if not is_finished(out_dir, stem, request):
            todo.append((path, stem, request))
    done_before = len(images) - len(todo)
    if done_before:
        print(f"{done_before} of {len(images)} image(s) already done in {out_dir} (same request): skipped",
              file=sys.stderr)
    if not todo:
        return EXIT_OK
    predictor = _build_predictor(args)
    kwargs = _predict_kwargs(prompt)
    skipped: list[tuple[Path, str]] = []
    failed: list[tuple[Path, str]] = []
    written = 0
    bar = tqdm(todo, desc="segment", unit="img", disable=bool(args.no_progress), file=sys.stderr)
    try:
        for path, stem, request in bar:
            try:
                image = load_image(path)
                predictor.set_image(image)
                if prompt.get("everything"):
                    prediction = None
                    results = [MaskResult(r["segmentation"], r["predicted_iou"]) for r in predictor.generate()]
                elif prompt.get("phrases"):
                    prediction = None
                    results, answers = vocabulary_results(predictor, prompt)
                else:
                    prediction = predictor.predict(**kwargs)
                    results = prediction_to_results(
                        prediction, label=prompt["text"] or "", multimask=prompt["multimask"],
                        all_instances=prompt["instances"] is not None,
                    )
            except (TextSamError, OSError) as err:
                skipped.append((path, str(err)))
                tqdm.write(f"textsam: skipped {path}: {err}", file=sys.stderr)
                continue
            except Exception as err:  # noqa: BLE001 - reported per image; the other images go on
                logger.debug("unexpected error on %s", path, exc_info=True)
                failed.append((path, f"{type(err).__name__}: {err}"))
                tqdm.write(f"textsam: failed on {path}: unexpected {type(err).__name__}: {err}", file=sys.stderr)
                continue
            asked = dict(prompt)
            if prompt.get("phrases"):
                asked["answers"] = answers
                for a in answers:
                    if not a["found"]:
                        tqdm.write(f"no {a['text']!r} found in {path} (presence {a['presence']:.2f})", file=sys.stderr)
            located = _located_click(prediction)
            if located is not None:  # the text head's locator clicked here (x, y in image pixels)
                asked["located_click"] = located
            if not prompt.get("phrases"):
                asked.update(_query(prediction))
            presence = getattr(prediction, "presence", None)
            if presence is not None and not (getattr(prediction, "info", None) or {}).get("found", True):
                results = []  # an absent phrase: an empty result, said so
                tqdm.write(f"no {prompt['text']!r} found in {path} (presence {presence:.2f})", file=sys.stderr)
            try:
                write_results(out_dir, stem, image, results, prompt=asked, source=str(path), request=request,
                              presence=presence)
            except OSError as err:
                raise InputError(f"cannot write the results of {path} to {out_dir} ({err.strerror or err}): "
                                 f"free some space or give another folder with -o; {written} image(s) were "
                                 "written, run the same command again to finish") from None
            written += 1
            logger.info("%s: %d mask(s) -> %s", path, len(results), out_dir / f"{stem}.json")
    except KeyboardInterrupt:
        bar.close()
        print(f"textsam: interrupted: {done_before + written} of {len(images)} image(s) are done in {out_dir}; "
              "run the same command again to finish the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()

    total = done_before + written
    print(f"wrote results for {total} of {len(images)} image(s) to {out_dir}", file=sys.stderr)
    if failed:
        print(f"textsam: error: unexpected errors on {len(failed)} image(s) (listed above; run with -v for "
              "details and report them)", file=sys.stderr)
        return EXIT_FAILURE
    if skipped:
        print(f"textsam: error: {len(skipped)} of {len(images)} image(s) could not be read (listed above); the "
              f"other {total} are in {out_dir}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
