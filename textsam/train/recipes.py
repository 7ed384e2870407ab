"""Recipes: the model to train, the frozen encoders that make its prompts, and the trainable graph.

* ``"sam"``: points and boxes only (SAM's own interactive recipe).
* ``"text"``: direct text supervision: the CLIP *text* embedding of the phrase -> ``TextProjector`` ->
  ``K`` sparse tokens, mixed with points, boxes and text+point prompts (``prompt_mix``), so clicks keep
  working.
* ``"clip_crops"``: the SAM paper's recipe (section 7.5 / D.5): during training the text-kind prompt
  is the CLIP *image* embedding of the object's enlarged square crop (random enlargement in [1, 2],
  outside-mask pixels greyed with probability 0.5), through the same projector; evaluation prompts with
  the CLIP *text* embedding. (The paper also masks CLIP's last-layer attention to the object; we only
  grey out.)

Every recipe trains with SAM's iterative correction clicks (:class:`~textsam.train.prompt_model.PromptModel`).
The text head (projector and, with ``[text_head] locator_dim``, a region locator) is built from one
:class:`~textsam.config.TextHeadConfig` (:meth:`TextHeadOptions.head_config
<textsam.train.config.TextHeadOptions.head_config>`). With ``[freeze] text_encoder = false`` the "text" recipe
also trains the CLIP text tower (never its visual tower): the phrases' token ids then go through the tower
inside the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import TextConfig
from ..errors import InputError
from ..factory import build_sam, get_config
from ..model import TextSam
from ..text.clip import TOWER_PREFIX, TextEncoder, is_text_tower_key, load_text_tower, parse_clip_spec
from ..text.locator import RegionLocator
from ..text.projector import TextProjector
from .batches import TEXT, TEXT_POINT, Batch
from .config import TrainConfig
from .data import ClipInput, SemanticLabels, build_entries, colour_words
from .losses import LossWeights
from .prompt_model import PromptModel
from .samples import SampleOptions, SegmentationDataset
from .weights import StartWeights, load_sam_parts, load_text_head, read_start_weights

__all__ = ["PARTS", "Recipe", "build_model", "build_recipe", "make_dataset"]

logger = logging.getLogger(__name__)

# TextSam's trainable parts ([freeze] names); the text tower trains only its text half
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder", "text_projector", "text_locator", "text_encoder")


@dataclass
class Recipe:
    """A built recipe: the model, its trainable graph, the frozen prompt producers and the start weights."""

    name: str
    config: TrainConfig
    model: TextSam
    module: PromptModel
    probs: tuple[float, float, float, float]
    clip_input: ClipInput | None = None
    start: StartWeights | None = None

    @property
    def text_encoder(self) -> TextEncoder | None:
        return self.model.text_encoder

    def trainable_parts(self) -> list[str]:
        return [p for p in PARTS if getattr(self.model, p) is not None and not getattr(self.config.freeze, p)]

    def trainable_state(self) -> dict[str, Tensor]:
        """State of the trained parts with ``TextSam`` key names (what checkpoints hold); of a trained CLIP,
        the text tower only (``text_encoder.clip.*``)."""
        parts = tuple(f"{p}." for p in self.trainable_parts())
        return {
            k: v for k, v in self.model.state_dict().items()
            if k.startswith(parts) and (not k.startswith("text_encoder.") or
                                        (k.startswith(TOWER_PREFIX) and is_text_tower_key(k[len(TOWER_PREFIX):])))
        }

    def text_embeddings(self, phrases: Sequence[str]) -> Tensor:
        if self.text_encoder is None:
            raise InputError(f"recipe {self.name!r} has no text encoder")
        return self.text_encoder.encode(list(phrases)).clone()  # clone: leave inference mode

    @torch.no_grad()
    def crop_embeddings(self, crops: Tensor) -> Tensor:
        """``(N, 3, n, n)`` normalised crops -> unit CLIP image embeddings ``(N, D)`` float32."""
        if self.text_encoder is None:
            raise InputError(f"recipe {self.name!r} has no CLIP")
        clip = self.text_encoder.clip
        feats = clip.visual(crops.to(next(clip.parameters()).device))
        return F.normalize((feats[0] if isinstance(feats, tuple) else feats).float(), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        return self.model.image_encoder(images)

    def prepare(self, batch: Batch, device: torch.device, train: bool = True) -> Batch:
        """Move a collated batch to ``device`` and add the frozen encoders' outputs: ``image_emb`` (frozen
        image encoder) and, for the text-kind rows ``prompt_rows``, their prompt (see :class:`Batch`)."""
        out = batch.to(device)
        if self.module.image_encoder is None and out.image_emb is None:
            out.image_emb, out.image = self.image_embeddings(out.image), None
        elif out.image_emb is not None and out.image_emb.dtype != torch.float32:  # a float16 cache
            out.image_emb = out.image_emb.float()
        if self.module.text_projector is None:
            return out
        rows = torch.nonzero((out.kind == TEXT) | (out.kind == TEXT_POINT)).flatten()
        if rows.numel() == 0:
            return out
        out.prompt_rows = rows
        if self.config.text_head.blind_text:  # text-blind baseline: same training, the prompt carries nothing
            dim = self.text_encoder.embed_dim if self.text_encoder is not None else self.model.text_projector.clip_dim
            out.prompt_emb = torch.zeros(rows.numel(), dim, device=device)
            return out
        phrases = [out.text[int(i)] for i in rows]
        if self.module.text_encoder is not None:  # the trained text tower runs inside forward
            out.prompt_ids = self.text_encoder.tokenize(phrases).to(device)
            return out
        if train and self.name == "clip_crops":
            emb = out.crop_emb if out.crop_emb is not None else self.crop_embeddings(out.crop)
            if not torch.equal(out.crop_rows, rows):
                raise RuntimeError("crop rows do not match the text-kind rows of the batch")
        elif out.text_emb is not None:
            emb = out.text_emb[rows]
        else:
            emb = self.text_embeddings(phrases)
        out.prompt_emb = emb.to(device).float()
        locator = self.model.text_locator
        if locator is not None and locator.word_dim and self.name == "text":  # the frozen tower's token features
            _, words, mask = self.text_encoder.encode_words(phrases)
            out.prompt_words, out.prompt_word_mask = words.clone().to(device), mask.clone().to(device)
        return out


def _text_encoder(config: TrainConfig, text: TextConfig, start: StartWeights | None,
                  device: torch.device | str) -> TextEncoder:
    """The CLIP: ``config.clip``, else the whole CLIP the start weights hold, else the model config's (``text``).
    A text tower the start weights hold (fine-tuned by an earlier run) replaces the CLIP's own."""
    if config.clip is None and start is not None and start.clip is not None and start.clip.tensors == "full":
        if start.clip.config is None:
            raise InputError(f"{start.source} holds a whole CLIP but not its open_clip config")
        return TextEncoder.from_config(start.clip.model, start.clip.config, start.clip_tensors, device=device)
    spec = config.clip or (f"{text.clip_model}/{text.clip_pretrained}" if text.clip_pretrained else text.clip_model)
    name, tag = parse_clip_spec(spec)
    if start is not None and start.clip is not None and start.projector and (name, tag) != (
            start.clip.model, start.clip.pretrained):
        logger.warning("the text head in %s was trained with CLIP %r; this run uses %r (set clip to change it)",
                       start.source, start.clip.spec, spec)
    encoder = TextEncoder.create(name, tag, device=device)
    if start is not None and start.clip_tensors:  # a text tower fine-tuned by an earlier run
        load_text_tower(encoder, {k: v for k, v in start.clip_tensors.items() if is_text_tower_key(k)}, start.source)
    return encoder


def _build(config: TrainConfig, device: torch.device | str) -> tuple[TextSam, StartWeights | None]:
    start = read_start_weights(config.checkpoint) if config.checkpoint else None
    name = config.model
    if name == "from_checkpoint":
        name = (start.model_name if start is not None else None) or ""
        if not name:
            raise InputError(f"cannot tell which model {config.checkpoint} is for; set model = NAME")
    torch.manual_seed(config.seed)
    mcfg = get_config(name)
    model = build_sam(mcfg)
    if config.pretrained and mcfg.weights:
        from ..factory import load_sam_weights
        from ..weights.pretrained import resolve_weights

        load_sam_weights(model, resolve_weights(mcfg.weights))
    if start is not None:
        load_sam_parts(model, start, pretrained=config.pretrained)
    if config.uses_text:
        encoder = model.text_encoder = _text_encoder(config, mcfg.text, start, device)
        encoder.set_text_tower_trainable(not config.freeze.text_encoder)
        if config.text_head.word_tokens and not encoder.word_dim:
            raise InputError(f"[text_head] word_tokens = true: the CLIP text tower of {encoder.model_name!r} gives "
                             "no per-token features")
        head = config.text_head.head_config(clip_dim=encoder.embed_dim, token_dim=mcfg.mask_decoder.transformer_dim,
                                            default_tokens=mcfg.text.num_text_tokens, word_dim=encoder.word_dim)
        model.text_projector = TextProjector(head)
        model.text_locator = RegionLocator(head) if head.has_locator else None
        if start is not None:
            load_text_head(model.text_projector, model.text_locator, start)
    model.to(device)
    for part in PARTS[:-1]:  # the text tower is set up above
        module = getattr(model, part)
        if module is not None:
            frozen = bool(getattr(config.freeze, part))
            module.requires_grad_(not frozen).train(not frozen)
    return model, start


def build_model(config: TrainConfig, device: torch.device | str = "cpu") -> TextSam:
    """The TextSam to train, on ``device``: seeded init, published weights (``pretrained``), the start weights
    (``checkpoint``), and for text recipes the CLIP and the text head; frozen parts fixed and in eval mode."""
    return _build(config, device)[0]


def build_recipe(config: TrainConfig, device: torch.device | str = "cpu") -> Recipe:
    """Model + trainable :class:`PromptModel` + prompt producers for ``config.recipe``."""
    model, start = _build(config, device)
    loss, head = config.loss, config.text_head
    module = PromptModel(
        model, train_image_encoder=not config.freeze.image_encoder, clicks=loss.correction_clicks,
        weights=LossWeights(loss.focal_weight, loss.dice_weight, loss.iou_weight),
        train_text_encoder=config.recipe == "text" and not config.freeze.text_encoder,
        text_min_loss=loss.text_multimask == "min", locator_weight=loss.locator_weight,
        locate_text=head.locate_text, locator_only=config.locator_only,
    )
    clip_input = None
    if config.recipe == "clip_crops":
        from ..text.grounding import DenseClip

        dense = DenseClip(model.text_encoder.clip, input_size=int(_pair(model.text_encoder.clip.visual.image_size)))
        clip_input = ClipInput(dense.native_size, tuple(dense.mean.flatten().tolist()), tuple(dense.std.flatten().tolist()))
    return Recipe(config.recipe, config, model, module, config.prompt_mix.probabilities(config.recipe), clip_input,
                  start)


def _pair(size: Any) -> int:
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


def make_dataset(recipe: Recipe, source: Any, *, train: bool, split: str, limit: int | None,
                 semantic: SemanticLabels | None = None) -> SegmentationDataset:
    """Samples of ``source`` for ``recipe`` (with ``semantic`` class maps when given). ``limit``: the first
    ``limit`` targets in training, ``limit`` targets spread evenly over the split otherwise."""
    cfg, model, aug = recipe.config, recipe.model, recipe.config.augment
    entries = build_entries(source, model.img_size, cfg.data.min_area)
    if limit is not None and len(entries) > limit:
        entries = entries[:: max(1, len(entries) // limit)][:limit] if not train else entries[:limit]
    words = colour_words(semantic) if aug.greyscale_text or aug.region_colour_shuffle > 0 else frozenset()
    options = SampleOptions(
        img_size=model.img_size, lowres=model.prompt_encoder.mask_input_size[0], probs=recipe.probs, seed=cfg.seed,
        train=train, split=split, pixel_mean=tuple(model.pixel_mean.flatten().tolist()),
        pixel_std=tuple(model.pixel_std.flatten().tolist()), clip_input=recipe.clip_input if train else None,
        crop_variants=aug.crop_variants, crop_enlarge=aug.crop_enlarge, crop_grey_prob=aug.crop_grey_prob,
        semantic=semantic, greyscale_prob=aug.greyscale_prob if train else 0.0, greyscale_text=aug.greyscale_text,
        colour_words=words, max_regions=cfg.text_head.max_regions if cfg.text_head.locator_dim else 0,
        region_colour_shuffle=aug.region_colour_shuffle if train else 0.0,
    )
    return SegmentationDataset(source, entries, options)
