"""Speed of text prompts: ViT-B SAM + ViT-B/16 CLIP (random weights, so only compute is compared).

With the image already set (SAM embedding and dense CLIP features computed once):
  text-only prompt, phrase cached (target <= 150 ms) and new phrase (target <= 250 ms);
  "all instances" with up to 8 candidates (target <= 600 ms).
Then the total time for one new image + one phrase, beside the same request run through
transformers' Sam3Model and through GroundingDINO-tiny + SAM ViT-B (segment-anything), all with random
weights from their default configs.

    python benchmarks/bench_text.py [--image PATH] [--repeats 5] [--skip-others]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import textsam
from textsam.text.options import InstanceOptions, TextOptions
from textsam.text.prompter import TextPrompt
from textsam.transforms import load_image

DEFAULT_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sam_demo_images" / "truck.jpg"
PHRASES = ["a truck", "the wheel", "a window", "the tyre", "a door", "the sky", "a tree", "a road", "a person",
           "a red car", "the mirror", "a light", "a roof", "the grass", "a fence", "a cloud"]


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_ours(image: np.ndarray, repeats: int) -> dict[str, float]:
    model = textsam.create_model("sam_vit_b", pretrained=False, clip="ViT-B-16-quickgelu")
    pred = textsam.TextSamPredictor(model, text_options=TextOptions(instances=InstanceOptions(max_instances=8)))
    t0 = time.perf_counter()
    pred.set_image(image)
    out = {"set_image (SAM + dense CLIP)": time.perf_counter() - t0}
    out["text, cached phrase"] = best_of(lambda: pred.predict(text="a truck"), repeats)
    fresh = iter(PHRASES * 4)

    def new_phrase() -> None:
        model.text_encoder.clear_cache()
        pred.predict(text=next(fresh))

    out["text, new phrase"] = best_of(new_phrase, repeats)
    # Random CLIP weights rarely give 8 separate regions, so the grounding step is made to return 8
    # candidates (real points and boxes spread over the image): the decode, scoring and NMS of 8 are timed.
    h, w = image.shape[:2]
    real = pred.text.instance_prompts

    def eight(phrase, img, negative=None):
        base = real(phrase, img, negative=negative)[0]
        cands = []
        for i in range(8):
            cx, cy = (0.1 + 0.8 * (i % 4) / 3) * w, (0.3 + 0.4 * (i // 4)) * h
            cands.append(TextPrompt(np.array([[cx, cy]]), np.array([1]),
                                    np.array([cx - 0.08 * w, cy - 0.1 * h, cx + 0.08 * w, cy + 0.1 * h]), base.tokens))
        return cands

    pred.text.instance_prompts = eight
    out["all instances (8 candidates)"] = best_of(lambda: pred.predict(text="the wheel", instances="all"), repeats)
    pred.text.instance_prompts = real
    model.text_encoder.clear_cache()

    def total() -> None:
        model.text_encoder.clear_cache()
        pred.set_image(image)
        pred.predict(text="a truck")

    out["total: new image + new phrase"] = best_of(total, 1)
    return out


def bench_sam3(image: np.ndarray) -> float:
    from transformers import Sam3Config, Sam3Model

    model = Sam3Model(Sam3Config()).eval()
    size = model.config.vision_config.image_size if hasattr(model.config, "vision_config") else 1008
    size = size if isinstance(size, int) else size[0]
    pixels = torch.nn.functional.interpolate(
        torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255, (size, size), mode="bilinear"
    )
    ids = torch.randint(1000, 20000, (1, 8))

    def run() -> None:
        with torch.inference_mode():
            model(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids))

    return best_of(run, 1)


def bench_gdino_sam(image: np.ndarray) -> float:
    from segment_anything import SamPredictor, sam_model_registry
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    det = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    sam = SamPredictor(sam_model_registry["vit_b"]().eval())
    h, w = image.shape[:2]
    scale = 800 / min(h, w)
    pixels = torch.nn.functional.interpolate(
        torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255, (int(h * scale), int(w * scale)), mode="bilinear"
    )
    ids = torch.randint(1000, 20000, (1, 8))

    def run() -> None:
        with torch.inference_mode():
            out = det(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids))
            cx, cy, bw, bh = out.pred_boxes[0, out.logits[0].max(-1).values.argmax()].tolist()
            box = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            sam.set_image(image)
            sam.predict(box=np.clip(box, 0, [w, h, w, h]), multimask_output=False)

    return best_of(run, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-others", action="store_true", help="do not run Sam3Model / GroundingDINO")
    args = parser.parse_args()
    image = load_image(args.image) if args.image.exists() else np.random.default_rng(0).integers(
        0, 255, (1200, 1800, 3), dtype=np.uint8)
    print(f"image {image.shape[1]}x{image.shape[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    targets = {"text, cached phrase": 0.150, "text, new phrase": 0.250, "all instances": 0.600}
    for name, secs in bench_ours(image, args.repeats).items():
        target = next((v for k, v in targets.items() if name.startswith(k)), None)
        verdict = "" if target is None else f"  target <= {target * 1000:.0f} ms: {'ok' if secs <= target else 'MISSED'}"
        print(f"textsam  {name:34s} {secs * 1000:9.0f} ms{verdict}")
    if not args.skip_others:
        print(f"{'Sam3Model (transformers), new image + phrase':43s} {bench_sam3(image) * 1000:9.0f} ms")
        print(f"{'GroundingDINO-tiny + SAM ViT-B, new image + phrase':43s} {bench_gdino_sam(image) * 1000:9.0f} ms")


if __name__ == "__main__":
    main()
