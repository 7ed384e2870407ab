"""Speed of textsam's SAM core against the official segment-anything, same weights, same process.

Builds the official vit_b (random weights, saved as an official checkpoint file), loads that file into
textsam, and times on this machine's CPU:
  set_image at 1024 (fp32, and textsam with image_precision="bf16"), one-point predict, 16 boxes in one call, and
  automatic mask generation on a 16 x 16 grid (the image's embedding included: segment-anything's generator
  embeds the image itself; otherwise its defaults, which ``TextSamPredictor.generate`` shares; one timed round).
Prints each best-of-N time (interleaved runs) and the ratio ours / official (lower is better); the bf16 line also prints the
IoU of its binary masks with the fp32 ones.

    python benchmarks/bench_sam.py [--image PATH] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import textsam
from textsam.allocator import keep_freed_memory
from textsam.transforms import load_image

DEFAULT_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sam_demo_images" / "truck.jpg"


def timed(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Best wall time of each ``fn()`` over ``repeats`` rounds, after one warm-up each.

    The functions run interleaved (a, b, a, b, ...) so that background load hits them alike, and the
    minimum is reported because noise only ever adds time.
    """
    best = {}
    for name, fn in fns.items():
        fn()
        best[name] = float("inf")
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    keep_freed_memory()  # as the textsam command does (textsam/allocator.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

    if args.image.exists():
        image = load_image(args.image)
    else:
        image = np.random.default_rng(0).integers(0, 255, (1200, 1800, 3), dtype=np.uint8)
    h, w = image.shape[:2]
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "sam_vit_b_random.pth"
        torch.save(sam.state_dict(), ckpt)
        ours_model = textsam.create_model("sam_vit_b", checkpoint=ckpt)
    ref = SamPredictor(sam.eval())
    ours = textsam.TextSamPredictor(ours_model)
    ours_bf16 = textsam.TextSamPredictor(ours_model, image_precision="bf16")

    print(f"image {w}x{h}, torch {torch.__version__}, {torch.get_num_threads()} threads, repeats {args.repeats}")
    rows = []
    with torch.inference_mode():
        t = timed(
            {"ref": lambda: ref.set_image(image), "ours": lambda: ours.set_image(image),
             "bf16": lambda: ours_bf16.set_image(image)},
            args.repeats,
        )
    rows.append(("set_image fp32 (ViT-B, 1024)", t["ref"], t["ours"], 0.7))
    rows.append(("set_image bf16 (ViT-B, 1024)", t["ref"], t["bf16"], 0.4))

    pt, lb = np.array([[0.45 * w, 0.55 * h]]), np.array([1])
    t = timed(
        {"ref": lambda: ref.predict(pt, lb), "ours": lambda: ours.predict(point_coords=pt, point_labels=lb)},
        args.repeats * 5,
    )
    rows.append(("predict, one point (3 masks)", t["ref"], t["ours"], 0.8))

    rng = np.random.default_rng(1)
    xy0 = rng.uniform(0, 0.5, (16, 2)) * (w, h)
    boxes = np.concatenate([xy0, xy0 + rng.uniform(0.1, 0.5, (16, 2)) * (w, h)], axis=1)
    tb = ref.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), ref.original_size)
    t = timed(
        {"ref": lambda: ref.predict_torch(None, None, tb, multimask_output=False),
         "ours": lambda: ours.predict_batch(boxes=boxes, multimask_output=False)},
        args.repeats,
    )
    rows.append(("16 boxes in one call (1 mask each)", t["ref"], t["ours"], 0.5))
    generator = SamAutomaticMaskGenerator(sam, points_per_side=16)

    def ours_everything() -> None:
        ours.set_image(image)
        ours.generate(points_per_side=16)

    with torch.inference_mode():
        t = timed({"ref": lambda: generator.generate(image), "ours": ours_everything}, 1)
    rows.append(("generate(), 16 x 16 grid, with set_image", t["ref"], t["ours"], 1.0))

    print(f"{'what':38s} {'official s':>10s} {'textsam s':>10s} {'ratio':>6s} {'target':>7s}")
    for name, a, b, target in rows:
        flag = "ok" if b / a <= target else "MISSED"
        print(f"{name:38s} {a:10.3f} {b:10.3f} {b / a:6.2f} {'<=' + str(target):>7s} {flag}")

    ious = []
    for x, y in [(0.45, 0.55), (0.2, 0.3), (0.7, 0.6), (0.5, 0.2)]:
        kw = dict(point_coords=np.array([[x * w, y * h]]), point_labels=np.array([1]))
        ious += [mask_iou(a, b) for a, b in zip(ours.predict(**kw).masks, ours_bf16.predict(**kw).masks)]
    kw = dict(box=boxes[0])
    ious += [mask_iou(a, b) for a, b in zip(ours.predict(**kw).masks, ours_bf16.predict(**kw).masks)]
    print(f"bf16 vs fp32 binary-mask IoU over {len(ious)} masks: min {min(ious):.4f}, mean {np.mean(ious):.4f}"
          f" (target min >= 0.98)")


if __name__ == "__main__":
    main()
