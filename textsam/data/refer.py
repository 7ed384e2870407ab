"""Referring expressions (RefCOCO / RefCOCO+ / RefCOCOg / gRefCOCO layouts) joined to COCO masks.

A refs file is either JSON (a list of ref objects, as ``refcocos_on_coco_tiny/refs.json`` and the synthetic
generator write) or the original pickle ``refs(unc).p`` / ``refs(google).p``: a list of dicts with
``ref_id, ann_id, image_id, split, sentences[{sent, raw, tokens, sent_id}], category_id, file_name``.
Pickles written by Python 2 are read with ``encoding="latin1"``, and through an unpickler that accepts
only plain lists, dicts, strings and numbers (a pickle naming any class or function is refused, since
unpickling one can run code).

Targets: ``ann_ids`` (a list) when present, else ``ann_id`` as an int (RefCOCO) or a list (gRefCOCO, where
``-1`` marks "no target"). A ref's mask is the union of its targets' masks.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .coco import CocoDataset, read_json

__all__ = ["Ref", "ReferDataset", "read_refs"]

logger = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


@dataclass
class Ref:
    """One referred target set with its sentences; ``extra`` keeps other keys (kind, bbox, file_name...)."""

    ref_id: int
    image_id: int
    ann_ids: list[int]
    category_id: int
    split: str
    sentences: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global: RefCOCO refs are plain containers, anything else is not a refs file."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"it references {module}.{name}; a refs pickle holds only lists, dicts, strings and numbers"
        )


def read_refs(path: str | Path) -> list[dict[str, Any]]:
    """The raw list of ref dicts of a JSON or pickle refs file (InputError naming the file otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"refs file not found: {p}. Check the path.")
    if p.suffix.lower() in _PICKLE_SUFFIXES:
        try:
            data = _PlainUnpickler(io.BytesIO(p.read_bytes()), encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise InputError(f"cannot read {p} as a RefCOCO refs pickle: {err}.") from err
    else:
        data = read_json(p, "refs file")
    if not isinstance(data, list):
        raise InputError(f"{p}: a refs file is a list of ref dicts, got {type(data).__name__}.")
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise InputError(f"{p}: refs[{i}] is a {type(r).__name__}; a refs file is a list of ref dicts.")
    return data


def _sentences(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, list):
        raise InputError(f"{where}: 'sentences' must be a list.")
    out = []
    for s in raw:
        if isinstance(s, str):
            out.append(s)
        elif isinstance(s, dict) and isinstance(s.get("sent", s.get("raw")), str):
            out.append(s.get("sent", s.get("raw")))
        else:
            raise InputError(f"{where}: each sentence must be a string or a dict with 'sent'.")
    return out


def _ann_ids(r: dict[str, Any], where: str) -> list[int]:
    raw = r["ann_ids"] if "ann_ids" in r else r.get("ann_id")
    if raw is None:
        raise InputError(f"{where} has neither 'ann_ids' nor 'ann_id'.")
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    try:
        ids = [int(a) for a in items]
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: annotation ids must be integers, got {raw!r}.") from err
    return [a for a in ids if a >= 0]  # gRefCOCO writes [-1] for "refers to nothing"


class ReferDataset:
    """Refs (JSON or RefCOCO pickle) over a COCO instances file and its image folder.

    ``split`` keeps only refs of that split (None: all). ``coco``: the :class:`CocoDataset` of
    ``instances_file`` and ``image_dir`` when it is read already (several refs files over one instances file
    share it). Attributes ``refs`` (list of :class:`Ref`) and ``coco`` (:class:`CocoDataset`).
    """

    _KNOWN = ("ref_id", "image_id", "ann_id", "ann_ids", "category_id", "split", "sentences")

    def __init__(
        self,
        refs_file: str | Path,
        instances_file: str | Path,
        image_dir: str | Path,
        *,
        split: str | None = None,
        coco: CocoDataset | None = None,
    ) -> None:
        self.refs_file = Path(refs_file)
        self.coco = coco if coco is not None else CocoDataset(instances_file, image_dir)
        src = str(self.refs_file)
        refs: list[Ref] = []
        for i, r in enumerate(read_refs(self.refs_file)):
            where = f"{src}: refs[{i}]"
            try:
                ref_id, image_id = int(r["ref_id"]), int(r["image_id"])
            except KeyError as err:
                raise InputError(f"{where} has no {err.args[0]!r}.") from err
            except (TypeError, ValueError) as err:
                raise InputError(f"{where}: ref_id and image_id must be integers.") from err
            if image_id not in self.coco.images:
                raise InputError(
                    f"{where} (ref {ref_id}) is on image {image_id}, not in {self.coco.annotation_file}."
                )
            ann_ids = _ann_ids(r, where)
            for a in ann_ids:
                ann = self.coco.annotations.get(a)
                if ann is None:
                    raise InputError(
                        f"{where} (ref {ref_id}) targets annotation {a}, not in {self.coco.annotation_file}."
                    )
                if ann.image_id != image_id:
                    raise InputError(
                        f"{where} (ref {ref_id}): annotation {a} is on image {ann.image_id}, not {image_id}."
                    )
            if "category_id" in r:
                category_id = int(r["category_id"])
            else:
                category_id = self.coco.annotations[ann_ids[0]].category_id if ann_ids else -1
            extra = {k: v for k, v in r.items() if k not in self._KNOWN}
            refs.append(
                Ref(
                    ref_id,
                    image_id,
                    ann_ids,
                    category_id,
                    str(r.get("split", "")),
                    _sentences(r.get("sentences", []), where),
                    extra,
                )
            )
        self._all_splits = sorted({r.split for r in refs})
        if split is not None:
            refs = [r for r in refs if r.split == split]
            if not refs:
                raise InputError(f"{src} has no refs in split {split!r}; its splits are {self._all_splits}.")
        self.refs: list[Ref] = refs
        self._by_id = {r.ref_id: r for r in refs}
        logger.debug("%s: %d refs", src, len(refs))

    def __len__(self) -> int:
        return len(self.refs)

    def ref(self, ref_id: int) -> Ref:
        """The ref with this id."""
        try:
            return self._by_id[ref_id]
        except KeyError as err:
            raise InputError(f"ref id {ref_id} is not in {self.refs_file}.") from err

    def splits(self) -> list[str]:
        """Sorted split names present in the refs kept."""
        return sorted({r.split for r in self.refs})

    def target_mask(self, ref: Ref | int) -> np.ndarray:
        """``(H, W)`` bool union of the ref's target masks (all False when it has no target)."""
        r = ref if isinstance(ref, Ref) else self.ref(ref)
        im = self.coco.images[r.image_id]
        out = np.zeros((im.height, im.width), dtype=bool)
        for a in r.ann_ids:
            out |= self.coco.mask(a)
        return out

    def load_image(self, ref: Ref | int) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB image of a ref."""
        r = ref if isinstance(ref, Ref) else self.ref(ref)
        return self.coco.load_image(r.image_id)

    def expressions(self, split: str | None = None) -> list[tuple[Ref, int, str]]:
        """One ``(ref, sentence index, text)`` per sentence, in ref order (optionally of one split)."""
        return [
            (r, i, s)
            for r in self.refs
            if split is None or r.split == split
            for i, s in enumerate(r.sentences)
        ]
