"""Semantic-segmentation folders: images and index-label PNGs paired by file stem.

A label PNG holds one class index per pixel (mode "L", or "P" palette PNGs read as indices, never as
colours). Labels are mapped as ``label = raw + label_offset``; pixels that become negative or equal
``ignore_index`` (before or after the offset) are ignored, and :meth:`SemsegDataset.load_label`
returns them as ``ignore_index``. Any other value outside ``[0, num_classes)`` is an error naming the
file (a class with no name).

Layouts for :meth:`SemsegDataset.from_layout`:

============ ================================================ ===================================== ========
layout       folders                                          class names                           labels
============ ================================================ ===================================== ========
``ade20k``   ``images/[split/]``, ``annotations/[split/]``    ``objectInfo150.csv`` (first synonym*) 0 = other (ignored), 1..150 -> 0..149
``voc``      ``JPEGImages/``, ``SegmentationClass/``          ``class_names.txt`` (else VOC's 21)   0 = background, 255 ignored
``context``  ``JPEGImages/``, ``SegmentationClassContext/``   ``classes.txt`` / ``class_names.txt`` 255 ignored; 0 = background when named so
``camvid``   ``images/`` + ``labels/`` or ``{split}/`` + ``{split}annot/``  ``classes.txt``           11 = void (ignored)
============ ================================================ ===================================== ========

(*) objectInfo150's first synonyms repeat "screen": rows 59 / 131 / 142 are named "screen door",
"screen" and "crt screen" (the names mmsegmentation uses).
For ``voc`` and ``context`` a split list ``ImageSets/Segmentation/{split}.txt`` restricts the stems
when ``split`` is given. A root that lacks the layout's folders but has exactly one sub-folder that has
them (``voc/``, ``VOC2012/``) is entered.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..transforms import load_image as _load_image

__all__ = ["SemsegDataset", "SemsegSample", "LAYOUTS", "VOC_CLASSES", "read_class_names"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = ("ade20k", "voc", "context", "camvid")
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_BACKGROUND_NAMES = {"background", "_background_", "__background__"}
_VOID_NAMES = {"unlabelled", "unlabeled", "void", "__ignore__"}
# objectInfo150.csv's first synonyms repeat "screen" (rows 59, 131, 142); the usual short names (mmseg's):
_ADE_RENAMES = {59: "screen door", 131: "screen", 142: "crt screen"}


@dataclass(frozen=True)
class SemsegSample:
    """One labelled image; ``image_path`` is None when the label has no image (reported as missing)."""

    stem: str
    image_path: Path | None
    label_path: Path


def read_class_names(path: str | Path) -> list[str]:
    """Class names of ``objectInfo150.csv`` (column ``Name``, first ``;`` synonym, rows by ``Idx``),
    a ``classes.csv`` (``index,name,...``) or a text file with one name per line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"class-name file not found: {p}")
    if p.suffix.lower() == ".csv":
        with open(p, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise InputError(f"{p} has no rows")
        lower = {k.lower(): k for k in rows[0]}
        idx_col, name_col = lower.get("idx") or lower.get("index"), lower.get("name")
        if name_col is None:
            raise InputError(f"{p} has no 'Name' column (columns: {list(rows[0])})")
        if idx_col is not None:
            try:
                rows.sort(key=lambda r: int(r[idx_col]))
            except ValueError as err:
                raise InputError(f"{p}: column {idx_col!r} must hold integers ({err})") from err
        return [r[name_col].split(";")[0].strip() for r in rows]
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise InputError(f"{p}: expected one class name per line, no blank lines")
    return names


class SemsegDataset:
    """Images and label PNGs paired by stem, with class names.

    Args:
        image_dir / label_dir: folders (not searched recursively).
        class_names: name of class ``i`` at index ``i``.
        ignore_index: label value to ignore (after ``label_offset``; a raw value equal to it is ignored too).
        label_offset: added to raw label values (ADE20K: -1, so raw 0 "other" becomes ignored).
        background_index: the class predicted where no prompted class is confident (VOC: 0), or None.
        label_suffix: label file suffix; images may have any of ``IMAGE_SUFFIXES``.
        stems: only these stems (a split list).
    """

    def __init__(
        self,
        image_dir: str | Path,
        label_dir: str | Path,
        class_names: list[str],
        *,
        ignore_index: int = 255,
        label_offset: int = 0,
        background_index: int | None = None,
        label_suffix: str = ".png",
        stems: list[str] | None = None,
        name: str = "custom",
    ) -> None:
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        for d, what in ((self.image_dir, "image"), (self.label_dir, "label")):
            if not d.is_dir():
                raise InputError(f"{what} folder not found: {d}")
        if not class_names:
            raise InputError("class_names is empty")
        if len(set(class_names)) != len(class_names):
            dup = sorted({n for n in class_names if class_names.count(n) > 1})
            raise InputError(f"duplicate class names: {dup}")
        self.class_names = list(class_names)
        self.ignore_index = int(ignore_index)
        self.label_offset = int(label_offset)
        if background_index is not None and not 0 <= background_index < len(class_names):
            raise InputError(f"background_index {background_index} is not a class index")
        self.background_index = background_index
        self.name = name
        images: dict[str, Path] = {}
        for p in sorted(self.image_dir.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                images.setdefault(p.stem, p)
        labels = {p.stem: p for p in sorted(self.label_dir.glob(f"*{label_suffix}")) if p.is_file()}
        if stems is not None:
            unknown = [s for s in stems if s not in labels]
            if unknown:
                raise InputError(
                    f"{len(unknown)} listed stem(s) have no label in {self.label_dir}: {unknown[:5]}"
                )
            labels = {s: labels[s] for s in stems}
        if not labels:
            raise InputError(f"no label files (*{label_suffix}) in {self.label_dir}")
        self.samples = [SemsegSample(s, images.get(s), labels[s]) for s in sorted(labels)]
        self._by_stem = {s.stem: s for s in self.samples}
        self.missing_images = [s.stem for s in self.samples if s.image_path is None]
        if self.missing_images:
            logger.warning("%d label(s) without an image in %s", len(self.missing_images), self.image_dir)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def stems(self) -> list[str]:
        return [s.stem for s in self.samples]

    def sample(self, stem: str) -> SemsegSample:
        try:
            return self._by_stem[stem]
        except KeyError as err:
            raise InputError(f"no labelled image {stem!r} in {self.label_dir}") from err

    def class_index(self, name: str) -> int:
        """Index of a class name (an :class:`InputError` listing the names for an unknown one)."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise InputError(
                f"unknown class name {name!r}; the classes are: {', '.join(self.class_names)}"
            ) from None

    def load_image(self, stem: str) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB."""
        s = self.sample(stem)
        if s.image_path is None:
            raise InputError(f"image missing for label {s.label_path.name} (no {stem}.* in {self.image_dir})")
        return _load_image(s.image_path)

    def load_label(self, stem: str) -> np.ndarray:
        """``(H, W)`` int64 class indices in ``[0, num_classes)``, ignored pixels = ``ignore_index``."""
        path = self.sample(stem).label_path
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                    raise InputError(
                        f"{path} is a {im.mode} image: label PNGs must hold class indices (mode L or P)"
                    )
                raw = np.array(im).astype(np.int64)
        except OSError as err:
            raise InputError(f"cannot read label {path}: {err}") from err
        label = raw + self.label_offset
        ignore = (label < 0) | (label == self.ignore_index) | (raw == self.ignore_index)
        label[ignore] = self.ignore_index
        bad = ~ignore & (label >= self.num_classes)
        if bad.any():
            vals = sorted(set(np.unique(raw[bad]).tolist()))
            raise InputError(
                f"{path}: label value(s) {vals[:10]} have no class name ({self.num_classes} classes)"
            )
        return label

    def present_classes(self, label: np.ndarray) -> list[int]:
        """Sorted class indices occurring in a label map (ignored pixels excluded)."""
        vals = np.unique(label)
        return [int(v) for v in vals if 0 <= v < self.num_classes and v != self.ignore_index]

    # ------------------------------------------------------------------------------------------ layouts
    @classmethod
    def from_layout(
        cls, layout: str, root: str | Path, *, split: str | None = None, ignore_index: int | None = None
    ) -> SemsegDataset:
        """A dataset in a standard layout (see the module docstring): ``ade20k``, ``voc``, ``context``, ``camvid``."""
        if layout not in LAYOUTS:
            raise InputError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"data folder not found: {root}")
        return getattr(cls, f"_{layout}")(root, split, ignore_index)

    @staticmethod
    def _enter(root: Path, required: tuple[str, ...]) -> Path:
        if all((root / r).exists() for r in required):
            return root
        subs = [d for d in sorted(root.iterdir()) if d.is_dir() and all((d / r).exists() for r in required)]
        if len(subs) == 1:
            return subs[0]
        raise InputError(f"{root} does not look like this layout: it needs {', '.join(required)}")

    @staticmethod
    def _split_dirs(root: Path, image: str, label: str, split: str | None) -> tuple[Path, Path]:
        if split is not None and (root / image / split).is_dir():
            return root / image / split, root / label / split
        return root / image, root / label

    @staticmethod
    def _split_stems(root: Path, split: str | None) -> list[str] | None:
        if split is None:
            return None
        lst = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file():
            raise InputError(f"split {split!r} needs the list {lst}")
        return [s.strip() for s in lst.read_text(encoding="utf-8").split() if s.strip()]

    @classmethod
    def _ade20k(cls, root: Path, split: str | None, ignore_index: int | None) -> SemsegDataset:
        root = cls._enter(root, ("images", "annotations"))
        info = next(
            (p for p in (root / "objectInfo150.csv", root.parent / "objectInfo150.csv") if p.is_file()), None
        )
        if info is None:
            raise InputError(f"objectInfo150.csv (ADE20K class names) not found in {root}")
        images, labels = cls._split_dirs(root, "images", "annotations", split)
        names = read_class_names(info)
        if len(names) == 150:
            names = [_ADE_RENAMES.get(i + 1, n) for i, n in enumerate(names)]
        return cls(
            images,
            labels,
            names,
            ignore_index=255 if ignore_index is None else ignore_index,
            label_offset=-1,
            name="ade20k",
        )

    @classmethod
    def _voc(cls, root: Path, split: str | None, ignore_index: int | None) -> SemsegDataset:
        root = cls._enter(root, ("JPEGImages", "SegmentationClass"))
        names_file = root / "class_names.txt"
        names = read_class_names(names_file) if names_file.is_file() else list(VOC_CLASSES)
        bg = 0 if names[0].lower() in _BACKGROUND_NAMES else None
        return cls(
            root / "JPEGImages",
            root / "SegmentationClass",
            names,
            ignore_index=255 if ignore_index is None else ignore_index,
            background_index=bg,
            stems=cls._split_stems(root, split),
            name="voc",
        )

    @classmethod
    def _context(cls, root: Path, split: str | None, ignore_index: int | None) -> SemsegDataset:
        root = cls._enter(root, ("JPEGImages", "SegmentationClassContext"))
        names_file = next(
            (root / n for n in ("classes.txt", "class_names.txt") if (root / n).is_file()), None
        )
        if names_file is None:
            raise InputError(
                f"Pascal Context needs its class names in {root}/classes.txt (one per line, index order)"
            )
        names = read_class_names(names_file)
        bg = 0 if names[0].lower() in _BACKGROUND_NAMES else None
        return cls(
            root / "JPEGImages",
            root / "SegmentationClassContext",
            names,
            ignore_index=255 if ignore_index is None else ignore_index,
            background_index=bg,
            stems=cls._split_stems(root, split),
            name="context",
        )

    @classmethod
    def _camvid(cls, root: Path, split: str | None, ignore_index: int | None) -> SemsegDataset:
        if split is not None and (root / split).is_dir() and (root / f"{split}annot").is_dir():
            images, labels = root / split, root / f"{split}annot"
        else:
            root = cls._enter(root, ("images", "labels"))
            images, labels = root / "images", root / "labels"
        names_file = next(
            (p for p in (root / "classes.txt", root.parent / "classes.txt") if p.is_file()), None
        )
        names = (
            read_class_names(names_file)
            if names_file is not None
            else [
                "Sky",
                "Building",
                "Pole",
                "Road",
                "Pavement",
                "Tree",
                "SignSymbol",
                "Fence",
                "Car",
                "Pedestrian",
                "Bicyclist",
            ]
        )
        void = 11 if ignore_index is None else ignore_index
        if len(names) > void and names[void].lower() in _VOID_NAMES:
            names = names[:void] + names[void + 1 :]  # the void entry is not a class
        return cls(images, labels, names, ignore_index=void, name="camvid")
