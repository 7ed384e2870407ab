"""Training's weights in and out: the start weights a run begins from, and the files it exports.

Start weights (a config's ``checkpoint``): an official SAM / MobileSAM ``.pth`` or an HF ``SamModel`` file
(read with :func:`~textsam.weights.checkpoint.read_state_dict`), or a textsam file of any version (read with
:func:`textsam.weights.format.read`, which renames the keys of earlier versions). Its SAM parts load into the
model strictly, part by part; its text head and CLIP tensors go to the text parts built after.

Exports, in the one textsam format (:mod:`textsam.weights.format`):

- ``model.safetensors``: every part the run trained (a fine-tuned CLIP text tower as ``clip.*``); the header
  holds the SAM model, the CLIP, the text head's config and the training record (recipe, step, parts);
- ``text_head.safetensors`` (text recipes): the whole text head (projector and locator) and the fine-tuned
  CLIP text tower when there is one (trained here or carried by the start weights), so that
  ``create_model(NAME, text_head=FILE)`` loads it alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open
from torch import Tensor

from ..config import TextHeadConfig
from ..errors import CheckpointMismatchError, InputError
from ..model import TextSam
from ..text.clip import TOWER_PREFIX, is_text_tower_key, load_text_tower
from ..weights import format as fmt
from ..weights.checkpoint import guess_model_name, load_into, read_state_dict, to_sam_state_dict

if TYPE_CHECKING:
    from .recipes import Recipe

__all__ = ["SAM_PARTS", "StartWeights", "read_start_weights", "load_sam_parts", "load_text_head", "export",
           "exported_step", "file_tensors", "load_exported"]

logger = logging.getLogger(__name__)
SAM_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


@dataclass(frozen=True)
class StartWeights:
    """What a ``checkpoint`` file holds, by part (keys without the part prefix)."""

    source: str
    sam: dict[str, dict[str, Tensor]]  # part name -> its state dict (official SAM names)
    sam_model: str | None = None  # the model the file says it was trained for (textsam files)
    clip: fmt.ClipSpec | None = None
    text_head: TextHeadConfig | None = None
    projector: dict[str, Tensor] = field(default_factory=dict)
    locator: dict[str, Tensor] = field(default_factory=dict)
    clip_tensors: dict[str, Tensor] = field(default_factory=dict)  # a whole CLIP, or its text tower

    @property
    def model_name(self) -> str | None:
        """The model these weights are for: the file's word, else a guess from the SAM tensors."""
        flat = {f"{part}.{k}": v for part, state in self.sam.items() for k, v in state.items()}
        return self.sam_model or (guess_model_name(flat) if flat else None)


def read_start_weights(path: str | Path) -> StartWeights:
    """Read a start-weights file (see the module docstring); raises InputError when it holds nothing usable."""
    source = str(path)
    if fmt.is_textsam_file(path):
        file = fmt.read(path)
        sam = {p: file.part(p) for p in SAM_PARTS if file.part(p)}
        start = StartWeights(source, sam, file.sam_model, file.clip, file.text_head, file.part("text_projector"),
                             file.part("text_locator"), file.part("clip"))
    else:
        state = to_sam_state_dict(read_state_dict(path))
        sam = {p: {k[len(p) + 1:]: v for k, v in state.items() if k.startswith(f"{p}.")} for p in SAM_PARTS}
        start = StartWeights(source, {p: s for p, s in sam.items() if s})
    if not (start.sam or start.projector or start.locator or start.clip_tensors):
        raise InputError(f"{source} holds no SAM, text-head or CLIP text-tower weights")
    return start


def load_sam_parts(model: TextSam, start: StartWeights, *, pretrained: bool) -> None:
    """Load the SAM parts of ``start`` into ``model``, each strictly (warns about the parts it lacks)."""
    for part, state in start.sam.items():
        load_into(getattr(model, part), state, strict=True)  # cast to the model's dtype
    missing = [p for p in SAM_PARTS if p not in start.sam]
    if missing:
        logger.warning("%s has no %s weights: they keep their %s values", start.source, ", ".join(missing),
                       "published" if pretrained else "random")


def load_text_head(projector: Any, locator: Any, start: StartWeights) -> None:
    """Load the start weights' text head into ``projector`` and ``locator`` (None: this config has none). A
    locator the start weights lack starts untrained; one this config has no place for is an error."""
    try:
        if start.projector:
            load_into(projector, start.projector, strict=True)
        if start.locator and locator is None:
            width = f" = {start.text_head.locator_dim}" if start.text_head is not None else " > 0"
            raise InputError(f"the text head in {start.source} has a locator: set [text_head] locator_dim{width} "
                             "(and its locator options) to keep it")
        if start.locator:
            load_into(locator, start.locator, strict=True)
    except CheckpointMismatchError as err:
        raise InputError(f"the text head in {start.source} does not fit this config's (missing "
                         f"{err.missing[:3]}, unknown {err.unexpected[:3]}): check [text_head] num_text_tokens, "
                         "projector_hidden_dim, locator_dim, locator_appearance, locator_factors, locator_presence and "
                         "word_tokens"
                         ) from None
    if locator is not None and not start.locator and start.projector:
        logger.info("%s has no locator: it starts untrained", start.source)


def file_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``TextSam`` state-dict keys -> the file's keys (the CLIP model's ``text_encoder.clip.*`` -> ``clip.*``)."""
    return {("clip." + k[len(TOWER_PREFIX):] if k.startswith(TOWER_PREFIX) else k): v.detach().cpu().contiguous()
            for k, v in state.items()}


def _clip_spec(recipe: Recipe, tensors: str | None) -> fmt.ClipSpec | None:
    te = recipe.text_encoder
    return None if te is None else fmt.ClipSpec(te.model_name, te.pretrained, None, tensors)


def export(recipe: Recipe, out_dir: Path, step: int) -> Path:
    """Write ``text_head.safetensors`` (text recipes), then ``model.safetensors`` (written last: one that holds
    the final step marks a finished run); returns the path of ``model.safetensors``."""
    cfg, model = recipe.config, recipe.model
    name = model.config.name if model.config is not None else cfg.model
    head_cfg = model.text_projector.config if model.text_projector is not None else None
    training = {"recipe": cfg.recipe, "step": step, "parts": recipe.trainable_parts()}
    trained = file_tensors(recipe.trainable_state())
    trained_tower = any(k.startswith("clip.") for k in trained)
    te = recipe.text_encoder
    if head_cfg is not None and te is not None:
        te.clear_cache()  # the tower may have changed since phrases were last encoded
        tuned = trained_tower or bool(recipe.start is not None and recipe.start.clip_tensors)
        head = {k: v for k, v in model.state_dict().items() if k.startswith(("text_projector.", "text_locator."))}
        if tuned:
            head.update({k: v for k, v in model.state_dict().items()
                         if k.startswith(TOWER_PREFIX) and is_text_tower_key(k[len(TOWER_PREFIX):])})
        fmt.write(out_dir / "text_head.safetensors",
                  fmt.TextsamFile(name, _clip_spec(recipe, "text_tower" if tuned else None), head_cfg,
                                  file_tensors(head), {}, {"recipe": cfg.recipe, "step": step}))
    return fmt.write(out_dir / "model.safetensors",
                     fmt.TextsamFile(name, _clip_spec(recipe, "text_tower" if trained_tower else None),
                                     head_cfg, trained, {}, training))


def exported_step(path: Path) -> int | None:
    """The training step recorded in an exported ``model.safetensors`` (None: missing, unreadable or foreign)."""
    try:
        with safe_open(str(path), "pt") as f:
            header = json.loads((f.metadata() or {})["textsam"])
        step = (header.get("training") or {}).get("step", header.get("step"))  # (a file of format 1: "step")
        return int(step) if step is not None else None
    except Exception:  # noqa: BLE001 - missing, half-written or foreign: no step
        return None


def load_exported(model: TextSam, path: str | Path) -> list[str]:
    """Load every part a textsam file holds (e.g. a run's ``model.safetensors``) into ``model``, each part
    strictly; CLIP tensors go into ``model.text_encoder`` (a whole CLIP, or its text tower). Returns the parts."""
    file = fmt.read(path)
    for part in file.parts:
        state = file.part(part)
        if part == "clip":
            if model.text_encoder is None:
                raise InputError(f"{path} holds CLIP tensors but the model has no text encoder")
            if file.clip is not None and file.clip.tensors == "full":
                load_into(model.text_encoder.clip, state, strict=True)
            else:
                load_text_tower(model.text_encoder, state, str(path))
            model.text_encoder.clear_cache()
            continue
        module = getattr(model, part)
        if module is None:
            raise InputError(f"{path} holds a {part} but this model has none: build it with the run's config")
        load_into(module, state, strict=True)
    return file.parts
