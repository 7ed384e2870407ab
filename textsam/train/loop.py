"""The training loop: ``train(config) -> Path`` (``textsam train CONFIG``); ``torchrun``-ready.

* AdamW (weight decay on matrices only), linear warmup then cosine decay (``LambdaLR``), gradient
  accumulation, bf16 autocast per ``config.amp``, gradient clipping (``[optim]``).
* Data parallel under ``torchrun`` (``WORLD_SIZE > 1``): gloo on CPU, nccl on CUDA; the trainable
  graph is wrapped in ``DistributedDataParallel``; each rank reads its shard of every step's global
  batch (:class:`~textsam.train.batches.StepSampler`); only rank 0 writes files.
* Checkpoints (:mod:`~textsam.train.checkpoints`): samples depend only on ``(seed, step)``, so a run stopped
  at step k and resumed gives the same weights as an uninterrupted run (bit-exact on CPU with
  ``deterministic = true``).
* Outputs (:mod:`~textsam.train.weights`): ``model.safetensors`` (trained parts) and, for text recipes,
  ``text_head.safetensors``, both in the one textsam format; ``train_config.json`` and ``log.jsonl`` (one JSON
  object per logged step: step, loss parts, lr, seconds per step; evaluations as ``{"step", "eval": {...}}``).
* The output folder holds one run (:mod:`~textsam.train.run_folder`).
* SIGINT or SIGTERM stops the loop after the current step, writes that step's checkpoint and raises
  :class:`~textsam.train.signals.TrainingInterrupted` (:mod:`~textsam.train.signals`).
"""

from __future__ import annotations

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

from ..errors import InputError, TextSamError
from .batches import StepSampler, collate
from .cache import EmbeddingCache, text_table, warm_cache
from .checkpoints import save_checkpoint, set_rng_state
from .config import TrainConfig
from .data import SemanticLabels, coco_of, open_source
from .evaluate import evaluate
from .recipes import Recipe, build_recipe, make_dataset
from .run_folder import atomic_write, finished, prepare_folder, starting_point, trim_log
from .samples import SegmentationDataset
from .signals import StopOnSignal, TrainingInterrupted, ignore_sigint
from .weights import export

__all__ = ["train", "TrainingInterrupted", "lr_factor", "amp_dtype", "process_rank"]

logger = logging.getLogger(__name__)


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """Multiplier of ``[optim] lr`` at each step: linear warmup, then cosine decay to ``min_lr_ratio``."""
    opt = config.optim

    def factor(step: int) -> float:
        if step < opt.warmup_steps:
            return (step + 1) / opt.warmup_steps
        if not opt.cosine:
            return 1.0
        span = max(1, config.steps - opt.warmup_steps)
        progress = min(1.0, (step - opt.warmup_steps) / span)
        return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    """``config.device`` (checked: it must exist on this machine), else ``cuda:LOCAL_RANK`` or the CPU."""
    from ..factory import check_device

    if not config.device:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = check_device(config.device)
    assert device is not None
    return device


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 for ``amp = "bf16"``; for ``"auto"`` bf16 on CUDA devices that support it, else off (CPU
    bf16 autocast is slow without native bf16 matmuls and changes results)."""
    if config.amp == "bf16":
        return torch.bfloat16
    if config.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _optimizer(recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW: weight decay on matrices only; a trained text tower at ``lr x text_encoder_lr_scale``."""
    opt = recipe.config.optim
    tower = recipe.module.text_encoder
    tower_ids = {id(p) for p in tower.parameters()} if tower is not None else set()
    groups = []
    for in_tower, lr in ((False, opt.lr), (True, opt.lr * opt.text_encoder_lr_scale)):
        params = [p for p in recipe.module.parameters() if p.requires_grad and (id(p) in tower_ids) == in_tower]
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": opt.weight_decay, "lr": lr},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=opt.lr, betas=(0.9, 0.999))


def _next_batch(batches: Any) -> Any:
    """The next batch; a data error raised in a DataLoader worker keeps only its own message (torch puts
    the worker's traceback into it)."""
    try:
        return next(batches)
    except TextSamError as err:
        text = str(err).strip()
        if "DataLoader worker" not in text:
            raise
        raise type(err)(text.splitlines()[-1].split(": ", 1)[-1]) from None


def process_rank() -> int:
    """This process's rank under torchrun (0 for a single process): only rank 0 writes files and reports."""
    return _dist_env()[0]


def train(config: TrainConfig, *, source: Any = None, val_source: Any = None,
          resume: str | Path | None = None, stop_at: int | None = None, overwrite: bool = False) -> Path:
    """Train per ``config``; return the path of the exported ``model.safetensors``.

    Args:
        source, val_source: ready ``CocoDataset``/``ReferDataset`` objects instead of opening
            ``config.data`` splits (``val_source`` is only used with ``source``).
        resume: a checkpoint file, or ``"auto"`` for the latest readable one in ``output_dir/checkpoints``
            (none there: start fresh; a finished run: change nothing and return its weights).
        stop_at: stop after this step (as if preempted): write a checkpoint there and return its path.
        overwrite: delete the files of an earlier run in ``output_dir`` first (without it, or ``resume``,
            such a folder is an InputError).

    Raises:
        InputError: bad data, an unusable checkpoint, an output folder that holds another run.
        TrainingInterrupted: SIGINT/SIGTERM; the checkpoint of the last completed step was written.
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
        return _train(config, source, val_source, resume, rank, world, device, stop_at, overwrite)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        if own_group:
            dist.destroy_process_group()


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _datasets(recipe: Recipe, source: Any, val_source: Any, rank: int,
              world: int) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """The training and validation samples, with the frozen encoders' embeddings cached (``[cache] dir``: on
    disk, written by rank 0) or, for a frozen text tower without a cache folder, a phrase table in memory."""
    config = recipe.config
    if source is None:
        d = config.data
        source = open_source(config, d.train_split, want_refs=config.recipe == "text")
        if d.val_split:
            same = all(t.format(split=d.train_split) == t.format(split=d.val_split) for t in (d.instances, d.images))
            val_source = open_source(config, d.val_split, want_refs=config.uses_text,
                                     coco=coco_of(source) if same else None)  # one instances file read once
    semantic = None
    if config.loss.semantic_weight > 0:  # the auxiliary loss: class maps in the samples, a head on the module
        semantic = SemanticLabels(coco_of(source), config.loss.semantic_fields)
        recipe.module.add_semantic_head(semantic.num_classes, config.loss.semantic_weight)
    train_ds = make_dataset(recipe, source, train=True, split="train", limit=config.data.max_samples,
                            semantic=semantic)
    val_ds = None
    if val_source is not None:
        val_ds = make_dataset(recipe, val_source, train=False, split="val", limit=config.data.eval_samples)
    datasets = [d for d in (train_ds, val_ds) if d is not None]
    cache = None
    if config.cache.dir:
        if rank == 0:
            warm_cache(recipe, datasets, config.cache.dir)
        _barrier(world)
        cache = warm_cache(recipe, datasets, config.cache.dir, write=False)
    elif recipe.text_encoder is not None and recipe.module.text_encoder is None:
        # frozen text tower: phrase embeddings fixed up front (see cache.text_table)
        cache = EmbeddingCache.in_memory(text_table(recipe, [e.phrase for d in datasets for e in d.entries]))
    for d in datasets:
        d.cache = cache
    return train_ds, val_ds


def _restore(recipe: Recipe, optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any],
             ckpt_path: Path | None, rank: int, world: int) -> int:
    """Load a checkpoint's weights, optimizer, scheduler and RNG states; returns its step."""
    module = recipe.module
    missing = set(recipe.trainable_state()) - set(state["model"])
    if missing:
        raise InputError(f"{ckpt_path} lacks trained weights {sorted(missing)[:5]}: another [freeze] setup?")
    if module.semantic_head is not None and "semantic_head" not in state:
        raise InputError(f"{ckpt_path} has no semantic head: it was written with [loss] semantic_weight = 0")
    try:
        recipe.model.load_state_dict(state["model"], strict=False)
        if module.semantic_head is not None:
            module.semantic_head.load_state_dict(state["semantic_head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        raise InputError(f"{ckpt_path} does not fit the model of this config ({str(err).splitlines()[0][:160]}): "
                         "resume with the config that wrote it") from None
    return int(state["step"])


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _train(config: TrainConfig, source: Any, val_source: Any, resume: str | Path | None,
           rank: int, world: int, device: torch.device, stop_at: int | None, overwrite: bool) -> Path:
    out = Path(config.output_dir)
    ckpt_path, state, skipped = starting_point(config, out, resume, overwrite, stop_at)
    if state is not None and finished(out, state, config):
        logger.warning("%s finished at step %d already: nothing to do (raise steps to train further)", out, config.steps)
        return out / "model.safetensors"
    if rank == 0 and out.is_dir():
        prepare_folder(out, overwrite, skipped)
    _barrier(world)
    recipe = build_recipe(config, device)
    train_ds, val_ds = _datasets(recipe, source, val_source, rank, world)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        config_file, text = out / "train_config.json", json.dumps(config.to_dict(), indent=2) + "\n"
        if not config_file.is_file() or config_file.read_text(encoding="utf-8", errors="replace") != text:
            atomic_write(config_file, text)
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed + rank)

    module = recipe.module.to(device)
    optimizer = _optimizer(recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    start = 0
    if state is not None:
        start = _restore(recipe, optimizer, scheduler, state, ckpt_path, rank, world)
        (logger.warning if skipped else logger.info)("resumed from %s at step %d", ckpt_path, start)
    if rank == 0 and resume:
        trim_log(out / "log.jsonl", start)
    model: torch.nn.Module = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
    sampler = StepSampler(len(train_ds), seed=config.seed, batch_size=config.batch_size, grad_accum=config.grad_accum,
                          rank=rank, world=world, start_step=start, steps=config.steps)
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers, pin_memory=device.type == "cuda",
                                         worker_init_fn=ignore_sigint if config.num_workers else None)
    batches = iter(loader)
    dtype = amp_dtype(config, device)
    params = [p for p in module.parameters() if p.requires_grad]
    log_file, accum, clip = out / "log.jsonl", config.grad_accum, config.optim.grad_clip
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=start, disable=rank != 0 or not config.progress, desc="train")
    module.train()
    with StopOnSignal() as stop:
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            parts_sum: dict[str, float] = {}
            for micro in range(accum):
                batch = recipe.prepare(_next_batch(batches), device)
                sync = nullcontext() if world == 1 or micro == accum - 1 else model.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
                        parts = model(batch)
                    (parts["loss"] / accum).backward()
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v.detach()) / accum
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if clip else None
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
                    _append(log_file, record)
            if val_ds is not None and ((config.eval_every and done % config.eval_every == 0) or done == config.steps):
                if rank == 0:
                    _append(log_file, {"step": done, "eval": evaluate(recipe, val_ds, device)})
                _barrier(world)
            saved = bool(config.checkpoint_every and done % config.checkpoint_every == 0) or done in (config.steps,
                                                                                                   stop_at)
            if saved:
                path = save_checkpoint(recipe, optimizer, scheduler, done, out, world, rank)
                if done == stop_at and done < config.steps:
                    if rank == 0:  # the weights of this step, as the end of a run would write them
                        export(recipe, out, done)
                    bar.close()
                    _barrier(world)
                    return path
            signum = stop.requested(world, device) if done < config.steps else 0
            if signum:  # SIGINT/SIGTERM: keep this step, then stop
                if not saved:
                    path = save_checkpoint(recipe, optimizer, scheduler, done, out, world, rank)
                bar.close()
                _barrier(world)
                raise TrainingInterrupted(done, path, out, signum)
    bar.close()
    final = out / "model.safetensors"
    if rank == 0:
        final = export(recipe, out, config.steps)
    _barrier(world)
    return final
