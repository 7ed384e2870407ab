"""Labelling: every instance of every class of a vocabulary on each image, in memory or into a resumable store.

One image: ``set_image`` once (the image embedding, the proposals and their CLIP crop embeddings are cached
for the image), then ``predict(text=phrase, instances="all")`` for each phrase of the vocabulary: every phrase
shares those caches, and each gets all of its instances (candidates over the presence threshold, decoded in
one batch, NMS), each mask with its predicted IoU, and the phrase's presence. ``instances="one"`` instead
answers the whole vocabulary in one ``predict_phrases`` pass (one text batch, one decoder batch) and keeps each
found phrase's best mask: faster with a large vocabulary, but one object per class.

What the model returns is kept whole (a record per image: every mask, found or not); :class:`LabelOptions`
filters it when the dataset is built, so changing ``min_score`` or ``min_presence`` needs no new inference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from textsam.errors import InputError, TextSamError

from .inputs import ImageRef, collect_inputs
from .ontology import Ontology, read_ontology
from .store import Store, digest_file, image_key
from .types import Instance, LabeledImage

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from textsam.model import TextSam
    from textsam.predictor import TextSamPredictor

logger = logging.getLogger(__name__)

__all__ = ["LabelOptions", "label", "label_image", "to_labeled", "plan_images", "label_into_store",
           "labeled_from_store", "LoopReport"]

Mode = Literal["all", "one"]


@dataclass(frozen=True)
class LabelOptions:
    """Which masks are kept.

    min_score: the least predicted IoU of a mask, in [0, 1].
    min_presence: the least presence of its phrase, in [0, 1]; None keeps the phrases the model itself
        finds (presence over the engine's ``presence_threshold``).
    instances: ``"all"`` every instance of each class; ``"one"`` the best mask of each class found.
    """

    min_score: float = 0.0
    min_presence: float | None = None
    instances: Mode = "all"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise InputError(f"min_score must be in [0, 1], got {self.min_score}")
        if self.min_presence is not None and not 0.0 <= self.min_presence <= 1.0:
            raise InputError(f"min_presence must be in [0, 1], got {self.min_presence}")
        if self.instances not in ("all", "one"):
            raise InputError(f"instances must be 'all' or 'one', not {self.instances!r}")


def _round(x: Any) -> float | None:
    return None if x is None else round(float(x), 6)


def label_image(predictor: TextSamPredictor, image: np.ndarray | Image.Image, phrases: Sequence[str], *,
                instances: Mode = "all", negative_text: str | None = None) -> dict[str, Any]:
    """Every mask the model gives for each phrase on one image, unfiltered (a store record); ``negative_text``:
    what none of the phrases is ("shadow", the predictor's ``negative_text`` for every phrase).

    Returns ``{"width", "height", "answers": [{"phrase", "presence", "found"}], "instances": [{"phrase", "score",
    "rle"}]}``: masks as COCO RLE of the ``(H, W)`` original frame, ``score`` the predicted IoU, in vocabulary
    order then the predictor's ranking.
    """
    import numpy as np

    from textsam import rle

    predictor.set_image(image)
    h, w = predictor.original_size or (0, 0)
    negative = {"negative_text": negative_text} if negative_text is not None else {}  # older predictors: none
    if instances == "all":
        # one phrase's full-size masks alive at a time: each is encoded before the next phrase is answered
        predictions: Iterable[Any] = (predictor.predict(text=p, instances="all", **negative) for p in phrases)
    else:
        predictions = predictor.predict_phrases(list(phrases), **negative)
    answers, found = [], []
    for phrase, pred in zip(phrases, predictions):
        info = getattr(pred, "info", None) or {}
        answers.append({"phrase": phrase, "presence": _round(pred.presence), "found": bool(info.get("found", True))})
        masks = np.asarray(pred.masks).reshape(-1, h, w)
        scores = np.asarray(pred.scores, dtype=np.float64).reshape(-1)
        count = len(masks) if instances == "all" else min(1, len(masks))
        for i in range(count):
            if masks[i].any():
                found.append({"phrase": phrase, "score": _round(scores[i]), "rle": rle.encode(masks[i])})
    return {"width": int(w), "height": int(h), "answers": answers, "instances": found}


def to_labeled(record: dict[str, Any], file: str, ontology: Ontology, options: LabelOptions,
               image_id: int = 0) -> LabeledImage:
    """The :class:`LabeledImage` of a record: classes from the ontology, masks filtered by ``options``."""
    from textsam import rle

    answers = {a["phrase"]: a for a in record.get("answers", [])}
    kept = []
    for inst in record.get("instances", []):
        answer = answers.get(inst["phrase"], {})
        presence = answer.get("presence")
        if options.min_presence is None:
            present = bool(answer.get("found", True))
        else:
            present = presence is None or presence >= options.min_presence
        if not present or inst["score"] < options.min_score or inst["phrase"] not in ontology.phrases:
            continue
        box = tuple(float(v) for v in rle.to_bbox(inst["rle"]))
        kept.append(Instance(category=ontology.class_of(inst["phrase"]), phrase=inst["phrase"], rle=inst["rle"],
                             score=float(inst["score"]), presence=presence, box_xywh=box))  # type: ignore[arg-type]
    return LabeledImage(file=file, width=int(record["width"]), height=int(record["height"]), instances=tuple(kept),
                        image_id=image_id)


def _predictor(model: str | TextSam, predictor: TextSamPredictor | None, device: str | None = None) -> TextSamPredictor:
    if predictor is not None:
        return predictor
    import textsam

    return textsam.TextSamPredictor(textsam.create_model(model, device=device) if isinstance(model, str) else model)


def label(
    images: str | Path | Sequence[str | Path | np.ndarray | Image.Image],
    classes: str | Path | Sequence[str] | dict[str, str] | Ontology,
    *,
    model: str | TextSam = "sam_vit_b",
    predictor: TextSamPredictor | None = None,
    device: str | None = None,
    min_score: float = 0.0,
    min_presence: float | None = None,
    instances: Mode = "all",
    negative_text: str | None = None,
    skip_unreadable: bool = False,
    progress: bool = False,
) -> list[LabeledImage]:
    """Label images with a vocabulary, in memory; the writers (``textsam.label.write_coco``, ...) take the result.

    Args:
        images: a folder (recursive), an image file, a ``.txt`` list of paths, a COCO JSON, or a list of paths
            and/or images (``(H, W, 3)`` uint8 RGB arrays or PIL images).
        classes: ``"person,car"``, a list, a ``{phrase: class}`` mapping, or a classes/ontology file.
        model: a model name for :func:`textsam.create_model`, or a model; ignored when ``predictor`` is given.
        device: where a model given by name runs (``"cuda"``, ``"cpu"``, ...; default: the CPU).
        min_score, min_presence, instances: see :class:`LabelOptions`.
        negative_text: what none of the classes is ("shadow", "reflection"): see :func:`label_image`.
        skip_unreadable: leave out (and log) images that cannot be read instead of raising.

    Returns:
        one :class:`LabeledImage` per image, image ids 1..N. When every item is a path the images are sorted by
        their file name relative to their common folder, and ``file`` is the path as given (e.g.
        ``photos/a.jpg``), so writers find them without ``image_root``; an array or PIL image gets
        ``file = "image_<i>.png"`` (i its position in ``images``) and keeps its place.
    """
    from tqdm import tqdm

    from textsam.transforms import load_image

    options = LabelOptions(min_score=min_score, min_presence=min_presence, instances=instances)
    ontology = read_ontology(classes)
    items: list[tuple[str, Any]]
    if isinstance(images, (str, Path)) or all(isinstance(x, (str, Path)) for x in images):
        refs = collect_inputs([images] if isinstance(images, (str, Path)) else list(images)).images
        items = [(str(r.path), r.path) for r in refs]
    else:
        items = [(str(x), Path(x)) if isinstance(x, (str, Path)) else (f"image_{i}.png", x)
                 for i, x in enumerate(images)]
    pred = _predictor(model, predictor, device)
    out: list[LabeledImage] = []
    for file, source in tqdm(items, desc="label", unit="img", disable=not progress):
        try:
            rgb = load_image(source)
        except (TextSamError, OSError) as err:
            if not skip_unreadable:
                raise
            logger.warning("skipped %s: %s", file, err)
            continue
        record = label_image(pred, rgb, ontology.phrases, instances=options.instances, negative_text=negative_text)
        out.append(to_labeled(record, file, ontology, options, image_id=len(out) + 1))
    return out


# ---------------------------------------------------------------------------------- the store
def plan_images(refs: Sequence[ImageRef], request_digest: str) -> list[dict[str, Any]]:
    """One entry per image: ``{"file", "key"}``, or ``{"file", "key": None, "skipped": reason}`` for a file whose
    bytes cannot be read (its key is the request hash with the sha256 of its bytes)."""
    entries: list[dict[str, Any]] = []
    for ref in refs:
        try:
            entries.append({"file": ref.file, "key": image_key(request_digest, digest_file(ref.path))})
        except OSError as err:
            entries.append({"file": ref.file, "key": None, "skipped": f"cannot read the file: {err.strerror or err}"})
    return entries


@dataclass
class LoopReport:
    """What a run through the store did: images labelled now, skipped now (file, reason), failed (file, error)."""

    labelled: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def label_into_store(
    refs: Sequence[ImageRef],
    entries: Sequence[dict[str, Any]],
    store: Store,
    phrases: Sequence[str],
    make_predictor: Callable[[], TextSamPredictor],
    *,
    instances: Mode = "all",
    negative_text: str | None = None,
    progress: bool = True,
) -> LoopReport:
    """Label every image of ``entries`` that has no record in ``store`` yet (the predictor is made only when
    one is needed; ``negative_text``: see :func:`label_image`); each record is written whole as soon as its
    image is done. A ``KeyboardInterrupt`` is
    passed on; the records written stay, so the same call again goes on from there.

    An image that cannot be read gets a ``{"skipped": reason}`` record; an unexpected error on an image is
    reported in ``LoopReport.failed`` and leaves no record (a rerun tries it again).
    """
    import sys

    from tqdm import tqdm

    from textsam.transforms import load_image

    report = LoopReport()
    todo = [(ref, e) for ref, e in zip(refs, entries) if e["key"] is not None and not store.has(e["key"])]
    if not todo:
        return report
    predictor = make_predictor()
    bar = tqdm(todo, desc="label", unit="img", disable=not progress, file=sys.stderr)
    try:
        for ref, entry in bar:
            try:
                rgb = load_image(ref.path)
            except (TextSamError, OSError) as err:
                reason = str(err).replace(str(ref.path), ref.file)
                store.write(entry["key"], {"skipped": reason})
                report.skipped.append((ref.file, reason))
                bar.write(f"textsam: skipped {ref.file}: {reason}", file=sys.stderr)
                continue
            try:
                record = label_image(predictor, rgb, phrases, instances=instances, negative_text=negative_text)
            except TextSamError as err:
                report.skipped.append((ref.file, str(err)))
                store.write(entry["key"], {"skipped": str(err)})
                bar.write(f"textsam: skipped {ref.file}: {err}", file=sys.stderr)
                continue
            except Exception as err:  # noqa: BLE001 - reported per image; the other images go on
                logger.debug("unexpected error on %s", ref.path, exc_info=True)
                report.failed.append((ref.file, f"{type(err).__name__}: {err}"))
                bar.write(f"textsam: failed on {ref.file}: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            store.write(entry["key"], record)
            report.labelled += 1
    finally:
        bar.close()
    return report


def labeled_from_store(store: Store, entries: Sequence[dict[str, Any]], ontology: Ontology,
                       options: LabelOptions) -> tuple[list[LabeledImage], list[dict[str, str]]]:
    """The dataset of a finished store: labelled images sorted by file (ids 1..N) and the skipped images
    (``{"file", "reason"}``, sorted by file).

    Raises:
        InputError: an entry without its record (the run is not finished).
    """
    images: list[LabeledImage] = []
    skipped: list[dict[str, str]] = []
    for entry in sorted(entries, key=lambda e: e["file"]):
        if entry["key"] is None:
            skipped.append({"file": entry["file"], "reason": entry["skipped"]})
            continue
        record = store.read(entry["key"])
        if record is None:
            raise InputError(f"{entry['file']} has no labels in {store.root}: run the labelling again to finish it")
        if "skipped" in record:
            skipped.append({"file": entry["file"], "reason": record["skipped"]})
            continue
        images.append(to_labeled(record, entry["file"], ontology, options, image_id=len(images) + 1))
    return images, skipped
