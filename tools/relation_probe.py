"""The engine on relations between objects, on the synthetic proxy: phrases such as "the circle left of the square",
"the star next to the heart", "the cross that is not above the hexagon", made from a split's annotations (their
visible-mask centroids), each unique by construction, answered by ``predict(text=...)`` and scored by mask IoU
with the target. The synthetic phrase kinds have no relations, so this is the engine's relation resolver
(``textsam.text.spatial``: ReCLIP's relation ``P_head(i) * sum_j R(i, j) P_anchor(j)``) measured end to end.

    python tools/relation_probe.py [--data runs/shapes_data/test] [--limit 100] [--model shapes_tiny]
                                   [--text-head] [--out FILE.jsonl]

A phrase names its object and the anchor by shape alone ("the circle", "the square") and is made only where
the relation is needed: two or more objects have the head's shape, exactly one of them stands in the relation
to the anchor (by at least 8% of the image side along the axis, for left / right / above / below; for "next
to", the nearest by a factor of 1.5), and the anchor's shape is unique in the image. "not <relation>" is made
where exactly two objects have the head's shape and one of them stands in the relation. Printed per relation:
mIoU with the phrase, and with the phrase's head alone ("the circle": what CLIP's choice gives without the
relation words), so the difference is what the resolver adds. Presence: the share of these phrases found, and of
phrases whose anchor is a shape the image does not hold ("the circle left of the hexagon" with no hexagon: each
shape of the image with each relation against the first absent shape), which should not be.

Printed apart, phrases that say what the object is not ("the circle that is not red"), made where exactly two
objects have the head's shape and their colours differ: the engine takes "circle that is red" as the phrase's
negative (``textsam.text.spatial.Query.excluded``); before, CLIP read "not red" as "red".
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

MARGIN = 0.08
NEAR_FACTOR = 1.5
AXES = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}


def relation_phrases(anns: list[dict], side: float) -> list[tuple[str, str, str, int]]:
    """``(relation, phrase, head phrase, target annotation index)`` for one image's annotations."""
    out = []
    shapes: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(anns):
        shapes[a["shape"]].append(i)
    for anchor_shape, anchors in shapes.items():
        if len(anchors) != 1:
            continue
        b = anns[anchors[0]]["position"]
        for shape, group in shapes.items():
            if shape == anchor_shape or len(group) < 2:
                continue
            pos = {i: anns[i]["position"] for i in group}
            for name, (axis, sign) in AXES.items():
                ahead = [i for i in group if sign * (pos[i][axis] - b[axis]) >= MARGIN * side]
                behind = [i for i in group if sign * (pos[i][axis] - b[axis]) <= -MARGIN * side]
                if len(ahead) == 1 and len(behind) == len(group) - 1:
                    out.append((name, f"the {shape} {name} the {anchor_shape}", f"the {shape}", ahead[0]))
                if len(group) == 2 and len(ahead) == 1 and len(behind) == 1:
                    out.append((f"not {name}", f"the {shape} that is not {name} the {anchor_shape}", f"the {shape}",
                                behind[0]))
            dist = sorted((float(np.hypot(pos[i][0] - b[0], pos[i][1] - b[1])), i) for i in group)
            if dist[1][0] >= NEAR_FACTOR * dist[0][0]:
                out.append(("next to", f"the {shape} next to the {anchor_shape}", f"the {shape}", dist[0][1]))
    return out


def negation_phrases(anns: list[dict]) -> list[tuple[str, str, str, int]]:
    """``("not colour", phrase, head phrase, target annotation index)``: "the circle that is not red" where exactly
    two objects are circles and only the other one is not red."""
    shapes: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(anns):
        shapes[a["shape"]].append(i)
    out = []
    for shape, group in shapes.items():
        if len(group) == 2 and anns[group[0]]["colour"] != anns[group[1]]["colour"]:
            for excluded, target in (group, group[::-1]):
                out.append(("not colour", f"the {shape} that is not {anns[excluded]['colour']}", f"the {shape}",
                            target))
    return out


def absent_anchor_phrases(anns: list[dict], shapes: tuple[str, ...]) -> list[str]:
    """Relation phrases whose anchor is a shape the image does not hold ("the circle left of the hexagon" with no
    hexagon): each object shape of the image with each relation, against the first absent shape."""
    present = sorted({a["shape"] for a in anns})
    missing = [s for s in shapes if s not in present]
    if not missing:
        return []
    return [f"the {shape} {name} the {missing[0]}" for shape in present for name in (*AXES, "next to")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/shapes_data/test"))
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--model", default="shapes_tiny")
    parser.add_argument("--text-head", action="store_true", help="keep the model's text head (default: the engine only)")
    parser.add_argument("--out", type=Path, default=None, help="one JSON line per phrase")
    args = parser.parse_args()

    import textsam
    from textsam import rle
    from textsam.allocator import keep_freed_memory
    from textsam.data.shapes_render import SHAPES
    from textsam.transforms import load_image

    keep_freed_memory()
    coco = json.loads((args.data / "instances.json").read_text())
    by_image: dict[int, list[dict]] = defaultdict(list)
    for a in coco["annotations"]:
        by_image[a["image_id"]].append(a)
    model = textsam.create_model(args.model, text_head=None if args.text_head else False)
    pred = textsam.TextSamPredictor(model)
    rows: list[dict] = []
    absent: list[dict] = []
    for info in coco["images"][: args.limit]:
        anns = sorted(by_image[info["id"]], key=lambda a: a["id"])
        phrases = relation_phrases(anns, float(max(info["width"], info["height"]))) + negation_phrases(anns)
        if not phrases and not absent_anchor_phrases(anns, SHAPES):
            continue
        pred.set_image(load_image(args.data / "images" / info["file_name"]))
        for relation, phrase, head, target in phrases:
            gt = rle.decode(anns[target]["segmentation"]).astype(bool)
            ious, found, presence = [], None, None
            for text in (phrase, head):
                out = pred.predict(text=text)
                mask = out.masks[0]
                if found is None:
                    found, presence = out.info.get("found"), out.presence
                union = np.logical_or(mask, gt).sum()
                ious.append(float(np.logical_and(mask, gt).sum() / union) if union else 1.0)
            rows.append({"image": info["file_name"], "relation": relation, "phrase": phrase, "iou": ious[0],
                         "head_only_iou": ious[1], "found": bool(found), "presence": presence})
        for phrase in absent_anchor_phrases(anns, SHAPES):
            out = pred.predict(text=phrase)
            absent.append({"image": info["file_name"], "phrase": phrase, "found": bool(out.info.get("found")),
                           "presence": out.presence})
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows + absent))
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["relation"]].append(r)
    negations = groups.pop("not colour", [])
    rows = [r for r in rows if r["relation"] != "not colour"]
    print(f"{args.model} ({'text head' if args.text_head else 'engine only'}), {args.data}, first {args.limit} images:")
    print(f"{'relation':12s} {'phrases':>7s} {'mIoU':>6s} {'head only':>9s}")
    for name in [*AXES, "next to", *[f"not {n}" for n in AXES]]:
        g = groups.get(name)
        if g:
            print(f"{name:12s} {len(g):7d} {100 * np.mean([r['iou'] for r in g]):6.1f} "
                  f"{100 * np.mean([r['head_only_iou'] for r in g]):9.1f}")
    if rows:
        print(f"{'all':12s} {len(rows):7d} {100 * np.mean([r['iou'] for r in rows]):6.1f} "
              f"{100 * np.mean([r['head_only_iou'] for r in rows]):9.1f}")
        print(f"found (presence over the threshold): {np.mean([r['found'] for r in rows]):.1%} of these phrases; "
              f"{np.mean([a['found'] for a in absent]) if absent else float('nan'):.1%} of {len(absent)} phrases "
              "whose anchor the image does not hold")
        pos = np.array([r["presence"] for r in rows if r["presence"] is not None])
        neg = np.array([a["presence"] for a in absent if a["presence"] is not None])
        if len(pos) and len(neg):  # the chance that a present phrase's presence is above an absent one's
            auroc = float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))
            print(f"presence AUROC, these phrases against those: {auroc:.3f}")
    if negations:
        print(f"{'not colour':12s} {len(negations):7d} {100 * np.mean([r['iou'] for r in negations]):6.1f} "
              f"{100 * np.mean([r['head_only_iou'] for r in negations]):9.1f}  (\"the circle that is not red\")")


if __name__ == "__main__":
    main()
