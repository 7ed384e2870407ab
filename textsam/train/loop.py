"""The training loop: ``train(config) -> Path``; ``textsam train CONFIG``; ``torchrun``-ready.

* AdamW (weight decay on matrices only), linear warmup then cosine decay (``LambdaLR``), gradient
  accumulation, bf16 autocast per ``config.amp``, gradient clipping.
* Data parallel under ``torchrun`` (``WORLD_SIZE > 1``): gloo on CPU, nccl on CUDA; the trainable
  graph is wrapped in ``DistributedDataParallel``; each rank reads its shard of every step's global
  batch (:class:`~textsam.train.data.StepSampler`); only rank 0 writes files.
* Checkpoints (``output_dir/checkpoints/step_NNNNNNN.pt``) hold the trained weights, optimizer,
  scheduler, step, the RNG states of every rank and the sampler position. Samples depend only on
  ``(seed, step)``, so a run stopped at step k and resumed gives the same weights as an uninterrupted run
  (bit-exact on CPU with ``deterministic = true``).
* Outputs: ``model.safetensors`` (trained parts, official key names, JSON metadata in the header),
  ``text_head.safetensors`` for text recipes, ``train_config.json`` and ``log.jsonl`` (one JSON object
  per logged step: step, loss parts, lr, seconds per step; evaluations as ``{"step", "eval": {...}}``).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from ..errors import InputError
from .config import TrainConfig, load_config, save_config
from .data import (
    BASIC_COLOUR_WORDS,
    EmbeddingCache,
    SegmentationDataset,
    SemanticLabels,
    StepSampler,
    build_entries,
    coco_of,
    collate,
)
from .recipes import Recipe, build_recipe, evaluate, text_table, warm_cache

logger = logging.getLogger(__name__)
CKPT_FORMAT = "textsam.train_state"


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """Multiplier of ``config.lr`` at each step: linear warmup, then cosine decay to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if not config.cosine:
            return 1.0
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 for ``amp = "bf16"``; for ``"auto"`` bf16 on CUDA devices that support it, else off (CPU
    bf16 autocast is slow without native bf16 matmuls and changes results)."""
    if config.amp == "bf16":
        return torch.bfloat16
    if config.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = sorted(Path(output_dir, "checkpoints").glob("step_*.pt"))
    return found[-1] if found else None


def open_source(config: TrainConfig, split: str, *, want_refs: bool) -> Any:
    """The ``ReferDataset`` (``want_refs`` and a refs file exists) or ``CocoDataset`` of ``split``."""
    d = config.data
    root = Path(d.root)
    instances, images = root / d.instances.format(split=split), root / d.images.format(split=split)
    refs = root / d.refs.format(split=split) if d.refs else None
    if want_refs and refs is not None and refs.is_file():
        from ..data.refer import ReferDataset

        return ReferDataset(refs, instances, images, split=split if d.refs_split_field else None)
    if config.recipe == "text" and want_refs:
        raise InputError(f"the text recipe needs referring expressions, but {refs} does not exist")
    from ..data.coco import CocoDataset

    return CocoDataset(instances, images)


def make_dataset(recipe: Recipe, source: Any, *, train: bool, split: str, limit: int | None,
                 semantic: SemanticLabels | None = None) -> SegmentationDataset:
    """Samples of ``source`` for ``recipe`` (with ``semantic`` class maps when given)."""
    cfg, model = recipe.config, recipe.model
    colour_words: set[str] = set()
    if cfg.greyscale_text or cfg.region_colour_shuffle > 0:
        colour_words = set(BASIC_COLOUR_WORDS) | (semantic.colour_words() if semantic is not None else set())
    entries = build_entries(source, model.img_size, cfg.data.min_area)
    if limit is not None and len(entries) > limit:
        entries = entries[:: max(1, len(entries) // limit)][:limit] if not train else entries[:limit]
    return SegmentationDataset(
        source, entries, img_size=model.img_size, lowres=model.prompt_encoder.mask_input_size[0],
        probs=recipe.probs, seed=cfg.seed, train=train, clip_input=recipe.clip_input if train else None,
        crop_variants=cfg.crop_variants, crop_enlarge=cfg.crop_enlarge, crop_grey_prob=cfg.crop_grey_prob,
        pixel_mean=tuple(model.pixel_mean.flatten().tolist()), pixel_std=tuple(model.pixel_std.flatten().tolist()),
        split=split, semantic=semantic, greyscale_prob=cfg.greyscale_prob if train else 0.0,
        colour_words=colour_words,
        max_regions=cfg.max_regions if cfg.locator_dim and cfg.locator_kind == "regions" else 0,
        region_colour_shuffle=cfg.region_colour_shuffle if train else 0.0, greyscale_text=cfg.greyscale_text,
    )


def _optimizer(recipe: Recipe, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW: weight decay on matrices only; a trained text tower at ``lr x text_encoder_lr_scale``."""
    tower = recipe.module.text_encoder
    tower_ids = {id(p) for p in tower.parameters()} if tower is not None else set()
    groups = []
    for in_tower, lr in ((False, config.lr), (True, config.lr * config.text_encoder_lr_scale)):
        params = [p for p in recipe.module.parameters() if p.requires_grad and (id(p) in tower_ids) == in_tower]
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay, "lr": lr},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.999))


def export(recipe: Recipe, out_dir: Path, step: int) -> Path:
    """Write ``model.safetensors`` (trained parts) and, for text recipes, ``text_head.safetensors``."""
    cfg, model = recipe.config, recipe.model
    name = model.config.name if model.config is not None else cfg.model
    te = recipe.text_encoder
    meta = {"format": "textsam.trained", "sam_model": name, "recipe": cfg.recipe, "step": step,
            "parts": recipe.trainable_parts(), "clip": f"{te.model_name}/{te.pretrained}" if te else None}
    tensors = {k: v.detach().cpu().contiguous() for k, v in recipe.trainable_state().items()}
    path = out_dir / "model.safetensors"
    save_file(tensors, str(path.with_suffix(".tmp")), metadata={"textsam": json.dumps(meta)})
    path.with_suffix(".tmp").replace(path)
    if model.text_projector is not None and te is not None:
        from ..text_head import TextHeadInfo, save_text_head

        te.clear_cache()  # the tower may have changed since phrases were last encoded
        extra = {"step": str(step)}
        if recipe.module.text_encoder is not None:
            extra["text_encoder"] = "fine-tuned: its weights are the text_encoder.clip.* tensors of model.safetensors"
        p = model.text_projector
        info = TextHeadInfo(name, te.model_name, te.pretrained, p.clip_dim, p.token_dim, p.num_tokens,
                            p.hidden_dim, recipe=cfg.recipe, extra=extra, word_dim=p.word_dim,
                            word_heads=p.word_heads, locator_dim=p.locator_dim,
                        locator_kind=p.locator_kind, locator_appearance=p.locator_appearance,
                        locator_factors=p.locator_factors)
        save_text_head(out_dir / "text_head.safetensors", p, info)
    return path


def _trim_log(path: Path, last_step: int) -> None:
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
        path.write_text("".join(ln + "\n" for ln in keep))


def train(config: TrainConfig, *, source: Any = None, val_source: Any = None,
          resume: str | Path | None = None, stop_at: int | None = None) -> Path:
    """Train per ``config``; return the path of the exported ``model.safetensors``.

    Args:
        source, val_source: ready ``CocoDataset``/``ReferDataset`` objects instead of opening
            ``config.data`` splits (``val_source`` is only used with ``source``).
        resume: a checkpoint file, or ``"auto"`` for the latest in ``output_dir/checkpoints`` (none:
            start fresh).
        stop_at: stop after this step (as if preempted): write a checkpoint there and return its path.
    """
    rank, world, local_rank = _dist_env()
    device = _device(config, local_rank)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # long timeout: rank 0 may fill the embedding cache while the others wait at a barrier
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    prev_det = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(config, source, val_source, resume, rank, world, device, stop_at)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        if own_group:
            dist.destroy_process_group()


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _train(config: TrainConfig, source: Any, val_source: Any, resume: str | Path | None,
           rank: int, world: int, device: torch.device, stop_at: int | None) -> Path:
    out = Path(config.output_dir)
    recipe = build_recipe(config, device)
    if source is None:
        source = open_source(config, config.data.train_split, want_refs=config.recipe == "text")
        if config.data.val_split:
            val_source = open_source(config, config.data.val_split, want_refs=config.uses_text)
    semantic = None
    if config.semantic_weight > 0:  # the auxiliary loss: class maps in the samples, a head on the module
        semantic = SemanticLabels(coco_of(source), config.semantic_fields)
        recipe.module.add_semantic_head(semantic.num_classes, config.semantic_weight)
    train_ds = make_dataset(recipe, source, train=True, split="train", limit=config.data.max_samples,
                            semantic=semantic)
    val_ds = None
    if val_source is not None:
        val_ds = make_dataset(recipe, val_source, train=False, split="val", limit=config.data.eval_samples)
    if config.cache_dir:
        datasets = [d for d in (train_ds, val_ds) if d is not None]
        if rank == 0:
            warm_cache(recipe, datasets, config.cache_dir)
        _barrier(world)
        cache = warm_cache(recipe, datasets, config.cache_dir, write=False)
        for d in datasets:
            d.cache, d.use_image_cache = cache, cache.image_fp is not None
    elif recipe.text_encoder is not None and recipe.module.text_encoder is None:
        # frozen text tower: phrase embeddings fixed up front (see recipes.text_table)
        datasets = [d for d in (train_ds, val_ds) if d is not None]
        cache = EmbeddingCache.in_memory(text_table(recipe, [e.phrase for d in datasets for e in d.entries]))
        for d in datasets:
            d.cache = cache
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "train_config.json")
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed + rank)

    module = recipe.module.to(device)
    optimizer = _optimizer(recipe, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    start = 0
    ckpt_path = latest_checkpoint(out) if resume == "auto" else (Path(resume) if resume else None)
    if ckpt_path is not None:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("format") != CKPT_FORMAT:
            raise InputError(f"{ckpt_path} is not a textsam training checkpoint")
        if state["sampler"]["batch_size"] != config.batch_size or state["sampler"]["seed"] != config.seed:
            raise InputError(f"{ckpt_path} was written with another batch_size/seed; resume needs the same")
        missing = set(recipe.trainable_state()) - set(state["model"])
        if missing:
            raise InputError(f"{ckpt_path} lacks trained weights {sorted(missing)[:5]}: another [freeze] setup?")
        recipe.model.load_state_dict(state["model"], strict=False)
        if recipe.module.semantic_head is not None:
            if "semantic_head" not in state:
                raise InputError(f"{ckpt_path} has no semantic head: it was written with semantic_weight = 0")
            recipe.module.semantic_head.load_state_dict(state["semantic_head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        rngs = state["rng"]
        set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])
        if rank == 0:
            _trim_log(out / "log.jsonl", start)
            logger.info("resumed from %s at step %d", ckpt_path, start)
    model: torch.nn.Module = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
    sampler = StepSampler(len(train_ds), seed=config.seed, batch_size=config.batch_size, grad_accum=config.grad_accum,
                          rank=rank, world=world, start_step=start, steps=config.steps)
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers, pin_memory=device.type == "cuda")
    batches = iter(loader)
    dtype = amp_dtype(config, device)
    params = [p for p in module.parameters() if p.requires_grad]
    log_file = out / "log.jsonl"
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=start, disable=rank != 0 or not config.progress, desc="train")
    module.train()
    for step in range(start, config.steps):
        t0 = time.perf_counter()
        parts_sum: dict[str, float] = {}
        for micro in range(config.grad_accum):
            batch = recipe.prepare(next(batches), device)
            sync = nullcontext() if world == 1 or micro == config.grad_accum - 1 else model.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
                    parts = model(batch)
                (parts["loss"] / config.grad_accum).backward()
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v.detach()) / config.grad_accum
        grad_norm = None
        if config.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        bar.update(1)
        if done % config.log_every == 0 or done == config.steps:
            names = ("loss", "focal", "dice", "iou") + tuple(k for k in ("semantic", "locate") if k in parts_sum)
            values = torch.tensor([parts_sum.get(k, 0.0) for k in names])
            if world > 1:
                dist.all_reduce(values)
                values /= world
            record = dict(zip(names, values.tolist()))
            record.update(step=done, lr=lr, time=time.perf_counter() - t0, grad_norm=grad_norm)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if rank == 0:
                with open(log_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
        is_eval = val_ds is not None and (
            (config.eval_every and done % config.eval_every == 0) or done == config.steps
        )
        if is_eval:
            if rank == 0:
                metrics = evaluate(recipe, val_ds, device)
                with open(log_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": done, "eval": metrics}) + "\n")
            _barrier(world)
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done in (config.steps, stop_at):
            path = save_checkpoint(recipe, optimizer, scheduler, done, out, world, rank)
            if done == stop_at and done < config.steps:
                if rank == 0:  # the weights of this step, as the end of a run would write them
                    export(recipe, out, done)
                bar.close()
                _barrier(world)
                return path
    bar.close()
    final = out / "model.safetensors"
    if rank == 0:
        final = export(recipe, out, config.steps)
    _barrier(world)
    return final


def save_checkpoint(recipe: Recipe, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
                    out: Path, world: int, rank: int) -> Path:
    """Collective: gather every rank's RNG state; rank 0 writes ``checkpoints/step_NNNNNNN.pt``."""
    rngs: list[Any] = [rng_state()]
    if world > 1:  # gather as bytes: all_gather_object cannot unpickle tensors in torch 2.14
        buf = io.BytesIO()
        torch.save(rngs[0], buf)
        blobs: list[Any] = [None] * world
        dist.all_gather_object(blobs, buf.getvalue())
        rngs = [torch.load(io.BytesIO(b), weights_only=True) for b in blobs]
    cfg = recipe.config
    path = out / "checkpoints" / f"step_{step:07d}.pt"
    if rank == 0:
        state = {
            "format": CKPT_FORMAT, "version": 1, "step": step, "world_size": world,
            "model": {k: v.detach().cpu() for k, v in recipe.trainable_state().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs,
            "sampler": {"position": step * cfg.batch_size, "batch_size": cfg.batch_size, "seed": cfg.seed},
            "config": json.dumps(cfg.to_dict()),
        }
        head = recipe.module.semantic_head
        if head is not None:
            state["semantic_head"] = {k: v.detach().cpu() for k, v in head.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        old = sorted(path.parent.glob("step_*.pt"))
        for stale in old[: max(0, len(old) - max(1, cfg.keep_checkpoints))]:
            stale.unlink()
    return path


def main_from_args(args: argparse.Namespace) -> int:
    """``textsam train CONFIG [--resume PATH|auto] [--out DIR] [--steps N] [--stop-at N]``."""
    config = load_config(args.config).with_overrides(output_dir=getattr(args, "out", None) and str(args.out),
                                                     steps=getattr(args, "steps", None))
    resume = getattr(args, "resume", None)
    if resume and resume != "auto" and not Path(resume).is_file():
        raise InputError(f"--resume: no checkpoint at {resume} (give a file or 'auto')")
    stop_at = getattr(args, "stop_at", None)
    if stop_at is not None and not 1 <= stop_at <= config.steps:
        raise InputError(f"--stop-at must be between 1 and steps ({config.steps}), got {stop_at}")
    path = train(config, resume=resume, stop_at=stop_at)
    if _dist_env()[0] == 0:
        print(path)
    return 0

