"""Memory of ``segment`` and ``label``: peak RSS per model, and no growth over many images in one process.

Each measurement runs in a fresh child process (so one model's peak does not hide another's) and reports the
process's peak RSS (``VmHWM``) and its RSS after every image:

- ``peak``: for each of ``--models`` (random weights with a ViT-B/16 CLIP; the published ones have the same
  sizes; every proposal kept, as ``bench_text.py`` does: the worst case of a real image), one 1800 x 1200
  photo (``../shared/data``'s truck, or random pixels) through what ``textsam segment --text`` does (``set_image``,
  a phrase through the training-free engine, a click) and through what ``textsam label`` does (every instance
  of 10 classes);
- ``growth``: ``--images`` different images (sizes 480 x 360 to 1280 x 960, cycling) in one process, through
  ``segment`` with shapes_tiny (text head + engine), ``label`` with shapes_tiny (10 classes), and clicks and a
  box with mobile_sam; the target is RSS after the last image within 5% of RSS after the 10th.

Each child keeps freed memory in the process as the ``textsam`` command does (``textsam/allocator.py``);
``--glibc-settings`` measures glibc's own malloc settings instead.

    python benchmarks/bench_memory.py [--models mobile_sam,sam_vit_b,sam_vit_h] [--images 100] [--skip-peak]
                                      [--glibc-settings]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sam_demo_images" / "truck.jpg"
CLASSES = ["truck", "wheel", "window", "tyre", "door", "sky", "tree", "road", "person", "car"]
SHAPES_CLASSES = ["red circle", "blue square", "green triangle", "star", "hexagon", "heart", "cross", "yellow shape",
                  "the largest shape", "purple circle"]
GROWTH_LIMIT = 0.05


def _status(key: str) -> float:
    """A ``/proc/self/status`` field in MB (VmRSS: now; VmHWM: the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _image(i: int) -> np.ndarray:
    sizes = [(360, 480), (480, 640), (600, 800), (768, 1024), (960, 1280)]
    h, w = sizes[i % len(sizes)]
    rng = np.random.default_rng(i)
    img = np.full((h, w, 3), rng.integers(60, 200, 3), np.uint8)
    for _ in range(4):  # a few coloured blocks, so masks and crops are not empty
        y, x = int(rng.integers(0, h - 60)), int(rng.integers(0, w - 60))
        img[y : y + int(rng.integers(40, h // 3)), x : x + int(rng.integers(40, w // 3))] = rng.integers(0, 255, 3)
    return img


def child(mode: str, model_name: str, images: int, keep_memory: bool) -> dict:
    import dataclasses

    import torch

    import textsam
    from textsam.allocator import keep_freed_memory
    from textsam.text.options import EngineOptions, TextOptions
    from textsam.transforms import load_image

    if keep_memory:
        keep_freed_memory()
    torch.manual_seed(0)
    pretrained = model_name == "shapes_tiny"
    if pretrained:
        predictor = textsam.TextSamPredictor(textsam.create_model(model_name))
    else:  # random weights: every proposal kept and every phrase "present", the engine's worst case
        model = textsam.create_model(model_name, pretrained=False, clip="ViT-B-16-quickgelu")
        engine = EngineOptions()
        engine = dataclasses.replace(engine, presence_threshold=0.0, proposals=dataclasses.replace(
            engine.proposals, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0))
        predictor = textsam.TextSamPredictor(model, text_options=TextOptions(engine=engine))
    after_load = _status("VmRSS")
    rss = []
    for i in range(images):
        if mode.startswith("peak"):
            image = load_image(PHOTO) if PHOTO.exists() else np.random.default_rng(0).integers(
                0, 255, (1200, 1800, 3), dtype=np.uint8)
        else:
            image = _image(i)
        h, w = image.shape[:2]
        if mode.endswith("label"):
            textsam.label([image], SHAPES_CLASSES if pretrained else CLASSES, predictor=predictor)
        elif mode.endswith("clicks"):
            predictor.set_image(image)
            predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
            predictor.predict(box=np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4]))
        else:
            predictor.set_image(image)
            predictor.predict(text=(SHAPES_CLASSES if pretrained else CLASSES)[i % 10])
            predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
        rss.append(_status("VmRSS"))
    return {"after_load_mb": after_load, "peak_mb": _status("VmHWM"), "rss_mb": rss}


def run_child(mode: str, model: str, images: int, keep_memory: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, model, str(images), str(int(keep_memory))],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{mode} {model} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobile_sam,sam_vit_b,sam_vit_h")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--skip-peak", action="store_true")
    parser.add_argument("--glibc-settings", action="store_true",
                        help="glibc's own malloc settings instead of keep_freed_memory (what the textsam command does)")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "MODEL", "IMAGES", "KEEP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]), args.child[3] == "1")))
        return
    keep = not args.glibc_settings
    print("malloc: " + ("freed memory kept (textsam.allocator.keep_freed_memory)" if keep else "glibc's own settings"))
    if not args.skip_peak:
        print(f"peak RSS, one {'truck photo' if PHOTO.exists() else 'random 1800x1200 image'} (random weights):")
        for model in args.models.split(","):
            for mode in ("peak-segment", "peak-label"):
                r = run_child(mode, model, 1, keep)
                print(f"  {model:10s} {mode[5:]:8s} model loaded {r['after_load_mb']:7.0f} MB   peak {r['peak_mb']:7.0f} MB",
                      flush=True)
    print(f"growth over {args.images} images in one process (target: last within {GROWTH_LIMIT:.0%} of the 10th):")
    for mode, model in (("segment", "shapes_tiny"), ("label", "shapes_tiny"), ("clicks", "mobile_sam")):
        r = run_child(mode, model, args.images, keep)
        tenth, last = r["rss_mb"][9], r["rss_mb"][-1]
        verdict = "ok" if last <= tenth * (1 + GROWTH_LIMIT) else "MISSED"
        print(f"  {mode:8s} {model:11s} RSS after 10: {tenth:7.0f} MB, after {args.images}: {last:7.0f} MB "
              f"({(last - tenth) / tenth:+.1%}), peak {r['peak_mb']:.0f} MB: {verdict}", flush=True)


if __name__ == "__main__":
    main()
