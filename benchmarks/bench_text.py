"""Speed of text prompts with the training-free engine: SAM (ViT-B, or MobileSAM) + ViT-B/16 CLIP, random
weights, so only compute is compared.

For each model: a new image + a new phrase (the image embedding, the proposals, their CLIP crops, the
phrase), then with the image set: a cached phrase, a new phrase, "all instances" (every proposal decoded, 8
kept), and a vocabulary of 20 phrases against one phrase, both as the first text request after ``set_image``
(target: at most 2x) and with the proposals already computed (then only the text tower differs). A random
text tower embeds every phrase alike, so its 20 phrases shortlist, crop and choose the same few proposals; the
vocabulary is timed again with each phrase given its own random direction (``distinct``), phrases that
disagree as a trained CLIP's do: more crops and more decoder rows, the case a user's vocabulary is closer to;
and, with those phrases, as the labeller asks it (every instance of each phrase).
Then the text tower alone on the vocabulary's 200 template sentences: whole, and with each template's beginning
kept as the engine runs them (:mod:`textsam.text.prefix`), in the engine's precisions.
Random weights give near-identical masks for every click, so the proposal filters are relaxed (every mask kept,
no NMS) and the engine keeps its full ``max_proposals``: the worst case of a real image. Then the same new-image request through
transformers' Sam3Model and through GroundingDINO-tiny + SAM ViT-B (segment-anything), random weights from
their default configs, in the same process.

    python benchmarks/bench_text.py [--image PATH] [--repeats 3] [--models sam_vit_b,mobile_sam] [--skip-others]
                                    [--fast] [--new-image-only] [--peers-bf16] [--glibc-settings]

The process keeps freed memory for reuse as the ``textsam`` command does (``textsam/allocator.py``; the peers
in the same process get it too); ``--glibc-settings`` times glibc's own malloc settings instead.

``--fast`` times :meth:`textsam.TextSamPredictor.fast` as the CLI builds it (the lighter engine and, on a CPU
with native bf16, the encoder in bf16; the engine's own work is bf16 there by default); ``--peers-bf16`` gives the other two systems
bf16 autocast as well, so the fast path is also compared with peers given the same precision.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
import zlib
from pathlib import Path

import numpy as np
import torch

import textsam
from textsam.allocator import keep_freed_memory
from textsam.precision import autocast, native_bf16
from textsam.text.options import InstanceOptions, TextOptions
from textsam.transforms import load_image

DEFAULT_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sam_demo_images" / "truck.jpg"
PHRASES = ["a truck", "the wheel", "a window", "the tyre", "a door", "the sky", "a tree", "a road", "a person",
           "a red car", "the mirror", "a light", "a roof", "the grass", "a fence", "a cloud"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_ours(name: str, image: np.ndarray, repeats: int, fast: bool = False,
               new_image_only: bool = False) -> dict[str, float]:
    from textsam.factory import fast_clip
    from textsam.text.options import EngineOptions

    # the fast path as the CLI builds it: ViT-B/32 for a published SAM (textsam.factory.fast_clip)
    model = textsam.create_model(name, pretrained=False, clip=fast_clip(name) if fast else "ViT-B-16-quickgelu")
    # every proposal kept and every phrase "present" (random weights): the engine does all of its work
    defaults = EngineOptions().proposals
    engine = EngineOptions(proposals=dataclasses.replace(defaults, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                                         box_nms_thresh=1.0), presence_threshold=0.0)
    options = TextOptions(instances=InstanceOptions(max_instances=8), engine=engine)
    # the fast path as the CLI builds it: TextOptions.fast and, with native bf16, a bf16 encoder
    pred = textsam.TextSamPredictor.fast(model, options) if fast else textsam.TextSamPredictor(model, text_options=options)
    out: dict[str, float] = {}
    fresh = iter(PHRASES * 8)

    def total() -> None:
        model.scoring_encoder.clear_cache()
        pred.set_image(image)
        pred.predict(text=next(fresh))

    out["new image + new phrase"] = best_of(total, max(1, repeats - 1))
    engine = pred.text.engine
    print(f"textsam {name:10s} {'proposal clicks, crops':28s} {engine.clicks:6d}, {len(engine._crops)} "
          f"({len(engine.proposals(pred))} proposals; encoder {pred.image_precision}, engine "
          f"{engine.precision(pred)})", flush=True)
    if new_image_only:
        return out
    out["text, cached phrase"] = best_of(lambda: pred.predict(text="a truck"), repeats)

    def new_phrase() -> None:
        model.scoring_encoder.clear_cache()
        pred.predict(text=next(fresh))

    out["text, new phrase"] = best_of(new_phrase, repeats)
    out["all instances"] = best_of(lambda: pred.predict(text="the wheel", instances="all"), repeats)
    vocabulary = (PHRASES + ["a bus", "a wall", "a sign", "a bike"])[:20]

    def one() -> None:
        model.scoring_encoder.clear_cache()
        pred.predict_phrases(vocabulary[:1])

    def twenty() -> None:
        model.scoring_encoder.clear_cache()
        pred.predict_phrases(vocabulary)

    out["vocabulary: 1 phrase"] = best_of(one, repeats)
    out["vocabulary: 20 phrases"] = best_of(twenty, repeats)

    def after_set_image(fn) -> float:  # noqa: ANN001 - the first text request on an embedded image
        best = float("inf")
        for _ in range(max(1, repeats - 1)):
            pred.set_image(image)
            model.scoring_encoder.clear_cache()
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    out["after set_image: 1 phrase"] = after_set_image(lambda: pred.predict_phrases(vocabulary[:1]))
    out["after set_image: 20 phrases"] = after_set_image(lambda: pred.predict_phrases(vocabulary))
    report_vocabulary(name, pred, vocabulary, "random text tower")
    # A random text tower embeds every phrase alike, so the 20 phrases shortlist, crop and choose the same few
    # proposals, which a real CLIP's 20 classes do not: the same requests again with each phrase's embedding
    # replaced by its own random direction (the text tower still runs), the case of phrases that disagree.
    with distinct_phrase_embeddings(model.scoring_encoder):
        out["distinct: 1 phrase"] = after_set_image(lambda: pred.predict_phrases(vocabulary[:1]))
        out["distinct: 20 phrases"] = after_set_image(lambda: pred.predict_phrases(vocabulary))
        report_vocabulary(name, pred, vocabulary, "distinct embeddings")
        # The labeller's request: every instance of each class (every proposal is cropped for the first phrase,
        # and each further phrase reuses those crops: text tower, one matrix product, its decoder batch).
        out["distinct, all instances: 1 phrase"] = after_set_image(lambda: all_instances(pred, vocabulary[:1]))
        out["distinct, all instances: 20 phrases"] = after_set_image(lambda: all_instances(pred, vocabulary))
    return out


def text_tower(encoder, precision: str, repeats: int) -> tuple[float, float]:  # noqa: ANN001 - a TextEncoder
    """Seconds to embed the 20-phrase vocabulary's 200 template sentences in ``precision``: every sentence whole
    (``embed_tokens``) and as the engine does, each template's beginning kept (:mod:`textsam.text.prefix`)."""
    from textsam.text.templates import DEFAULT_TEMPLATES, expand

    vocabulary = (PHRASES + ["a bus", "a wall", "a sign", "a bike"])[:20]
    sentences = [s for p in vocabulary for s in expand(p, DEFAULT_TEMPLATES)]
    tokens = encoder.tokenize(sentences)
    encoder.encode_ensembles(vocabulary[:1], DEFAULT_TEMPLATES, precision)  # registers the beginnings, keeps them

    def from_beginnings() -> None:
        encoder.clear_cache()  # forgets the phrases, keeps the beginnings
        encoder.encode(sentences, precision)

    with torch.inference_mode():
        whole = best_of(lambda: encoder.embed_tokens(tokens, precision=precision), repeats)
    return whole, best_of(from_beginnings, repeats)


def all_instances(pred: textsam.TextSamPredictor, phrases: list[str]) -> None:
    """What ``textsam label`` asks per image: every instance of each phrase."""
    for phrase in phrases:
        pred.predict(text=phrase, instances="all")


def report_vocabulary(name: str, pred: textsam.TextSamPredictor, vocabulary: list[str], what: str) -> None:
    """How many proposals the vocabulary cropped and how many different answers (decoder rows) it had."""
    answers = pred.predict_phrases(vocabulary)
    distinct = len({(tuple(a.info["prompts"]["points"][0]), tuple(a.info["prompts"]["box"] or ())) for a in answers})
    engine = pred.text.engine
    print(f"textsam {name:10s} 20 phrases, {what}: {len(engine._crops)} of {len(engine.proposals(pred))} proposals "
          f"cropped, {distinct} different answers", flush=True)


@contextlib.contextmanager
def distinct_phrase_embeddings(encoder):  # noqa: ANN001, ANN201
    """``encoder.encode_ensembles`` gives each phrase its own fixed random unit direction (after running the
    text tower as usual): phrases that disagree, as a trained CLIP's do."""
    original = encoder.encode_ensembles

    def spread(phrases, templates, precision="fp32"):  # noqa: ANN001, ANN202
        emb = original(phrases, templates, precision)
        rows = [torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(zlib.crc32(p.encode()))) for p in phrases]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1).to(emb)

    encoder.encode_ensembles = spread
    try:
        yield
    finally:
        del encoder.encode_ensembles


def fast_parity(name: str, image: np.ndarray) -> tuple[float, float]:
    """The fast path's masks for clicks and a box against fp32's (random weights, the same image): min and mean
    binary-mask IoU over 5 prompts x 3 masks (what bf16 in the encoder changes; the text engine's own choice is
    the proxy's business)."""
    model = textsam.create_model(name, pretrained=False, clip=None)
    full, fast = textsam.TextSamPredictor(model), textsam.TextSamPredictor.fast(model)
    for p in (full, fast):
        p.set_image(image)
    h, w = image.shape[:2]
    prompts = [dict(point_coords=np.array([[x * w, y * h]]), point_labels=np.array([1]))
               for x, y in [(0.45, 0.55), (0.2, 0.3), (0.7, 0.6), (0.5, 0.2)]]
    prompts.append(dict(box=np.array([0.1 * w, 0.2 * h, 0.6 * w, 0.7 * h])))
    ious = []
    for kw in prompts:
        for a, b in zip(full.predict(**kw).masks, fast.predict(**kw).masks):
            union = (a | b).sum()
            ious.append(float((a & b).sum() / union) if union else 1.0)
    return min(ious), float(np.mean(ious))


def bench_sam3(image: np.ndarray, precision: str = "fp32", device: str | torch.device = "cpu") -> float:
    """transformers' Sam3Model (default config, random weights): one image and one phrase, best of 1 after a
    warm-up, on ``device`` (synchronised on CUDA)."""
    from transformers import Sam3Config, Sam3Model

    device = torch.device(device)
    with device:  # made on the device: random initialisation of its 0.8 B weights is slow on a CPU
        model = Sam3Model(Sam3Config()).eval()
    size = model.config.vision_config.image_size if hasattr(model.config, "vision_config") else 1008
    size = size if isinstance(size, int) else size[0]
    pixels = torch.nn.functional.interpolate(
        torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255, (size, size), mode="bilinear"
    ).to(device)
    ids = torch.randint(1000, 20000, (1, 8), device=device)

    def run() -> None:
        with torch.inference_mode(), autocast(device, precision):
            model(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids))
        synchronize(device)

    return best_of(run, 1)


def bench_gdino_sam(image: np.ndarray, precision: str = "fp32", device: str | torch.device = "cpu") -> float:
    """GroundingDINO-tiny (transformers, default config) for the phrase's box, then segment-anything's SAM ViT-B
    with that box, random weights, on ``device`` (synchronised on CUDA)."""
    from segment_anything import SamPredictor, sam_model_registry
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    device = torch.device(device)
    with device:
        det = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    sam = SamPredictor(sam_model_registry["vit_b"]().eval().to(device))
    h, w = image.shape[:2]
    scale = 800 / min(h, w)
    pixels = torch.nn.functional.interpolate(
        torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255, (int(h * scale), int(w * scale)), mode="bilinear"
    ).to(device)
    ids = torch.randint(1000, 20000, (1, 8), device=device)

    def run() -> None:
        with torch.inference_mode():
            with autocast(device, precision):  # the detector and SAM's encoder (its predict returns numpy: fp32)
                out = det(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids))
                cx, cy, bw, bh = out.pred_boxes[0, out.logits[0].max(-1).values.argmax()].float().tolist()
                box = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
                sam.set_image(image)
            sam.features = sam.features.float()
            sam.predict(box=np.clip(box, 0, [w, h, w, h]), multimask_output=False)
        synchronize(device)

    return best_of(run, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="sam_vit_b,mobile_sam")
    parser.add_argument("--skip-others", action="store_true", help="do not run Sam3Model / GroundingDINO")
    parser.add_argument("--fast", action="store_true",
                        help="also time each model on the fast path (TextOptions.fast: the CLI's --fast)")
    parser.add_argument("--new-image-only", action="store_true", help="time only a new image + a new phrase")
    parser.add_argument("--peers-bf16", action="store_true",
                        help="also time Sam3Model and GroundingDINO + SAM under bf16 autocast (as the fast path)")
    parser.add_argument("--glibc-settings", action="store_true",
                        help="glibc's own malloc settings instead of keep_freed_memory (what the textsam command does)")
    args = parser.parse_args()
    kept = False if args.glibc_settings else keep_freed_memory()
    image = load_image(args.image) if args.image.exists() else np.random.default_rng(0).integers(
        0, 255, (1200, 1800, 3), dtype=np.uint8)
    print(f"image {image.shape[1]}x{image.shape[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"malloc: {'freed memory kept' if kept else 'glibc settings'}")
    totals = {}
    for name in args.models.split(","):
        if args.fast:
            label = f"{name} --fast"
            totals[label] = bench_ours(name, image, args.repeats, fast=True, new_image_only=True)["new image + new phrase"]
            print(f"textsam {label:17s} {'new image + new phrase':28s} {totals[label] * 1000:9.0f} ms", flush=True)
            low, mean = fast_parity(name, image)
            print(f"textsam {label:17s} masks against fp32 (5 prompts): binary-mask IoU min {low:.4f}, mean {mean:.4f}",
                  flush=True)
        res = bench_ours(name, image, args.repeats, new_image_only=args.new_image_only)
        totals[name] = res["new image + new phrase"]
        for key, secs in res.items():
            print(f"textsam {name:10s} {key:28s} {secs * 1000:9.0f} ms", flush=True)
        if args.new_image_only:
            continue
        ratio = res["after set_image: 20 phrases"] / res["after set_image: 1 phrase"]
        print(f"textsam {name:10s} {'20 phrases / 1, after set_image':28s} {ratio:9.2f} x  target <= 2: "
              f"{'ok' if ratio <= 2 else 'MISSED'}")
        ratio = res["distinct: 20 phrases"] / res["distinct: 1 phrase"]
        print(f"textsam {name:10s} {'20 / 1, distinct phrases':28s} {ratio:9.2f} x  target <= 2: "
              f"{'ok' if ratio <= 2 else 'MISSED'}")
        ratio = res["distinct, all instances: 20 phrases"] / res["distinct, all instances: 1 phrase"]
        print(f"textsam {name:10s} {'20 / 1, distinct, all inst.':28s} {ratio:9.2f} x  target <= 2: "
              f"{'ok' if ratio <= 2 else 'MISSED'} (the labeller's request)")
        cached = res["vocabulary: 20 phrases"] / res["vocabulary: 1 phrase"]
        print(f"textsam {name:10s} {'20 phrases / 1, proposals cached':28s} {cached:9.2f} x  (the phrases' text tower "
              "alone: 10 templates each)")
        if name == args.models.split(",")[0]:  # the text tower is the same CLIP for every model
            encoder = textsam.create_model(name, pretrained=False, clip="ViT-B-16-quickgelu").scoring_encoder
            for precision in ("bf16", "fp32") if native_bf16("cpu") else ("fp32",):
                whole, kept = text_tower(encoder, precision, args.repeats + 2)
                print(f"text tower, 200 template sentences, {precision}: whole {whole * 1000:.0f} ms, each template's "
                      f"beginning kept {kept * 1000:.0f} ms ({whole / kept:.2f}x)", flush=True)
    if not args.skip_others:
        sam3, gdino = bench_sam3(image), bench_gdino_sam(image)
        print(f"{'Sam3Model (transformers), new image + phrase':48s} {sam3 * 1000:9.0f} ms")
        print(f"{'GroundingDINO-tiny + SAM ViT-B, new image + phrase':48s} {gdino * 1000:9.0f} ms")
        for name, secs in totals.items():
            print(f"speed-up of textsam {name}: {sam3 / secs:.1f}x Sam3Model, {gdino / secs:.1f}x GroundingDINO+SAM")
        if args.peers_bf16:
            sam3, gdino = bench_sam3(image, "bf16"), bench_gdino_sam(image, "bf16")
            print(f"{'Sam3Model, bf16 autocast':48s} {sam3 * 1000:9.0f} ms")
            print(f"{'GroundingDINO-tiny + SAM ViT-B, bf16 autocast':48s} {gdino * 1000:9.0f} ms")
            for name, secs in totals.items():
                print(f"speed-up of textsam {name} against the bf16 peers: {sam3 / secs:.1f}x Sam3Model, "
                      f"{gdino / secs:.1f}x GroundingDINO+SAM")


if __name__ == "__main__":
    main()
