"""RegionLocator: choose, among candidate object masks, the one a phrase names, and where to click on it.

A text head's locator turns a phrase into a click when the request has no click or box of the user's: the
click then joins the phrase's text tokens in the same decoder call. It scores whole candidate objects
(masks the decoder made from a grid of clicks, or ground-truth instances in training) by features of the
object itself:

- its silhouette (the mask cropped to its box, resampled to ``silhouette_size``^2, through a small CNN): the
  shape of an object, free of its colour, so a colour-shape pair never seen in training is still recognised;
- its appearance: the image embedding averaged over the mask (colour, texture, what the encoder knows;
  ``appearance="embedding"``), or only the colour of its pixels (mean and spread of R, G, B;
  ``appearance="colour"``). An image encoder trained on data where each shape came in a few colours
  ties its shape features to those colours; with colour-only appearance the shape can come from the
  silhouette alone, so the locator cannot learn that shortcut;
- its geometry: centroid, size, aspect of the box.

Score of candidate ``i`` for a phrase (vector ``g``, :class:`PhraseVector`)::

    content_i = q(g) . r_i / sqrt(d) + mlp(g * r_i)        r_i = MLP([silhouette, appearance, geometry])
    score_i   = beta * sigmoid(content_i) + gate(g) * content_i + slope(g) . centroid_i

With ``factors="separate"`` each feature group f (silhouette, appearance, geometry) has its own region
vector and matching, and the content is their sum, ``sum_f q_f(g) . r_fi / sqrt(d) + mlp_f(g * r_fi)``: the
score cannot use a conjunction such as "round and purple, so a hexagon" (which a training set where
circles are never purple teaches, and which fails on exactly the pairs held out of training).

(the linear centroid term picks the extreme candidate along a direction among those that match). The best
candidate's deepest pixel becomes the click (:meth:`RegionLocator.click`). Trained with
:meth:`RegionLocator.loss`: minus the log softmax mass on the target candidates.

With ``locator_presence`` the locator also says whether a candidate shows what the phrase names, whatever its
position: ``presence_i = sigmoid(w . c_i + b)``, ``c_i`` the candidate's content matches (one per feature
group with separate factors: a weighted sum can ask for the silhouette AND the colour to match). A request's
presence is the chosen candidate's. Trained with :meth:`RegionLocator.presence_loss` on phrases that name
something in the image and phrases that name nothing in it (:mod:`textsam.train.locator_presence`).

Masks are low-resolution decoder masks ``(L, L)`` in the padded model-input frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TextHeadConfig
from ..errors import InputError
from ..ops import deepest_points
from ..transforms import resize_longest_side

__all__ = ["RegionLocator", "PhraseVector", "region_geometry", "silhouettes", "region_colours", "lowres_rgb"]


class PhraseVector(nn.Module):
    """A phrase as one vector ``(B, hidden_dim)``: an MLP of its pooled CLIP embedding ``(B, D)``, refined by
    one attention over the tower's per-token features ``(B, L, word_dim)`` when ``word_dim > 0``."""

    def __init__(self, clip_dim: int, word_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.clip_dim, self.word_dim, self.hidden_dim = clip_dim, word_dim, hidden_dim
        self.mlp = nn.Sequential(nn.Linear(clip_dim, 2 * hidden_dim), nn.GELU(), nn.Linear(2 * hidden_dim, hidden_dim))
        if word_dim:
            self.word_norm = nn.LayerNorm(word_dim)
            self.word_kv = nn.Linear(word_dim, 2 * hidden_dim)
            self.word_q = nn.Linear(hidden_dim, hidden_dim)
            self.word_out = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, emb: Tensor, words: Tensor | None = None, word_mask: Tensor | None = None) -> Tensor:
        if emb.ndim != 2 or emb.shape[1] != self.clip_dim:
            raise InputError(f"expected (B, {self.clip_dim}) CLIP embeddings for the phrases, got {tuple(emb.shape)}")
        g = self.mlp(emb.to(self.mlp[0].weight.dtype) * math.sqrt(self.clip_dim))
        if self.word_dim and words is not None:
            key, value = self.word_kv(self.word_norm(words.to(g.dtype))).chunk(2, dim=-1)  # (B, L, hidden)
            logits = (self.word_q(g)[:, None] * key).sum(-1) / math.sqrt(self.hidden_dim)
            if word_mask is not None:
                logits = logits.masked_fill(~word_mask.bool(), torch.finfo(logits.dtype).min)
            g = g + self.word_out((logits.softmax(-1)[..., None] * value).sum(1))
        return g


def saturating_score(content: Tensor, g: Tensor, pos: Tensor, beta: Tensor, gate: nn.Linear, slope: nn.Linear) -> Tensor:
    """``beta * sigmoid(content) + gate(g) * content + slope(g) . pos``: content ``(B, N)``, phrase vectors
    ``g (B, hidden)``, positions ``pos (B, 2, N)`` in [-1, 1]. The bounded first term lets the position term
    decide among candidates that all match the phrase's content."""
    sl = slope(g) * 10
    position = (sl[:, :, None] * pos).sum(1)
    return F.softplus(beta) * 5 * torch.sigmoid(content) + content * torch.sigmoid(gate(g)) + position



def lowres_rgb(image: np.ndarray, img_size: int, size: int) -> Tensor:
    """``image (H, W, 3)`` uint8 RGB -> ``(3, size, size)`` float in [0, 1]: resized to the model input (longest
    side ``img_size``), zero-padded to a square as the model input is, then area-averaged to ``size``."""
    resized = torch.from_numpy(np.array(resize_longest_side(image, img_size))).permute(2, 0, 1).float() / 255
    padded = F.pad(resized, (0, img_size - resized.shape[2], 0, img_size - resized.shape[1]))
    return F.adaptive_avg_pool2d(padded[None], size)[0]


def region_colours(image: Tensor, masks: Tensor) -> Tensor:
    """Colour statistics of each candidate: ``image (3, L, L)`` RGB in [0, 1] on the masks' grid (input frame),
    ``masks (..., N, L, L)`` -> ``(..., N, 6)``: mean and standard deviation of R, G, B inside each mask."""
    m = masks.float()
    area = m.sum((-2, -1)).clamp_min(1e-6)[..., None]  # (..., N, 1)
    img = image.float()
    mean = torch.einsum("...hw,chw->...c", m, img) / area
    sq = torch.einsum("...hw,chw->...c", m, img * img) / area
    return torch.cat([mean, (sq - mean * mean).clamp_min(0).sqrt()], dim=-1)


def region_geometry(masks: Tensor) -> tuple[Tensor, Tensor]:
    """``masks (..., L, L)`` in [0, 1] -> centroids ``(..., 2)`` (x, y in [-1, 1] of the frame) and
    ``(..., 4)`` features: centroid, sqrt of the area fraction, log of the box's width / height."""
    size = masks.shape[-1]
    m = masks.float()
    coords = (torch.arange(size, device=m.device, dtype=m.dtype) + 0.5) / size * 2 - 1
    area = m.sum((-2, -1)).clamp_min(1e-6)
    cx = (m.sum(-2) * coords).sum(-1) / area
    cy = (m.sum(-1) * coords).sum(-1) / area
    on_x, on_y = m.amax(-2) > 0.5, m.amax(-1) > 0.5
    width = (on_x.sum(-1).float() + 1) / size
    height = (on_y.sum(-1).float() + 1) / size
    centroid = torch.stack([cx, cy], dim=-1)
    feats = torch.stack([cx, cy, torch.sqrt(area / size**2), torch.log(width / height)], dim=-1)
    return centroid, feats


def silhouettes(masks: Tensor, size: int = 32, margin: float = 1.15) -> Tensor:
    """``masks (N, L, L)`` -> ``(N, 1, size, size)``: each mask resampled from a square around its box
    (side = the longer box side x ``margin``), so every object fills the crop whatever its size."""
    n, h, w = masks.shape
    m = masks.float()
    if n == 0:
        return m.new_zeros(0, 1, size, size)
    xs = torch.arange(w, device=m.device, dtype=m.dtype)
    ys = torch.arange(h, device=m.device, dtype=m.dtype)
    on_x, on_y = m.amax(1) > 0.5, m.amax(2) > 0.5
    big = torch.tensor(1e9, device=m.device, dtype=m.dtype)
    x0 = torch.where(on_x, xs, big).amin(1)
    x1 = torch.where(on_x, xs, -big).amax(1)
    y0 = torch.where(on_y, ys, big).amin(1)
    y1 = torch.where(on_y, ys, -big).amax(1)
    empty = ~on_x.any(1)
    x0, x1 = torch.where(empty, 0.0, x0), torch.where(empty, w - 1.0, x1)
    y0, y1 = torch.where(empty, 0.0, y0), torch.where(empty, h - 1.0, y1)
    half = torch.maximum(x1 - x0 + 1, y1 - y0 + 1) * margin / 2
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
    theta = torch.zeros(n, 2, 3, device=m.device, dtype=m.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = half / (w / 2), half / (h / 2)
    theta[:, 0, 2], theta[:, 1, 2] = cx / (w / 2) - 1, cy / (h / 2) - 1
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    return F.grid_sample(m[:, None], grid, align_corners=False)


class RegionLocator(nn.Module):
    """Phrase x candidate masks -> scores ``(B, N)`` (see the module docstring).

    Built from a :class:`~textsam.config.TextHeadConfig`: ``clip_dim`` (pooled CLIP width), ``token_dim`` (the
    image embedding's channels), ``locator_word_dim`` (the tower's per-token feature width; 0: the pooled
    embedding only), ``locator_dim`` (phrase and region vector width), ``locator_appearance``
    (``"embedding"``: the mask-pooled image embedding; ``"colour"``: pixel colour statistics,
    :func:`region_colours`, which must then be given) and ``locator_factors`` (``"joint"`` or ``"separate"``).
    """

    silhouette_size = 32

    def __init__(self, config: TextHeadConfig) -> None:
        super().__init__()
        if not config.has_locator:
            raise InputError("this text head config has no locator (locator_dim = 0)")
        self.config = config
        self.appearance_kind, self.factors = config.locator_appearance, config.locator_factors
        self.clip_dim, self.image_dim, self.word_dim = config.clip_dim, config.token_dim, config.locator_word_dim
        hidden_dim = self.hidden_dim = config.locator_dim
        self.phrase = PhraseVector(self.clip_dim, self.word_dim, hidden_dim)
        self.shape_net = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1), nn.GELU(), nn.Conv2d(16, 32, 3, 2, 1), nn.GELU(),
            nn.Conv2d(32, 32, 3, 1, 1), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, hidden_dim),
        )
        width = self.image_dim if self.appearance_kind == "embedding" else 6
        self.appearance = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden_dim))
        self.geometry = nn.Linear(4, hidden_dim)
        if self.factors == "joint":
            self.region = nn.Sequential(nn.GELU(), nn.Linear(3 * hidden_dim, hidden_dim), nn.GELU(),
                                        nn.Linear(hidden_dim, hidden_dim))
            self.query = nn.Linear(hidden_dim, hidden_dim)
            self.joint = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
        else:  # one region MLP, query and joint match per feature group
            self.factor_region = nn.ModuleList(
                nn.Sequential(nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim))
                for _ in range(3))
            self.factor_query = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(3))
            self.factor_joint = nn.ModuleList(
                nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1)) for _ in range(3))
        self.slope = nn.Linear(hidden_dim, 2)
        self.gate = nn.Linear(hidden_dim, 1)
        self.beta = nn.Parameter(torch.tensor(2.0))
        self.presence: nn.Linear | None = None
        if config.locator_presence:
            self.presence = nn.Linear(1 if self.factors == "joint" else 3, 1)
            nn.init.ones_(self.presence.weight)
            nn.init.zeros_(self.presence.bias)

    @classmethod
    def from_config(cls, config: TextHeadConfig) -> RegionLocator:
        return cls(config)

    def region_vectors(self, image_embedding: Tensor, masks: Tensor, valid: Tensor | None = None,
                       colours: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``masks (B, N, L, L)`` on ``image_embedding (B or 1, C, h, w)`` (and ``colours (B, N, 6)``) -> region
        vectors ``(B, N, hidden)`` (``(B, N, 3, hidden)``, one per feature group, with separate factors) and
        centroids ``(B, N, 2)``; only the ``valid (B, N)`` candidates are computed (the rest are zero)."""
        b, n, size, _ = masks.shape
        dtype = self.geometry.weight.dtype
        keep = valid.bool() if valid is not None else torch.ones(b, n, dtype=torch.bool, device=masks.device)
        rows, cols = torch.nonzero(keep, as_tuple=True)
        m = masks[rows, cols].to(dtype)  # (V, L, L)
        if self.appearance_kind == "colour":
            if colours is None:
                raise InputError("this region locator reads the candidates' pixel colours: pass colours (B, N, 6)")
            appearance = colours[rows, cols].to(dtype)
        else:
            h, w = image_embedding.shape[-2:]
            weights = F.adaptive_avg_pool2d(m[:, None], (h, w)).flatten(1)
            weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-6)  # (V, hw)
            full = weights.new_zeros(b, n, h * w).index_put((rows, cols), weights)
            emb = image_embedding.to(dtype).flatten(2).transpose(1, 2)  # (B or 1, hw, C)
            appearance = torch.matmul(full, emb)[rows, cols]  # mask-averaged embedding (V, C)
        shape = self.shape_net(silhouettes(m, self.silhouette_size).to(dtype))
        centroid, geo = (t.to(dtype) for t in region_geometry(m))
        parts = [shape, self.appearance(appearance), self.geometry(geo)]
        if self.factors == "joint":
            vec = self.region(torch.cat(parts, dim=-1))
        else:
            vec = torch.stack([mlp(x) for mlp, x in zip(self.factor_region, parts, strict=True)], dim=1)
        vectors = vec.new_zeros(b, n, *vec.shape[1:]).index_put((rows, cols), vec)
        centroids = centroid.new_zeros(b, n, 2).index_put((rows, cols), centroid)
        return vectors, centroids

    def forward(self, image_embedding: Tensor, masks: Tensor, valid: Tensor | None, emb: Tensor,
                words: Tensor | None = None, word_mask: Tensor | None = None, *,
                colours: Tensor | None = None) -> Tensor:
        """:meth:`scores` (the module's call)."""
        return self.scores(image_embedding, masks, valid, emb, words, word_mask, colours=colours)

    def scores(self, image_embedding: Tensor, masks: Tensor, valid: Tensor | None, emb: Tensor,
               words: Tensor | None = None, word_mask: Tensor | None = None, *,
               colours: Tensor | None = None) -> Tensor:
        """Scores ``(B, N)`` of the candidates ``masks (B, N, L, L)`` (low-res, input frame) on
        ``image_embedding (B or 1, C, h, w)`` for the phrases ``emb (B, D)`` (``words (B, T, W)`` and
        ``word_mask (B, T)`` when the locator reads per-token features); invalid candidates get -inf.
        ``colours (B, N, 6)``: :func:`region_colours` of the candidates (needed with colour appearance)."""
        return self.scores_and_presence(image_embedding, masks, valid, emb, words, word_mask, colours=colours)[0]

    def scores_and_presence(self, image_embedding: Tensor, masks: Tensor, valid: Tensor | None, emb: Tensor,
                            words: Tensor | None = None, word_mask: Tensor | None = None, *,
                            colours: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """:meth:`scores` and, with ``locator_presence``, each candidate's presence logit ``(B, N)`` (-inf for
        invalid candidates; None without the readout)."""
        g = self.phrase(emb, words, word_mask)
        r, centroid = self.region_vectors(image_embedding, masks, valid, colours)
        if self.factors == "joint":
            factors = ((self.query(g)[:, None] * r).sum(-1) / math.sqrt(self.hidden_dim)
                       + self.joint(g[:, None] * r)[..., 0])[..., None]
        else:
            factors = torch.stack([(q(g)[:, None] * r[:, :, f]).sum(-1) / math.sqrt(self.hidden_dim)
                                   + joint(g[:, None] * r[:, :, f])[..., 0]
                                   for f, (q, joint) in enumerate(zip(self.factor_query, self.factor_joint, strict=True))],
                                  dim=-1)  # (B, N, F): one content match per feature group
        scores = saturating_score(factors.sum(-1), g, centroid.transpose(1, 2), self.beta, self.gate, self.slope)
        presence = self.presence(factors)[..., 0] if self.presence is not None else None
        if valid is not None:
            scores = scores.masked_fill(~valid.bool(), float("-inf"))
            presence = presence.masked_fill(~valid.bool(), float("-inf")) if presence is not None else None
        return scores, presence

    @staticmethod
    def click(masks: Tensor, scores: Tensor, scale: float) -> Tensor:
        """The click on each phrase's best candidate: its deepest pixel, ``(B, 2)`` x, y in the input frame.

        ``masks (B, N, L, L)`` bool candidates, ``scores (B, N)``; ``scale`` = input pixels per low-res pixel.
        """
        rows = torch.arange(masks.shape[0], device=masks.device)
        best = masks[rows, scores.detach().argmax(dim=-1)].bool()
        return (deepest_points(best).float() + 0.5) * scale - 0.5

    @staticmethod
    def presence_loss(presence: Tensor, target: Tensor, absent: Tensor) -> Tensor:
        """``(B,)`` binary cross-entropy of the phrase being in the image: ``presence (B, N)`` logits (-inf for
        invalid candidates), ``target (B, N)`` the candidates a present phrase names, ``absent (B,)`` True for a
        phrase that names nothing in the image. A present phrase's logit is its best target candidate's (its
        other candidates are left free: "the leftmost circle" names every circle's content); an absent phrase's
        is its best candidate's. 0 for a present phrase without a target candidate (nothing to learn from)."""
        best_target = presence.masked_fill(~target.bool(), float("-inf")).amax(dim=-1)
        logit = torch.where(absent, presence.amax(dim=-1), best_target).float()
        use = absent | target.any(dim=-1)
        loss = F.binary_cross_entropy_with_logits(logit.clamp(-50, 50), (~absent).float(), reduction="none")
        return torch.where(use, loss, torch.zeros_like(loss))

    @staticmethod
    def loss(scores: Tensor, target: Tensor) -> Tensor:
        """``(B,)`` minus the log softmax mass of ``scores (B, N)`` on the ``target (B, N)`` candidates (0 where
        a sample has no target candidate)."""
        logp = scores.float().log_softmax(dim=-1)
        inside = logp.masked_fill(~target.bool(), float("-inf")).logsumexp(dim=-1)
        return torch.where(target.any(dim=-1), -inside, torch.zeros_like(inside))
