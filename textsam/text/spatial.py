"""Spatial and ordinal words of referring expressions, resolved by geometry (ReCLIP's relation resolver).

:func:`parse` splits a phrase into what CLIP should score (the head noun phrase, ``Query.head``) and what the
boxes decide: a superlative ("leftmost", "the X on the left", "the biggest", "second from the right",
"closest"), a relation to another object ("the X left of the Y", "the X next to the Y", "the X on the Y"), or
a group ("all X", "every X", "both X"). :func:`resolve` turns CLIP's probabilities over the candidates into
the final ones:

- superlative (ReCLIP): ``P(i) ~ P(i) * sum_j P(j) [i beyond j along the direction]``; the k-th from one side
  keeps the candidates with about k better matches beyond them;
- relation (ReCLIP): ``P(i) ~ P_head(i) * sum_{j != i} R(i, j) P_anchor(j)``, ``R`` a geometric predicate;
- a phrase with none of these keeps CLIP's probabilities.

Rules over the words, no parser model: a phrase they do not understand falls back to plain scoring (the
whole phrase is the head). Frames: boxes are ``x0, y0, x1, y1`` pixels of the original image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Query", "parse", "resolve"]

# direction -> (key, sign): key "x"/"y" is the box centre, "area" the box area; sign -1 = smallest first
_DIRECTIONS = {
    "left": ("x", -1), "right": ("x", 1), "top": ("y", -1), "bottom": ("y", 1),
    "big": ("area", 1), "small": ("area", -1), "middle": ("centre", -1),
}
_SUPERLATIVE_WORDS = {
    "leftmost": "left", "left-most": "left", "rightmost": "right", "right-most": "right",
    "topmost": "top", "uppermost": "top", "upper": "top", "highest": "top", "top": "top",
    "bottommost": "bottom", "lowermost": "bottom", "lower": "bottom", "lowest": "bottom", "bottom": "bottom",
    "biggest": "big", "largest": "big", "bigger": "big", "larger": "big",
    "smallest": "small", "tiniest": "small", "smaller": "small",
    "closest": "big", "nearest": "big", "closer": "big", "front": "big",
    "farthest": "small", "furthest": "small", "farther": "small", "further": "small",
    "middle": "middle", "center": "middle", "centre": "middle", "central": "middle",
    "big": "big", "large": "big", "huge": "big", "small": "small", "little": "small", "tiny": "small",
}
# "the X on the left", "the X at the top", "the left X" (as adjectives: only these)
_SIDE_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}
_ORDINALS = {"first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "fourth": 3, "4th": 3,
             "fifth": 4, "5th": 4, "last": -1}
# relation words (before an anchor noun phrase) -> predicate
_RELATIONS = [
    ("to the left of", "left"), ("left of", "left"), ("to the right of", "right"), ("right of", "right"),
    ("on top of", "above"), ("above", "above"), ("over", "above"), ("below", "below"), ("under", "below"),
    ("underneath", "below"), ("beneath", "below"), ("next to", "near"), ("beside", "near"), ("near", "near"),
    ("by", "near"), ("close to", "near"), ("inside", "inside"), ("within", "inside"),
    ("on", "on"), ("behind", "behind"), ("in front of", "front"),
]
_GROUP_WORDS = ("all the", "all of the", "all", "every", "each", "both")
_ARTICLES = re.compile(r"^(the|a|an|this|that)\s+")


@dataclass(frozen=True)
class Query:
    """A phrase split for scoring. ``head``: what CLIP scores. ``directions``: superlatives (keys of
    ``_DIRECTIONS``, e.g. ``("bottom", "left")`` for "bottom left"), the first with ``rank`` (0 = the most
    extreme, 1 = the second, -1 = the other end). ``relation`` and ``anchor``: "the X <relation> the <anchor>".
    ``group``: every object matching ``head``."""

    text: str
    head: str
    directions: tuple[str, ...] = ()
    rank: int = 0
    relation: str | None = None
    anchor: str | None = None
    group: bool = False


def _strip(words: str) -> str:
    words = re.sub(r"\s+", " ", words).strip(" ,.")
    return _ARTICLES.sub("", words).strip() or words


_SIDE = r"(left|right|top|bottom|middle|center|centre)"


def parse(phrase: str) -> Query:
    """Split ``phrase`` (see the module docstring); a phrase without spatial words keeps it all as the head."""
    text = re.sub(r"\s+", " ", phrase.lower()).strip(" .,!?")
    rest = f" {text} "
    group = False
    for word in _GROUP_WORDS:
        if rest.startswith(f" {word} "):
            group, rest = True, " " + rest[len(word) + 2:]
            break
    directions: list[str] = []
    rank = 0
    # "the second X from the left", "the last X from the right"
    m = re.search(rf"\s(first|second|third|fourth|fifth|1st|2nd|3rd|4th|5th|last)\s+(.*?)\s*from\s+(?:the\s+)?"
                  rf"{_SIDE}\s", rest)
    if m:
        directions, rank = [_SUPERLATIVE_WORDS.get(m.group(3), m.group(3))], _ORDINALS[m.group(1)]
        rest = rest[: m.start()] + " " + m.group(2) + " " + rest[m.end():]
    # "the X on the left", "the X at the top right", "the X in the middle"
    m = re.search(rf"\s(?:on|at|in|to)\s+(?:the\s+)?(?:very\s+|far\s+)?{_SIDE}(?:\s+{_SIDE})?(?:\s+(?:side|corner))?\s*$",
                  rest)
    if m and not directions:
        directions = [_SUPERLATIVE_WORDS.get(w, w) for w in (m.group(1), m.group(2)) if w]
        rest = rest[: m.start()] + " "
    for words, relation in _RELATIONS:  # "the X left of the Y": the anchor is what follows
        m = re.search(rf"\s(?:that is |which is |who is |is )?{re.escape(words)}\s+(.+)$", rest)
        if m and rest[: m.start()].strip():
            anchor, head = _strip(m.group(1)), _strip(rest[: m.start()])
            if anchor and head:
                return Query(text, head, tuple(directions), rank, relation=relation, anchor=anchor, group=group)
    words = rest.split()
    kept = []
    for i, w in enumerate(words):
        is_last = i == len(words) - 1
        if w in _SUPERLATIVE_WORDS and not is_last and (w not in ("top", "bottom") or words[i + 1] != "of"):
            directions.append(_SUPERLATIVE_WORDS[w])
        elif w in _SIDE_WORDS and not is_last and words[i + 1] not in ("of", "side"):
            directions.append(_SIDE_WORDS[w])
        elif w in _ORDINALS and not is_last and (words[i + 1] in _SUPERLATIVE_WORDS or words[i + 1] in _SIDE_WORDS):
            rank = _ORDINALS[w]
        else:
            kept.append(w)
    head = _strip(" ".join(kept))
    if not head:  # only spatial words ("second from left"): any object
        head = "object" if directions else text
    return Query(text, head, tuple(dict.fromkeys(directions)), rank, group=group)


def _key(boxes: Tensor, direction: str, size: tuple[int, int]) -> Tensor:
    """The quantity a direction sorts by, larger = further along it: ``boxes (N, 4)`` -> ``(N,)``."""
    key, sign = _DIRECTIONS[direction]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    if key == "x":
        value = cx
    elif key == "y":
        value = cy
    elif key == "area":
        value = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    else:
        h, w = size
        value = ((cx - w / 2) / w) ** 2 + ((cy - h / 2) / h) ** 2
    return sign * value


def _relation(boxes: Tensor, relation: str) -> Tensor:
    """``R (N, N)`` in [0, 1]: how well candidate i stands in ``relation`` to candidate j."""
    x0, y0, x1, y1 = boxes.unbind(1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0).clamp_min(1), (y1 - y0).clamp_min(1)
    if relation == "left":
        r = cx[:, None] < cx[None, :]
    elif relation == "right":
        r = cx[:, None] > cx[None, :]
    elif relation in ("above", "on", "behind"):
        r = cy[:, None] < cy[None, :]
    elif relation in ("below", "front"):
        r = cy[:, None] > cy[None, :]
    elif relation == "inside":
        ix = (torch.minimum(x1[:, None], x1[None]) - torch.maximum(x0[:, None], x0[None])).clamp_min(0)
        iy = (torch.minimum(y1[:, None], y1[None]) - torch.maximum(y0[:, None], y0[None])).clamp_min(0)
        return (ix * iy) / (w * h)[:, None]
    else:  # near: closeness of the centres, in units of the pair's size
        d = torch.sqrt((cx[:, None] - cx[None]) ** 2 + (cy[:, None] - cy[None]) ** 2)
        scale = (w + h)[:, None] / 2 + (w + h)[None] / 2
        return torch.exp(-d / scale)
    return r.float()


def resolve(query: Query, head: Tensor, boxes: Tensor, size: tuple[int, int], anchor: Tensor | None = None) -> Tensor:
    """Final probabilities ``(N,)`` over the candidates from CLIP's ``head (N,)`` probabilities for the head
    phrase (and ``anchor (N,)`` for a relation's anchor), ``boxes (N, 4)`` pixels of an image of ``size`` (H, W)."""
    if len(head) < 2:
        return head
    boxes = boxes.float()
    if query.relation is not None and anchor is not None:
        r = _relation(boxes, query.relation)
        r.fill_diagonal_(0)
        out = head * (r @ anchor)
    elif query.directions:
        out = head
        for n, direction in enumerate(query.directions):
            key = _key(boxes, direction, size)
            beyond = (key[:, None] > key[None, :]).float()  # beyond[i, j]: i further along the direction than j
            rank = query.rank if n == 0 else 0
            if rank == 0:  # the extreme one (ReCLIP's superlative, counting i itself)
                out = out * ((beyond + torch.eye(len(head))) @ head)
            else:  # the k-th from the extreme (k = rank), or the last one (rank -1): count the good matches
                weight = head / head.max().clamp_min(1e-12)
                count = beyond.T @ weight if rank > 0 else beyond @ weight  # matches beyond i / behind i
                out = out * torch.exp(-((count - max(rank, 0)) ** 2) / 0.5)
    else:
        return head
    total = out.sum()
    return out / total if total > 0 else head
