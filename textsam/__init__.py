"""textsam: segment what a phrase names, mixed with clicks, boxes and masks, in one SAM decoder call.

Public API: :func:`create_model`, :func:`list_models`, :class:`TextSamPredictor`, :class:`Prediction`, the
text options (:class:`TextOptions` and its groups), and the labeller :mod:`textsam.label` (callable:
``textsam.label(images, classes, ...)``; its writers are ``textsam.label.write_coco`` and ``write_dataset``).
Heavy modules (torch) are imported on first use, so ``import textsam`` and the CLI start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "TextSamPredictor", "Prediction", "TextOptions", "GroundingOptions",
           "ScoringOptions", "InstanceOptions", "LocatorOptions", "label", "__version__"]

if TYPE_CHECKING:
    from . import label
    from .factory import create_model, list_models
    from .predictor import Prediction, TextSamPredictor
    from .text.options import GroundingOptions, InstanceOptions, LocatorOptions, ScoringOptions, TextOptions

_LAZY = {
    "create_model": ".factory",
    "list_models": ".factory",
    "TextSamPredictor": ".predictor",
    "Prediction": ".predictor",
    **dict.fromkeys(("TextOptions", "GroundingOptions", "ScoringOptions", "InstanceOptions", "LocatorOptions"),
                    ".text.options"),
}


# sub-packages served on first use; ``textsam.label`` is a callable package (``textsam.label(images, classes)``)
_PACKAGES = {"label": ".label"}


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        import importlib

        return importlib.import_module(_PACKAGES[name], __name__)
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'textsam' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY) + list(_PACKAGES))
