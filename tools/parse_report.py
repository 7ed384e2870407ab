"""How textsam's spatial-word parser reads phrases people wrote: known misreadings counted over the 506
RefCOCOS expressions in ../shared/data/refcocos_on_coco_tiny (or any JSON list of strings / RefCOCOS records),
and the parse of each phrase with ``--show``.

    python tools/parse_report.py [--data ../shared/data/refcocos_on_coco_tiny/refcocos_test.source.json] [--show]

Each line counts the phrases that match a pattern people write and that the parser misreads: the counts are
what a parser change should lower (run it before and after). They are checks of the words, not of the masks:
whether a better parse finds the right object with the published weights is not measurable here.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from textsam.text.spatial import Query, parse

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "refcocos_on_coco_tiny" / \
    "refcocos_test.source.json"
COLOUR = r"(?:white|black|red|green|blue|yellow|orange|pink|grey|gray|dark|light|brown|purple)"
CHECKS = [
    ("anchor is a pronoun ('with a tag on it')", lambda p, q: bool(set(q.anchors) & {"it", "them", "its", "him", "her"})),
    ("'left / right (hand) side of X' not read as left / right of X",
     lambda p, q: bool(re.search(r"(left|right)( hand)? side of", p)) and q.relation not in ("left", "right")),
    ("a garment 'top' read as a direction ('a white top')",
     lambda p, q: bool(re.search(rf"\b{COLOUR} top\b", p)) and "top" in q.directions),
    ("'closest to / farthest from X' (X not the camera) read as a superlative",
     lambda p, q: bool(re.search(r"(closest|nearest|farthest|furthest|farther|further) (to|from) (?!the camera)", p))
     and q.relation is None),
    ("relation or linking words left at the head's end ('cup that is')",
     lambda p, q: bool(re.search(r"\b(that is|which is|who is|not|the|and|to|from|in the)$", q.head))),
    ("'not' right before a relation, the relation not negated",
     lambda p, q: bool(re.search(r"\bnot (next to|on|under|behind|near|in front of|beside|inside|above|below)\b", p))
     and not any(negated for _, _, negated in q.relations)),
    ("'between X and Y' / 'between two Xs' not read as between",
     lambda p, q: bool(re.search(r"\bbetween (?:the |a |an )?\S+.* and |\bbetween (?:two|both) ", p))
     and not any(relation == "between" for relation, _, _ in q.relations)),
    ("the viewer ('the camera') taken for an object", lambda p, q: bool(set(q.anchors) & {"camera", "the camera"})),
    ("the anchor runs into another clause ('the fruit and not next to the fridge')",
     lambda p, q: any(re.search(r"\b(and (not|no|is|are|has)|but)\b", a) for a in q.anchors)),
]


def phrases_from(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [d["normal_caption"] if isinstance(d, dict) else str(d) for d in data]


def describe(q: Query) -> str:
    parts = [f"head={q.head!r}"]
    if q.directions:
        parts.append(f"directions={q.directions} rank={q.rank}")
    for relation, anchor, negated in q.relations:
        parts.append(f"{'not ' if negated else ''}{relation} anchor={anchor!r}")
    if q.group:
        parts.append("group")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--show", action="store_true", help="print every phrase's parse")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"no {args.data}: give --data FILE (a JSON list of phrases or RefCOCOS records)")
    phrases = phrases_from(args.data)
    parsed = {p: parse(p) for p in phrases}
    if args.show:
        for p, q in parsed.items():
            print(f"{p}\n    {describe(q)}")
    print(f"{len(phrases)} phrases; with a relation {sum(q.relation is not None for q in parsed.values())} (several: "
          f"{sum(len(q.relations) > 1 for q in parsed.values())}), one negated "
          f"{sum(any(n for _, _, n in q.relations) for q in parsed.values())}, with directions "
          f"{sum(bool(q.directions) for q in parsed.values())}")
    for name, bad in CHECKS:
        print(f"{sum(bad(p, q) for p, q in parsed.items()):4d}  {name}")


if __name__ == "__main__":
    main()
