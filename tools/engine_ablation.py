"""Ablation of the training-free engine on the first N images of the synthetic test split: each term of the
proposal score (the CLIP views, SAM's predicted IoU) and the spatial resolver, one at a time, with
``shapes_tiny``'s SAM and CLIP (``text_head=False``). Prints mIoU per phrase kind and the presence rates.

    python tools/engine_ablation.py [N]      # needs runs/shapes_data (textsam data synth --out runs/shapes_data)
"""

from __future__ import annotations

import dataclasses
import sys
import time
from unittest import mock

import textsam
from textsam.eval.runners import build_benchmark


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    bench = build_benchmark("synthetic", "runs/shapes_data")
    keys = bench.keys()[:n]
    model = textsam.create_model("shapes_tiny", text_head=False)
    base = textsam.TextSamPredictor(model).text.options

    def engine(**changes: object) -> textsam.TextOptions:
        return dataclasses.replace(base, engine=dataclasses.replace(base.engine, **changes))

    variants = {
        "crop (default)": (base, False),
        "crop + mask": (engine(views=("crop", "mask")), False),
        "crop + blur": (engine(views=("crop", "blur")), False),
        "mask only": (engine(views=("mask",)), False),
        "crop + SAM IoU (0.5)": (engine(iou_weight=0.5), False),
        "no spatial words": (base, True),
    }
    for name, (options, no_spatial) in variants.items():
        t0 = time.perf_counter()
        with mock.patch("textsam.text.engine.resolve", lambda q, head, *a, **k: head) if no_spatial \
                else mock.patch.object(sys, "argv", sys.argv):
            predictor = textsam.TextSamPredictor(model, text_options=options)
            scores = bench.score({k: bench.run_item(predictor, k) for k in keys}, keys)
        kinds = scores.details["by phrase kind"]
        m = scores.metrics
        print(f"{name:22s} mIoU {100 * m['mIoU']:.1f}  attribute {100 * kinds['attribute']['mIoU']:.1f}  "
              f"category {100 * kinds['category']['mIoU']:.1f}  spatial {100 * kinds['spatial']['mIoU']:.1f}  "
              f"present found {100 * m.get('presence: present found', 0):.1f}%  "
              f"absent found {100 * m.get('presence: absent found', 0):.1f}%  ({time.perf_counter() - t0:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
