"""The browser page (``textsam export --web``) in headless Chromium: its speed, its size, and how far its masks are
from the Python predictor's.

Exports the model's page (or reuses ``--folder``), serves it with ``textsam app --static``'s server (cross-origin
isolated, so onnxruntime-web may use several threads), opens it in Debian's Chromium and, for each image, times
``textsam.loadImage`` (the encoder: ``embed_ms``; the text candidates and their CLIP crops: ``prepare_ms``) and
``textsam.segment`` for text, a click, text + click and a box (``update_ms``), and compares every mask with
``TextSamPredictor.predict(..., multimask_output=True)``'s best one on the same model object (IoU) and the
presence with Python's. Targets for the bundled shapes_tiny: embedding <= 500 ms, each update <= 100 ms.

    python benchmarks/bench_web.py                                   # shapes_tiny, 8 images
    python benchmarks/bench_web.py --model mobile_sam --random [--quantize] [--fast]   # random weights
    python benchmarks/bench_web.py --model sam_vit_b --random --images 3

With ``--random`` (the published weights cannot be downloaded here) the IoU measures only how closely the page
computes what Python computes (with ``--quantize``: what 8-bit weights change); what the masks are worth on real
photos needs the published weights.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import textsam
from textsam.app.static import static_server
from textsam.export.web import export_web, page_options
from textsam.text.prompter import default_options

CHROMIUM = "/usr/bin/chromium"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGETS = {"embed_ms": 500.0, "update_ms": 100.0}


# each image its own phrases, so that each image's first text request includes its phrase's text pass
SHAPE_PHRASES = ["red circle", "blue square", "green triangle", "yellow star", "purple heart", "orange cross"]
SHAPE_SPATIAL = ["the largest shape", "the leftmost shape", "the smallest shape", "the rightmost shape"]
PHOTO_PHRASES = ["the car", "a person", "the dog", "a window", "the truck", "a tree"]
PHOTO_SPATIAL = ["food on the left", "the wheel on the right", "the leftmost person", "the biggest window"]


def images(model: str, n: int) -> list[tuple[str, np.ndarray, list[str]]]:
    if model == "shapes_tiny":
        from bench_bundled import scenes  # same folder

        return [(f"img{i}.png", im, [SHAPE_PHRASES[i % len(SHAPE_PHRASES)], SHAPE_SPATIAL[i % len(SHAPE_SPATIAL)]])
                for i, im in enumerate(scenes(n))]
    files = sorted(glob.glob(str(SHARED / "lang_sam_images" / "*.jp*g")) + glob.glob(str(SHARED / "sam_demo_images" / "*.jp*g")))
    if not files:
        raise SystemExit(f"no photos under {SHARED}")
    return [(f"img{i}{Path(f).suffix}", np.asarray(Image.open(f).convert("RGB")),
             [PHOTO_PHRASES[i % len(PHOTO_PHRASES)], PHOTO_SPATIAL[i % len(PHOTO_SPATIAL)]]) for i, f in enumerate(files[:n])]


# the longest time the page's main thread was busy (a 10 ms timer that fires late): what a user feels as a freeze
STALL_MONITOR = """() => {
  let last = performance.now(), worst = 0, timer;
  const tick = () => { const t = performance.now(); worst = Math.max(worst, t - last - 10); last = t; timer = setTimeout(tick, 10); };
  timer = setTimeout(tick, 10);
  window.__stall = {stop: () => { clearTimeout(timer); return worst; }};
}"""


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def python_mask(predictor: textsam.TextSamPredictor, prompt: dict) -> tuple[np.ndarray, float | None]:
    points = prompt.get("points")
    out = predictor.predict(text=prompt.get("text"),
                            point_coords=None if not points else np.array([p[:2] for p in points], float),
                            point_labels=None if not points else np.array([p[2] for p in points]),
                            box=None if prompt.get("box") is None else np.array(prompt["box"], float))
    return out.masks[int(np.argmax(out.scores))], out.presence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes_tiny")
    parser.add_argument("--random", action="store_true", help="random weights (no download)")
    parser.add_argument("--no-text-head", action="store_true")
    parser.add_argument("--fast", action="store_true", help="the lighter text engine (TextOptions.fast)")
    parser.add_argument("--quantize", action="store_true", help="8-bit encoder and CLIP weights")
    parser.add_argument("--worker", choices=["auto", "on", "off"], default="auto",
                        help="onnxruntime-web in its proxy worker (auto: for 1024-px models)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each update (the best is kept)")
    args = parser.parse_args()
    model = textsam.create_model(args.model, pretrained=not args.random, text_head=False if args.no_text_head else None)
    options = default_options(model).fast() if args.fast else None
    work = Path(tempfile.mkdtemp(prefix="bench_web_"))
    try:
        run(args, model, options, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a published model's folder is 0.3-1 GB


def run(args: argparse.Namespace, model: textsam.TextSam, options, work: Path) -> None:  # noqa: ANN001
    from playwright.sync_api import sync_playwright

    t = time.perf_counter()
    worker = {"auto": None, "on": True, "off": False}[args.worker]
    folder = export_web(model, work / "page", quantize=args.quantize, options=options, worker=worker)
    export_s = time.perf_counter() - t
    size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    predictor = textsam.TextSamPredictor(model, text_options=page_options(options or default_options(model)))
    scenes = images(args.model, args.images)
    for name, image, _ in scenes:
        Image.fromarray(image).save(folder / name)
    server = static_server(folder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows: dict[str, list[float]] = {}
    ious: dict[str, list[float]] = {}
    gaps: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.set_default_timeout(600_000)
        t = time.perf_counter()
        page.goto(f"http://127.0.0.1:{server.server_port}/index.html")
        page.evaluate("textsam.ready")
        ready_s = time.perf_counter() - t
        threads = page.evaluate("ort.env.wasm.numThreads")
        has_text = page.evaluate("textsam.manifest.text !== null")
        for name, image, phrases in scenes:
            page.evaluate(STALL_MONITOR)
            page.evaluate("(u) => textsam.loadImage(u)", name)
            for key, value in page.evaluate("textsam.timings").items():
                rows.setdefault(key, []).append(value)
            rows.setdefault("page stall during loadImage", []).append(page.evaluate("window.__stall.stop()"))
            predictor.set_image(image)
            h, w = image.shape[:2]
            click = [w * 0.45, h * 0.55, 1]
            prompts = {"click": {"points": [click]}, "box": {"box": [w * 0.2, h * 0.25, w * 0.7, h * 0.8]}}
            if has_text:
                prompts.update({"text": {"text": phrases[0]}, "text+click": {"text": phrases[0], "points": [click]},
                                "spatial": {"text": phrases[1]}})
            for kind, prompt in prompts.items():
                best = float("inf")
                for repeat in range(args.repeats):
                    r = page.evaluate("async (p) => { const r = await textsam.segment(p); return {m: Array.from(r.mask), "
                                      "pr: r.presence, t: textsam.timings.update_ms}; }", prompt)
                    if repeat == 0 and kind in ("text", "spatial"):  # the phrase's first request: its text pass too
                        rows.setdefault(f"update_ms ({kind}, new phrase)", []).append(r["t"])
                    best = min(best, r["t"])
                rows.setdefault(f"update_ms ({kind})", []).append(best)
                ref, presence = python_mask(predictor, prompt)
                ious.setdefault(kind, []).append(iou(np.array(r["m"], bool).reshape(h, w), ref))
                if presence is not None:
                    gaps.append(abs(r["pr"] - presence))
        browser.close()
    server.shutdown()
    print(f"model {args.model}{' (random weights)' if args.random else ''}{' quantized' if args.quantize else ''}"
          f"{' fast' if args.fast else ''}, worker {args.worker}: folder {size_mb:.1f} MB, export {export_s:.1f} s, page ready "
          f"{ready_s:.1f} s, {threads} wasm thread(s), {len(scenes)} images")
    print(f"{'':28s}{'median':>10s}{'max':>10s}{'target':>10s}")
    for key, values in rows.items():
        target = TARGETS.get(key.split(" ")[0]) if args.model == "shapes_tiny" else None
        print(f"{key:28s}{statistics.median(values):10.1f}{max(values):10.1f}{target if target else '':>10}")
    for kind, values in ious.items():
        print(f"IoU with Python, {kind:12s} min {min(values):.4f}  median {statistics.median(values):.4f}")
    if gaps:
        print(f"presence, largest gap with Python: {max(gaps):.2e}")
    print(json.dumps({"size_mb": size_mb, "ready_s": ready_s, "medians": {k: statistics.median(v) for k, v in rows.items()},
                      "min_iou": {k: min(v) for k, v in ious.items()}}))


if __name__ == "__main__":
    main()
