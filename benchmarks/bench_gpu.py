"""The GPU figures of one card in one run: ``set_image``, ``predict``, new image + phrase and the labeller's images/s,
in fp32 and bf16, with and without ``torch.compile``, beside transformers' Sam3Model and GroundingDINO-tiny + SAM
ViT-B on the same GPU (random weights everywhere, so only compute is compared; the same photo for all).

    python benchmarks/bench_gpu.py [--device cuda] [--images DIR] [--models sam_vit_b,sam_vit_h,mobile_sam]
                                   [--compile-models sam_vit_b] [--repeats 5] [--no-compile] [--no-peers]
                                   [--budget 480] [--out FILE.md]
    python benchmarks/bench_gpu.py --device cpu --quick --out table.md   # the same code on the CPU, in seconds

Rows (each the best of ``--repeats`` after one warm-up; CUDA is synchronised around every timed call):

- ``set_image`` of each SAM at 1024 px, fp32 and bf16 (``TextSamPredictor(image_precision=...)``), eager, then
  with the image encoder compiled for ``--compile-models`` (``model.image_encoder.compile()``; the first call's
  compile time is printed),
  beside the matrix-product floor of the encoder's FLOPs (``torch.utils.flop_counter``) at the dtype's measured
  GEMM rate on this card;
- ``predict``: one click, and 16 boxes in one call (fp32);
- new image + phrase with the training-free engine (``set_image`` and a phrase it has not seen: proposals, CLIP
  crops, the final decoder call), sam_vit_b and mobile_sam with CLIP ViT-B/16, the default precision (the engine's
  work in bf16 where the device has it natively, the final decoder call fp32) and ``TextSamPredictor.fast``; 20
  phrases against one after ``set_image``;
- the labeller (``textsam.label``, every instance of 10 classes) in images/s;
- the peers, fp32 and bf16 autocast: transformers' ``Sam3Model`` (default config) and GroundingDINO-tiny
  (transformers) + segment-anything's SAM ViT-B.

Every row runs guarded (``Table.run``): an error is printed with its traceback and the table says ``failed``, so one
broken row costs that row, not the run. ``--budget`` seconds (from the start) skips the rows not yet started once
spent, so a run on a borrowed card returns its table inside the call's limit; rows are printed as they finish
and the table is rewritten to ``--out`` after each.

On a lent GPU machine (no network; its image has torch, transformers and timm): the packages it lacks travel as
wheels, made here by ``bash tools/gpu_wheels.sh`` (into ``.whl/``, with the SAM demo photos copied into ``.gpu/``),
and one call runs everything::

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py --images .gpu --out $OUT/gpu.md \
    2>&1 | tee $OUT/gpu.log

(``carry``: ``.whl`` and ``.gpu``; ``timeout_s`` 600). That environment (Python 3.12, torch 2.11, transformers 5.17
and these wheels) ran the whole script on this project's CPU (``--device cpu``) before any GPU was lent.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

import textsam
from textsam.precision import native_bf16
from textsam.transforms import load_image

DEFAULT_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sam_demo_images"
T = TypeVar("T")
PHRASES = ["a truck", "the wheel", "a window", "the tyre", "a door", "the sky", "a tree", "a road", "a person",
           "a red car", "the mirror", "a light", "a roof", "the grass", "a fence", "a cloud", "a bus", "a wall",
           "a sign", "a bike"]


class Table:
    """The rows measured so far, printed as they come and written to ``out`` (markdown) after each."""

    def __init__(self, out: Path | None, budget: float, header: str) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.out, self.budget, self.header = out, budget, header
        self.start = time.perf_counter()

    def add(self, what: str, setting: str, value: str, note: str = "") -> None:
        self.rows.append((what, setting, value, note))
        print(f"{what:34s} {setting:34s} {value:>14s}  {note}", flush=True)
        if self.out is not None:
            self.out.write_text(self.markdown(), encoding="utf-8")

    def markdown(self) -> str:
        lines = [self.header, "", "| what | setting | time | note |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines) + "\n"

    def run(self, what: str, setting: str, fn: Callable[[], T]) -> T | None:
        """``fn()`` as one row (it adds its own lines): skipped once the budget is spent, ``failed`` (with the
        traceback printed) when it raises; None then."""
        if time.perf_counter() - self.start > self.budget:
            self.add(what, setting, "skipped", f"budget of {self.budget:.0f} s spent")
            return None
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - one broken row must not lose the others
            traceback.print_exc()
            first = str(err).splitlines()[0][:120] if str(err) else ""
            self.add(what, setting, "failed", f"{type(err).__name__}: {first}")
            return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best wall time in seconds of ``fn()`` over ``repeats`` calls after one warm-up, synchronised."""
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def gemm_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """FLOP/s of an ``n x n x n`` matrix product in ``dtype`` on ``device`` (best of 5)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / best_of(lambda: a @ b, 5, device)


def encoder_flops(model: torch.nn.Module, device: torch.device) -> float:
    """FLOPs of one image through the SAM image encoder at its input size (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, model.img_size, model.img_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.image_encoder(x)
    return float(counter.get_total_flops())


def images_from(folder: Path | None, quick: bool) -> list[np.ndarray]:
    files = sorted(p for ext in ("*.jpg", "*.jpeg", "*.png") for p in (folder.glob(ext) if folder else []))
    if files:
        return [load_image(p) for p in files]
    rng = np.random.default_rng(0)
    side = (96, 128) if quick else (1200, 1800)
    return [rng.integers(0, 255, (*side, 3), dtype=np.uint8) for _ in range(3)]


def relaxed_engine_options(model: textsam.TextSam) -> textsam.TextOptions:
    """The model's own text options with the engine keeping every proposal and answering every phrase (random
    weights give near-identical masks: the engine's full work, as ``bench_text.py`` does)."""
    from textsam.text.prompter import default_options

    options = default_options(model)
    proposals = dataclasses.replace(options.engine.proposals, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                    box_nms_thresh=1.0)
    return dataclasses.replace(options, engine=dataclasses.replace(options.engine, proposals=proposals,
                                                                   presence_threshold=0.0))


def bench_sam(table: Table, name: str, image: np.ndarray, device: torch.device, repeats: int, compile_: bool,
              rates: dict[str, float]) -> None:
    model = textsam.create_model(name, pretrained=False, clip=None, device=device)
    precisions = ["fp32"] + (["bf16"] if native_bf16(device) else [])

    def count() -> float:
        flops = encoder_flops(model, device)
        table.add(f"{name} encoder FLOPs", "1 image", f"{flops / 1e9:.0f} GFLOP")
        return flops

    flops = table.run(f"{name} encoder FLOPs", "flop_counter", count)

    def set_image(precision: str, compiled: bool) -> None:
        setting = f"{precision}{', compiled' if compiled else ''}"
        pred = textsam.TextSamPredictor(model, image_precision=precision)
        if compiled:
            t0 = time.perf_counter()
            pred.set_image(image)
            synchronize(device)
            table.add(f"{name} first set_image", setting, ms(time.perf_counter() - t0), "includes compiling")
        secs = best_of(lambda: pred.set_image(image), repeats, device)
        rate = rates.get(precision)
        note = f"{secs / (flops / rate):.2f}x the GEMM floor" if flops and rate else ""
        table.add(f"{name} set_image", setting, ms(secs), note)

    for compiled in (False, True) if compile_ else (False,):
        if compiled and table.run(f"{name} compile", "image_encoder.compile()",
                                  lambda: model.image_encoder.compile() or True) is None:
            break
        for precision in precisions:
            table.run(f"{name} set_image", precision, lambda p=precision, c=compiled: set_image(p, c))

    def predict() -> None:
        pred = textsam.TextSamPredictor(model)
        pred.set_image(image)
        h, w = image.shape[:2]
        click = dict(point_coords=np.array([[0.45 * w, 0.55 * h]]), point_labels=np.array([1]))
        table.add(f"{name} predict", "1 click", ms(best_of(lambda: pred.predict(**click), repeats, device)))
        boxes = np.array([[0.05 * i * w, 0.04 * i * h, 0.05 * i * w + 0.2 * w, 0.04 * i * h + 0.3 * h]
                          for i in range(16)])
        table.add(f"{name} predict", "16 boxes, one call, 1 mask each",
                  ms(best_of(lambda: pred.predict_batch(boxes=boxes, multimask_output=False), repeats, device)))

    table.run(f"{name} predict", "fp32", predict)


def bench_text(table: Table, name: str, images: list[np.ndarray], device: torch.device, repeats: int,
               clip: str | None) -> None:
    model = textsam.create_model(name, pretrained=False, clip=clip, device=device) if clip else \
        textsam.create_model(name, device=device)
    options = relaxed_engine_options(model)
    fresh = iter(PHRASES * 100)

    def new_image(label: str, pred: textsam.TextSamPredictor) -> None:
        def total() -> None:
            model.scoring_encoder.clear_cache()
            pred.set_image(images[0])
            pred.predict(text=next(fresh))

        secs = best_of(total, repeats, device)
        table.add(f"{name} new image + phrase", f"{label} (encoder {pred.image_precision})", ms(secs))

    table.run(f"{name} new image + phrase", "default",
              lambda: new_image("default", textsam.TextSamPredictor(model, text_options=options)))
    table.run(f"{name} new image + phrase", "fast", lambda: new_image("fast", textsam.TextSamPredictor.fast(model, options)))

    def vocabulary() -> None:
        pred = textsam.TextSamPredictor(model, text_options=options)

        def after_set_image(phrases: list[str]) -> float:
            best = float("inf")
            for _ in range(max(1, repeats)):
                pred.set_image(images[0])
                model.scoring_encoder.clear_cache()
                synchronize(device)
                t0 = time.perf_counter()
                pred.predict_phrases(phrases)
                synchronize(device)
                best = min(best, time.perf_counter() - t0)
            return best

        one, twenty = after_set_image(PHRASES[:1]), after_set_image(PHRASES)
        table.add(f"{name} vocabulary after set_image", "1 phrase", ms(one))
        table.add(f"{name} vocabulary after set_image", "20 phrases", ms(twenty), f"{twenty / one:.2f}x one phrase")

    table.run(f"{name} vocabulary after set_image", "20 phrases / 1", vocabulary)

    def labeller() -> None:
        pred = textsam.TextSamPredictor(model, text_options=options)
        batch = (images * 4)[: max(2, len(images))]
        textsam.label(batch[:1], PHRASES[:10], predictor=pred)  # warm-up
        synchronize(device)
        t0 = time.perf_counter()
        textsam.label(batch, PHRASES[:10], predictor=pred)
        synchronize(device)
        secs = time.perf_counter() - t0
        table.add(f"{name} labeller", "10 classes, every instance", f"{len(batch) / secs:.2f} images/s",
                  f"{len(batch)} images")

    table.run(f"{name} labeller", "10 classes, every instance", labeller)


def bench_peers(table: Table, image: np.ndarray, device: torch.device, precisions: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_text import bench_gdino_sam, bench_sam3

    for precision in precisions:
        table.run("Sam3Model new image + phrase", precision, lambda p=precision: table.add(
            "Sam3Model new image + phrase", p, ms(bench_sam3(image, p, device))))
        table.run("GroundingDINO-tiny + SAM ViT-B", precision, lambda p=precision: table.add(
            "GroundingDINO-tiny + SAM ViT-B", p, ms(bench_gdino_sam(image, p, device))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="a folder of photos (default: ../shared/data/sam_demo_images; random images if none)")
    parser.add_argument("--models", default="sam_vit_b,sam_vit_h,mobile_sam", help="SAMs for set_image and predict")
    parser.add_argument("--text-models", default="sam_vit_b,mobile_sam", help="SAMs for the text rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile-models", default="sam_vit_b",
                        help="SAMs whose set_image is also timed with the encoder compiled (each compile takes a while)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--no-peers", action="store_true", help="leave out Sam3Model and GroundingDINO + SAM")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds after which rows not started are skipped")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: shapes_tiny only, small random images, 1 repeat, no compile, no peers")
    parser.add_argument("--out", type=Path, default=None, help="write the table here (markdown) after every row")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: give --device cpu (or run this on a GPU machine)", file=sys.stderr)
        return 2
    if args.quick:
        args.models, args.text_models, args.repeats, args.no_compile, args.no_peers = \
            "shapes_tiny", "shapes_tiny", 1, True, True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    header = (f"GPU figures: {name}, torch {torch.__version__}, textsam {textsam.__version__}, random weights "
              f"(`python benchmarks/bench_gpu.py{' ' + ' '.join(argv) if argv else ''}`)")
    table = Table(args.out, args.budget, header)
    print(header, flush=True)
    images = images_from(args.images if args.images and args.images.is_dir() and not args.quick else None, args.quick)
    rates: dict[str, float] = {}
    n = 8192 if device.type == "cuda" else 512
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if precision == "bf16" and not native_bf16(device):
            continue
        rate = table.run("GEMM rate", precision, lambda d=dtype: gemm_rate(device, d, n))
        if rate:
            rates[precision] = rate
            table.add("GEMM rate", f"{precision}, {n}^3", f"{rate / 1e12:.1f} TFLOP/s",
                      "TF32 off" if precision == "fp32" and device.type == "cuda" else "")
    for model_name in args.models.split(","):
        compiled = not args.no_compile and model_name in args.compile_models.split(",")
        bench_sam(table, model_name, images[0], device, args.repeats, compiled, rates)
    clip = None if args.quick else "ViT-B-16-quickgelu"
    for model_name in args.text_models.split(","):
        bench_text(table, model_name, images, device, args.repeats, clip)
    if not args.no_peers:
        bench_peers(table, images[0], device, ["fp32"] + (["bf16"] if native_bf16(device) else []))
    print(f"done in {time.perf_counter() - table.start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
