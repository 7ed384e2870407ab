"""How good the training-free engine could be with a perfect scorer: on the synthetic test split, every phrase's
proposal is chosen by its IoU with the ground truth (a group phrase: the proposals mostly inside it) instead of by
CLIP, and the rest (proposals, the final decoder call) is the engine's own. The gap to the real engine is what
the CLIP's choice loses; the oracle's own shortfall is what the proposals and the decoding lose.

    python tools/engine_oracle.py [N] [--clip local-dir:DIR]   # the first N test images (default 50)
"""

from __future__ import annotations

import argparse
from typing import Any
from unittest import mock

import numpy as np
import torch

import textsam
from textsam import rle
from textsam.eval.refer import load_item
from textsam.eval.runners import build_benchmark
from textsam.text import engine as engine_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", type=int, default=50)
    parser.add_argument("--data", default="runs/shapes_data")
    parser.add_argument("--clip", default=None, help="another CLIP (NAME/TAG or local-dir:DIR) instead of the model's")
    args = parser.parse_args()
    bench = build_benchmark("synthetic", args.data)
    keys = bench.keys()[: args.images]
    model = textsam.create_model("shapes_tiny", text_head=False, clip=args.clip)
    target: dict[str, Any] = {}
    best: list[float] = []
    rank = engine_module.TextEngine.rank

    def oracle_rank(self, predictor, *rest, **kwargs):  # noqa: ANN001, ANN202
        out = rank(self, predictor, *rest, **kwargs)
        props = self.proposals(predictor)
        if target.get("oracle") and len(props):
            truth = torch.as_tensor(target["mask"])
            inter = (props.masks & truth).flatten(1).sum(1).float()
            area = props.masks.flatten(1).sum(1).float()
            iou = inter / (area + truth.sum() - inter).clamp_min(1)
            for r in out:
                inside = [int(i) for i in torch.nonzero(inter / area.clamp_min(1) > 0.5).flatten()]
                members = sorted(inside, key=lambda i: -float(iou[i])) or [int(iou.argmax())]
                r.chosen = members if r.query.group else [int(iou.argmax())]
                best.append(float(iou.max()))
        return out

    predictor = textsam.TextSamPredictor(model)
    for oracle in (False, True):
        target["oracle"] = oracle
        records = {}
        with mock.patch.object(engine_module.TextEngine, "rank", oracle_rank):
            for key in keys:
                image_id = int(key)
                predictor.set_image(load_item(bench.dataset.coco.load_image, image_id))
                preds = []
                for ref, idx, text in bench._by_image[image_id]:
                    target["mask"] = bench.dataset.target_mask(ref).astype(bool)
                    masks = predictor.predict(text=text).masks
                    preds.append({"ref_id": int(ref.ref_id), "sent_idx": idx, "segmentation": rle.encode(masks[0])})
                records[key] = {"predictions": preds}
        scores = bench.score(records, keys)
        kinds = {k: f"{100 * v['mIoU']:.1f}" for k, v in scores.details["by phrase kind"].items()}
        name = "oracle choice" if oracle else "the engine   "
        print(f"{name} on {len(keys)} test images: mIoU {100 * scores.metrics['mIoU']:.1f} {kinds}", flush=True)
    print(f"best proposal's IoU with the target, mean over phrases: {np.mean(best):.3f}")


if __name__ == "__main__":
    main()
