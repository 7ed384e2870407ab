"""The dataset labeller: a vocabulary over a folder of images, into COCO, YOLO-seg, Label Studio or PNG masks.

In Python (two lines from images to a dataset)::

    images = textsam.label("photos/", ["person", "car"], model="sam_vit_b")
    textsam.label.write_coco(images, ["person", "car"], Path("out"))   # or write_dataset(..., format="yolo")

This package is callable: ``textsam.label(...)`` is :func:`textsam.label.run.label`. It returns one :class:`LabeledImage` per image; every writer takes that list. The command line
(``textsam label``) adds the resumable per-image store, ``--shard i/n`` and ``merge`` (see
:mod:`textsam.label.store` and :mod:`textsam.label.shards`).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

__all__ = ["label", "LabelOptions", "Ontology", "read_ontology", "Instance", "LabeledImage", "write_coco",
           "write_dataset", "WRITERS", "collect_inputs"]

if TYPE_CHECKING:
    from .coco import write_coco
    from .inputs import collect_inputs
    from .ontology import Ontology, read_ontology
    from .run import LabelOptions, label
    from .types import Instance, LabeledImage
    from .writers import WRITERS, write_dataset

_LAZY = {
    "label": ".run",
    "LabelOptions": ".run",
    "Ontology": ".ontology",
    "read_ontology": ".ontology",
    "Instance": ".types",
    "LabeledImage": ".types",
    "write_coco": ".coco",
    "write_dataset": ".writers",
    "WRITERS": ".writers",
    "collect_inputs": ".inputs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'textsam.label' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


class _CallablePackage(types.ModuleType):
    """``textsam.label(images, classes, ...)`` calls :func:`textsam.label.run.label`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .run import label

        return label(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
