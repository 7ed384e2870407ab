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

Every recipe trains with SAM's iterative correction clicks (:class:`PromptModel`). With ``[freeze]
text_encoder = false`` the "text" recipe also trains the CLIP text tower (never its visual tower): the
phrases' token ids then go through the tower inside the graph, and exports hold its weights as
``text_encoder.clip.*``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..factory import build_sam, get_config
from ..model import TextSam
from ..ops import deepest_points
from ..text.cell_locator import locator_loss, target_cells
from ..text.clip import (
    TOWER_PREFIX,
    TextEncoder,
    TextProjector,
    is_text_tower_key,
    load_text_tower,
    parse_clip_spec,
    text_tower_state,
)
from ..text.locator import region_loss
from ..weights.checkpoint import load_into, read_state_dict, to_sam_state_dict
from .config import TrainConfig
from .data import BOX, POINT, TEXT, TEXT_KINDS, TEXT_POINT, ClipInput, EmbeddingCache
from .losses import LossWeights, mask_iou, sam_loss

logger = logging.getLogger(__name__)

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder", "text_projector", "text_encoder")


def error_clicks(pred: Tensor, target: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """SAM's next click: in the larger of the false-negative / false-positive regions, at its deepest pixel.

    ``pred``, ``target``: ``(B, L, L)`` bool low-res masks; ``scale``: input pixels per low-res pixel.
    Returns coords ``(B, 1, 2)`` in the input frame and labels ``(B, 1)`` (1 = add, 0 = remove). A
    perfect prediction gets a positive click at the object's deepest point.
    """
    fn, fp = target & ~pred, pred & ~target
    use_fn = fn.flatten(1).sum(1) >= fp.flatten(1).sum(1)
    region = torch.where(use_fn[:, None, None], fn, fp)
    perfect = ~region.flatten(1).any(1)
    region = torch.where(perfect[:, None, None], target, region)
    pts = deepest_points(region).float()
    coords = (pts + 0.5) * scale - 0.5
    labels = (use_fn | perfect).float()
    return coords[:, None], labels[:, None]


class PromptModel(nn.Module):
    """The trainable graph: (image encoder) + prompt encoder + mask decoder (+ text projector).

    ``forward(batch)`` runs every prompt kind present in the batch through ``1 + clicks`` decoder rounds
    (round 0: the sampled prompt, no mask input; round r: one more error click and the previous round's
    most confident low-res logits as mask input) and returns the mean SAM loss over samples and rounds.
    Ambiguous first prompts (a single point, text alone) get 3 outputs and the min-loss rule (text alone:
    every output trained on the target when ``text_min_loss`` is False); the rest use the single-mask output. Module names match ``TextSam``'s, so state-dict keys are the official ones.
    """

    def __init__(self, model: TextSam, *, train_image_encoder: bool, clicks: int, weights: LossWeights,
                 train_text_encoder: bool = False, text_min_loss: bool = True) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder if train_image_encoder else None
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.text_projector = model.text_projector
        self.text_encoder = model.text_encoder if train_text_encoder else None
        self.clicks, self.weights = clicks, weights
        self.text_min_loss = text_min_loss  # False: every output of a bare phrase learns the target
        self.locator_weight = 0.0  # > 0: the text head's locator is trained to find the target
        self.locate_text = False  # text-alone samples also get the locator's click (as at inference)
        self.locator_only = False  # only the locator trains: forward computes its loss alone
        self.img_size = model.img_size
        self.scale = model.img_size / self.prompt_encoder.mask_input_size[0]
        self.semantic_head: nn.Conv2d | None = None
        self.semantic_classes: tuple[int, ...] = ()
        self.semantic_weight = 0.0

    def add_semantic_head(self, num_classes: Sequence[int], weight: float) -> None:
        """Training-only 1x1 conv on the image embedding ``(B, C, h, w)`` -> per-field class logits, upsampled
        to the low-res mask grid and scored by cross-entropy against the batch's ``semantic`` maps."""
        if self.image_encoder is None:
            raise InputError("the semantic loss needs a trainable image encoder")
        channels = self.mask_decoder.transformer_dim
        self.semantic_head = nn.Conv2d(channels, sum(num_classes), kernel_size=1)
        self.semantic_classes, self.semantic_weight = tuple(num_classes), float(weight)

    def semantic_loss(self, emb: Tensor, labels: Tensor) -> Tensor:
        """Mean over fields of the per-pixel cross-entropy; ``labels`` ``(B, F, L, L)`` int64 (-100: ignored)."""
        assert self.semantic_head is not None
        logits = F.interpolate(self.semantic_head(emb).float(), labels.shape[-2:], mode="bilinear", align_corners=False)
        parts = torch.split(logits, list(self.semantic_classes), dim=1)
        total = emb.new_zeros((), dtype=torch.float32)
        for i, x in enumerate(parts):  # pixels labelled -100 (colours of greyscale samples) do not count
            y = labels[:, i]
            total = total + F.cross_entropy(x, y, ignore_index=-100, reduction="sum") / (y != -100).sum().clamp_min(1)
        return total / len(parts)

    def decode(self, emb: Tensor, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None,
               masks: Tensor | None, tokens: Tensor | None, multimask: bool) -> tuple[Tensor, Tensor]:
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks, extra_tokens=tokens)
        return self.mask_decoder(emb, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask)

    def text_inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
        """The text rows' pooled CLIP embeddings ``(R, D)`` and word features ``(R, L, W)`` + mask (None without
        a word path): from ``prompt_emb`` (and ``prompt_words``/``prompt_word_mask``), or from ``prompt_ids``
        through the trained text tower. None when the batch has no text rows."""
        if self.text_projector is None or not ("prompt_emb" in batch or "prompt_ids" in batch):
            return None
        if "prompt_ids" not in batch:
            return batch["prompt_emb"], batch.get("prompt_words"), batch.get("prompt_word_mask")
        if self.text_encoder is None:
            raise InputError("token ids in the batch but the text tower is not trained here")
        if self.text_projector.word_dim:
            emb, words, mask = self.text_encoder.embed_tokens(batch["prompt_ids"], with_words=True)
            return emb.float(), words.float(), mask
        return self.text_encoder.embed_tokens(batch["prompt_ids"]).float(), None, None

    def text_tokens(self, batch: dict[str, Any], inputs: Any = None) -> Tensor | None:
        """``(B, K, C)`` tokens, rows of non-text samples zero (unused), from :meth:`text_inputs`."""
        inputs = inputs if inputs is not None else self.text_inputs(batch)
        if inputs is None:
            return None
        emb, words, mask = inputs
        tok = self.text_projector(emb, words if self.text_projector.word_dim else None, mask)
        full = tok.new_zeros((batch["kind"].shape[0], *tok.shape[1:]))
        return full.index_copy(0, batch["prompt_rows"], tok)

    def locate(self, emb: Tensor, batch: dict[str, Any], inputs: Any,
               clicks: bool = True) -> tuple[Tensor, Tensor | None] | None:
        """The locator's scores for the text rows (``(R, h * w)`` cells, or ``(R, N)`` candidate regions) and
        (``clicks``) its clicks ``(B, 2)`` in the input frame (the best cell's centre, or the best region's
        deepest pixel; rows of non-text samples zero); None without a locator."""
        locator = self.text_projector.locator if self.text_projector is not None else None
        if locator is None or inputs is None:
            return None
        rows = batch["prompt_rows"]
        if self.text_projector.locator_kind == "regions":
            regions = batch["regions"][rows]
            scores = locator(emb[rows], regions, batch["region_valid"][rows], *inputs,
                             colours=batch["region_colour"][rows])
            if not clicks:
                return scores, None
            best = regions[torch.arange(len(rows), device=emb.device), scores.detach().argmax(dim=-1)].bool()
            clicks = (deepest_points(best).float() + 0.5) * self.scale - 0.5
        else:
            scores = locator(emb[rows], *inputs)
            if not clicks:
                return scores, None
            h, w = emb.shape[-2:]
            best = scores.detach().argmax(dim=-1)
            xy = torch.stack([best % w, torch.div(best, w, rounding_mode="floor")], dim=-1).float()
            clicks = (xy + 0.5) * (self.img_size / h) - 0.5  # cell centre, in input pixels
        full = clicks.new_zeros((batch["kind"].shape[0], 2))
        return scores, full.index_copy(0, rows, clicks)

    def locator_loss(self, emb: Tensor, batch: dict[str, Any], scores: Tensor) -> Tensor:
        """Mean locator loss of the text rows: softmax mass on the target's cells or candidates."""
        rows = batch["prompt_rows"]
        if self.text_projector.locator_kind == "regions":
            return region_loss(scores, batch["region_target"][rows]).mean()
        cells = target_cells(batch["mask_lowres"][rows], tuple(emb.shape[-2:]))
        return locator_loss(scores, cells).mean()

    def embeddings(self, batch: dict[str, Any]) -> Tensor:
        return self.image_encoder(batch["image"]) if self.image_encoder is not None else batch["image_emb"]

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        emb = self.embeddings(batch)
        inputs = self.text_inputs(batch)
        tokens = self.text_tokens(batch, inputs)
        located = self.locate(emb, batch, inputs, clicks=self.locate_text)
        if self.locator_only:  # nothing but the locator trains: no decoder calls
            if located is None:
                raise InputError("a locator-only run needs text samples (prompt_mix text or text_point > 0)")
            loss = self.locator_loss(emb, batch, located[0])
            return {"loss": self.locator_weight * loss, "locate": loss}
        clicks = located[1] if located is not None and self.locate_text else None
        totals: dict[str, Tensor] = {}
        for kind in (POINT, BOX, TEXT, TEXT_POINT):
            idx = torch.nonzero(batch["kind"] == kind).flatten()
            if idx.numel() == 0:
                continue
            if kind in TEXT_KINDS and tokens is None:
                raise InputError("text prompts in the batch but no text projector / prompt embeddings")
            for name, value in self.interact(emb[idx], batch, idx, kind, tokens, clicks).items():
                totals[name] = totals.get(name, 0.0) + value
        n = batch["kind"].shape[0] * (1 + self.clicks)
        out = {name: value / n for name, value in totals.items()}
        if located is not None and self.locator_weight > 0:
            out["locate"] = self.locator_loss(emb, batch, located[0])
            out["loss"] = out["loss"] + self.locator_weight * out["locate"]
        if self.semantic_head is not None:
            out["semantic"] = self.semantic_loss(emb, batch["semantic"])
            out["loss"] = out["loss"] + self.semantic_weight * out["semantic"]
        return out

    def interact(self, emb: Tensor, batch: dict[str, Any], idx: Tensor, kind: int,
                 tokens: Tensor | None, located: Tensor | None = None) -> dict[str, Tensor]:
        """Summed losses of ``1 + clicks`` rounds for the samples ``idx`` of one prompt kind (``located``:
        ``(B, 2)`` the locator's clicks, given to text-alone samples as at inference)."""
        target = batch["mask_lowres"][idx]
        coords = labels = None
        if kind in (POINT, TEXT_POINT):
            coords = batch["point"][idx][:, None].float()
            labels = torch.ones(coords.shape[:2], device=coords.device)
        elif kind == TEXT and located is not None:
            coords = located[idx][:, None]
            labels = torch.ones(coords.shape[:2], device=coords.device)
        boxes = batch["box"][idx].float() if kind == BOX else None
        toks = tokens[idx] if kind in TEXT_KINDS and tokens is not None else None
        masks = None
        sums: dict[str, Tensor] = {}
        for rnd in range(1 + self.clicks):
            points = (coords, labels) if coords is not None else None
            multimask = rnd == 0 and kind in (POINT, TEXT)
            low, iou = self.decode(emb, points, boxes, masks, toks, multimask)
            parts = sam_loss(low, iou, target, self.weights, min_over_outputs=kind != TEXT or self.text_min_loss)
            for name in ("loss", "focal", "dice", "iou"):
                sums[name] = sums.get(name, 0.0) + parts[name].sum()
            if rnd < self.clicks:
                rows = torch.arange(low.shape[0], device=low.device)
                best = low[rows, iou.argmax(dim=1)].detach().float()
                c, lab = error_clicks(best > 0, target[:, 0] > 0.5, self.scale)
                coords = c if coords is None else torch.cat([coords, c], dim=1)
                labels = lab if labels is None else torch.cat([labels, lab], dim=1)
                masks = best[:, None]
        return sums


@dataclass
class Recipe:
    """A built recipe: the model, its trainable graph and the frozen prompt producers."""

    name: str
    config: TrainConfig
    model: TextSam
    module: PromptModel
    probs: tuple[float, float, float, float]
    clip_input: ClipInput | None = None

    @property
    def text_encoder(self) -> TextEncoder | None:
        return self.model.text_encoder

    def trainable_parts(self) -> list[str]:
        parts = [p for p in PARTS if getattr(self.model, p) is not None and not getattr(self.config.freeze, p)]
        proj = self.model.text_projector
        if proj is not None and proj.locator is not None and not self.config.freeze.text_locator:
            parts.append("text_locator")
        return parts

    def trainable_state(self) -> dict[str, Tensor]:
        """State of the trained parts with ``TextSam`` key names (what checkpoints and exports hold); of a
        trained CLIP, the text tower only (``text_encoder.clip.*``); of a trained locator alone,
        ``text_projector.locator.*``."""
        parts = tuple(f"{p}." for p in self.trainable_parts() if p != "text_locator")
        if "text_locator" in self.trainable_parts():
            parts += ("text_projector.locator.",)
        return {
            k: v for k, v in self.model.state_dict().items()
            if k.startswith(parts) and (not k.startswith("text_encoder.") or
                                        (k.startswith(TOWER_PREFIX) and is_text_tower_key(k[len(TOWER_PREFIX):])))
        }

    def text_embeddings(self, phrases: Sequence[str]) -> Tensor:
        assert self.text_encoder is not None
        return self.text_encoder.encode(list(phrases)).clone()  # clone: leave inference mode

    @torch.no_grad()
    def crop_embeddings(self, crops: Tensor) -> Tensor:
        """``(N, 3, n, n)`` normalised crops -> unit CLIP image embeddings ``(N, D)`` float32."""
        assert self.text_encoder is not None
        clip = self.text_encoder.clip
        feats = clip.visual(crops.to(next(clip.parameters()).device))
        return F.normalize((feats[0] if isinstance(feats, tuple) else feats).float(), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        return self.model.image_encoder(images)

    def prepare(self, batch: dict[str, Any], device: torch.device, train: bool = True) -> dict[str, Any]:
        """Move a collated batch to ``device`` and add the frozen encoders' outputs: ``image_emb`` (frozen
        image encoder) and, for text-kind rows, ``prompt_emb`` ``(R, D)`` with their ``prompt_rows``."""
        out = {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}
        if self.module.image_encoder is None and "image_emb" not in out:
            out["image_emb"] = self.image_embeddings(out.pop("image"))
        if self.module.text_projector is None:
            return out
        rows = torch.nonzero((out["kind"] == TEXT) | (out["kind"] == TEXT_POINT)).flatten()
        if rows.numel() == 0:
            return out
        if self.config.blind_text:  # text-blind baseline: same training, but the prompt carries no information
            dim = self.text_encoder.embed_dim if self.text_encoder is not None else self.model.text_projector.clip_dim
            out["prompt_emb"], out["prompt_rows"] = torch.zeros(rows.numel(), dim, device=device), rows
            return out
        if self.module.text_encoder is not None:  # the trained text tower runs inside forward
            phrases = [out["text"][int(i)] for i in rows]
            out["prompt_ids"], out["prompt_rows"] = self.text_encoder.tokenize(phrases).to(device), rows
            return out
        if train and self.name == "clip_crops":
            key = "crop_emb" if "crop_emb" in out else "crop"
            emb = out[key] if key == "crop_emb" else self.crop_embeddings(out[key])
            have = out.get(f"{key}_rows", torch.arange(emb.shape[0], device=device))
            if not torch.equal(have, rows):
                raise RuntimeError("crop rows do not match the text-kind rows of the batch")
        elif "text_emb" in out:
            emb = out["text_emb"][rows]
        else:
            emb = self.text_embeddings([out["text"][int(i)] for i in rows])
        emb = emb.to(device).float()
        out["prompt_emb"], out["prompt_rows"] = emb, rows
        if self.model.text_projector.word_dim and self.name == "text":  # the frozen tower's per-token features
            _, words, mask = self.text_encoder.encode_words([out["text"][int(i)] for i in rows])
            out["prompt_words"], out["prompt_word_mask"] = words.clone().to(device), mask.clone().to(device)
        return out


def _load_start_weights(model: TextSam, config: TrainConfig) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Published weights (``pretrained``), then ``checkpoint`` on top: an official / HF SAM file, or a
    textsam export holding only some parts (each part present loads strictly). Returns the
    ``text_projector.*`` and the CLIP text-tower (``text_encoder.clip.*``) tensors found, without prefixes."""
    if config.pretrained and model.config is not None and model.config.weights:
        from ..factory import load_sam_weights
        from ..weights.pretrained import resolve_weights

        load_sam_weights(model, resolve_weights(model.config.weights))
    if not config.checkpoint:
        return {}, {}
    state = read_state_dict(config.checkpoint)
    head = {k.removeprefix("text_projector."): v for k, v in state.items() if k.startswith("text_projector.")}
    tower = text_tower_state(state)
    sam = {k: v for k, v in state.items() if not k.startswith(("text_projector.", "text_encoder."))}
    sam = to_sam_state_dict(sam) if sam else {}
    present = [p for p in PARTS[:3] if any(k.startswith(f"{p}.") for k in sam)]
    for part in present:
        sub = {k.removeprefix(f"{part}."): v for k, v in sam.items() if k.startswith(f"{part}.")}
        load_into(getattr(model, part), sub, strict=True)
    if not present and not head and not tower:
        raise InputError(f"{config.checkpoint} holds no SAM, text-projector or text-tower weights")
    missing = [p for p in PARTS[:3] if p not in present]
    if missing:
        logger.warning("%s has no %s weights: they keep their %s values", config.checkpoint, ", ".join(missing),
                       "published" if config.pretrained else "random")
    return head, tower


def _load_head(projector: TextProjector, state: dict[str, Tensor], source: str) -> None:
    """Load start weights into ``projector``. A word path or locator the start weights lack starts untrained
    (a word path's zero output layer makes it a no-op); weights this projector has no place for are an error."""
    own = projector.state_dict()
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or any(not k.startswith(("word_", "locator.")) for k in missing):
        raise InputError(f"the text head in {source} does not fit this projector (unknown {unknown[:3]}, missing "
                         f"{missing[:3]}): check num_text_tokens, projector_hidden_dim and word_tokens")
    projector.load_state_dict(state, strict=False)
    if missing:
        logger.info("%s has no %s: it starts untrained", source,
                    " or ".join(sorted({"word path" if k.startswith("word_") else "locator" for k in missing})))


def build_model(config: TrainConfig, device: torch.device | str = "cpu") -> TextSam:
    """The TextSam to train (seeded init, start weights, CLIP + projector for text recipes), on ``device``."""
    name = config.model
    if name == "from_checkpoint":
        from ..weights.checkpoint import guess_model_name

        name = guess_model_name(read_state_dict(str(config.checkpoint))) or ""
        if not name:
            raise InputError(f"cannot tell which model {config.checkpoint} is for; set model = NAME")
    torch.manual_seed(config.seed)
    mcfg = get_config(name)
    model = build_sam(mcfg)
    head, tower = _load_start_weights(model, config)
    if config.uses_text:
        spec = config.clip or (
            f"{mcfg.text.clip_model}/{mcfg.text.clip_pretrained}" if mcfg.text.clip_pretrained else mcfg.text.clip_model
        )
        clip_name, clip_tag = parse_clip_spec(spec)
        model.text_encoder = TextEncoder.create(clip_name, clip_tag, device=device)
        if tower:  # a text tower fine-tuned by an earlier run
            load_text_tower(model.text_encoder, tower, str(config.checkpoint))
        model.text_encoder.set_text_tower_trainable(not config.freeze.text_encoder)
        word_dim = model.text_encoder.word_dim if config.word_tokens else 0
        if config.word_tokens and not word_dim:
            raise InputError(f"word_tokens = true: the CLIP text tower of {spec!r} gives no per-token features")
        if config.text_head:
            from ..text_head import load_text_head

            loaded, _ = load_text_head(config.text_head, sam_model=None, clip_model=None, clip_pretrained=None)
            projector = TextProjector(loaded.clip_dim, loaded.token_dim, loaded.num_tokens, loaded.hidden_dim,
                                      word_dim=word_dim, locator_dim=config.locator_dim,
                                      locator_kind=config.locator_kind,
                                      locator_appearance=config.locator_appearance,
                                      locator_factors=config.locator_factors)
            _load_head(projector, loaded.state_dict(), config.text_head)
        else:
            projector = TextProjector(
                model.text_encoder.embed_dim,
                token_dim=mcfg.mask_decoder.transformer_dim,
                num_tokens=config.num_text_tokens or mcfg.text.num_text_tokens,
                hidden_dim=config.projector_hidden_dim,
                word_dim=word_dim,
                locator_dim=config.locator_dim,
                locator_kind=config.locator_kind,
                locator_appearance=config.locator_appearance,
                locator_factors=config.locator_factors,
            )
            if head:
                _load_head(projector, head, str(config.checkpoint))
        model.text_projector = projector
    model.to(device)
    for part in PARTS[:4]:  # the text tower is set up above
        module = getattr(model, part)
        if module is not None:
            frozen = bool(getattr(config.freeze, part))
            module.requires_grad_(not frozen).train(not frozen)
    locator = model.text_projector.locator if model.text_projector is not None else None
    if locator is not None:
        locator.requires_grad_(not config.freeze.text_locator).train(not config.freeze.text_locator)
    return model


def build_recipe(config: TrainConfig, device: torch.device | str = "cpu") -> Recipe:
    """Model + trainable :class:`PromptModel` + prompt producers for ``config.recipe``."""
    model = build_model(config, device)
    weights = LossWeights(config.focal_weight, config.dice_weight, config.iou_weight)
    module = PromptModel(
        model, train_image_encoder=not config.freeze.image_encoder, clicks=config.correction_clicks, weights=weights,
        train_text_encoder=config.recipe == "text" and not config.freeze.text_encoder,
        text_min_loss=config.text_multimask == "min",
    )
    module.locator_weight, module.locate_text = config.locator_weight, config.locate_text
    module.locator_only = config.locator_only
    clip_input = None
    if config.recipe == "clip_crops":
        from ..text.grounding import DenseClip

        dense = DenseClip(model.text_encoder.clip, input_size=int(_pair(model.text_encoder.clip.visual.image_size)))
        clip_input = ClipInput(dense.native_size, tuple(dense.mean.flatten().tolist()), tuple(dense.std.flatten().tolist()))
    return Recipe(config.recipe, config, model, module, config.prompt_mix.probabilities(config.recipe), clip_input)


def _pair(size: Any) -> int:
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


def fingerprint(module: nn.Module, *extra: object) -> str:
    """16 hex digits of sha256 over a module's state (names, shapes, bytes) and ``extra``."""
    h = hashlib.sha256(repr(extra).encode())
    for k, v in sorted(module.state_dict().items()):
        h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def warm_cache(recipe: Recipe, datasets: Sequence[Any], root: str | Path, *, write: bool = True,
               batch_size: int = 8) -> EmbeddingCache:
    """Compute (``write``) and describe the on-disk embeddings of the frozen encoders for ``datasets``.

    Image embeddings when the image encoder is frozen; text embeddings of every phrase for text
    recipes; for ``clip_crops`` the CLIP embeddings of ``crop_variants`` crops per training target.
    Existing files are reused. Call with ``write=False`` on ranks other than 0 (after a barrier).
    """
    cfg, model = recipe.config, recipe.model
    cache = EmbeddingCache(root)
    if cfg.freeze.image_encoder:
        cache.image_fp = fingerprint(model.image_encoder, model.img_size, tuple(model.pixel_mean.flatten().tolist()))
    if recipe.text_encoder is not None and recipe.module.text_encoder is None:  # frozen text tower
        clip = recipe.text_encoder.clip
        cache.text_fp = fingerprint(clip, "text", recipe.text_encoder.model_name)
        if recipe.name == "clip_crops":
            cache.clip_fp = fingerprint(clip.visual, cfg.seed, cfg.crop_variants, cfg.crop_enlarge, cfg.crop_grey_prob)
    if not write:
        return cache
    device = model.pixel_mean.device
    for ds in datasets if cache.image_fp else ():
        todo = sorted({e.image_id for e in ds.entries if not cache.image_path(ds.split, e.image_id).exists()})
        cache.image_path(ds.split, 0).parent.mkdir(parents=True, exist_ok=True)
        for i in range(0, len(todo), batch_size):
            ids = todo[i : i + batch_size]
            imgs = torch.stack([ds.input_image(ds.coco.load_image(j)) for j in ids]).to(device)
            for j, e in zip(ids, recipe.image_embeddings(imgs)):
                _atomic_save(e.cpu().clone(), cache.image_path(ds.split, j))
    if cache.text_fp:
        table = torch.load(cache.text_path(), weights_only=True) if cache.text_path().exists() else {}
        missing = text_table(recipe, [e.phrase for ds in datasets for e in ds.entries], skip=table)
        if missing:
            table.update(missing)
            cache.text_path().parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(table, cache.text_path())
    for ds in datasets[:1] if cache.clip_fp else ():
        cache.crop_path(ds.split, "x").parent.mkdir(parents=True, exist_ok=True)
        for e in ds.entries:
            if cache.crop_path(ds.split, e.key).exists():
                continue
            image, mask = ds.coco.load_image(e.image_id), ds.target_mask(e)
            crops = torch.stack([ds.make_crop(image, mask, e.key, v) for v in range(cfg.crop_variants)])
            _atomic_save(recipe.crop_embeddings(crops).cpu().clone(), cache.crop_path(ds.split, e.key))
    return cache


@torch.no_grad()
def text_table(recipe: Recipe, phrases: Sequence[str], skip: Any = (), chunk: int = 256) -> dict[str, Tensor]:
    """CLIP text embeddings of the distinct ``phrases`` (minus ``skip``), encoded in sorted chunks.

    ``TextEncoder`` trims each batch to its longest phrase, so an embedding's rounding depends on its
    batch; a table fixed up front keeps training bit-reproducible across resumes and world sizes.
    """
    todo = sorted({p for p in phrases if p not in skip})
    table: dict[str, Tensor] = {}
    for i in range(0, len(todo), chunk):
        part = todo[i : i + chunk]
        table.update({p: e.cpu().clone() for p, e in zip(part, recipe.text_embeddings(part))})
    return table


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _iou_sum(module: PromptModel, emb: Tensor, points: Any, boxes: Tensor | None, tokens: Tensor | None,
             multimask: bool, target: Tensor) -> float:
    """Summed IoU of the most confident mask of one decoder call with ``target (B, 1, S, S)``."""
    low, iou = module.decode(emb, points, boxes, None, tokens, multimask)
    best = low[torch.arange(low.shape[0], device=low.device), iou.argmax(dim=1)][:, None]
    up = F.interpolate(best.float(), target.shape[-2:], mode="bilinear", align_corners=False)
    return float(mask_iou(up, target).sum())


@torch.no_grad()
def evaluate(recipe: Recipe, dataset: Any, device: torch.device, batch_size: int = 16) -> dict[str, float]:
    """Mean IoU on ``dataset`` (built with ``train=False``) per prompt kind: the deepest interior point
    and the exact box for every recipe, plus the phrase's CLIP *text* embedding (alone and with the
    point) for text recipes. Multimask outputs are reduced to the most confident mask, as at inference.
    With a text locator, "text" adds its click as the predictor does, ``miou_text_tokens_only`` scores
    the phrase without it and ``locate_hit`` is the fraction of clicks that land on the target."""
    from .data import collate

    module = recipe.module
    was_training = module.training
    module.eval()
    has_locator = module.text_projector is not None and module.text_projector.locator is not None
    kinds = [POINT, BOX] + ([TEXT, TEXT_POINT] if module.text_projector is not None else [])
    sums = dict.fromkeys(kinds, 0.0)
    extra = {"miou_text_tokens_only": 0.0, "locate_hit": 0.0} if has_locator else {}
    count = 0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        b = batch["point"].shape[0]
        batch = recipe.prepare({**batch, "kind": torch.full((b,), TEXT)}, device, train=False)
        emb = module.embeddings(batch)
        inputs = module.text_inputs(batch)
        tokens = module.text_tokens(batch, inputs)
        located = module.locate(emb, batch, inputs) if has_locator else None
        ones = torch.ones(b, 1, device=device)
        pts = (batch["point"][:, None].float(), ones)

        for kind in kinds:
            points = pts if kind in (POINT, TEXT_POINT) else None
            if kind == TEXT and located is not None:
                points = (located[1][:, None], ones)
            boxes = batch["box"].float() if kind == BOX else None
            toks = tokens if kind in TEXT_KINDS else None
            sums[kind] += _iou_sum(module, emb, points, boxes, toks, kind in (POINT, TEXT), batch["mask"])
        if located is not None:
            extra["miou_text_tokens_only"] += _iou_sum(module, emb, None, None, tokens, True, batch["mask"])
            xy = located[1].round().long().clamp(0, batch["mask"].shape[-1] - 1)
            rows = torch.arange(b, device=device)
            extra["locate_hit"] += float(batch["mask"][rows, 0, xy[:, 1], xy[:, 0]].float().sum())
        count += b
    module.train(was_training)
    names = {POINT: "point", BOX: "box", TEXT: "text", TEXT_POINT: "text_point"}
    out = {f"miou_{names[k]}": v / max(count, 1) for k, v in sums.items()}
    return out | {k: v / max(count, 1) for k, v in extra.items()}
