"""Ablation of the training-free engine on the first N images of the synthetic test split: where the proposal
clicks come from (embedding seeds or SAM's grid), the proposal filters, the mask-token shortlist, each term of the
proposal score (the CLIP views, SAM's predicted IoU, the mask tokens alone) and the spatial resolver, one at a
time from ``shapes_tiny``'s own engine options (its bundle's ``text_options``), with its SAM and CLIP
(``text_head=False``). Prints mIoU per phrase kind and the presence rates.

    python tools/engine_ablation.py [N [NAME ...]]   # needs runs/shapes_data (textsam data synth --out runs/shapes_data);
                                                     # NAMEs: run only the variants whose names contain one
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

    def tokens_as_crops(self, predictor, clip, indices=None):  # noqa: ANN001, ANN202 - the mask tokens alone
        tokens = self.token_embeddings(predictor, clip)
        return tokens[list(range(len(tokens))) if indices is None else list(indices)][:, None]

    variants = {  # name: (options, what to patch)
        "default (the model's own engine options)": (base, None),
        "fast()": (base.fast(), None),
        "fast(), mask tokens on a grid half as fine": (dataclasses.replace(base.fast(), engine=dataclasses.replace(
            base.fast().engine, token_input_scale=0.5)), None),
        "every proposal cropped (shortlist 0)": (engine(shortlist=0), None),
        "grid clicks (16 x 16)": (engine(seeds="grid"), None),
        "grid, every proposal cropped (earlier engine)": (engine(seeds="grid", shortlist=0), None),
        "mask tokens alone (no crops)": (engine(shortlist=0), ("textsam.text.engine.TextEngine.crop_embeddings",
                                                              tokens_as_crops)),
        "mask tokens at 2x native size": (engine(token_input_scale=2.0), None),
        "crop only": (engine(views=("crop",)), None),
        "crop + mask": (engine(views=("crop", "mask")), None),
        "crop + blur": (engine(views=("crop", "blur")), None),
        "mask only": (engine(views=("mask",)), None),
        "shortlist 4": (engine(shortlist=4), None),
        "SAM's stricter filters (IoU 0.7, stability 0.9)": (engine(proposals=dataclasses.replace(
            base.engine.proposals, pred_iou_thresh=0.7, stability_score_thresh=0.9)), None),
        "crop + SAM IoU (0.5)": (engine(iou_weight=0.5), None),
        "no spatial words": (base, ("textsam.text.engine.resolve", lambda q, head, *a, **k: head)),
    }
    only = sys.argv[2:]
    for name, (options, patch) in variants.items():
        if only and not any(o in name for o in only):
            continue
        t0 = time.perf_counter()
        with mock.patch(*patch) if patch else mock.patch.object(sys, "argv", sys.argv):
            predictor = textsam.TextSamPredictor(model, text_options=options)
            scores = bench.score({k: bench.run_item(predictor, k) for k in keys}, keys)
        kinds = scores.details["by phrase kind"]
        m = scores.metrics
        print(f"{name:46s} mIoU {100 * m['mIoU']:.1f}  attribute {100 * kinds['attribute']['mIoU']:.1f}  "
              f"category {100 * kinds['category']['mIoU']:.1f}  spatial {100 * kinds['spatial']['mIoU']:.1f}  "
              f"present found {100 * m.get('presence: present found', 0):.1f}%  "
              f"absent found {100 * m.get('presence: absent found', 0):.1f}%  ({time.perf_counter() - t0:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
