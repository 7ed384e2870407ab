"""What the published-model recipes (configs/sam_*.toml) cost: FLOPs per step, memory, cache, time per epoch.

    python benchmarks/recipe_cost.py [--tflops 396] [--gpus 8] [CONFIG ...]

Counted (``torch.utils.flop_counter.FlopCounterMode``, exact for the shapes): one training sample of each
prompt kind through the recipe's real graph (``PromptModel``: prompt encoder, mask decoder, 1 + correction-click
rounds, text projector; forward and backward) at full size on the CPU, weighted by ``[prompt_mix]``; the frozen
encoders' one-time cache pass (SAM image encoder per image, CLIP text tower per phrase, CLIP image tower per crop)
on the meta device. Measured on this machine: the bytes saved for backward per sample (bf16 autocast).
Parameter counts are exact. ESTIMATES: compute time = FLOPs / (GPUs x ``--tflops`` sustained TFLOP/s, default
40% of an H100/H200's 989 dense bf16 TFLOP/s); since the decoder step is small, a step also waits for its data:
reading each sample's 2 MiB cached image embedding (``--disk-gbps`` per node) and making the sample in a
DataLoader worker (``--sample-ms`` of CPU per sample, ``num_workers`` per GPU); the time per step is the largest
of the three. Dataset sizes from the published RefCOCO/+/g split counts and COCO 2017 statistics (below); the
cache at float16. No GPU was used.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPES = ("sam_vit_b_clip_b16_text", "sam_vit_b_clip_b16_crops", "sam_vit_b_clip_l14_text",
           "sam_vit_h_clip_l14_text", "sam_vit_h_clip_l14_336_crops")
# Published split sizes (expressions / images of the train splits): RefCOCO (UNC) 120,624 / 16,994; RefCOCO+
# (UNC) 120,191 / 16,992; RefCOCOg (UMD) 80,512 / 21,899. COCO train2017: 118,287 images, 860,001 instances.
REFS_TRAIN = 120_624 + 120_191 + 80_512
COCO_TRAIN_IMAGES = 118_287
HELD_OUT_IMAGES = 6_000  # ESTIMATE: images of RefCOCO/+ val+testA+testB (3,000) and RefCOCOg val+test (3,900), overlapping
CATEGORY_TARGETS = round(2.9 * (COCO_TRAIN_IMAGES - HELD_OUT_IMAGES))  # ESTIMATE: ~2.9 categories per COCO image
CROP_OBJECTS = 350_000  # ESTIMATE: COCO train2017 instances of >= 100x100 px at the 1024 input (~40%)
PHRASES = 290_000  # ESTIMATE: distinct training phrases (RefCOCO/+/g expressions repeat little) + 80 names
PEAK_BF16 = 989.0  # TFLOP/s, dense bf16, H100 SXM and H200 alike


def _mix(cfg) -> dict[int, float]:  # noqa: ANN001
    from textsam.train.batches import BOX, POINT, TEXT, TEXT_POINT

    p = cfg.prompt_mix.probabilities(cfg.recipe)
    return {POINT: p[0], BOX: p[1], TEXT: p[2], TEXT_POINT: p[3]}


def _clip_dims(spec: str) -> tuple[int, int]:
    """(embedding width, image size) of an open_clip architecture."""
    import open_clip

    from textsam.text.clip import parse_clip_spec

    cfg = open_clip.get_model_config(parse_clip_spec(spec)[0])
    return int(cfg["embed_dim"]), int(cfg["vision_cfg"]["image_size"])


def _batch(kind: int, clip_dim: int, img_size: int, grid: int):  # noqa: ANN202
    """One sample of prompt ``kind``: a disc-shaped target, a cached image embedding, a phrase embedding."""
    from textsam.train.batches import TEXT_KINDS, Batch

    lowres = 4 * grid
    yy, xx = torch.meshgrid(torch.arange(img_size), torch.arange(img_size), indexing="ij")
    mask = (((yy - 400) ** 2 + (xx - 500) ** 2) < 150**2).float()[None, None]
    low = torch.nn.functional.avg_pool2d(mask, img_size // lowres) >= 0.5
    text = kind in TEXT_KINDS
    return Batch(index=torch.tensor([0]), image_id=torch.tensor([0]), text=["the thing"], kind=torch.tensor([kind]),
                 input_size=torch.tensor([[img_size, img_size]]), mask=mask, mask_lowres=low.float(),
                 point=torch.tensor([[500.0, 400.0]]), box=torch.tensor([[350.0, 250.0, 650.0, 550.0]]),
                 image_emb=torch.randn(1, 256, grid, grid), prompt_rows=torch.tensor([0]) if text else None,
                 prompt_emb=torch.nn.functional.normalize(torch.randn(1, clip_dim), dim=-1) if text else None)


def step_cost(cfg) -> dict[str, float]:  # noqa: ANN001
    """FLOPs (forward + backward) and saved-activation bytes per training sample, and trainable parameters.

    The prompt encoder and mask decoder are the same for every SAM size, so the graph is built once per CLIP
    width on ``sam_vit_b``'s config (checked equal to the recipe's)."""
    from textsam.config import MODEL_CONFIGS
    from textsam.factory import build_sam
    from textsam.text.projector import TextProjector
    from textsam.train.losses import LossWeights
    from textsam.train.prompt_model import PromptModel

    mcfg, base = MODEL_CONFIGS[cfg.model], MODEL_CONFIGS["sam_vit_b"]
    assert (mcfg.prompt_encoder, mcfg.mask_decoder, mcfg.img_size) == (base.prompt_encoder, base.mask_decoder,
                                                                        base.img_size)
    with torch.device("meta"):
        model = build_sam(replace(base, image_encoder=base.image_encoder))
    model = model.to_empty(device="cpu")  # random values: the shapes are what counts
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    clip_dim, _ = _clip_dims(cfg.clip)
    head = cfg.text_head.head_config(clip_dim=clip_dim, token_dim=mcfg.mask_decoder.transformer_dim,
                                     default_tokens=mcfg.text.num_text_tokens, word_dim=0)
    model.text_projector = TextProjector(head)
    loss = cfg.loss
    module = PromptModel(model, train_image_encoder=False, clicks=loss.correction_clicks,
                         weights=LossWeights(loss.focal_weight, loss.dice_weight, loss.iou_weight),
                         text_min_loss=loss.text_multimask == "min")
    for name in ("prompt_encoder", "mask_decoder", "text_projector"):
        getattr(module, name).requires_grad_(not getattr(cfg.freeze, name))
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    flops = act = 0.0
    for kind, prob in _mix(cfg).items():
        batch = _batch(kind, clip_dim, mcfg.img_size, mcfg.embedding_size)
        counter = FlopCounterMode(display=False)
        with counter:
            module(batch)["loss"].backward()
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor, saved: dict[int, int] = saved) -> torch.Tensor:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
            module(batch)
        flops += prob * counter.get_total_flops()
        act += prob * sum(saved.values())
    return {"flops": flops, "act_bytes": act, "trainable": float(trainable)}


def encoder_cost(cfg) -> dict[str, float]:  # noqa: ANN001
    """Parameters and forward FLOPs of the frozen encoders (meta device): SAM image encoder per image, CLIP
    text tower per phrase, CLIP image tower per crop."""
    import open_clip

    from textsam.config import MODEL_CONFIGS
    from textsam.factory import build_image_encoder
    from textsam.text.clip import parse_clip_spec

    mcfg = MODEL_CONFIGS[cfg.model]
    with torch.device("meta"):
        encoder = build_image_encoder(mcfg.image_encoder)
        clip = open_clip.create_model(parse_clip_spec(cfg.clip)[0], pretrained=None, device="meta")
    out: dict[str, float] = {"image_params": sum(p.numel() for p in encoder.parameters()),
                             "clip_params": sum(p.numel() for p in clip.parameters())}
    with torch.no_grad():
        for name, fn in (("image_flops", lambda: encoder(torch.empty(1, 3, mcfg.img_size, mcfg.img_size, device="meta"))),
                         ("text_flops", lambda: clip.encode_text(torch.zeros(1, 77, dtype=torch.long, device="meta"))),
                         ("crop_flops", lambda: clip.encode_image(torch.empty(1, 3, *(clip.visual.image_size
                                                                  if isinstance(clip.visual.image_size, tuple)
                                                                  else (clip.visual.image_size,) * 2),
                                                                  device="meta")))):
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            out[name] = float(counter.get_total_flops())
    return out


def recipe_cost(path: Path, tflops: float, gpus: int, disk_gbps: float = 2.0,
                sample_ms: float = 15.0) -> dict[str, float | str]:
    """Every figure of one recipe's table row."""
    from textsam.train.config_file import load_config

    cfg = load_config(path)
    step, enc = step_cost(cfg), encoder_cost(cfg)
    clip_dim, _ = _clip_dims(cfg.clip)
    text = cfg.recipe == "text"
    targets = REFS_TRAIN + (CATEGORY_TARGETS if cfg.data.category_phrases else 0) if text else CROP_OBJECTS
    images = COCO_TRAIN_IMAGES - HELD_OUT_IMAGES
    per_step = step["flops"] * cfg.batch_size
    rate = tflops * 1e12
    cache = images * 256 * 64 * 64 * 2 + (PHRASES * clip_dim * 2 if text else
                                          CROP_OBJECTS * cfg.augment.crop_variants * clip_dim * 2)
    once = images * enc["image_flops"] + (PHRASES * enc["text_flops"] if text else
                                          CROP_OBJECTS * cfg.augment.crop_variants * enc["crop_flops"])
    trainable, resident = step["trainable"], enc["image_params"] + enc["clip_params"]
    micro = cfg.batch_size // (gpus * cfg.grad_accum)
    epoch_steps = targets / cfg.batch_size

    def step_s(n: int) -> float:  # the slowest of compute, disk and the n GPUs' DataLoader workers
        return max(per_step / (n * rate), cfg.batch_size * 256 * 64 * 64 * 2 / (disk_gbps * 1e9),
                   cfg.batch_size * sample_ms / 1e3 / (n * max(1, cfg.num_workers)))
    return {
        "recipe": path.stem, "step_tflop": per_step / 1e12, "sample_gflop": step["flops"] / 1e9,
        "trainable_m": trainable / 1e6, "resident_m": resident / 1e6,
        # fp32 weights of every part on the GPU, fp32 grads + AdamW's two moments for the trained ones
        "weights_gb": (resident + trainable) * 4 / 1e9, "optim_gb": trainable * 12 / 1e9,
        "act_gb_1": step["act_bytes"] * cfg.batch_size / 1e9, "act_gb_8": step["act_bytes"] * micro / 1e9,
        "cache_gb": cache / 1e9, "targets": float(targets), "epoch_steps": epoch_steps,
        "compute_ms_1": per_step / rate * 1e3, "step_s_1": step_s(1), "step_s_8": step_s(gpus),
        "epoch_h_1": epoch_steps * step_s(1) / 3600, "epoch_h_8": epoch_steps * step_s(gpus) / 3600,
        "run_h_1": cfg.steps * step_s(1) / 3600, "run_h_8": cfg.steps * step_s(gpus) / 3600,
        "cache_h_1": once / rate / 3600, "cache_h_8": once / (gpus * rate) / 3600,
        "image_tflop": enc["image_flops"] / 1e12,
    }


def markdown(rows: list[dict[str, float | str]], tflops: float, gpus: int, disk_gbps: float, sample_ms: float) -> str:
    head = ("| recipe | per step (batch 256): TFLOP, compute ms on 1 GPU | per sample: GFLOP | trained / resident "
            "params (M) | weights + optimizer (GB) | activations, 1 GPU / per GPU of 8 (GB) | cache (GB, fp16) | "
            f"epoch (targets, steps) | s per step on 1 / {gpus} GPUs | epoch on 1 / {gpus} GPUs (h) | "
            f"whole run on 1 / {gpus} (h) | cache pass on 1 / {gpus} (h) |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['step_tflop']:.1f}, {r['compute_ms_1']:.0f} | {r['sample_gflop']:.0f} | "
            f"{r['trainable_m']:.1f} / "
            f"{r['resident_m']:.0f} | {r['weights_gb']:.1f} + {r['optim_gb']:.2f} | {r['act_gb_1']:.0f} / "
            f"{r['act_gb_8']:.1f} | {r['cache_gb']:.0f} | {r['targets'] / 1e3:.0f}k, {r['epoch_steps']:.0f} | "
            f"{r['step_s_1']:.2f} / {r['step_s_8']:.2f} | "
            f"{r['epoch_h_1']:.2f} / {r['epoch_h_8']:.3f} | {r['run_h_1']:.1f} / {r['run_h_8']:.2f} | "
            f"{r['cache_h_1']:.2f} / {r['cache_h_8']:.2f} |")
    lines.append("")
    lines.append(f"Times are ESTIMATES at {tflops:.0f} sustained TFLOP/s per GPU ({100 * tflops / PEAK_BF16:.0f}% of the "
                 f"{PEAK_BF16:.0f} dense bf16 TFLOP/s of an H100 or H200); FLOPs counted by FlopCounterMode, activations "
                 "measured as the bytes saved for backward (bf16 autocast, CPU); a step takes the longest of its "
                 f"compute, reading the batch's cached embeddings at {disk_gbps:g} GB/s per node, and making its "
                 f"samples at {sample_ms:g} ms of CPU each in the config's DataLoader workers per GPU (both ESTIMATES); "
                 "dataset sizes as in the script.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path, help="recipe configs (default: the five configs/sam_*.toml)")
    parser.add_argument("--tflops", type=float, default=0.4 * PEAK_BF16, help="sustained TFLOP/s per GPU (estimate)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the data-parallel run")
    parser.add_argument("--disk-gbps", type=float, default=2.0, help="read bandwidth of the cache, GB/s per node")
    parser.add_argument("--sample-ms", type=float, default=15.0,
                        help="CPU ms to make one sample (mask decode, prompts, cache read) in a DataLoader worker")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    paths = args.configs or [REPO / "configs" / f"{name}.toml" for name in RECIPES]
    rows = [recipe_cost(p, args.tflops, args.gpus, args.disk_gbps, args.sample_ms) for p in paths]
    print(markdown(rows, args.tflops, args.gpus, args.disk_gbps, args.sample_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
