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
from ..ops import mask_nms
from .options import TextOptions

logger = logging.getLogger(__name__)


def default_options(model: TextSam) -> TextOptions:
    """The model's own text settings (its file may record some, e.g. grounding off), else the defaults."""
    return TextOptions.from_dict(getattr(model, "default_text_options", None) or {})


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
        return self.options.grounding.enabled and hasattr(getattr(self.model.text_encoder, "clip", None), "visual")

    def _dense_clip(self):
        if self._dense is None:
            from .grounding import DenseClip

            self._dense = DenseClip(self.model.text_encoder.clip, input_size=self.options.grounding.clip_input_size)
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

        templates = self.options.scoring.templates
        return list(templates) if templates is not None else list(tpl.DEFAULT_TEMPLATES)

    def phrase_embedding(self, phrase: str) -> Tensor:
        """Template-ensembled unit CLIP embedding ``(D,)`` of a phrase (cached per template string)."""
        return self.model.text_encoder.encode_ensemble(phrase, self.templates())

    @property
    def can_locate(self) -> bool:
        return self.options.locator.enabled and self.model.text_locator is not None

    def _phrase_inputs(self, phrases: Sequence[str], *, words: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Pooled CLIP embeddings ``(B, D)`` of the phrases, and (``words``) per-token features + mask."""
        device = self.model.device
        if words:
            emb, feats, mask = self.model.text_encoder.encode_words(list(phrases))
            return emb.to(device), feats.to(device), mask.to(device)
        return self.model.text_encoder.encode(list(phrases)).to(device), None, None

    def locate(self, phrase: str, features: Tensor, input_size: tuple[int, int],
               original_size: tuple[int, int], image: np.ndarray | None = None) -> np.ndarray:
        """The locator's click for ``phrase``: ``(1, 2)`` x, y in original-image pixels, the deepest pixel of the
        candidate object it scores best (``image``, the original ``(H, W, 3)`` uint8 picture, is needed by a
        locator that reads pixel colours)."""
        from .locator import lowres_rgb, region_colours

        self.ensure_text_encoder()
        locator = self.model.text_locator
        s = self.model.img_size
        regions = self.region_candidates(features, input_size)
        colours = None
        if locator.appearance_kind == "colour":
            if image is None:
                raise InputError("this text head's locator reads pixel colours: pass the image")
            if self._region_colours is None:  # once per image, like the candidates
                rgb = lowres_rgb(image, s, regions.shape[-1]).to(regions.device)
                self._region_colours = region_colours(rgb, regions)[None]
            colours = self._region_colours
        if len(regions) == 0:  # nothing found: the image centre
            xy = np.array([input_size[1] / 2 - 0.5, input_size[0] / 2 - 0.5])
        else:
            with torch.inference_mode():
                inputs = self._phrase_inputs([phrase], words=bool(locator.word_dim))
                scores = locator.scores(features, regions[None], None, *inputs, colours=colours)
                xy = locator.click(regions[None], scores, s / regions.shape[-1])[0].cpu().numpy()
        ratio = np.array([original_size[1] / input_size[1], original_size[0] / input_size[0]])
        return ((xy + 0.5) * ratio - 0.5)[None]

    @torch.inference_mode()
    def region_candidates(self, features: Tensor, input_size: tuple[int, int]) -> Tensor:
        """Candidate object masks ``(M, L, L)`` bool (low-res, input frame) of the current image, for the
        locator (see :class:`~textsam.text.options.LocatorOptions`); computed once per image."""
        if self._regions is not None:
            return self._regions
        o = self.options.locator
        masks, scores = self._grid_masks(features, self._grid(max(1, int(o.grid)), input_size))
        chosen = mask_nms(masks.cpu().numpy(), scores.float().cpu().numpy(), o.nms_iou)[: o.max_candidates]
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
        ``points (P, 2)`` (input frame) whose mask is non-empty and at least ``LocatorOptions.min_iou``."""
        coords = torch.as_tensor(points[:, None], dtype=torch.float32, device=self.model.device)
        labels = torch.ones(coords.shape[:2], device=self.model.device)
        iou, low, rows = self.model.decode_confident(features, (coords, labels), self.options.locator.min_iou)
        best = iou[rows].argmax(dim=1)
        picked = torch.arange(len(rows), device=rows.device)
        masks, scores = low[picked, best] > self.model.mask_threshold, iou[rows, best]
        keep = masks.flatten(1).any(1)
        return masks[keep], scores[keep]

    def text_tokens(self, phrases: Sequence[str]) -> Tensor | None:
        """Text-head tokens ``(B, K, C)`` for the phrases, or None without a text head."""
        if self.model.text_projector is None:
            return None
        return self.model.text_projector(self._phrase_inputs(phrases, words=False)[0])

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
                num_positive=self.options.grounding.num_positive,
                num_negative=self.options.grounding.num_negative,
                with_box=self.options.grounding.box,
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
        cands = instance_candidates(sim, self._geometry, max_instances=self.options.instances.max_instances)
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
