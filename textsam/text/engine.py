"""The training-free text engine: object proposals scored by CLIP crops, spatial words, a presence answer.

Per image (computed on the first text request, shared by every phrase after it):

1. proposals: SAM's automatic mask generation on the image embedding, filtered at the decoder's resolution
   (:func:`~textsam.modeling.proposals.quick_proposals`, with :class:`EngineOptions`'s ``proposals``), the
   best ``max_proposals`` by predicted IoU;
2. crop embeddings: each proposal's isolated views through the CLIP image tower
   (:mod:`textsam.text.scoring`), ``(N, V, D)``.

Per phrase (a vocabulary of P phrases is one text batch and one matrix product):

3. :func:`~textsam.text.spatial.parse` splits the phrase into the head noun phrase CLIP scores and the words
   geometry resolves;
4. each proposal's score is ``s_i = mean_v cos(view_iv, head) + iou_weight * predicted_iou_i``; CLIP's own
   logit scale turns the scores into probabilities over the proposals, which
   :func:`~textsam.text.spatial.resolve` re-ranks by geometry;
5. presence: ``sigmoid(gain * (c - bias))`` with ``c`` the head's crop cosine on the chosen proposal (on every
   proposal for a group phrase, "all X"); the chosen proposal(s) and the presence go back to the predictor,
   which decodes the proposal's box and click together with any text-head tokens and the user's prompts in
   one decoder call.

Frames: proposal boxes and clicks are pixels of the original image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..modeling.proposals import ProposalOptions, Proposals, quick_proposals
from .scoring import crop_views, encode_views
from .spatial import Query, parse, resolve

logger = logging.getLogger(__name__)

__all__ = ["EngineOptions", "Ranked", "TextEngine"]


@dataclass(frozen=True)
class EngineOptions:
    """The training-free engine (see the module docstring).

    proposals: SAM automatic-mask-generation settings for text requests (a coarser grid and looser filters
    than ``generate()``'s defaults: a new image costs ``points_per_side**2`` clicks, decoded 32 at a time, which
    on a CPU is as fast as one batch of 256 and keeps the per-click image tokens to about 0.8 GB for SAM's
    64 x 64 embedding instead of 6.4 GB).
    max_proposals: the best proposals by predicted IoU kept for CLIP scoring. views / enlarge: the crop views
    (:data:`~textsam.text.scoring.VIEWS`) and the window size around each proposal's box. iou_weight: weight of
    SAM's predicted IoU in a proposal's score. presence_bias / presence_gain: the presence calibration (the
    crop cosine at which presence is 0.5, and the slope); presence_threshold: below it a phrase is "not found"
    (``instances="all"`` returns no mask; a group keeps only members above it).
    """

    enabled: bool = True
    proposals: ProposalOptions = field(default_factory=lambda: ProposalOptions(
        points_per_side=16, points_per_batch=32, pred_iou_thresh=0.7, stability_score_thresh=0.9))
    max_proposals: int = 32
    views: tuple[str, ...] = ("crop",)
    enlarge: float = 1.3
    iou_weight: float = 0.0
    presence_bias: float = 0.2
    presence_gain: float = 20.0
    presence_threshold: float = 0.5


@dataclass
class Ranked:
    """One phrase on one image. ``probs (N,)``: the final probability of each proposal; ``cosines (N,)``: the
    head phrase's crop cosines; ``chosen``: the proposal(s) answering the phrase (several for a group, best
    first; empty when the image has no proposal); ``presence`` in [0, 1]."""

    query: Query
    probs: Tensor
    cosines: Tensor
    chosen: list[int]
    presence: float


class TextEngine:
    """Per-image state of the engine for one predictor (proposals and their crop embeddings)."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.reset()

    def reset(self) -> None:
        self._proposals: Proposals | None = None
        self._crops: Tensor | None = None

    def proposals(self, predictor) -> Proposals:  # noqa: ANN001 - a TextSamPredictor (no import: no cycle)
        """The current image's proposals (computed once per image), at most ``max_proposals``."""
        if self._proposals is None:
            self._proposals = quick_proposals(predictor, self.options.proposals, self.options.max_proposals)
        return self._proposals

    def crop_embeddings(self, predictor, clip: torch.nn.Module) -> Tensor:  # noqa: ANN001
        """Unit CLIP embeddings ``(N, V, D)`` of the proposals' views (computed once per image)."""
        if self._crops is None:
            props = self.proposals(predictor)
            if len(props) == 0:
                self._crops = torch.zeros(0, len(self.options.views), 0)
            else:
                boxes = props.boxes.numpy().astype(np.float64)
                boxes[:, 2:] += 1  # inclusive -> exclusive ends
                views = crop_views(predictor.image, props.masks.numpy(), boxes, self.options.views,
                                   enlarge=self.options.enlarge)
                self._crops = encode_views(clip, views)
        return self._crops

    def rank(self, predictor, encoder, phrases: Sequence[str], templates: Sequence[str],  # noqa: ANN001
             allowed: Tensor | None = None) -> list[Ranked]:
        """Rank the proposals for every phrase (see the module docstring); ``allowed (N,)`` bool keeps only
        those proposals (e.g. the ones a user's click touches)."""
        o = self.options
        props = self.proposals(predictor)
        crops = self.crop_embeddings(predictor, encoder.clip)
        queries = [parse(p) for p in phrases]
        texts = list(dict.fromkeys(t for q in queries for t in ([q.head] + ([q.anchor] if q.anchor else []))))
        out = []
        if len(props) == 0:
            for q in queries:
                out.append(Ranked(q, torch.zeros(0), torch.zeros(0), [], 0.0))
            return out
        emb = encoder.encode_ensembles(texts, templates).to(crops.device)  # (T, D): one text batch
        cos = torch.einsum("nvd,td->tn", crops, emb) / crops.shape[1]  # mean over views: (T, N)
        scale = float(encoder.clip.logit_scale.detach().exp()) if hasattr(encoder.clip, "logit_scale") else 100.0
        iou = props.predicted_iou.to(cos)
        logits = scale * (cos + o.iou_weight * iou)
        if allowed is not None:
            logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
        index = {t: i for i, t in enumerate(texts)}
        size = predictor.original_size
        for q in queries:
            c = cos[index[q.head]]
            head = logits[index[q.head]].softmax(0)
            anchor = logits[index[q.anchor]].softmax(0) if q.anchor else None
            probs = resolve(q, head, props.boxes, size, anchor)
            member = torch.sigmoid(o.presence_gain * (c - o.presence_bias))
            if allowed is not None:
                member = member * allowed.to(member)
            if q.group:
                chosen = [int(i) for i in torch.argsort(member, descending=True) if member[i] >= o.presence_threshold]
                chosen = chosen or [int(probs.argmax())]
                presence = float(member[chosen].max())
            else:
                best = int(probs.argmax())
                chosen, presence = [best], float(member[best])
            out.append(Ranked(q, probs, c, chosen, presence))
        return out
