"""TextLocator: a learned grounding head that turns a phrase into a click on the image embedding.

Referring phrases often pick one of several look-alike objects by position ("the leftmost star", "the
cup on the right"). A mask decoder prompted by text tokens alone has to find every candidate and compare
their positions inside its few attention layers; a click is what it handles best. The locator makes that
click: it scores every cell of SAM's image-embedding grid for the phrase and the best cell becomes an
ordinary positive point token of the same decoder call (the text tokens stay in that call too).

Score of cell ``p`` (the grid's cell centres ``pos(p)`` in [-1, 1], x then y)::

    content(p) = sum over heads h of  q_h(phrase) . k_h(E(p)) / sqrt(d)        "looks like what is named"
    score(p)   = beta * sigmoid(content(p)) + gate(phrase) * content(p) + slope(phrase) . pos(p)

``q``, ``gate`` and ``slope`` come from the phrase (its pooled CLIP embedding, refined by attention over
the tower's per-token features when ``word_dim > 0``), ``k`` from a two-layer pointwise MLP on the image
embedding ``E``. The linear position term lets one phrase prefer the extreme candidate along any
direction among the cells that match its content (slope near zero for phrases without a position word).

Trained with :func:`locator_loss`: the log of the softmax mass that falls on the target's cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["PhraseVector", "TextLocator", "locator_loss", "target_cells", "cell_centres", "saturating_score"]


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
    ``g (B, hidden)``, positions ``pos`` ``(2, N)`` or ``(B, 2, N)`` in [-1, 1]. The bounded first term lets
    the position term decide among candidates that all match the phrase's content."""
    sl = slope(g) * 10
    position = sl @ pos if pos.ndim == 2 else (sl[:, :, None] * pos).sum(1)
    return F.softplus(beta) * 5 * torch.sigmoid(content) + content * torch.sigmoid(gate(g)) + position


class TextLocator(nn.Module):
    """Phrase + image embedding ``(B, C, h, w)`` -> cell scores ``(B, h * w)`` (row-major, y then x).

    Args:
        clip_dim: width ``D`` of the pooled CLIP embedding.
        image_dim: channels ``C`` of the image embedding (256 for SAM).
        word_dim: width of the tower's per-token features (0: the pooled embedding only).
        hidden_dim: width of the phrase vector and of the key MLP.
        heads, head_dim: content-matching heads.
    """

    def __init__(self, clip_dim: int, image_dim: int, word_dim: int = 0, hidden_dim: int = 128,
                 heads: int = 4, head_dim: int = 32) -> None:
        super().__init__()
        self.clip_dim, self.image_dim, self.word_dim = clip_dim, image_dim, word_dim
        self.hidden_dim, self.heads, self.head_dim = hidden_dim, heads, head_dim
        self.phrase = PhraseVector(clip_dim, word_dim, hidden_dim)
        self.query = nn.Linear(hidden_dim, heads * head_dim)
        self.slope = nn.Linear(hidden_dim, 2)
        self.gate = nn.Linear(hidden_dim, 1)
        self.key = nn.Sequential(nn.Conv2d(image_dim, hidden_dim, 1), nn.GELU(), nn.Conv2d(hidden_dim, heads * head_dim, 1))
        self.beta = nn.Parameter(torch.tensor(2.0))

    def forward(self, image_embedding: Tensor, emb: Tensor, words: Tensor | None = None,
                word_mask: Tensor | None = None) -> Tensor:
        """Cell scores ``(B, h * w)`` (logits of where the phrase's object is). ``image_embedding`` may have
        batch 1 for many phrases on one image."""
        g = self.phrase(emb, words, word_mask)
        b = g.shape[0]
        _, _, h, w = image_embedding.shape
        keys = self.key(image_embedding.to(g.dtype)).flatten(2)  # (B or 1, heads * head_dim, hw)
        keys = keys.view(keys.shape[0], self.heads, self.head_dim, h * w).expand(b, -1, -1, -1)
        q = self.query(g).view(b, self.heads, self.head_dim, 1)
        content = (q * keys).sum(2).sum(1) / math.sqrt(self.head_dim)  # (B, hw)
        pos = cell_centres(h, w, g.device, g.dtype)  # (2, hw)
        return saturating_score(content, g, pos, self.beta, self.gate, self.slope)


def cell_centres(h: int, w: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(2, h * w)`` x and y of the grid's cell centres in [-1, 1] (row-major)."""
    ys = ((torch.arange(h, device=device, dtype=dtype) + 0.5) / h) * 2 - 1
    xs = ((torch.arange(w, device=device, dtype=dtype) + 0.5) / w) * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)])


def target_cells(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(B, h * w)`` bool: cells at least half covered by the target ``mask`` ``(B, 1, H, W)`` (or ``(B, H, W)``)
    in {0, 1}; a target too small for that gets its most covered cell(s)."""
    m = mask.float()
    if m.ndim == 3:
        m = m[:, None]
    cover = F.adaptive_avg_pool2d(m, grid).flatten(1)
    cells = cover >= 0.5
    small = ~cells.any(dim=1) & (cover.amax(dim=1) > 0)
    if small.any():
        cells[small] = cover[small] >= cover[small].amax(dim=1, keepdim=True)
    return cells


def locator_loss(scores: Tensor, cells: Tensor) -> Tensor:
    """``(B,)`` minus the log softmax mass of ``scores (B, hw)`` on the target ``cells (B, hw)`` (0 for an
    empty target: nothing to find)."""
    logp = scores.float().log_softmax(dim=-1)
    inside = logp.masked_fill(~cells, float("-inf")).logsumexp(dim=-1)
    return torch.where(cells.any(dim=-1), -inside, torch.zeros_like(inside))
