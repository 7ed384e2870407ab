"""Presence figures from a `textsam eval synthetic` run: AUROC of the presence answer (present expressions vs
absent phrases), the found rates at the threshold, the thresholds that would meet each side of the target,
and the absent phrases split by what the image holds (their colour absent; colour present but shape absent;
no colour word; colour and shape present but not together).

    python tools/presence_report.py RUN/results.jsonl [--instances runs/shapes_data/test/instances.json]
        [--threshold T]

``--threshold``: the found rates (and the split) at presence T instead of the run's own answer, e.g. the
threshold the val split's run says meets 95% of present expressions, carried to the test split.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """The chance that a present expression's presence is above an absent phrase's (ties count half)."""
    ranks = np.concatenate([pos, neg]).argsort().argsort() + 1.0
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("--instances", default="runs/shapes_data/test/instances.json")
    parser.add_argument("--threshold", type=float, help="presence threshold for the found rates (default: the run's)")
    args = parser.parse_args()
    records = [json.loads(line) for line in open(args.results, encoding="utf-8")]
    present = np.array([p["presence"] for r in records for p in r.get("predictions", []) if "presence" in p])
    absent = np.array([a["presence"] for r in records for a in r.get("absent", [])])
    t10, t95 = np.quantile(absent, 0.90), np.quantile(present, 0.05)
    print(f"{len(present)} present expressions, {len(absent)} absent phrases: AUROC {auroc(present, absent):.3f}; "
          f"at 0.5 present found {np.mean(present >= 0.5):.1%}, absent found {np.mean(absent >= 0.5):.1%}; "
          f"absent <= 10% needs t = {t10:.4f} (present found {np.mean(present > t10):.1%}); "
          f"present >= 95% needs t = {t95:.4f} (absent found {np.mean(absent >= t95):.1%})")
    if args.threshold is not None:
        print(f"at t = {args.threshold:.4f}: present found {np.mean(present >= args.threshold):.1%}, "
              f"absent found {np.mean(absent >= args.threshold):.1%}")
    inst = json.load(open(args.instances, encoding="utf-8"))
    colours: dict[int, set[str]] = {}
    shapes: dict[int, set[str]] = {}
    for a in inst["annotations"]:
        colours.setdefault(a["image_id"], set()).add(a["colour"])
        shapes.setdefault(a["image_id"], set()).add(a["shape"])
    known = {a["colour"] for a in inst["annotations"]}
    kinds: dict[str, list[bool]] = {}
    for r in records:
        image = int(r["key"])
        for a in r.get("absent", []):
            words = a["text"].split()
            colour = next((w for w in words if w in known), None)
            if colour is None:
                kind = "no colour word"
            elif colour not in colours[image]:
                kind = "colour absent"
            elif words[-1] not in shapes[image]:
                kind = "colour present, shape absent"
            else:
                kind = "colour and shape present, not together"
            found = a["found"] if args.threshold is None else a["presence"] >= args.threshold
            kinds.setdefault(kind, []).append(bool(found))
    for kind, found in kinds.items():
        print(f"  absent phrases, {kind}: {np.mean(found):.1%} found of {len(found)}")


if __name__ == "__main__":
    main()
