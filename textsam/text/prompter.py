"""Turning phrases into decoder prompts for one image.

Sources of text tokens, all ending in the decoder's sparse slot:
- grounding (training-free): dense CLIP patch-text similarity -> positive/negative points and a box,
  embedded by SAM's own prompt encoder exactly like clicks;
- a trained text head: the CLIP text embedding -> ``K`` learned tokens (``TextProjector``);
- the text head's learned locator, when it has one: phrase x SAM image embedding -> the best cell,
  given as a positive click (:meth:`TextPrompter.locate`; used when the user gives no click or box).
Candidate masks are then ranked by SAM's IoU head plus the CLIP similarity of the mask region.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..model import TextSam
from ..ops import deepest_points, mask_nms

logger = logging.getLogger(__name__)


@dataclass
class TextOptions:
    """Knobs of the text pathway.

    grounding: use CLIP localisation (needed without a text head; adds clicks-like tokens).
    clip_input_size: side of the image given to the CLIP tower for dense features.
    method: ``"maskclip"`` or ``"surgery"`` dense features.
    templates: prompt templates for ensembling (``None``: the default short list).
    num_positive / num_negative: grounded points per phrase.
    grounded_box: also give the box of the best similarity region.
    text_weight: weight of the CLIP mask score against the IoU head when ranking masks.
    max_instances / nms_iou / min_score: "all instances" mode.
    locate: use the text head's locator (if it has one): a phrase without a user click or box gets the
        locator's click in the same decoder call.
    region_grid / region_min_iou / region_nms_iou / max_regions: candidate objects for a region locator:
        the decoder's most confident mask for each click of a ``region_grid`` x ``region_grid`` grid over
        the image (one batched decoder call per image, cached), kept above ``region_min_iou`` predicted IoU,
        de-duplicated by mask IoU ``region_nms_iou``, at most ``max_regions``.
    """

    grounding: bool = True
    clip_input_size: int = 448
    method: str = "maskclip"
    templates: Sequence[str] | None = None
    num_positive: int = 1
    num_negative: int = 1
    grounded_box: bool = False
    text_weight: float = 1.0
    max_instances: int = 8
    nms_iou: float = 0.5
    min_score: float | None = None
    locate: bool = True
    region_grid: int = 16
    region_min_iou: float = 0.5
    region_nms_iou: float = 0.7
    max_regions: int = 32


def default_options(model: TextSam) -> TextOptions:
    """The model's own text settings (a bundle may record e.g. ``{"grounding": false}``), else defaults."""
    meta = getattr(model, "bundle_meta", None) or {}
    fields = {k: v for k, v in (meta.get("text_options") or {}).items() if k in TextOptions.__dataclass_fields__}
    return TextOptions(**fields)


@dataclass
class TextPrompt:
    """Prompts for one phrase, in original-image pixels, plus learned tokens."""

    points: np.ndarray  # (N, 2) x, y
    labels: np.ndarray  # (N,) 1 / 0
    box: np.ndarray | None  # (4,) x0, y0, x1, y1
    tokens: Tensor | None  # (K, C) text-head tokens


class TextPrompter:
    """Per-image text state of a predictor: dense CLIP features and the phrase -> prompt logic."""

    def __init__(self, model: TextSam, options: TextOptions | None = None) -> None:
        self.model = model
        self.options = options or default_options(model)
        self._dense = None
        self._features: Tensor | None = None  # (gh, gw, D) unit patch features of the current image
        self._geometry = None
        self._regions: Tensor | None = None  # candidate object masks of the current image (region locator)
        self._region_colours: Tensor | None = None  # their pixels' colour statistics

    # ---------------------------------------------------------------------------- set-up
    def ensure_text_encoder(self) -> None:
        """Load CLIP on first use (from the model config; random when the model was built unpretrained)."""
        if self.model.text_encoder is None:
            from ..factory import attach_text

            logger.info("loading the CLIP text encoder for text prompts")
            attach_text(self.model, pretrained=getattr(self.model, "pretrained", True))

    @property
    def grounding_enabled(self) -> bool:
        return self.options.grounding and hasattr(getattr(self.model.text_encoder, "clip", None), "visual")

    def _dense_clip(self):
        if self._dense is None:
            from .grounding import DenseClip

            self._dense = DenseClip(
                self.model.text_encoder.clip, input_size=self.options.clip_input_size, method=self.options.method
            )
        return self._dense

    def reset(self) -> None:
        self._features = None
        self._geometry = None
        self._regions = None
        self._region_colours = None

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Compute the dense CLIP patch features of ``image (H, W, 3)`` uint8 (when grounding is on)."""
        self.reset()
        if self.model.text_encoder is None or not self.grounding_enabled:
            return
        self._features, self._geometry = self._dense_clip().patch_features(image)

    def _require_features(self, image: np.ndarray) -> None:
        if self._features is None and self.grounding_enabled:
            self.set_image(image)

    # ---------------------------------------------------------------------------- embeddings
    def templates(self) -> list[str]:
        from . import templates as tpl

        return list(self.options.templates) if self.options.templates is not None else list(tpl.DEFAULT_TEMPLATES)

    def phrase_embedding(self, phrase: str) -> Tensor:
        """Template-ensembled unit CLIP embedding ``(D,)`` of a phrase (cached per template string)."""
        return self.model.text_encoder.encode_ensemble(phrase, self.templates())

    @property
    def can_locate(self) -> bool:
        proj = self.model.text_projector
        return self.options.locate and proj is not None and getattr(proj, "locator", None) is not None

    def _phrase_inputs(self, phrases: Sequence[str]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        device = self.model.device
        if self.model.text_projector.word_dim:
            emb, words, mask = self.model.text_encoder.encode_words(list(phrases))
            return emb.to(device), words.to(device), mask.to(device)
        return self.model.text_encoder.encode(list(phrases)).to(device), None, None

    @torch.inference_mode()
    def locate_scores(self, phrases: Sequence[str], features: Tensor, input_size: tuple[int, int]) -> Tensor:
        """The locator's cell scores ``(B, h, w)`` on the image embedding ``features (1, C, h, w)``; cells of
        the padding (outside the resized ``input_size`` image) get -inf."""
        self.ensure_text_encoder()
        h, w = features.shape[-2:]
        scores = self.model.text_projector.locator(features, *self._phrase_inputs(phrases)).view(-1, h, w)
        stride = self.model.img_size / h
        valid_y = (torch.arange(h, device=scores.device) + 0.5) * stride <= input_size[0]
        valid_x = (torch.arange(w, device=scores.device) + 0.5) * stride <= input_size[1]
        return scores.masked_fill(~(valid_y[:, None] & valid_x[None]), float("-inf"))

    def locate(self, phrase: str, features: Tensor, input_size: tuple[int, int],
               original_size: tuple[int, int], image: np.ndarray | None = None) -> np.ndarray:
        """The locator's click for ``phrase``: ``(1, 2)`` x, y in original-image pixels (the best cell's centre,
        or the deepest pixel of the best candidate object for a region locator; ``image``, the original
        ``(H, W, 3)`` uint8 picture, is needed by a region locator that reads pixel colours)."""
        s = self.model.img_size
        if self.model.text_projector.locator_kind == "regions":
            from .locator import lowres_rgb, region_colours

            self.ensure_text_encoder()
            regions = self.region_candidates(features, input_size)
            colours = None
            if self.model.text_projector.locator_appearance == "colour":
                if image is None:
                    raise InputError("this text head's region locator reads pixel colours: pass the image")
                if self._region_colours is None:  # once per image, like the candidates
                    rgb = lowres_rgb(image, s, regions.shape[-1]).to(regions.device)
                    self._region_colours = region_colours(rgb, regions)[None]
                colours = self._region_colours
            if len(regions) == 0:  # nothing found: the image centre
                xy = np.array([input_size[1] / 2 - 0.5, input_size[0] / 2 - 0.5])
            else:
                with torch.inference_mode():
                    scores = self.model.text_projector.locator(features, regions[None], None,
                                                               *self._phrase_inputs([phrase]), colours=colours)[0]
                best = regions[int(scores.argmax())]
                xy = (deepest_points(best[None])[0].cpu().numpy() + 0.5) * (s / best.shape[-1]) - 0.5
        else:
            scores = self.locate_scores([phrase], features, input_size)[0]
            h, w = scores.shape
            cell = int(scores.flatten().argmax())
            stride = s / h
            xy = np.array([(cell % w + 0.5) * stride - 0.5, (cell // w + 0.5) * stride - 0.5])
        ratio = np.array([original_size[1] / input_size[1], original_size[0] / input_size[0]])
        return ((xy + 0.5) * ratio - 0.5)[None]

    @torch.inference_mode()
    def region_candidates(self, features: Tensor, input_size: tuple[int, int]) -> Tensor:
        """Candidate object masks ``(M, L, L)`` bool (low-res, input frame) of the current image: see
        :class:`TextOptions` (``region_*``); computed once per image."""
        if self._regions is not None:
            return self._regions
        o = self.options
        masks, scores = self._grid_masks(features, self._grid(max(1, int(o.region_grid)), input_size))
        chosen = mask_nms(masks.cpu().numpy(), scores.float().cpu().numpy(), o.region_nms_iou)[: o.max_regions]
        self._regions = masks[chosen]
        return self._regions

    @staticmethod
    def _grid(n: int, input_size: tuple[int, int]) -> np.ndarray:
        """``(n * n, 2)`` x, y click centres of an ``n`` x ``n`` grid over the resized image (input frame)."""
        ys = (np.arange(n) + 0.5) * input_size[0] / n - 0.5
        xs = (np.arange(n) + 0.5) * input_size[1] / n - 0.5
        return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)

    def _grid_masks(self, features: Tensor, points: np.ndarray) -> tuple[Tensor, Tensor]:
        """Each click's most confident mask ``(P', L, L)`` bool and its predicted IoU ``(P',)``, for the clicks
        ``points (P, 2)`` (input frame) whose mask is non-empty and at least ``region_min_iou``."""
        coords = torch.as_tensor(points[:, None], dtype=torch.float32, device=self.model.device)
        labels = torch.ones(coords.shape[:2], device=self.model.device)
        iou, low, rows = self.model.decode_confident(features, (coords, labels), self.options.region_min_iou)
        best = iou[rows].argmax(dim=1)
        picked = torch.arange(len(rows), device=rows.device)
        masks, scores = low[picked, best] > self.model.mask_threshold, iou[rows, best]
        keep = masks.flatten(1).any(1)
        return masks[keep], scores[keep]

    def text_tokens(self, phrases: Sequence[str]) -> Tensor | None:
        """Text-head tokens ``(B, K, C)`` for the phrases, or None without a text head."""
        if self.model.text_projector is None:
            return None
        return self.model.text_projector(*self._phrase_inputs(phrases))

    def similarity(self, phrase: str, negative: str | None = None) -> Tensor:
        """Patch-text similarity ``(gh, gw)``; a negative phrase's similarity is subtracted."""
        from .grounding import similarity_map

        assert self._features is not None
        sim = similarity_map(self._features, self.phrase_embedding(phrase))[0]
        if negative is not None:
            sim = sim - similarity_map(self._features, self.phrase_embedding(negative))[0]
        return sim

    # ---------------------------------------------------------------------------- prompts
    def prompt_for(
        self,
        phrase: str,
        image: np.ndarray,
        *,
        negative: str | None = None,
        user_box: np.ndarray | None = None,
    ) -> TextPrompt:
        """Grounded points (and box) plus text-head tokens for one phrase on the current image."""
        self.ensure_text_encoder()
        tokens = self.text_tokens([phrase])
        points = np.zeros((0, 2))
        labels = np.zeros((0,), dtype=np.int64)
        box = None
        if self.grounding_enabled:
            from .grounding import prompts_from_similarity

            self._require_features(image)
            sim = self.similarity(phrase, negative)
            if user_box is not None:
                sim = self._restrict_to_box(sim, user_box)
            g = prompts_from_similarity(
                sim,
                self._geometry,
                num_positive=self.options.num_positive,
                num_negative=self.options.num_negative,
                with_box=self.options.grounded_box,
            )
            points, labels, box = np.asarray(g.points, float), np.asarray(g.labels, np.int64), g.box
            if negative is not None:
                neg = prompts_from_similarity(
                    self.similarity(negative), self._geometry, num_positive=1, num_negative=0, with_box=False
                )
                points = np.concatenate([points, np.asarray(neg.points, float)[:1]])
                labels = np.concatenate([labels, np.zeros(1, np.int64)])
        if tokens is None and len(points) == 0:
            raise InputError("this model cannot use text: it has neither a text head nor a CLIP image tower")
        return TextPrompt(points, labels, box, tokens[0] if tokens is not None else None)

    def instance_prompts(self, phrase: str, image: np.ndarray, *, negative: str | None = None) -> list[TextPrompt]:
        """One prompt per likely instance of the phrase (best first), at most ``max_instances``."""
        self.ensure_text_encoder()
        if not self.grounding_enabled:
            return [self.prompt_for(phrase, image, negative=negative)]
        from .grounding import instance_candidates

        self._require_features(image)
        sim = self.similarity(phrase, negative)
        cands = instance_candidates(sim, self._geometry, max_instances=self.options.max_instances)
        tokens = self.text_tokens([phrase])
        tok = tokens[0] if tokens is not None else None
        return [
            TextPrompt(np.asarray(c.points, float), np.asarray(c.labels, np.int64), c.box, tok) for c in cands
        ] or [self.prompt_for(phrase, image, negative=negative)]

    def _restrict_to_box(self, sim: Tensor, box: np.ndarray) -> Tensor:
        """Keep similarity only in grid cells whose centres fall inside the user's box."""
        gh, gw = sim.shape
        yy, xx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        centres = self._geometry.grid_to_image(np.stack([xx.ravel(), yy.ravel()], axis=1).astype(float))
        x0, y0, x1, y1 = np.asarray(box, float).reshape(4)
        inside = (centres[:, 0] >= x0) & (centres[:, 0] <= x1) & (centres[:, 1] >= y0) & (centres[:, 1] <= y1)
        if not inside.any():
            return sim
        mask = torch.as_tensor(inside.reshape(gh, gw), device=sim.device)
        return torch.where(mask, sim, sim.min())

    # ---------------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def mask_text_scores(self, low_res_masks: Tensor, phrase: str) -> Tensor:
        """CLIP score of each mask region: cosine between the phrase and the mask-pooled patch features.

        ``low_res_masks (M, h, w)`` logits in the padded model-input frame -> ``(M,)`` in [-1, 1]
        (0 for masks without grounding features).
        """
        if self._features is None:
            return torch.zeros(low_res_masks.shape[0])
        gh, gw, _ = self._features.shape
        weights = self._mask_weights(low_res_masks, (gh, gw))  # (M, gh, gw)
        pooled = torch.einsum("mhw,hwd->md", weights, self._features.float())
        pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return pooled @ self.phrase_embedding(phrase).to(pooled)

    def _mask_weights(self, low_res_masks: Tensor, grid: tuple[int, int]) -> Tensor:
        """Masks resampled onto the CLIP patch grid, as soft weights summing to 1 per mask."""
        geo = self._geometry
        s = self.model.img_size
        scale = s / max(geo.height, geo.width)
        nh, nw = int(geo.height * scale + 0.5), int(geo.width * scale + 0.5)
        up = F.interpolate(low_res_masks[:, None].float(), (s, s), mode="bilinear", align_corners=False)
        probs = torch.sigmoid(up[:, 0, :nh, :nw])
        weights = F.interpolate(probs[:, None], size=grid, mode="area")[:, 0]  # grid covers the real image
        return weights / weights.sum(dim=(1, 2), keepdim=True).clamp_min(1e-6)
