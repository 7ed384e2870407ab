"""Reading the files earlier textsam versions wrote (format 1), as :class:`~textsam.weights.format.TextsamFile`.

- ``textsam.bundle``: a whole small model (SAM + CLIP + text head), e.g. the first bundled ``shapes_tiny``;
- ``textsam.text_head``: a text projector (and locator) alone; a head trained with a fine-tuned CLIP text tower
  kept that tower in the training run's ``model.safetensors`` beside it, which the conversion takes in;
- ``textsam.trained``: a training run's ``model.safetensors`` (the parts it trained).

Their keys differ from format 2 in three ways, all renamed here: the locator sat inside the projector
(``text_projector.locator.*`` -> ``text_locator.*``), a fine-tuned tower was ``text_encoder.clip.*``
(-> ``clip.*``), and the projector had a word path (``text_projector.word_*``) that no shipped head used: its
output layer was zero, so it changed nothing and is dropped (a head whose word path was trained is refused).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor

from ..config import TextHeadConfig
from ..errors import WeightsError
from .format import ClipSpec, TextsamFile, head_config_from_tensors

logger = logging.getLogger(__name__)


def convert_v1(path: Path, meta: dict[str, Any], tensors: dict[str, Tensor]) -> TextsamFile:
    """A format-1 file (header ``meta``, ``tensors``) as a format-2 :class:`TextsamFile`."""
    fmt = meta.get("format")
    if fmt == "textsam.bundle":
        tensors = _rename(path, tensors)
        clip = ClipSpec(str(meta["clip_name"]), None, meta.get("clip_config"), "full")
        return TextsamFile(meta.get("model"), clip, _head_config(path, meta.get("text_head") or {}), tensors,
                           dict(meta.get("text_options") or {}), dict(meta.get("training") or {}))
    if fmt == "textsam.text_head":
        tensors = _rename(path, tensors)
        tower = None
        if "text_encoder" in (meta.get("extra") or {}):  # trained with a fine-tuned tower, kept beside it
            run_weights = path.with_name("model.safetensors")
            if not run_weights.is_file():
                raise WeightsError(f"the text head {path} (format 1) was trained with a fine-tuned CLIP text tower "
                                   f"that lives in {run_weights}, which is missing: put the run's model.safetensors "
                                   "beside it once, and convert the head with textsam.weights.format.convert")
            tower = {k: v for k, v in _rename(run_weights, load_file(str(run_weights))).items() if k.startswith("clip.")}
            tensors.update(tower)
            logger.warning("%s: format-1 text head; its fine-tuned CLIP text tower was read from %s (convert the "
                           "head once with textsam.weights.format.convert to keep them in one file)", path, run_weights)
        clip = ClipSpec(str(meta["clip_model"]), meta.get("clip_pretrained"), None, "text_tower" if tower else None)
        training = {"recipe": meta.get("recipe", ""), **(meta.get("extra") or {})}
        return TextsamFile(meta.get("sam_model"), clip, _head_config(path, meta), tensors, {}, training)
    if fmt == "textsam.trained":
        tensors = _rename(path, tensors)
        spec = meta.get("clip")
        clip = None
        if spec:
            name, _, tag = str(spec).partition("/")
            has_tower = any(k.startswith("clip.") for k in tensors)
            clip = ClipSpec(name, tag or None if tag != "None" else None, None, "text_tower" if has_tower else None)
        head = head_config_from_tensors(tensors) if "text_projector.mlp.0.weight" in tensors else None
        training = {k: meta[k] for k in ("recipe", "step") if k in meta}
        return TextsamFile(meta.get("sam_model"), clip, head, tensors, {}, training)
    raise WeightsError(f"{path} has an unknown textsam format {fmt!r}: it was written by another textsam version")


def _rename(path: Path, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Format-1 keys -> format-2 keys (see the module docstring)."""
    word_out = tensors.get("text_projector.word_out.weight")
    if word_out is not None and (bool(word_out.abs().max() > 0) or
                                 bool(tensors["text_projector.word_out.bias"].abs().max() > 0)):
        raise WeightsError(f"{path}: its text projector has a trained word path, which textsam no longer has; "
                           "retrain the head with this version")
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("text_projector.word_"):
            continue
        if key.startswith("text_projector.locator."):
            key = "text_locator." + key[len("text_projector.locator."):]
        elif key.startswith("text_encoder.clip."):
            key = "clip." + key[len("text_encoder.clip."):]
        out[key] = value
    return out


def _head_config(path: Path, old: dict[str, Any]) -> TextHeadConfig:
    """A format-1 text-head description (the bundle's ``text_head`` dict or a head file's header)."""
    locator_dim = int(old.get("locator_dim") or 0)
    if locator_dim and old.get("locator_kind", "cells") != "regions":
        raise WeightsError(f"{path}: its text head has a cell locator, which textsam no longer has; retrain the "
                           "head with a region locator")
    return TextHeadConfig(
        clip_dim=int(old["clip_dim"]), token_dim=int(old["token_dim"]), num_tokens=int(old["num_tokens"]),
        hidden_dim=int(old["hidden_dim"]), locator_dim=locator_dim,
        locator_word_dim=int(old.get("word_dim") or 0) if locator_dim else 0,
        locator_appearance=str(old.get("locator_appearance") or "embedding"),
        locator_factors=str(old.get("locator_factors") or "joint"),
    )
