"""Format dispatch: the dataset writers by format name, and writing a finished store's dataset into OUT.

Every writer takes ``(images: Sequence[LabeledImage], categories: Sequence[str], out: Path, *, polygons=False,
image_root: Path | None = None) -> list[Path]`` (the files it wrote); ``image_root`` is the folder the images'
``file`` names are relative to (None: ``file`` is a path that can be opened as it is). The review writer takes
the same arguments (it draws on the images). They are imported when first used, so a format whose module is missing fails
with a clear message and leaves the others working.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from textsam.errors import InputError

from .ontology import Ontology
from .run import LabelOptions, labeled_from_store
from .store import Store, dumps, write_if_changed
from .types import LabeledImage

__all__ = ["WRITERS", "FORMATS", "get_writer", "get_review_writer", "write_dataset", "write_from_store"]

# format -> (module, function), imported on first use
WRITERS: dict[str, tuple[str, str]] = {
    "coco": ("textsam.label.coco", "write_coco"),
    "yolo": ("textsam.label.yolo", "write_yolo"),
    "labelstudio": ("textsam.label.labelstudio", "write_labelstudio"),
    "masks": ("textsam.label.pngmasks", "write_masks"),
}
REVIEW: tuple[str, str] = ("textsam.label.review", "write_review")
FORMATS = tuple(WRITERS)
SKIPPED_FILE = "skipped.json"


def _load(module: str, name: str, what: str) -> Callable[..., list[Path]]:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise InputError(f"the {what} writer ({module}) is not part of this textsam installation: use another "
                         "format (e.g. --format coco) or update textsam") from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise InputError(f"{module} has no {name}(): the {what} writer is incomplete in this textsam installation")
    return fn


def get_writer(fmt: str) -> Callable[..., list[Path]]:
    """The writer of format ``fmt`` (InputError naming the formats for an unknown one)."""
    if fmt not in WRITERS:
        raise InputError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return _load(*WRITERS[fmt], fmt)


def get_review_writer() -> Callable[..., list[Path]]:
    return _load(*REVIEW, "review")


def write_dataset(images: Sequence[LabeledImage], categories: Sequence[str], out: Path, *, format: str = "coco",
                  polygons: bool = False, image_root: Path | None = None, review: bool = False) -> list[Path]:
    """Write ``images`` in ``format`` (and the review pages with ``review``) into ``out``; the files written."""
    writer = get_writer(format)
    review_writer = get_review_writer() if review else None  # fails before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = list(writer(images, categories, out, polygons=polygons, image_root=image_root))
    if review_writer is not None:
        written += list(review_writer(images, categories, out, polygons=polygons, image_root=image_root))
    return written


def _writers_digest() -> str:
    """sha256 of the labeller's sources: a dataset written by other writer code is written again."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def write_from_store(store: Store, run: dict[str, Any], ontology: Ontology, options: LabelOptions, *,
                     format: str, polygons: bool, review: bool) -> tuple[list[LabeledImage], list[dict[str, str]], bool]:
    """Write the dataset of a finished store (``run`` its run document) into the store's output folder, with
    ``skipped.json``; return the images, the skipped images and whether any file was (re)written.

    Nothing is written when the files textsam wrote last are still there, unchanged, for the same request,
    images, format and options: a finished command run again changes no file (not even a modification time).
    """
    images, skipped = labeled_from_store(store, run["images"], ontology, options)
    root = Path(run["image_root"])
    key = hashlib.sha256(dumps({"request": run["request_hash"], "images": sorted(map(str, (
        (e["file"], e["key"]) for e in run["images"]))), "format": format, "polygons": polygons, "review": review,
        "options": [options.min_score, options.min_presence, options.instances], "root": str(root),
        "writers": _writers_digest()})).hexdigest()
    outputs = store.read_outputs()
    recorded = outputs.get("files") or {}
    current = store.dataset_files()
    if (outputs.get("dataset") == key and not outputs.get("pending") and recorded
            and all(current.get(rel) in shas for rel, shas in recorded.items())):
        return images, skipped, False
    store.record_outputs(outputs.get("dataset"), pending=True,
                         also=[(rel, sha) for rel, shas in recorded.items() for sha in shas])
    write_dataset(images, ontology.categories, store.out, format=format, polygons=polygons, image_root=root,
                  review=review)
    write_if_changed(store.out / SKIPPED_FILE, dumps(skipped, indent=1))
    store.record_outputs(key, pending=False)
    return images, skipped, True
