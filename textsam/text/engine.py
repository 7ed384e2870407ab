"""The training-free text engine: object proposals scored by CLIP crops, spatial words, a presence answer.

Per image (computed on the first text request, shared by every phrase after it):

1. proposals: SAM's automatic mask generation on the image embedding, filtered at the decoder's resolution
   (:func:`~textsam.modeling.proposals.quick_proposals`, with :class:`EngineOptions`'s ``proposals``), the
   best ``max_proposals`` by predicted IoU; the clicks are one per region of the image embedding
   (:func:`~textsam.modeling.seeds.embedding_seeds`, ``seeds="embedding"``) or SAM's regular grid
   (``seeds="grid"``, ``proposals.points_per_side`` squared);
2. mask tokens: one pass of the CLIP image tower over the whole image with one extra class token per
   proposal that sees only the proposal's patches (:meth:`~textsam.text.grounding.DenseClip.mask_embeddings`),
   ``(N, D)``: a first CLIP score for every proposal at the price of one tower pass;
3. crop embeddings, on demand and cached per proposal: each shortlisted proposal's isolated views through the
   CLIP image tower (:mod:`textsam.text.scoring`; a view over 6x the tower's input side is first shrunk by an
   integer factor, :func:`~textsam.text.scoring.crop_views`'s ``max_side``), ``(V, D)`` each.

Per phrase (a vocabulary of P phrases is one text batch and one matrix product):

4. :func:`~textsam.text.spatial.parse` splits the phrase into the head noun phrase CLIP scores and the words
   geometry resolves;
5. the shortlist: the ``shortlist`` proposals whose mask tokens are closest to the head phrase (twice as many
   for a phrase with spatial words or an anchor, every proposal for a group phrase or ``instances="all"``;
   ``shortlist=0`` shortlists every proposal); only they are cropped and can be chosen;
6. each shortlisted proposal's score is ``s_i = mean_v cos(view_iv, head) + iou_weight * predicted_iou_i``;
   CLIP's own logit scale turns the scores into probabilities over the shortlist, which
   :func:`~textsam.text.spatial.resolve` re-ranks by geometry;
7. presence: ``sigmoid(gain * (s - bias))`` with ``s`` the chosen proposal's cosine in the plain ``"crop"`` view
   when the engine has several views (else the mean over them; the blur view is for ranking, below: on the
   synthetic proxy, reading the crop view alone raised the presence AUROC from 0.866 to 0.908 on the test split,
   0.950 to 0.955 on val, each at its recalibrated bias); for a relation, the smaller of that and the same of
   the anchor's best other shortlisted proposal (a relation presupposes its anchor: "the cup left of the laptop"
   in a photo without a laptop; with several relations, every anchor's); membership, for a group phrase ("all X")
   and ``instances="all"``: the same calibration on each shortlisted proposal's cosine in the plain ``"crop"``
   view when the engine has several views (else the mean), times how well the proposal stands where the phrase
   puts it (:func:`~textsam.text.spatial.support`: its relations, relative to the best placed proposal; a group's
   side word, "all the cars on the left": the half of the image).
   The blur view is for ranking: it pastes the object into the blurred whole image, so a small object is a few
   pixels of the tower's input and its cosine falls, which an absolute per-object yes/no must not read (on
   the synthetic proxy, crop + blur views: groups 63.1 -> 66.8 mIoU on 100 val images). The chosen proposal(s) and the
   presence go back to the predictor, which decodes the proposal's box and click together with any text-head
   tokens and the user's prompts in one decoder call.

8. a negative phrase (``negative_text``, "shadow"): shortlisted and cropped like a head phrase; a shortlisted
   proposal that it names is neither chosen nor a member, unless every one is. It names a proposal whose crop
   score is higher for it than for the phrase (a two-way zero-shot choice, as CLIP classifies), or that is one of
   its own members (step 7's calibrated membership: a CLIP may score a generic phrase, "circle", above a specific
   one, "red circle", on every circle, so the two-way choice alone never rejects the red one). The proposal it
   names best, when not chosen, is the answer's ``background``, a background click in the decoder call. A phrase
   that says what its object is not ("the circle that is not red") brings its own negative, that description
   made positive (:attr:`~textsam.text.spatial.Query.excluded`: "circle that is red"), shortlisted as widely as
   the phrase's head, beside the user's (on the synthetic proxy, 72 such phrases on 200 test images,
   ``tools/relation_probe.py``: 3.9 mIoU when CLIP read "not red" as "red", 38.7 with the head alone, 60.9
   with the negative).

A phrase's answer depends only on the phrase and the image (its own shortlist), so a vocabulary gives what
phrase-by-phrase calls give. Frames: proposal boxes and clicks are pixels of the original image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..modeling.proposals import ProposalOptions, Proposals, quick_proposals
from ..modeling.seeds import embedding_seeds
from ..precision import native_bf16
from ..quantize import int8_supported
from .grounding import DenseClip
from .scoring import crop_views, encode_views, tower_input_size
from .spatial import Query, parse, resolve, support

logger = logging.getLogger(__name__)

__all__ = ["EngineOptions", "Ranked", "TextEngine"]


@dataclass(frozen=True)
class EngineOptions:
    """The training-free engine (see the module docstring).

    proposals: SAM automatic-mask-generation settings for text requests (looser filters than ``generate()``'s
    defaults; its grid, ``points_per_side**2`` clicks, is used with ``seeds="grid"``); clicks are decoded 32 at a
    time, which on a CPU is as fast as one batch of 256 and keeps the per-click image tokens to about 0.8 GB
    for SAM's 64 x 64 embedding instead of 6.4 GB.
    max_proposals: the best proposals by predicted IoU kept for CLIP scoring. views / enlarge: the crop views
    (:data:`~textsam.text.scoring.VIEWS`) and the window size around each proposal's box. iou_weight: weight of
    SAM's predicted IoU in a proposal's score. presence_bias / presence_gain: the presence calibration (the
    crop cosine at which presence is 0.5, and the slope); presence_threshold: below it a phrase is "not found"
    (``instances="all"`` returns no mask; a group keeps only members above it). shortlist: how many proposals
    per phrase the mask tokens pass on to the crops (see the module docstring; 0: every proposal is cropped).
    precision: ``"bf16"`` (default) runs the engine's approximate work, the proposal clicks' decoding, the CLIP
    image tower (mask tokens and crops, through a bf16 copy of the tower) and the phrase's text embedding, in bf16
    on a device that computes it natively (:func:`textsam.precision.native_bf16`: a CPU with AVX-512 BF16 or AMX,
    a CUDA GPU with bf16), and in fp32 elsewhere; ``"fp32"`` everywhere. The chosen proposal's final decoder
    call (with the user's clicks and box) stays fp32, so the mask is SAM's fp32 mask for the chosen prompt; bf16
    only enters which proposal is chosen and its box. About 1.6x faster on such a CPU (sam_vit_b: 1.7 s against
    2.8 s after ``set_image``); on the synthetic proxy the same mIoU (54.99-55.07 against 55.05 in fp32).
    ``"int8"`` (the fast path's, :meth:`TextOptions.fast`): as ``"bf16"`` where bf16 is native; on a CPU without
    it (most x86 laptops and desktops), the CLIP image tower's linear layers in int8 (:mod:`textsam.quantize`;
    the proposal clicks and the text tower stay fp32); fp32 elsewhere.
    token_input_scale: the mask-token pass runs the tower at this multiple of its native input size (rounded
    to whole patches; 1: the size CLIP was trained at, 224 px for ViT-B/16, without interpolated positions; on
    the synthetic proxy 1.5x and 2x scored the same).
    seeds / clusters / min_region_tokens / max_seeds: where the proposal clicks come from (see the module
    docstring): one click per region (of at least ``min_region_tokens`` tokens) of ``clusters`` k-means groups
    of the image embedding, largest regions first, at most ``max_seeds`` (``"embedding"``); or the
    ``proposals`` grid (``"grid"``).
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
    shortlist: int = 4
    precision: str = "bf16"
    token_input_scale: float = 1.0
    seeds: str = "embedding"
    clusters: int = 16
    min_region_tokens: int = 3
    max_seeds: int = 32

    def __post_init__(self) -> None:
        if self.shortlist < 0 or self.max_proposals < 1 or self.token_input_scale <= 0:
            raise InputError("engine shortlist must be >= 0, max_proposals >= 1 and token_input_scale > 0")
        if self.precision not in ("fp32", "bf16", "int8"):
            raise InputError(f"engine precision must be 'fp32', 'bf16' or 'int8', not {self.precision!r}")
        if self.seeds not in ("embedding", "grid"):
            raise InputError(f"unknown engine seeds {self.seeds!r}; choose 'embedding' or 'grid'")
        if min(self.clusters, self.min_region_tokens, self.max_seeds) < 1:
            raise InputError("engine clusters, min_region_tokens and max_seeds must be >= 1")


@dataclass
class Ranked:
    """One phrase on one image. ``probs (N,)``: the final probability of each proposal (0 outside the phrase's
    shortlist); ``cosines (N,)``: the head phrase's crop scores, the mean over the views (-inf outside the
    shortlist); ``members (N,)``: each proposal's membership probability (step 7; 0 outside the shortlist);
    ``chosen``: the proposal(s) answering the phrase (several for a group, best first; empty when the image has
    no proposal); ``presence`` in [0, 1]; ``background``: with a negative phrase, the proposal it names (more like
    it than like the phrase, not chosen), whose click the decoder gets as a background point, or None."""

    query: Query
    probs: Tensor
    cosines: Tensor
    members: Tensor
    chosen: list[int]
    presence: float
    background: int | None = None


class TextEngine:
    """Per-image state of the engine for one predictor (proposals, their mask tokens and crop embeddings)."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.reset()

    def reset(self) -> None:
        self.clicks = 0  # proposal clicks decoded for the current image
        self._proposals: Proposals | None = None
        self._tokens: Tensor | bool | None = None  # False: the tower has no mask tokens
        self._crops: dict[int, Tensor] = {}

    def proposals(self, predictor) -> Proposals:  # noqa: ANN001 - a TextSamPredictor (no import: no cycle)
        """The current image's proposals (computed once per image), at most ``max_proposals``."""
        if self._proposals is None:
            o = self.options
            points = None
            if o.seeds == "embedding":
                (h, w), (new_h, new_w) = predictor.original_size, predictor.input_size
                clicks = embedding_seeds(predictor.get_image_embedding(), predictor.input_size,
                                         predictor.model.img_size, clusters=o.clusters,
                                         min_tokens=o.min_region_tokens, max_seeds=o.max_seeds)
                points = clicks * np.array([w / new_w, h / new_h])[None]  # model input -> original pixels
            self._proposals = quick_proposals(predictor, o.proposals, o.max_proposals, points,
                                              precision=self.precision(predictor))
            self.clicks = len(points) if points is not None else len(o.proposals.grids()[0])
        return self._proposals

    def precision(self, predictor) -> str:  # noqa: ANN001
        """The precision the engine's approximate work runs in on the predictor's device (see ``precision``):
        ``"bf16"`` where the device computes bf16 natively (for the options ``"bf16"`` and ``"int8"``), else
        ``"int8"`` for the options ``"int8"`` on a CPU with int8 linear layers (:mod:`textsam.quantize`: the CLIP
        image tower only), else ``"fp32"``."""
        wanted = self.options.precision
        if wanted != "fp32" and native_bf16(predictor.device):
            return "bf16"
        if wanted == "int8" and int8_supported(predictor.device):
            return "int8"
        return "fp32"

    def token_embeddings(self, predictor, clip: torch.nn.Module) -> Tensor | None:  # noqa: ANN001
        """Unit CLIP embeddings ``(N, D)`` float32, on the CPU, of the proposals' mask tokens (one tower pass, once
        per image); None for a tower that is not open_clip's plain ViT (e.g. a ResNet CLIP: every proposal is then
        cropped)."""
        if self._tokens is None:
            visual, native = clip.visual, tower_input_size(clip)
            try:
                if native is None:
                    raise AttributeError("the tower has no image_size")
                patch = visual.patch_size if isinstance(visual.patch_size, int) else visual.patch_size[0]
                size = max(1, round(native * self.options.token_input_scale / patch)) * patch
                dense = DenseClip(clip, size)
            except (AttributeError, InputError) as err:
                logger.info("no mask tokens for this CLIP tower (%s): every proposal is cropped", err)
                self._tokens = False
                return None
            # on the CPU, as every other tensor of the ranking (proposals, crop scores, shortlists): on a GPU the
            # tower's output would otherwise meet CPU index tensors there
            self._tokens = dense.mask_embeddings(predictor.image, self.proposals(predictor).masks.numpy()).cpu()
        return self._tokens if self._tokens is not False else None

    def crop_embeddings(self, predictor, clip: torch.nn.Module,  # noqa: ANN001
                        indices: Sequence[int] | None = None) -> Tensor:
        """Unit CLIP embeddings ``(len(indices), V, D)`` of the views of proposals ``indices`` (default: every
        proposal); each proposal is cropped and encoded once per image, in one batch for those not yet done."""
        props = self.proposals(predictor)
        indices = list(range(len(props))) if indices is None else [int(i) for i in indices]
        missing = [i for i in dict.fromkeys(indices) if i not in self._crops]
        if missing:
            boxes = props.boxes[missing].numpy().astype(np.float64)
            boxes[:, 2:] += 1  # inclusive -> exclusive ends
            size = tower_input_size(clip)
            views = crop_views(predictor.image, props.masks[missing].numpy(), boxes, self.options.views,
                               enlarge=self.options.enlarge, max_side=3 * size if size else None)
            for i, emb in zip(missing, encode_views(clip, views)):
                self._crops[i] = emb
        if not indices:
            return torch.zeros(0, len(self.options.views), 0)
        return torch.stack([self._crops[i] for i in indices])

    def _shortlist(self, first: Tensor, k: int) -> Tensor:
        """``(N,)`` bool: the ``k`` proposals with the highest first scores ``first (N,)`` (-inf: not allowed)."""
        short = torch.zeros(first.shape[0], dtype=torch.bool)
        allowed = torch.isfinite(first)
        if k >= int(allowed.sum()):
            return allowed
        short[first.topk(k).indices] = True
        return short

    def rank(self, predictor, encoder, phrases: Sequence[str], templates: Sequence[str],  # noqa: ANN001
             allowed: Tensor | None = None, every: bool = False, negative: str | None = None) -> list[Ranked]:
        """Rank the proposals for every phrase (see the module docstring); ``allowed (N,)`` bool keeps only
        those proposals (e.g. the ones a user's click touches); ``every``: shortlist every proposal (for
        ``instances="all"``). ``negative``: what not to segment ("shadow"), scored by its crops like a head
        phrase (its own shortlist): a proposal more like it than like the phrase is neither chosen nor a member
        (unless every candidate is), and its best such proposal is each answer's ``background``."""
        o = self.options
        props = self.proposals(predictor)
        queries = [parse(p) for p in phrases]
        # each query's negatives: the user's, then what its own words exclude ("the circle that is not red")
        negatives = [[*([negative] if negative else []), *q.excluded] for q in queries]
        texts = list(dict.fromkeys([*(t for q in queries for t in (q.head, *q.anchors)),
                                    *(t for ns in negatives for t in ns)]))
        out = []
        n = len(props)
        if n == 0:
            for q in queries:
                out.append(Ranked(q, torch.zeros(0), torch.zeros(0), torch.zeros(0), [], 0.0))
            return out
        precision = self.precision(predictor)
        # one text batch; int8 is for the image tower (a phrase's text pass is cached and short)
        emb = encoder.encode_ensembles(texts, templates, "fp32" if precision == "int8" else precision)  # (T, D)
        index = {t: i for i, t in enumerate(texts)}
        wide = [every or q.group or o.shortlist == 0 for q in queries]
        tower = encoder.image_model(precision)
        tokens = None if all(wide) else self.token_embeddings(predictor, tower)
        if tokens is None:
            wide = [True] * len(queries)
            first = torch.zeros(len(texts), n)
        else:
            first = emb.to(tokens) @ tokens.T  # (T, N): the mask tokens' cosines
        unrestricted = first  # what the user does not want need not be where the user clicked
        if allowed is not None:
            first = first.masked_fill(~allowed.cpu(), float("-inf"))
        shortlists = []  # per query: its head's and its anchors' shortlists, (N,) bool each
        sizes = []  # per query: how many proposals its shortlists take
        for q, w in zip(queries, wide):
            k = n if w else (2 * o.shortlist if (q.directions or q.anchor) else o.shortlist)
            sizes.append(k)
            shortlists.append([self._shortlist(first[index[t]], k) for t in (q.head, *q.anchors)])
        # a negative's own shortlist, as a head phrase's: the user's, every proposal when the requests take every
        # one; a query's own, as many as its head's (keyed by text and size, so that a query's answer does not
        # depend on the other phrases of a vocabulary)
        keys = [[*([(negative, n if all(wide) else o.shortlist)] if negative else []), *((t, k) for t in q.excluded)]
                for q, k in zip(queries, sizes)]
        negative_lists = {key: self._shortlist(unrestricted[index[key[0]]], key[1]) for ks in keys for key in ks}
        needed = [int(i) for i in torch.stack([s for pair in shortlists for s in pair]
                                              + list(negative_lists.values())).any(0).nonzero().flatten()]
        crops = torch.zeros(n, len(o.views), emb.shape[1])
        crops[needed] = self.crop_embeddings(predictor, tower, needed).to(crops)
        per_view = torch.einsum("nvd,td->tvn", crops, emb.to(crops))  # (T, V, N)
        cos = per_view.mean(1)  # the crop scores: mean over the views, (T, N)
        # membership reads the plain crop view when there are several (step 7 of the module docstring)
        member_cos = per_view[:, o.views.index("crop")] if "crop" in o.views and len(o.views) > 1 else cos
        scale = float(encoder.clip.logit_scale.detach().exp()) if hasattr(encoder.clip, "logit_scale") else 100.0
        iou = props.predicted_iou.to(cos)
        size = predictor.original_size
        negative_cos = {key: cos[index[key[0]]].masked_fill(~s, float("-inf")) for key, s in negative_lists.items()}
        negative_member = {key: (torch.sigmoid(o.presence_gain * (member_cos[index[key[0]]] - o.presence_bias))
                                 >= o.presence_threshold) & s for key, s in negative_lists.items()}
        for q, lists, negs in zip(queries, shortlists, keys):
            c = cos[index[q.head]].masked_fill(~lists[0], float("-inf"))
            rejected = None
            if negs:  # more like what is not wanted than like the phrase
                rejected = torch.stack([(negative_cos[t] > cos[index[q.head]]) | negative_member[t]
                                        for t in negs]).any(0) & lists[0]
                if bool(rejected.sum() < lists[0].sum()):
                    c = c.masked_fill(rejected, float("-inf"))
                else:
                    rejected = None  # every candidate is: the phrase's own ranking stands
            head = (scale * (c + o.iou_weight * iou)).softmax(0)
            anchors = [(scale * (cos[index[a]] + o.iou_weight * iou)).masked_fill(~s, float("-inf")).softmax(0)
                       for a, s in zip(q.anchors, lists[1:])]
            probs = resolve(q, head, props.boxes, size, anchors[0] if anchors else None, anchors[1:])
            # a set's members must also stand where the phrase puts them ("all the cups on the table")
            members = torch.sigmoid(o.presence_gain * (member_cos[index[q.head]] - o.presence_bias)).masked_fill(
                ~lists[0], 0.0) * support(q, props.boxes, size, anchors[0] if anchors else None, anchors[1:]).to(cos)
            if rejected is not None:
                members = members.masked_fill(rejected, 0.0)
            if q.group:
                chosen = [int(i) for i in torch.argsort(members, descending=True) if members[i] >= o.presence_threshold]
                chosen = chosen or [int(probs.argmax())]
                presence = float(members[chosen].max())
            else:
                best = int(probs.argmax())
                chosen = [best]
                presence = float(torch.sigmoid(o.presence_gain * (member_cos[index[q.head]][best] - o.presence_bias)))
            for a, s in zip(q.anchors, lists[1:]):  # a relation needs its anchor too: the best other shortlisted
                a_cos = member_cos[index[a]].masked_fill(~s, float("-inf"))  # object for it (each anchor of several)
                a_cos[chosen] = float("-inf")
                top = float(a_cos.max()) if len(a_cos) else float("-inf")
                presence = min(presence, float(torch.sigmoid(torch.tensor(o.presence_gain * (top - o.presence_bias)))))
            background = None
            for t in negs:  # the user's negative first
                j = int(negative_cos[t].argmax()) if len(negative_cos[t]) else -1
                if (j >= 0 and torch.isfinite(negative_cos[t][j]) and j not in chosen
                        and bool(negative_cos[t][j] > cos[index[q.head]][j] or negative_member[t][j])):
                    background = j
                    break
            out.append(Ranked(q, probs, c, members, chosen, presence, background))
        return out
