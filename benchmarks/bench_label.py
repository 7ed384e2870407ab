"""The labeller: speed (images/s with 10 and 80 classes) and quality (COCOeval of `textsam label` on the
synthetic test split).

    python benchmarks/bench_label.py speed [--models shapes_tiny mobile_sam sam_vit_b] [--images 3]
    python benchmarks/bench_label.py coco --data runs/shapes_data/test --limit 30 [--out runs/label_eval]

``speed`` labels the first ``--images`` images of the synthetic test split in memory (``textsam.label``, every
instance of every class), after one warm-up image, with vocabularies (other images for each size: the predictor keeps per-image caches) of 10 and 80 phrases (the split's shape
names with colours, then made-up object names); mobile_sam and sam_vit_b run with random weights (no download).
``coco`` runs ``textsam label`` (the CLI: store, COCO writer) with shapes_tiny's learned text head and with
``--no-text-head`` (the training-free engine) on the first ``--limit`` images, with the split's category names as
classes, and scores the COCO output with pycocotools' COCOeval (segm) against the split's ground truth.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "grey"]


def vocabulary(names: list[str], size: int) -> list[str]:
    words = list(names) + [f"{c} {n}" for n in names for c in COLOURS]
    words += [f"object {i}" for i in range(size)]
    return list(dict.fromkeys(words))[:size]


def speed(args: argparse.Namespace) -> None:
    import torch

    import textsam

    data = Path(args.data)
    names = [c["name"] for c in json.loads((data / "instances.json").read_text())["categories"]]
    files = sorted((data / "images").glob("*.png"))[: 2 * args.images + 1]
    for name in args.models:
        torch.manual_seed(0)
        model = textsam.create_model(name) if name == "shapes_tiny" else textsam.create_model(name, pretrained=False)
        predictor = textsam.TextSamPredictor(model)
        for k, size in enumerate((10, 80)):
            classes = vocabulary(names, size)
            textsam.label(files[:1], classes, predictor=predictor)  # warm-up
            timed = files[1 + k * args.images: 1 + (k + 1) * args.images]  # images the predictor has not seen
            start = time.perf_counter()
            out = textsam.label(timed, classes, predictor=predictor)
            dt = time.perf_counter() - start
            n = sum(len(im.instances) for im in out)
            print(f"{name:12s} {size:3d} classes: {len(out) / dt:.3f} images/s ({dt / len(out):.2f} s/image, "
                  f"{n} instances on {len(out)} images, torch threads {torch.get_num_threads()})", flush=True)


def coco(args: argparse.Namespace) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from textsam.cli import main

    data = Path(args.data)
    gt_file = data / "instances.json"
    gt_doc = json.loads(gt_file.read_text())
    names = [c["name"] for c in sorted(gt_doc["categories"], key=lambda c: c["id"])]
    images = sorted(gt_doc["images"], key=lambda im: im["file_name"])[: args.limit]
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    listing = out_root / "images.txt"
    listing.write_text("".join(f"{(data / 'images' / im['file_name']).resolve()}\n" for im in images))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
    by_name = {im["file_name"]: im["id"] for im in gt_doc["images"]}
    for mode, extra in (("head", []), ("engine", ["--no-text-head"])):
        out = out_root / mode
        argv = ["label", str(listing), "--classes", ",".join(names), "-o", str(out), "--model", "shapes_tiny",
                *extra, *(["--no-progress"] if args.no_progress else [])]
        start = time.perf_counter()
        rc = main(argv)
        dt = time.perf_counter() - start
        if rc != 0:  # e.g. OUT holds another request's labels: score nothing rather than the old files
            raise SystemExit(f"textsam label ({mode}) failed with exit code {rc}: nothing scored")
        pred = json.loads((out / "instances.json").read_text())
        ids = {im["id"]: by_name[im["file_name"]] for im in pred["images"]}
        name_of = {c["id"]: c["name"] for c in pred["categories"]}
        gt_cat = {c["name"]: c["id"] for c in gt_doc["categories"]}
        dets = [{**a, "image_id": ids[a["image_id"]], "category_id": gt_cat[name_of[a["category_id"]]]}
                for a in pred["annotations"]]
        with contextlib.redirect_stdout(io.StringIO()):
            dt_coco = gt.loadRes(dets) if dets else None
        if dt_coco is None:
            print(f"{mode}: no detections")
            continue
        ev = COCOeval(gt, dt_coco, "segm")
        ev.params.imgIds = sorted(by_name[im["file_name"]] for im in images)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        s = ev.stats
        print(f"{mode:6s} (rc {rc}, {len(images)} images, {len(dets)} masks, {dt:.0f} s): mask AP {s[0]:.3f}, "
              f"AP50 {s[1]:.3f}, AP75 {s[2]:.3f}, AR@100 {s[8]:.3f}", flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--models", nargs="+", default=["shapes_tiny"])
    s.add_argument("--images", type=int, default=3)
    s.add_argument("--data", default="runs/shapes_data/test")
    c = sub.add_parser("coco")
    c.add_argument("--data", default="runs/shapes_data/test")
    c.add_argument("--limit", type=int, default=200)
    c.add_argument("--out", default="runs/label_eval")
    c.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    from textsam.allocator import keep_freed_memory

    keep_freed_memory()  # as the textsam command does (textsam/allocator.py)
    speed(args) if args.what == "speed" else coco(args)


if __name__ == "__main__":
    cli()
