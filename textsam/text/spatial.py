"""Spatial and ordinal words of referring expressions, resolved by geometry (ReCLIP's relation resolver).

:func:`parse` splits a phrase into what CLIP should score (the head noun phrase, ``Query.head``) and what the
boxes decide: a superlative ("leftmost", "the X on the left", "the biggest", "second from the right",
"closest"), a relation to another object ("the X left of the Y", "the X next to the Y", "the X on the Y"), or
a group ("all X", "every X", "both X"). :func:`resolve` turns CLIP's probabilities over the candidates into
the final ones:

- superlative (ReCLIP): ``P(i) ~ P(i) * sum_j P(j) [i beyond j along the direction]``; the k-th from one side
  keeps the candidates with about k better matches beyond them;
- relation (ReCLIP): ``P(i) ~ P_head(i) * sum_{j != i} R(i, j) P_anchor(j)``, ``R`` a geometric predicate in
  [0, 1] (``1 - R`` for a negated relation, and "far" is ``1 - near``); several relations multiply; "between
  the Y and the Z" (or "between two Ys") has two anchors: ``sum_{j != l} B(i, j, l) P_Y(j) P_Z(l)``, ``B`` how
  well i's centre lies on the segment between j's and l's;
- a phrase with none of these keeps CLIP's probabilities.

Rules over the words, no parser model: a phrase they do not understand falls back to plain scoring (the
whole phrase is the head). For phrases people write (RefCOCO-style; checked on the 506 expressions of RefCOCOS
in ``../shared/data/refcocos_on_coco_tiny``):

- the earliest relation in the phrase is the one ("a pot on the stovetop next to the coffee machine": on the
  stovetop), the longest where several start at the same word ("on the left hand side of" over "on");
- the anchor runs to the first comma, or to "and" before a negation or a verb, or to "but" ("close to the fruit
  and not next to the fridge", "under an umbrella but not holding it"); a clause after it that begins with a
  relation relates the head to one more object ("and not next to the fridge": a second, negated relation),
  the others describe the head again ("the person on the bench, wearing a hat"), except a negative one ("...,
  not holding a glass"), which CLIP cannot score;
- "not" / "isn't" / "neither" right before the relation (after "that is", "who is") negates it (``negated``:
  the candidates least in that relation), and linking words ("that is", "located", "and") leave the head;
- a pronoun, a part of the head ("spots on its face"), a place ("on the front") or the viewer ("facing the
  camera") is no anchor; "closest to / farthest from the camera" are superlatives (nearest = biggest), while
  "closest to / farthest from the X" are relations ("near", "far");
- side words that name a garment or a body part stay in the head ("a white top with ...", "the right hand of");
- what the object is not leaves the head and the anchors ("the person not wearing a hat", "the suitcase without a
  tag", "the bottle that is not empty": "person", "suitcase", "bottle"), and so does a negative clause after a
  comma: CLIP would score the words it reads and prefer the excluded objects. The head's comes back made positive
  as ``Query.excluded`` ("person wearing a hat"), which the engine takes as the phrase's negative phrase;
  "anyone", "something" and the like are no anchor ("the knife not held by anyone nor placed on the table": not
  on the table);
- a superlative beside a relation ranks what the relation leaves ("the leftmost cup on the table").

The same rules run in the browser page (``textsam/export/web_page/textsam.js``; a test compares the two).
Frames: boxes are ``x0, y0, x1, y1`` pixels of the original image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Query", "parse", "resolve", "support"]

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
# how Query.describe names them
_DESCRIBED_DIRECTIONS = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost",
                         "big": "biggest", "small": "smallest", "middle": "most central"}
_COUNTED_FROM = {"left": "from the left", "right": "from the right", "top": "from the top", "bottom": "from the bottom",
                 "big": "by size, biggest first", "small": "by size, smallest first", "middle": "from the centre"}
_DESCRIBED_RELATIONS = {"left": "left of", "right": "right of", "far": "far from", "front": "in front of"}
# "the X on the left", "the X at the top", "the left X" (as adjectives: only these)
_SIDE_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}
_ORDINALS = {"first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "fourth": 3, "4th": 3,
             "fifth": 4, "5th": 4, "last": -1}
# relation words (before an anchor noun phrase) -> predicate; the earliest in the phrase wins (the longest of
# those starting at the same word: "on top of" over "on")
_RELATIONS = [
    ("to the left of", "left"), ("left of", "left"), ("to the right of", "right"), ("right of", "right"),
    ("on the left of", "left"), ("on the right of", "right"), ("on the left side of", "left"),
    ("on the right side of", "right"), ("on the left hand side of", "left"), ("on the right hand side of", "right"),
    ("to the left side of", "left"), ("to the right side of", "right"), ("left side of", "left"),
    ("right side of", "right"), ("left hand side of", "left"), ("right hand side of", "right"),
    ("on top of", "above"), ("above", "above"), ("over", "above"), ("below", "below"), ("under", "below"),
    ("underneath", "below"), ("beneath", "below"), ("next to", "near"), ("beside", "near"), ("near", "near"),
    ("by", "near"), ("close to", "near"), ("closest to", "near"), ("nearest to", "near"), ("inside", "inside"),
    ("within", "inside"), ("in the middle of", "inside"), ("on", "on"), ("behind", "behind"),
    ("in front of", "front"), ("far from", "far"), ("farther from", "far"), ("farthest from", "far"),
    ("further from", "far"), ("furthest from", "far"), ("between", "between"), ("in between", "between"),
]
_LONGEST_FIRST = sorted(_RELATIONS, key=lambda r: -len(r[0]))  # a clause's relation: the longest words that match
# an anchor that is no object of the image: a pronoun ("with numbers on it") or the viewer ("facing the camera")
_PRONOUNS = {"it", "its", "them", "him", "her", "itself", "themselves", "this", "that", "these", "those", "one",
             "ones", "other", "others", "each other", "one another"}
# an anchor beginning with one of these is no other object: a part of the head ("spots on its face"), another
# preposition ("leaned on by the person": the next relation is the one), or a place in the picture ("on the front")
_NOT_AN_ANCHOR = {"its", "his", "her", "their", "my", "your", "by", "on", "in", "at", "to", "of", "with", "from",
                  "front", "back", "side", "top", "bottom", "left", "right", "middle", "center", "centre", "corner",
                  "edge", "end", "background", "foreground", "anyone", "anybody", "anything", "someone", "somebody",
                  "something", "everyone", "everybody", "everything", "nobody", "nothing", "none"}
_VIEWER = r"(?:the\s+)?(?:camera|viewer|photographer|us)"
# words that end a head before its relation and say nothing of the object ("the cup that is not next to ...")
_LINKING = {"that", "which", "who", "is", "are", "was", "were", "being", "placed", "located", "positioned",
            "situated", "standing", "sitting", "lying", "and", "but", "or"}
_NEGATIONS = {"not", "never", "nor", "neither"}
# where a description of what the object is not begins ("not wearing a hat", "without a tag", "no hat"), and the
# words that cannot end what is left before it ("the sign with", "a person standing and")
_NOT_WORDS = _NEGATIONS | {"no", "without"}
_DANGLING = {"with", "of", "in", "on", "at", "by", "to", "for", "from", "as", "do", "does", "did", "has", "have", "had"}
# "the remote in the right hand of ...": a side word naming a part of something, not where the object is
_PARTS = {"hand", "hands", "arm", "arms", "leg", "legs", "foot", "feet", "shoe", "shoes", "eye", "eyes", "ear", "ears",
          "wing", "wings", "paw", "paws", "glove", "gloves", "sleeve", "knee", "shoulder", "half", "part", "edge"}
# "a white top with ...", "the top and ...": top / bottom as a garment or a noun, not a position (after one of
# these words, or before one of _AFTER_NOUN)
_AFTER_NOUN = {"with", "and", "or", "on", "in", "at", "of", "that", "which", "who", "is", "are", "has", "having",
               "wearing", "holding", ","}
_BEFORE_GARMENT = {"white", "black", "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "grey",
                   "gray", "dark", "light", "striped", "tank", "bikini", "a", "an"}
# what may follow "on the left", "in the middle" when the side phrase sits inside the phrase (else: only at its end)
_CLAUSE = (r"with|and|who|that|which|whose|wearing|holding|having|carrying|sitting|standing|looking|facing|"
           r"in|on|at|near|next|behind|beside|under|above|below|by|not|no|without")
_GROUP_WORDS = ("all the", "all of the", "all", "every", "each", "both")
_ARTICLES = re.compile(r"^(the|a|an|this|that)\s+")


@dataclass(frozen=True)
class Query:
    """A phrase split for scoring. ``head``: what CLIP scores. ``directions``: superlatives (keys of
    ``_DIRECTIONS``, e.g. ``("bottom", "left")`` for "bottom left"), the first with ``rank`` (0 = the most
    extreme, 1 = the second, -1 = the other end). ``relation`` and ``anchor``: "the X <relation> the <anchor>";
    ``negated``: "the X not <relation> the <anchor>" (the candidates least in that relation). ``more_relations``:
    the further relations of a phrase that relates its object to several others, ``(relation, anchor, negated)``
    each ("the chair close to the fruit and not next to the fridge": ``("near", "fridge", True)``). ``group``:
    every object matching ``head``. ``excluded``: what the phrase says the object is not, as a phrase CLIP can
    score ("the circle that is not red": ``("circle that is red",)``), which the engine takes as a negative phrase."""

    text: str
    head: str
    directions: tuple[str, ...] = ()
    rank: int = 0
    relation: str | None = None
    anchor: str | None = None
    group: bool = False
    negated: bool = False
    more_relations: tuple[tuple[str, str, bool], ...] = ()
    excluded: tuple[str, ...] = ()

    @property
    def relations(self) -> tuple[tuple[str, str, bool], ...]:
        """Every relation of the phrase, ``(relation, anchor, negated)`` each, the first one first."""
        if self.relation is None or self.anchor is None:
            return ()
        return ((self.relation, self.anchor, self.negated), *self.more_relations)

    @property
    def anchors(self) -> tuple[str, ...]:
        """The anchor noun phrases CLIP scores, in the order of :attr:`relations`."""
        return tuple(anchor for _, anchor, _ in self.relations)

    def describe(self) -> str:
        """The reading in a few words, for people (the app's status line): ``"'cup', leftmost, left of 'plate',
        not near 'fridge'"``; ``"every 'car', between 'bus' and 'van'"``."""
        parts = [("every " if self.group else "") + f"'{self.head}'"]
        for n, direction in enumerate(self.directions):
            word = _DESCRIBED_DIRECTIONS[direction]
            rank = self.rank if n == 0 else 0
            counted = _COUNTED_FROM[direction]
            parts.append(word if rank == 0 else f"the last {counted}" if rank < 0 else f"number {rank + 1} {counted}")
        relations = list(self.relations)
        k = 0
        while k < len(relations):
            name, anchor, negated = relations[k]
            if name == "between" and k + 1 < len(relations):
                words, k = f"between '{anchor}' and '{relations[k + 1][1]}'", k + 2
            else:
                words, k = f"{_DESCRIBED_RELATIONS.get(name, name)} '{anchor}'", k + 1
            parts.append(("not " if negated else "") + words)
        parts.extend(f"not like '{e}'" for e in self.excluded)
        return ", ".join(parts)

    def as_dict(self) -> dict:
        """The reading as plain values (``Prediction.info["query"]``, the CLI's JSON ``prompt.query``)."""
        return {"head": self.head, "directions": list(self.directions), "rank": self.rank, "relation": self.relation,
                "anchor": self.anchor, "negated": self.negated, "group": self.group,
                "more_relations": [list(r) for r in self.more_relations], "excluded": list(self.excluded)}


def _strip(words: str) -> str:
    words = re.sub(r"\s+,", ",", re.sub(r"\s+", " ", words)).strip(" ,.")
    return _ARTICLES.sub("", words).strip() or words


_SIDE = r"(left|right|top|bottom|middle|center|centre)"


def _head_before(words: str) -> tuple[str, bool]:
    """The head noun phrase in the ``words`` before a relation, and whether the relation is negated there: linking
    words at its end are dropped ("the cup that is" -> "cup"), a negation among them ("that is not") negates."""
    tokens = words.split()
    negated = False
    while tokens and (tokens[-1] in _LINKING or tokens[-1] in _NEGATIONS or tokens[-1].endswith("n't")):
        negated = negated or tokens[-1] in _NEGATIONS or tokens[-1].endswith("n't")
        tokens.pop()
    return _tidy(" ".join(tokens)), negated


def _tidy(words: str) -> str:
    """:func:`_strip`, and words that cannot end a noun phrase dropped from its end ("the light that is the",
    "the wall nor")."""
    tokens = _strip(words).split()
    while len(tokens) > 1 and (tokens[-1] in _LINKING or tokens[-1] in _NEGATIONS or tokens[-1] in ("the", "a", "an")):
        tokens.pop()
    return _strip(" ".join(tokens))


# the positive of a negation word, for the phrase of what is excluded ("without" -> "with"; "" drops the word)
_POSITIVE = {"not": "", "never": "", "neither": "", "nor": "or", "no": "with", "without": "with", "can't": "can",
             "won't": "will", "cannot": "can"}


def _affirmative(words: str) -> tuple[str, str | None]:
    """``words`` (a head or an anchor) without what they say the object is not, and that description made positive
    (None when there is none): "person wearing a hat not carrying a frisbee" -> ("person wearing a hat", "carrying a
    frisbee"), "bottle that is not empty" -> ("bottle", "that is empty"), "suitcase without a tag" -> ("suitcase",
    "with a tag"), "man who isn't smiling" -> ("man", "who is smiling"). CLIP scores the words it reads, so a
    negated description would make it prefer the very objects it excludes (the person carrying a frisbee); the
    engine scores the positive one as a negative phrase instead (:attr:`Query.excluded`). The cut is at the first
    negation (``_NOT_WORDS``, or a word ending in "n't"), with the linking words, prepositions and auxiliaries
    ("that does not") left dangling before it; where no noun phrase comes before the negation ("no parking
    sign"), the words are kept whole."""
    tokens = words.split()
    for i, w in enumerate(tokens):
        if w in _NOT_WORDS or w.endswith("n't"):
            kept = tokens[:i]
            while kept and (kept[-1] in _LINKING or kept[-1] in _DANGLING or kept[-1] in ("the", "a", "an")):
                kept.pop()
            if not kept:
                return words, None
            cut = [_POSITIVE.get(t, t[:-3] if t.endswith("n't") else t) if (t in _POSITIVE or t.endswith("n't"))
                   else t for t in tokens[len(kept):]]
            return _tidy(" ".join(kept)), " ".join(t for t in cut if t) or None
    return words, None


def _is_anchor(anchor: str) -> bool:
    """Whether ``anchor`` (tidied words after a relation) names another object: not empty, no pronoun, no part of
    the head or place in the picture (``_NOT_AN_ANCHOR``), not the viewer."""
    return bool(anchor) and anchor not in _PRONOUNS and anchor.split()[0] not in _NOT_AN_ANCHOR and \
        not re.fullmatch(_VIEWER, anchor)


def _clause_relation(clause: str) -> tuple[tuple[str, str, bool], ...] | None:
    """A clause after an anchor that relates the head to more objects ("not next to the fridge", "is located
    right of the flower", "between the cup and the plate"): its ``(relation, anchor, negated)`` entries (two for
    "between"), or None for a clause that does not begin (after linking words and negations) with a relation to
    an object."""
    tokens = clause.split()
    negated = False
    while tokens and (tokens[0] in _LINKING or tokens[0] in _NEGATIONS or tokens[0].endswith("n't")):
        negated = negated or tokens[0] in _NEGATIONS or tokens[0].endswith("n't")
        tokens.pop(0)
    rest = f" {' '.join(tokens)} "
    for words, relation in _LONGEST_FIRST:  # "on top of" over "on"
        if rest.startswith(f" {words} "):
            anchor = _tidy(rest[len(words) + 2:])
            if relation == "between":
                pair = _between_anchors(anchor)
                return None if pair is None else tuple((relation, a, negated) for a in pair)
            return ((relation, anchor, negated),) if _is_anchor(anchor) else None
    return None


def _between_anchors(anchor: str) -> tuple[str, str] | None:
    """The two anchors of "between": "the plate and the bowl" -> ("plate", "bowl"); "two trucks" -> ("trucks",
    "trucks"); None when the words name no two objects. The anchor words come tidied (no leading article)."""
    m = re.fullmatch(r"(?:two|2|both)\s+(.+)", anchor)
    if m:
        pair = (_tidy(m.group(1)),) * 2
    else:  # at the "and" before an article where there is one: "the man in a shirt and jeans and the woman"
        split = re.search(r" and (?=(?:the|a|an) )", anchor) or re.search(r" and ", anchor)
        if split is None:
            return None
        pair = (_tidy(anchor[: split.start()]), _tidy(anchor[split.end():]))
    return pair if all(_is_anchor(a) for a in pair) else None


def _described(head: str, more: str) -> tuple[str, tuple[tuple[str, str, bool], ...]]:
    """``head`` with the comma-separated clauses of ``more`` that describe it ("wearing a hat"), and the clauses
    that relate it to another object (:func:`_clause_relation`: "and not next to the fridge"). A negative clause
    that is no relation ("not holding a glass") says what the object is not: it goes last, where
    :func:`_affirmative` takes it out of the head."""
    relations: list[tuple[str, str, bool]] = []
    kept, negative = [], []
    for clause in (c.strip() for c in more.split(",")):
        found = _clause_relation(clause) if clause else None
        if found is not None:
            relations.extend(found)
        elif clause:
            (negative if re.match(r"(?:and |but )?(?:not|no|neither|nor|never)\b", clause) else kept).append(clause)
    return _tidy(" ".join([head, *kept, *negative])), tuple(relations)


# where an anchor's words end though no comma says so: "and" before a negation or a verb, "but" ("close to the
# fruit and not next to the fridge", "not on the sidewalk and is carrying a bag", "not inside the bus but near the
# door"); what follows is another clause about the head, as after a comma
_CLAUSE_BREAK = re.compile(r"\s+(?:and\s+(?=(?:not|no|never|is|are|was|were|isn't|aren't|located|has|have)\b)|but\s+)")


def _relation_in(rest: str) -> tuple[str, str, str, bool, tuple[tuple[str, str, bool], ...]] | None:
    """The earliest relation of ``rest`` with a head before it and an anchor object after it: ``(head, relation,
    anchor, negated, more_relations)``. The anchor runs to the first comma (or clause break, ``_CLAUSE_BREAK``);
    what follows describes the head again ("the person on the bench, wearing a hat": anchor "bench", head "person
    wearing a hat") or relates it to more objects ("..., not next to the fridge": ``more_relations``). A pronoun
    or the viewer as the anchor is no relation between objects ("with numbers on it", "facing the camera"): the
    next one is tried."""
    found = []
    for words, relation in _RELATIONS:
        for m in re.finditer(rf"(?<=\s){re.escape(words)}\s+", rest):
            found.append((m.start(), -len(words), relation, m))
    for _, _, relation, m in sorted(found, key=lambda f: (f[0], f[1])):
        if relation == "on" and rest[: m.start()].split()[-1:] in (["turned"], ["switched"], ["powered"]):
            continue  # a particle: "the turned on laptop"
        after = _CLAUSE_BREAK.sub(", ", rest[m.end():])
        anchor_text, _, more = after.partition(",")
        anchor = _tidy(anchor_text)
        pair = _between_anchors(anchor) if relation == "between" else None
        if not _is_anchor(anchor) or (relation == "between" and pair is None):
            continue
        head, negated = _head_before(rest[: m.start()])
        if not head:
            continue
        described, more_relations = _described(head, more)
        if pair is not None:  # "between" spans two entries, its two anchors
            anchor, more_relations = pair[0], (("between", pair[1], negated), *more_relations)
        return described, relation, anchor, negated, more_relations
    return None


def _side_word_kept(words: list[str], i: int) -> bool:
    """Whether side word ``words[i]`` is part of the head, not a position: "right hand", "left side of" (a
    relation), "top of"; "a white top with ...", "the top and ..." (a garment or a noun)."""
    w, nxt = words[i], words[i + 1]
    if w in ("left", "right") and nxt in _PARTS:
        return True
    if w in ("top", "bottom"):
        return nxt in _AFTER_NOUN or nxt.startswith(",") or (i > 0 and words[i - 1] in _BEFORE_GARMENT)
    return False


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
    # "the closest to the camera", "the second farthest from the camera": the viewer is no object of the image,
    # so these are superlatives (nearest = biggest), as "closest" alone
    m = re.search(rf"\s(?:(first|second|third|fourth|fifth|1st|2nd|3rd|4th|5th|last)\s+)?(?:(closest|nearest|closer)\s+to"
                  rf"|(farthest|furthest|farther|further)\s+(?:away\s+)?from)\s+{_VIEWER}(?=[\s,])", rest)
    if m:
        directions, rank = ["big" if m.group(2) else "small"], _ORDINALS[m.group(1)] if m.group(1) else 0
        rest = rest[: m.start()] + " " + rest[m.end():]
    # "the second X from the left", "the last X from the right"
    m = re.search(rf"\s(first|second|third|fourth|fifth|1st|2nd|3rd|4th|5th|last)\s+(.*?)\s*from\s+(?:the\s+)?"
                  rf"{_SIDE}(?=[\s,])", rest)
    if m and not directions:
        directions, rank = [_SUPERLATIVE_WORDS.get(m.group(3), m.group(3))], _ORDINALS[m.group(1)]
        rest = rest[: m.start()] + " " + m.group(2) + " " + rest[m.end():]
    # "the X on the left", "the X at the top right", "the X in the middle" (at the end, or before a clause:
    # "the giraffe in the middle with its mouth open")
    m = re.search(rf"\s(?:on|at|in|to)\s+(?:the\s+)?(?:very\s+|far\s+)?{_SIDE}(?:\s+{_SIDE})?"
                  rf"(?:\s+(?:hand\s+)?(?:side|corner))?(?=\s*$|\s*,|\s+(?:{_CLAUSE})\s)", rest)
    if m and not directions:
        directions = [_SUPERLATIVE_WORDS.get(w, w) for w in (m.group(1), m.group(2)) if w]
        rest = rest[: m.start()] + " " + rest[m.end():]
    relation = _relation_in(rest)
    if relation is not None:
        head, name, anchor, negated, more_relations = relation
        head, excluded = _affirmative(head)
        head, more, more_rank = _superlatives(head)  # "the biggest dog next to the car"
        head = head or "object"
        rank = rank if directions else more_rank
        more_relations = tuple((r, _affirmative(a)[0], n) for r, a, n in more_relations)
        return Query(text, head, tuple(dict.fromkeys(directions + more)), rank, relation=name,
                     anchor=_affirmative(anchor)[0], group=group, negated=negated, more_relations=more_relations,
                     excluded=(_tidy(f"{head} {excluded}"),) if excluded else ())
    rest, excluded = _affirmative(rest)
    head, more, more_rank = _superlatives(rest)
    rank = rank if directions else more_rank
    directions += more
    if not head:  # only spatial words ("second from left"): any object
        head = "object" if directions else text
    return Query(text, head, tuple(dict.fromkeys(directions)), rank, group=group,
                 excluded=(_tidy(f"{head} {excluded}"),) if excluded else ())


def _superlatives(phrase: str) -> tuple[str, list[str], int]:
    """The superlative and side words of ``phrase`` taken out ("the leftmost red cross", "bottom right pizza",
    "second largest"): ``(head, directions, rank)``; the head is empty when only such words were there."""
    words = phrase.split()
    kept, directions, rank = [], [], 0
    for i, w in enumerate(words):
        is_last = i == len(words) - 1
        if not is_last and w in _SIDE_WORDS and _side_word_kept(words, i):
            kept.append(w)
        elif w in ("far", "very", "extreme") and not is_last and words[i + 1] in _SIDE_WORDS:
            continue  # "far right person": the side word says it
        elif w in _SUPERLATIVE_WORDS and not is_last and (w not in ("top", "bottom") or words[i + 1] != "of"):
            directions.append(_SUPERLATIVE_WORDS[w])
        elif w in _SIDE_WORDS and not is_last and words[i + 1] not in ("of", "side"):
            directions.append(_SIDE_WORDS[w])
        elif w in _ORDINALS and not is_last and (words[i + 1] in _SUPERLATIVE_WORDS or words[i + 1] in _SIDE_WORDS):
            rank = _ORDINALS[w]
        else:
            kept.append(w)
    return (_tidy(" ".join(kept)) if kept else ""), directions, rank


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
    else:  # near: closeness of the centres, in units of the pair's size; far: the opposite
        d = torch.sqrt((cx[:, None] - cx[None]) ** 2 + (cy[:, None] - cy[None]) ** 2)
        scale = (w + h)[:, None] / 2 + (w + h)[None] / 2
        near = torch.exp(-d / scale)
        return 1 - near if relation == "far" else near
    return r.float()


def _between(boxes: Tensor, negated: bool = False) -> Tensor:
    """``B (N, N, N)`` in [0, 1]: how well candidate i lies between candidates j and l (``1 - B`` when
    ``negated``). Centres: i's projection onto the segment from j to l falls inside it (``0 < t < 1``), and i lies
    near the segment (1 on it, 0 at half the segment's length from it or further). 0 where two of i, j, l are the
    same candidate."""
    c = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)  # (N, 2)
    seg = c[None, None, :, :] - c[None, :, None, :]  # (1, N_j, N_l, 2): c_l - c_j
    rel = c[:, None, None, :] - c[None, :, None, :]  # (N_i, N_j, 1, 2): c_i - c_j
    length2 = (seg ** 2).sum(-1).clamp_min(1e-6)  # (1, j, l)
    t = (rel * seg).sum(-1) / length2  # (i, j, l)
    perp = (rel - t[..., None] * seg).norm(dim=-1) / length2.sqrt()
    b = ((t > 0) & (t < 1)).float() * (1 - 2 * perp).clamp(0, 1)
    if negated:
        b = 1 - b
    n = len(boxes)
    eye = torch.eye(n, dtype=torch.bool, device=boxes.device)
    same = eye[:, :, None] | eye[:, None, :] | eye[None, :, :]  # i == j, i == l or j == l
    return b.masked_fill(same, 0.0)


def _relation_terms(query: Query, boxes: Tensor, anchor: Tensor | None, more_anchors: Sequence[Tensor]) -> Tensor | None:
    """``prod_r sum_{j != i} R_r(i, j) P_anchor_r(j)`` for each candidate ``(N,)`` (``between``: its two entries'
    ``sum_{j != l} B(i, j, l) P_a(j) P_b(l)``), or None for a phrase without a relation (or no anchor
    probabilities). ``boxes (N, 4)`` float pixels."""
    if query.relation is None or anchor is None:
        return None
    out = torch.ones(len(boxes), dtype=anchor.dtype, device=anchor.device)
    relations, anchors = list(query.relations), [anchor, *more_anchors]
    k = 0
    while k < min(len(relations), len(anchors)):
        name, _, negated = relations[k]
        if name == "between" and k + 1 < len(anchors):  # two entries: sum_{j != l} B(i, j, l) P_a(j) P_b(l)
            out = out * torch.einsum("ijl,j,l->i", _between(boxes, negated).to(out), anchors[k], anchors[k + 1])
            k += 2
            continue
        r = _relation(boxes, name).to(out)
        if negated:
            r = 1 - r
        r.fill_diagonal_(0)
        out = out * (r @ anchors[k])
        k += 1
    return out


def support(query: Query, boxes: Tensor, size: tuple[int, int], anchor: Tensor | None = None,
            more_anchors: Sequence[Tensor] = ()) -> Tensor:
    """How well each candidate ``(N,)`` in [0, 1] stands where the phrase puts it, for the answers that are a set
    (a group phrase, "all the cups on the table", and ``instances="all"``): its relations' terms (as
    :func:`resolve` weighs them) divided by the largest candidate's, so the best placed candidate has 1 ("next
    to" is a matter of degree); and for a group phrase with a side word ("all the cars on the left"), whether its
    box centre lies in that half of the image. 1 everywhere for a phrase with neither. ``boxes (N, 4)`` pixels
    of an image of ``size`` (H, W)."""
    boxes = boxes.float()
    out = torch.ones(len(boxes))
    terms = _relation_terms(query, boxes, anchor, more_anchors)
    if terms is not None:
        top = terms.max() if len(terms) else terms.new_zeros(())
        out = (terms / top).clamp(0, 1).float().cpu() if top > 0 else torch.zeros(len(boxes))
    if query.group:
        h, w = size
        cx, cy = ((boxes[:, 0] + boxes[:, 2]) / 2).cpu(), ((boxes[:, 1] + boxes[:, 3]) / 2).cpu()
        half = {"left": cx < w / 2, "right": cx >= w / 2, "top": cy < h / 2, "bottom": cy >= h / 2}
        for direction in query.directions:
            if direction in half:
                out = out * half[direction].float()
    return out


def resolve(query: Query, head: Tensor, boxes: Tensor, size: tuple[int, int], anchor: Tensor | None = None,
            more_anchors: Sequence[Tensor] = ()) -> Tensor:
    """Final probabilities ``(N,)`` over the candidates from CLIP's ``head (N,)`` probabilities for the head
    phrase (and ``anchor (N,)`` for a relation's anchor, ``more_anchors`` for those of ``query.more_relations``),
    ``boxes (N, 4)`` pixels of an image of ``size`` (H, W). Several relations multiply (ReCLIP: ``P(i) ~ P_head(i)
    * prod_r sum_{j != i} R_r(i, j) P_anchor_r(j)``). A phrase with a relation and a superlative ("the second
    bottle from the right on the counter") takes the relations first and the superlative over the candidates
    they leave."""
    if len(head) < 2:
        return head
    boxes = boxes.float()
    probs = head
    terms = _relation_terms(query, boxes, anchor, more_anchors)
    if terms is not None:
        out = head * terms
        total = out.sum()
        probs = out / total if total > 0 else head
    if not query.directions:
        return probs
    out = probs
    for n, direction in enumerate(query.directions):
        key = _key(boxes, direction, size)
        beyond = (key[:, None] > key[None, :]).float()  # beyond[i, j]: i further along the direction than j
        rank = query.rank if n == 0 else 0
        if rank == 0:  # the extreme one (ReCLIP's superlative, counting i itself)
            out = out * ((beyond + torch.eye(len(probs), device=probs.device, dtype=beyond.dtype)) @ probs)
        else:  # the k-th from the extreme (k = rank), or the last one (rank -1): count the good matches
            weight = probs / probs.max().clamp_min(1e-12)
            count = beyond.T @ weight if rank > 0 else beyond @ weight  # matches beyond i / behind i
            out = out * torch.exp(-((count - max(rank, 0)) ** 2) / 0.5)
    total = out.sum()
    return out / total if total > 0 else probs
