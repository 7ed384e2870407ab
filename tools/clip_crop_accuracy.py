"""How well a model's CLIP names the objects of the synthetic data: ground-truth crops (the engine's crop view)
classified among every colour-shape pair, among colours alone and among shapes alone; and how far apart its
text tower puts the phrases a crop must be told between (two shapes of one colour, two shape names): no image
tower can separate phrases whose text embeddings coincide.

    python tools/clip_crop_accuracy.py [--split test] [--model shapes_tiny] [--clip local-dir:DIR] [--limit 600]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

import textsam
from textsam.text.scoring import crop_views, encode_views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/shapes_data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default="shapes_tiny")
    parser.add_argument("--clip", default=None, help="another CLIP (NAME/TAG or local-dir:DIR) instead of the model's")
    parser.add_argument("--limit", type=int, default=600, help="objects (at least half visible) to classify")
    args = parser.parse_args()
    predictor = textsam.TextSamPredictor(textsam.create_model(args.model, clip=args.clip))
    predictor.text.ensure_text_encoder()
    encoder, templates = predictor.model.scoring_encoder, predictor.text.templates()  # the engine's CLIP
    root = f"{args.data}/{args.split}"
    inst = json.load(open(f"{root}/instances.json", encoding="utf-8"))
    files = {im["id"]: im["file_name"] for im in inst["images"]}
    objects = [a for a in inst["annotations"] if a["visible_fraction"] > 0.5][: args.limit]
    by_image: dict[int, list[dict]] = {}
    for a in objects:
        by_image.setdefault(a["image_id"], []).append(a)
    embeddings, labels = [], []
    for image_id, anns in by_image.items():
        image = np.asarray(Image.open(f"{root}/images/{files[image_id]}").convert("RGB"))
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], float)
        masks = np.zeros((len(anns), *image.shape[:2]), bool)  # the crop view does not use the mask
        embeddings.append(encode_views(encoder.clip, crop_views(image, masks, boxes, ("crop",)))[:, 0])
        labels += [(a["colour"], a["shape"]) for a in anns]
    crops = torch.cat(embeddings)
    colours = sorted({a["colour"] for a in inst["annotations"]})
    shapes = [c["name"] for c in inst["categories"]]

    def accuracy(names: list[str], truth: list[str]) -> float:
        best = (crops @ encoder.encode_ensembles(names, templates).T).argmax(1)
        return float(np.mean([names[int(i)] == t for i, t in zip(best, truth)]))

    pairs = encoder.encode_ensembles([f"{c} {s}" for c in colours for s in shapes], templates)
    pairs = pairs.view(len(colours), len(shapes), -1)
    same_colour = torch.einsum("csd,ctd->cst", pairs, pairs)  # (colour, shape, shape)
    other = ~torch.eye(len(shapes), dtype=torch.bool)
    c, i, j = np.unravel_index(int(same_colour.masked_fill(~other, -2).argmax()), same_colour.shape)
    names = encoder.encode_ensembles(shapes, templates)
    name_cos = (names @ names.T).masked_fill(~other, -2)
    a, b = np.unravel_index(int(name_cos.argmax()), name_cos.shape)
    print(f"text tower: two shapes of one colour, cosine mean {float(same_colour[:, other].mean()):.3f}, max "
          f"{float(same_colour[c, i, j]):.3f} ('{colours[c]} {shapes[i]}' / '{colours[c]} {shapes[j]}'); two shape "
          f"names, mean {float(name_cos[other].mean()):.3f}, max {float(name_cos[a, b]):.3f} ({shapes[a]} / {shapes[b]})")
    print(f"{args.model} CLIP on {len(labels)} ground-truth crops of the {args.split} split: "
          f"colour + shape {accuracy([f'{c} {s}' for c in colours for s in shapes], [f'{c} {s}' for c, s in labels]):.1%}, "
          f"colour {accuracy([f'{c} shape' for c in colours], [f'{c} shape' for c, _ in labels]):.1%}, "
          f"shape {accuracy(shapes, [s for _, s in labels]):.1%}")


if __name__ == "__main__":
    main()
