"""Turning phrases into decoder prompts for one image.

Sources of prompts, all ending as tokens of the decoder's sparse slot:
- the training-free engine (:mod:`textsam.text.engine`): SAM proposals scored by CLIP crops, spatial words
  resolved by geometry; the chosen proposal becomes a box and a click, and every answer has a presence;
- a trained text head: the CLIP text embedding -> ``K`` learned tokens (``TextProjector``);
- the text head's locator, when it has one: the phrase chooses among candidate objects and its click is
  given as a positive point (:meth:`TextPrompter.locate_with_presence`; used when the user gives no click or box); with a
  text head the engine only answers presence (:attr:`TextPrompter.engine_chooses`);
- dense CLIP grounding (MaskCLIP points, off by default; kept for comparison).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..model import TextSam
from ..modeling.seeds import embedding_seeds
from ..ops import mask_nms
from .engine import Ranked, TextEngine
from .options import TextOptions
from .spatial import parse, support
from .templates import clean_phrase

logger = logging.getLogger(__name__)


def default_options(model: TextSam) -> TextOptions:
    """The model's own text settings (its file may record some, e.g. grounding off), else the defaults."""
    return TextOptions.from_dict(getattr(model, "default_text_options", None) or {})


@dataclass
class TextPrompt:
    """Prompts for one phrase, in original-image pixels, plus learned tokens.

    ``presence``: the engine's answer in [0, 1] (None when no engine ran). ``members``: for a group phrase
    ("all X") or ``instances="all"``, one ``(box, click)`` per object to decode (empty: the phrase's one answer
    is ``box``/``points``). ``background``: with a negative phrase, the proposal it names, whose click is among
    ``points`` with label 0 (a text head's locator does not click it).
    """

    points: np.ndarray  # (N, 2) x, y
    labels: np.ndarray  # (N,) 1 / 0
    box: np.ndarray | None  # (4,) x0, y0, x1, y1
    tokens: Tensor | None  # (K, C) text-head tokens
    presence: float | None = None
    members: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    group: bool = False
    background: int | None = None  # the proposal a negative phrase names (its click is a background point)


class TextPrompter:
    """Per-image text state of a predictor: dense CLIP features and the phrase -> prompt logic."""

    def __init__(self, model: TextSam, options: TextOptions | None = None) -> None:
        self.model = model
        self.options = options or default_options(model)
        self._dense = None
        self._features: Tensor | None = None  # (gh, gw, D) unit patch features of the current image
        self._geometry = None
        self._regions: Tensor | None = None  # candidate object masks of the current image (region locator)
        self._region_scores: Tensor | None = None  # their predicted IoU
        self._region_colours: Tensor | None = None  # their pixels' colour statistics
        self.engine = TextEngine(self.options.engine)

    # ---------------------------------------------------------------------------- set-up
    def ensure_text_encoder(self) -> None:
        """Load CLIP on first use (from the model config; random when the model was built unpretrained)."""
        if self.model.text_encoder is None:
            from ..factory import attach_text

            logger.info("loading the CLIP text encoder for text prompts")
            attach_text(self.model, pretrained=getattr(self.model, "pretrained", True))

    @property
    def grounding_enabled(self) -> bool:
        return self.options.grounding.enabled and hasattr(getattr(self.model.scoring_encoder, "clip", None), "visual")

    def _dense_clip(self):
        if self._dense is None:
            from .grounding import DenseClip

            self._dense = DenseClip(self.model.scoring_encoder.clip, input_size=self.options.grounding.clip_input_size)
        return self._dense

    def reset(self) -> None:
        self._features = None
        self._geometry = None
        self._regions = None
        self._region_scores = None
        self._region_colours = None
        self.engine.reset()

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
        return self.model.scoring_encoder.encode_ensemble(phrase, self.templates())

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

    @property
    def locator_answers_presence(self) -> bool:
        """Whether the text head's locator has its own presence readout (then it answers presence for the
        requests it clicks for, and the engine is not asked)."""
        return self.can_locate and getattr(self.model.text_locator, "presence", None) is not None

    def locator_readout(self, phrase: str, features: Tensor, input_size: tuple[int, int],
                        image: np.ndarray | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The locator on the current image's candidates: candidate masks ``(M, L, L)`` bool (low-res, input
        frame), their scores ``(M,)`` and presence probabilities ``(M,)`` (None for a locator without a presence
        readout); scores and presence are None when the image has no candidate."""
        from .locator import lowres_rgb, region_colours

        self.ensure_text_encoder()
        locator = self.model.text_locator
        regions = self.region_candidates(features, input_size)
        if len(regions) == 0:
            return regions, None, None
        colours = None
        if locator.appearance_kind == "colour":
            if image is None:
                raise InputError("this text head's locator reads pixel colours: pass the image")
            if self._region_colours is None:  # once per image, like the candidates
                rgb = lowres_rgb(image, self.model.img_size, regions.shape[-1]).to(regions.device)
                self._region_colours = region_colours(rgb, regions)[None]
            colours = self._region_colours
        with torch.inference_mode():
            inputs = self._phrase_inputs([phrase], words=bool(locator.word_dim))
            scores, logits = locator.scores_and_presence(features, regions[None], None, *inputs, colours=colours)
        return regions, scores[0], None if logits is None else torch.sigmoid(logits[0].float())

    def locate_with_presence(self, phrase: str, features: Tensor, input_size: tuple[int, int],
                             original_size: tuple[int, int], image: np.ndarray | None = None,
                             exclude: int | None = None) -> tuple[np.ndarray, float | None]:
        """The locator's click for ``phrase``: ``(1, 2)`` x, y in original-image pixels, the deepest pixel of the
        candidate object it scores best (``image``, the original ``(H, W, 3)`` uint8 picture, is needed by a
        locator that reads pixel colours), and that candidate's presence in [0, 1] (None for a locator without a
        presence readout; 0 when the image has no candidate). ``exclude``: a candidate not to choose (what a
        negative phrase names), unless it is the only one."""
        regions, scores, presence = self.locator_readout(phrase, features, input_size, image)
        answer = None if self.model.text_locator.presence is None else 0.0
        if scores is not None and exclude is not None and 0 <= exclude < len(scores) and len(scores) > 1:
            scores = scores.clone()
            scores[exclude] = float("-inf")
        if scores is None:  # nothing found: the image centre
            xy = np.array([input_size[1] / 2 - 0.5, input_size[0] / 2 - 0.5])
        else:
            xy = self.model.text_locator.click(regions[None], scores[None], self.model.img_size / regions.shape[-1])
            xy = xy[0].cpu().numpy()
            if presence is not None:
                answer = float(presence[scores.argmax()])
        ratio = np.array([original_size[1] / input_size[1], original_size[0] / input_size[0]])
        return ((xy + 0.5) * ratio - 0.5)[None], answer

    def locator_members(self, phrase: str, predictor) -> tuple[list[int], Tensor | None]:  # noqa: ANN001
        """For a locator with a presence readout: the candidates whose presence passes the threshold, best
        score first (indices into the candidates, which are also the engine's proposals for a head), and every
        candidate's presence ``(M,)`` (None without candidates; the phrase's presence is its maximum)."""
        _, scores, presence = self.locator_readout(phrase, predictor.get_image_embedding(), predictor.input_size,
                                                   predictor.image)
        if scores is None or presence is None:
            return [], None
        order = torch.argsort(scores, descending=True).tolist()
        threshold = self.options.engine.presence_threshold
        presence = presence.float().cpu()  # read per candidate below: once off the device, not once per candidate
        return [int(i) for i in order if presence[i] >= threshold], presence

    def _head_proposals(self, predictor):  # noqa: ANN001, ANN202
        """The locator's candidates as proposals in original pixels (shared with the engine, once per image)."""
        if self.engine._proposals is None:
            self.engine._proposals = self._regions_as_proposals(predictor)
        return self.engine.proposals(predictor)

    @torch.inference_mode()
    def region_candidates(self, features: Tensor, input_size: tuple[int, int]) -> Tensor:
        """Candidate object masks ``(M, L, L)`` bool (low-res, input frame) of the current image, for the
        locator (see :class:`~textsam.text.options.LocatorOptions`); computed once per image."""
        if self._regions is not None:
            return self._regions
        o = self.options.locator
        if o.seeds == "grid":
            clicks = self._grid(o.grid, input_size)
        else:
            clicks = embedding_seeds(features, input_size, self.model.img_size, clusters=o.clusters,
                                     min_tokens=o.min_region_tokens, max_seeds=o.max_seeds)
        masks, scores = self._click_masks(features, clicks)
        chosen = mask_nms(masks.cpu().numpy(), scores.float().cpu().numpy(), o.nms_iou)[: o.max_candidates]
        self._regions, self._region_scores = masks[chosen], scores[chosen].float().cpu()
        return self._regions

    @staticmethod
    def _grid(n: int, input_size: tuple[int, int]) -> np.ndarray:
        """``(n * n, 2)`` x, y click centres of an ``n`` x ``n`` grid over the resized image (input frame)."""
        ys = (np.arange(n) + 0.5) * input_size[0] / n - 0.5
        xs = (np.arange(n) + 0.5) * input_size[1] / n - 0.5
        return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)

    def _click_masks(self, features: Tensor, points: np.ndarray) -> tuple[Tensor, Tensor]:
        """Each click's most confident mask ``(P', L, L)`` bool and its predicted IoU ``(P',)``, for the clicks
        ``points (P, 2)`` (input frame) whose mask is non-empty and at least ``LocatorOptions.min_iou``.
        Decoded ``LocatorOptions.points_per_batch`` clicks at a time (small batches keep the per-click image
        tokens in cache: 8-16 clicks at once run 2-3x faster per click than 256 on a CPU)."""
        o = self.options.locator
        all_masks, all_scores = [], []
        for start in range(0, len(points), o.points_per_batch):
            chunk = points[start : start + o.points_per_batch]
            coords = torch.as_tensor(chunk[:, None], dtype=torch.float32, device=self.model.device)
            labels = torch.ones(coords.shape[:2], device=self.model.device)
            iou, low, rows = self.model.decode_confident(features, (coords, labels), o.min_iou)
            best = iou[rows].argmax(dim=1)
            picked = torch.arange(len(rows), device=rows.device)
            masks, scores = low[picked, best] > self.model.mask_threshold, iou[rows, best]
            keep = masks.flatten(1).any(1)
            all_masks.append(masks[keep])
            all_scores.append(scores[keep])
        if not all_masks:  # no clicks
            h, w = features.shape[-2:]
            return torch.zeros(0, 4 * h, 4 * w, dtype=torch.bool, device=features.device), features.new_zeros(0)
        return torch.cat(all_masks), torch.cat(all_scores)

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

    # ---------------------------------------------------------------------------- engine
    @property
    def engine_chooses(self) -> bool:
        """Whether the engine's chosen object becomes prompts: for a model without a text head. With a head,
        the head decides (its tokens, and its locator's click) and the engine answers presence, except for
        phrases relating their object to another (:meth:`engine_resolves`)."""
        return self.model.text_projector is None

    def engine_resolves(self, phrase: str) -> bool:
        """Whether the engine chooses the object for ``phrase`` (its box and click join the decoder call, with the
        head's tokens, and it answers presence): always without a text head; with one, for a phrase that relates
        its object to another ("the cup left of the plate", "the cat that is not on the sofa"). A head reads a
        phrase whole and has no geometry between two objects; the engine scores the head noun and the anchor by
        CLIP and resolves the relation on their boxes (``tools/relation_probe.py`` on the synthetic test split:
        shapes_tiny's locator 31.1 mIoU on 239 relation phrases, the engine choosing among the same candidates
        72.1). A phrase that is not a string, or empty, is an :class:`InputError`."""
        if self.engine_chooses:
            return True
        return self.engine_enabled and parse(clean_phrase(phrase)).relation is not None

    @property
    def engine_enabled(self) -> bool:
        return self.options.engine.enabled and hasattr(getattr(self.model.scoring_encoder, "clip", None), "visual")

    def engine_rank(self, predictor, phrases: Sequence[str], user_points: np.ndarray | None = None,  # noqa: ANN001
                    user_labels: np.ndarray | None = None, user_box: np.ndarray | None = None,
                    every: bool = False, negative: str | None = None) -> list[Ranked]:
        """The engine's answer for each phrase on the predictor's current image. A model whose text head has a
        locator shares the locator's candidate objects with the engine (one candidate pass per image). A
        user's positive click or box keeps only the candidates it touches (all of them when none does).
        ``every``: every candidate is scored by its crops (for ``instances="all"``), not only the shortlist.
        ``negative``: what not to segment (:meth:`TextEngine.rank`)."""
        self.ensure_text_encoder()
        props = self._head_proposals(predictor) if self.model.text_locator is not None else \
            self.engine.proposals(predictor)
        allowed = None
        if len(props) and (user_box is not None or (user_points is not None and (user_labels == 1).any())):
            allowed = torch.ones(len(props), dtype=torch.bool)
            masks = props.masks
            if user_points is not None:
                for (x, y), label in zip(user_points, user_labels):
                    if label == 1:
                        xi = int(np.clip(round(x), 0, masks.shape[2] - 1))
                        yi = int(np.clip(round(y), 0, masks.shape[1] - 1))
                        allowed &= masks[:, yi, xi]
            if user_box is not None:
                x0, y0, x1, y1 = (int(round(v)) for v in np.asarray(user_box, float).reshape(4))
                # count_nonzero mask by mask: a dim-wise sum of full-size bool masks is 20-50x slower on a CPU
                inside = torch.stack([torch.count_nonzero(m[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1]) for m in masks])
                area = torch.stack([torch.count_nonzero(m) for m in masks])
                allowed &= inside.float() >= 0.5 * area.clamp_min(1).float()
            if not allowed.any():
                allowed = None
        if negative is not None:
            negative = clean_phrase(negative)
        return self.engine.rank(predictor, self.model.scoring_encoder, phrases, self.templates(), allowed=allowed,
                                every=every, negative=negative)

    def _regions_as_proposals(self, predictor):  # noqa: ANN001, ANN202
        """The locator's candidate objects as engine proposals (original-frame masks, boxes and clicks)."""
        from ..modeling.proposals import Proposals, masks_to_boxes
        from ..ops import deepest_points

        features = predictor.get_image_embedding()
        regions = self.region_candidates(features, predictor.input_size)
        size = predictor.original_size
        if len(regions) == 0:
            return Proposals.cat([], size)
        logits = regions.float() * 2 - 1
        with torch.inference_mode():
            masks = self.model.postprocess_masks(logits[:, None], predictor.input_size, size)[:, 0] > 0
        masks = masks.cpu()
        # each candidate's click: its deepest pixel at the candidates' own resolution (low-res, padded input
        # frame), in original pixels (erosion at the original size costs time in the object's radius)
        low = deepest_points(regions.cpu()).double()
        side = self.model.img_size / regions.shape[-1]
        ratio = torch.tensor([size[1] / predictor.input_size[1], size[0] / predictor.input_size[0]], dtype=torch.float64)
        points = ((low + 0.5) * side) * ratio - 0.5
        points = torch.minimum(points.clamp_min(0), torch.tensor([size[1] - 1, size[0] - 1], dtype=torch.float64))
        return Proposals(masks, masks_to_boxes(masks), self._region_scores.clone(),
                         torch.ones(len(masks)), points, torch.tensor([[0, 0, size[1], size[0]]] * len(masks)))

    @staticmethod
    def _as_box_and_click(props, i: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
        """Proposal ``i`` as a box (x0, y0, x1, y1, exclusive ends) and its click (x, y), original pixels."""
        box = props.boxes[i].double().numpy().copy()
        box[2:] += 1
        return box, props.points[i].numpy().astype(np.float64)

    # ---------------------------------------------------------------------------- prompts
    def prompts_for(self, phrases: Sequence[str], predictor, *, engine_prompts: bool = True,  # noqa: ANN001
                    user_box: np.ndarray | None = None, user_points: np.ndarray | None = None,
                    user_labels: np.ndarray | None = None, negative: str | None = None) -> list[TextPrompt] | None:
        """The engine's prompts for several phrases at once (one text batch, one ranking; None when the engine
        is off): each phrase's chosen object as a box and a click (``engine_prompts``; else the engine only
        answers presence), with the text-head tokens. ``negative``: what not to segment; the proposal it names
        (:attr:`Ranked.background`) adds a background click."""
        if not (self.engine_enabled and predictor is not None):
            return None
        self.ensure_text_encoder()
        tokens = self.text_tokens(list(phrases))
        if not engine_prompts and self.locator_answers_presence and user_box is None and user_points is None:
            # the head's locator clicks and answers presence (see locate_with_presence): nothing for the engine.
            # A group phrase ("all the X") is every candidate whose presence passes the threshold.
            # With a negative phrase the engine still finds what is not wanted: a background click on it.
            backgrounds = [r.background for r in self.engine_rank(predictor, list(phrases), negative=negative)] \
                if negative is not None else [None] * len(phrases)
            out = []
            for i, phrase in enumerate(phrases):
                prompt = TextPrompt(np.zeros((0, 2)), np.zeros((0,), np.int64), None,
                                    tokens[i] if tokens is not None else None, None)
                query = parse(phrase)
                if query.group:
                    members, each = self.locator_members(phrase, predictor)
                    if members and each is not None:
                        props = self._head_proposals(predictor)
                        # "all the cars on the left": the members in that half of the image (spatial.support)
                        placed = support(query, props.boxes, predictor.original_size)
                        members = [j for j in members if j != backgrounds[i] and placed[j] > 0]
                        prompt.members = [self._as_box_and_click(props, j) for j in members]
                        prompt.presence, prompt.group = (float(each[members].max()) if members else 0.0), True
                if backgrounds[i] is not None:
                    self._add_background(prompt, self.engine.proposals(predictor), backgrounds[i])
                out.append(prompt)
            return out
        ranked_all = self.engine_rank(predictor, list(phrases), user_points, user_labels, user_box, negative=negative)
        props = self.engine.proposals(predictor)
        out = []
        for i, ranked in enumerate(ranked_all):
            prompt = TextPrompt(np.zeros((0, 2)), np.zeros((0,), np.int64), None,
                                tokens[i] if tokens is not None else None, ranked.presence, group=ranked.query.group)
            if engine_prompts and ranked.chosen:
                pairs = [self._as_box_and_click(props, j) for j in ranked.chosen]
                prompt.box = pairs[0][0] if user_box is None else None
                prompt.points, prompt.labels = pairs[0][1][None], np.ones(1, np.int64)
                if ranked.query.group:
                    prompt.members = pairs
            if ranked.background is not None:
                self._add_background(prompt, props, ranked.background)
            out.append(prompt)
        return out

    def _add_background(self, prompt: TextPrompt, props, index: int) -> None:  # noqa: ANN001 - Proposals
        """What is not wanted (a negative phrase's proposal ``index``): its click as a background point."""
        click = self._as_box_and_click(props, index)[1]
        prompt.points = np.concatenate([prompt.points.reshape(-1, 2), click[None]])
        prompt.labels = np.concatenate([prompt.labels, np.zeros(1, np.int64)])
        prompt.background = index

    def prompt_for(
        self,
        phrase: str,
        image: np.ndarray,
        *,
        negative: str | None = None,
        user_box: np.ndarray | None = None,
        user_points: np.ndarray | None = None,
        user_labels: np.ndarray | None = None,
        predictor=None,  # noqa: ANN001 - the TextSamPredictor holding the image (needed by the engine)
        engine_prompts: bool = True,
    ) -> TextPrompt:
        """Prompts for one phrase on the current image: the engine's (:meth:`prompts_for`), else grounded
        points (when grounding is on), plus text-head tokens."""
        engine = self.prompts_for([phrase], predictor, engine_prompts=engine_prompts, user_box=user_box,
                                  user_points=user_points, user_labels=user_labels, negative=negative)
        if engine is not None and (engine_prompts or not self.grounding_enabled):
            return engine[0]
        presence = engine[0].presence if engine is not None else None
        self.ensure_text_encoder()
        tokens = self.text_tokens([phrase])
        tok = tokens[0] if tokens is not None else None
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
        return TextPrompt(points, labels, box, tok, presence)

    def instance_prompts(self, phrase: str, image: np.ndarray, *, negative: str | None = None,
                         predictor=None) -> tuple[list[TextPrompt], float | None]:  # noqa: ANN001
        """One prompt per instance of the phrase (best first, at most ``max_instances``) and the phrase's
        presence. With the engine: every proposal whose presence passes the threshold (none for an absent
        phrase)."""
        self.ensure_text_encoder()
        tokens = self.text_tokens([phrase])
        tok = tokens[0] if tokens is not None else None
        limit = self.options.instances.max_instances
        if self.locator_answers_presence and predictor is not None and not self.engine_resolves(phrase):
            # every candidate the locator says shows the phrase, best score first (a phrase relating its object to
            # another goes to the engine, whose members stand in the relation: engine_resolves)
            members, each = self.locator_members(phrase, predictor)
            props = self._head_proposals(predictor)
            if negative is not None:  # what is not wanted is no instance
                (ranked,) = self.engine_rank(predictor, [phrase], negative=negative) if self.engine_enabled else (None,)
                members = [i for i in members if ranked is None or i != ranked.background]
            prompts = []
            for i in members[:limit]:
                box, click = self._as_box_and_click(props, i)
                prompts.append(TextPrompt(click[None], np.ones(1, np.int64), box, tok, float(each[i])))
            return prompts, 0.0 if each is None else float(each.max())
        if self.engine_enabled and predictor is not None:
            (ranked,) = self.engine_rank(predictor, [phrase], every=True, negative=negative)
            props = self.engine.proposals(predictor)
            o = self.options.engine
            member = ranked.members
            order = [int(i) for i in torch.argsort(ranked.probs, descending=True)] if len(props) else []
            keep = [i for i in order if member[i] >= o.presence_threshold][:limit]
            prompts = []
            for i in keep:
                box, click = self._as_box_and_click(props, i)
                prompts.append(TextPrompt(click[None], np.ones(1, np.int64), box, tok, float(member[i])))
            return prompts, float(member.max()) if len(props) else 0.0  # found exactly when a member passes
        if not self.grounding_enabled:
            return [self.prompt_for(phrase, image, negative=negative, predictor=predictor)], None
        from .grounding import instance_candidates

        self._require_features(image)
        sim = self.similarity(phrase, negative)
        cands = instance_candidates(sim, self._geometry, max_instances=limit)
        prompts = [TextPrompt(np.asarray(c.points, float), np.asarray(c.labels, np.int64), c.box, tok) for c in cands]
        return prompts or [self.prompt_for(phrase, image, negative=negative)], None

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
