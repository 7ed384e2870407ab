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
* The output folder holds one run. A run into a folder that holds another is refused (``resume`` continues
  it, ``overwrite`` deletes its files first); resuming a finished run changes nothing. Files are written
  to a temporary name and renamed, so a killed run leaves no half-written file under a final name.
  ``resume="auto"`` skips (with a warning) latest checkpoints that cannot be read, and loads checkpoints
  with ``weights_only=True``: nothing in a checkpoint file can run code.
* SIGINT or SIGTERM stops the loop after the current step, writes that step's checkpoint and raises
  :class:`TrainingInterrupted` (a second SIGINT stops at once).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import pickle
import random
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InputError, TextSamError
from .config import TrainConfig, load_config
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
RUN_FILES = ("model.safetensors", "text_head.safetensors", "train_config.json", "log.jsonl")  # + checkpoints/


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run after ``step``, whose checkpoint ``checkpoint`` was written first."""

    def __init__(self, step: int, checkpoint: Path, output_dir: Path, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}: checkpoint {checkpoint}")
        self.step, self.checkpoint, self.output_dir, self.signum = step, checkpoint, output_dir, signum


class _StopOnSignal:
    """While active (main thread only): SIGINT or SIGTERM asks the loop to stop after the current step; a
    second SIGINT stops at once (KeyboardInterrupt). Restores the previous handlers on exit."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def requested(self, world: int, device: torch.device) -> int:
        """The signal that asked to stop (0: none); collective under torchrun, so every rank agrees."""
        if world == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process (which stops after the step)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
    """``config.device`` (checked: it must exist on this machine), else ``cuda:LOCAL_RANK`` or the CPU."""
    if not config.device:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(config.device)
    except (RuntimeError, ValueError):
        raise InputError(f"device = {config.device!r} is not a device name: use 'cpu', 'cuda' or 'cuda:N' "
                         "(or leave it out to pick one)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device = {config.device!r}, but this machine has no usable CUDA GPU: use "
                             "--device cpu (or device = 'cpu'), or leave device out to pick one")
        if device.index is not None and device.index >= count:
            raise InputError(f"device = {config.device!r}, but this machine has {count} CUDA GPU(s): use "
                             f"cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device = {config.device!r}, but MPS is not available here: use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device = {config.device!r}: textsam trains on 'cpu', 'cuda' or 'mps'")
    return device


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
    found = _checkpoints(Path(output_dir))
    return found[-1] if found else None


def _checkpoints(out: Path) -> list[Path]:
    """``out/checkpoints/step_NNNNNNN.pt`` files, oldest first."""
    return sorted(p for p in out.joinpath("checkpoints").glob("step_*.pt") if p.is_file())


def _step_of(path: Path) -> int:
    try:
        return int(path.stem.removeprefix("step_"))
    except ValueError:
        return -1


class _Unusable(Exception):
    """Why a checkpoint file cannot be used; the text completes "PATH ...". Never torch's own wording (it
    suggests turning ``weights_only`` off)."""


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint's state, loaded with ``weights_only=True`` (nothing in the file can run code).

    Raises ``_Unusable`` for a file that is empty, truncated, not a checkpoint, or one that names code.
    """
    if path.stat().st_size == 0:
        raise _Unusable("is empty (0 bytes): it was not written completely")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise _Unusable(f"refers to {found[1]}, which could run code when loaded: it was not loaded, and a "
                            "checkpoint that textsam wrote never holds such references") from None
        raise _Unusable("is not a checkpoint (unreadable bytes)") from None
    except Exception as err:  # noqa: BLE001 - truncated zip, bad bytes, ...: every failure means unreadable
        text = str(err).splitlines()[0].split(". ")[0][:120] if str(err) else ""
        why = f"{type(err).__name__}: {text}" if text and "weights_only" not in text else type(err).__name__
        raise _Unusable(f"is truncated or corrupt ({why})") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise _Unusable("is not a textsam training checkpoint")
    try:
        int(state["step"]), int(state["sampler"]["batch_size"]), int(state["sampler"]["seed"])
        missing = [k for k in ("model", "optimizer", "scheduler", "rng") if not state.get(k)]
    except (KeyError, TypeError, ValueError):
        missing = ["step/sampler"]
    if missing:
        raise _Unusable(f"is incomplete (no {', '.join(missing)})")
    return state


def _run_files(out: Path) -> list[Path]:
    """The files of a run in ``out`` (weights, config, log, step checkpoints)."""
    return [out / n for n in RUN_FILES if (out / n).is_file()] + _checkpoints(out)


def _has_run(out: Path) -> bool:
    """``out`` holds a run that got somewhere: weights, a checkpoint or a log line (a config alone is a start
    that failed before its first step, which a new run may replace)."""
    return any(p.name != "train_config.json" and (p.name != "log.jsonl" or p.stat().st_size)
               for p in _run_files(out))


def _holds_run(out: Path) -> str:
    ckpts = _checkpoints(out)
    latest = f" (its latest checkpoint is step {_step_of(ckpts[-1])})" if ckpts else ""
    return (f"{out} already holds a training run{latest}: continue it with --resume auto, train into a new --out "
            "folder, or add --overwrite to delete its files first")


def _starting_point(config: TrainConfig, out: Path, resume: str | Path | None, overwrite: bool,
                    stop_at: int | None) -> tuple[Path | None, dict[str, Any] | None, list[Path]]:
    """The checkpoint to start from and its state ((None, None): step 0), and the unreadable checkpoints that
    ``resume="auto"`` skipped. Reads only: raises InputError before anything is written."""
    ckpt: Path | None = None
    state: dict[str, Any] | None = None
    skipped: list[Path] = []
    if resume == "auto":
        if overwrite:
            raise InputError("--overwrite deletes the run that --resume auto would continue: give only one of them")
        for path in reversed(_checkpoints(out)):
            try:
                ckpt, state = path, _read_checkpoint(path)
                break
            except _Unusable as err:
                logger.warning("skipping the checkpoint %s: it %s; trying the one before it", path, err)
                skipped.append(path)
        else:
            if skipped:
                raise InputError(f"no usable checkpoint in {out / 'checkpoints'} (all {len(skipped)} are unreadable): "
                                 "start the run again with --overwrite, or give --resume a good checkpoint file")
            ckpt = None
    elif resume:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise InputError(f"--resume: no checkpoint at {ckpt}: give a checkpoint file, or 'auto' for the latest "
                             "one in the output folder")
        try:
            state = _read_checkpoint(ckpt)
        except _Unusable as err:
            raise InputError(f"--resume: {ckpt} {err}; give another checkpoint (an earlier one of the same run), "
                             "or --resume auto for the latest usable one") from None
        inside = ckpt.resolve().parent == (out / "checkpoints").resolve()
        later = [p for p in _checkpoints(out) if _step_of(p) > int(state["step"])] if inside else []
        if inside and overwrite:
            raise InputError(f"--overwrite would delete {ckpt}, the checkpoint --resume names: give only one of them")
        if later:
            raise InputError(f"{out} has checkpoints after step {state['step']} (up to {later[-1].name}): resuming "
                             f"from {ckpt.name} there would mix two histories; use --resume auto, or resume into a "
                             "new --out folder")
        if not inside and _has_run(out) and not overwrite:
            raise InputError(_holds_run(out))
    elif _has_run(out) and not overwrite:
        raise InputError(_holds_run(out))
    if state is not None:
        step, sampler = int(state["step"]), state["sampler"]
        if (sampler["batch_size"], sampler["seed"]) != (config.batch_size, config.seed):
            raise InputError(f"{ckpt} was written with batch_size = {sampler['batch_size']} and seed = "
                             f"{sampler['seed']}; resuming needs the same (the config has {config.batch_size}, "
                             f"{config.seed})")
        if step > config.steps:
            raise InputError(f"{ckpt} is at step {step}, past steps = {config.steps}: set steps (or --steps) to "
                             f"{step} or more")
        if stop_at is not None and stop_at <= step:
            raise InputError(f"the run is already at step {step}: --stop-at must be after it (up to steps = "
                             f"{config.steps})")
    return ckpt, state, skipped


def _finished(out: Path, state: dict[str, Any], config: TrainConfig) -> bool:
    """The checkpoint is the last step and ``model.safetensors`` (written last) holds that step's weights."""
    if int(state["step"]) != config.steps:
        return False
    try:
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            return json.loads((f.metadata() or {})["textsam"]).get("step") == config.steps
    except Exception:  # noqa: BLE001 - missing, half-written or foreign: not finished, export it again
        return False


def _prepare_folder(out: Path, overwrite: bool, skipped: list[Path]) -> None:
    """Rank 0, before writing: delete the old run's files (``overwrite``), temporary files that a killed run
    left, and set aside unreadable checkpoints that ``resume="auto"`` skipped (``.pt.corrupt``)."""
    doomed = [p for p in (*[out / f"{n}.tmp" for n in RUN_FILES], out / "model.tmp") if p.is_file()]
    doomed += out.joinpath("checkpoints").glob("step_*.tmp")
    if overwrite:
        doomed += _run_files(out) + list(out.joinpath("checkpoints").glob("*.corrupt"))
        if doomed:
            logger.warning("--overwrite: deleting the %d files of the earlier run in %s", len(doomed), out)
    for path in doomed:
        path.unlink(missing_ok=True)
    for path in skipped:
        path.replace(path.with_name(path.name + ".corrupt"))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def open_source(config: TrainConfig, split: str, *, want_refs: bool) -> Any:
    """The ``ReferDataset`` (``want_refs`` and a refs file exists) or ``CocoDataset`` of ``split``.

    Checks first that the files and folders exist, and after reading that every listed image is there;
    every problem is an InputError naming the file and the ``[data]`` key to fix.
    """
    d = config.data
    root = Path(d.root)
    instances, images = root / d.instances.format(split=split), root / d.images.format(split=split)
    refs = root / d.refs.format(split=split) if d.refs else None
    no_val = " (or val_split = \"\" to train without validation)" if split == d.val_split else ""
    if not root.is_dir():
        raise InputError(f"the data folder {root} does not exist: set [data] root to the dataset folder (`textsam "
                         "data synth --out FOLDER` writes one)")
    if not instances.is_file():
        raise InputError(f"the {split} annotations {instances} do not exist: check [data] root and instances"
                         f"{no_val}")
    if not images.is_dir():
        raise InputError(f"the {split} image folder {images} does not exist: check [data] root and images{no_val}")
    use_refs = want_refs and refs is not None and refs.is_file()
    if config.recipe == "text" and want_refs and not use_refs:
        raise InputError(f"the text recipe needs referring expressions, but {refs} does not exist: check [data] "
                         "refs, or use recipe = 'clip_crops' or 'sam'")
    try:
        if use_refs:
            from ..data.refer import ReferDataset

            source: Any = ReferDataset(refs, instances, images, split=split if d.refs_split_field else None)
        else:
            from ..data.coco import CocoDataset

            source = CocoDataset(instances, images)
    except TextSamError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:  # a reader's unchecked field
        files = f"{instances}" + (f" or {refs}" if use_refs else "")
        raise InputError(f"cannot read the {split} annotations ({files}): {type(err).__name__}: {err}; fix the "
                         "file (COCO instances / RefCOCO refs layout)") from err
    coco = coco_of(source)
    missing = [im.path for im in coco.images.values() if not Path(im.path).is_file()]
    if missing:
        raise InputError(f"{len(missing)} of the {len(coco.images)} images that {instances} lists are missing, e.g. "
                         f"{missing[0]}: put them in {images}, or fix [data] images / the file_name entries")
    return source


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
    # last: a model.safetensors of the final step marks a finished run (see _finished)
    path = out_dir / "model.safetensors"
    save_file(tensors, str(path.with_suffix(".tmp")), metadata={"textsam": json.dumps(meta)})
    path.with_suffix(".tmp").replace(path)
    return path


def _trim_log(path: Path, last_step: int) -> None:
    """Keep the log lines of steps up to ``last_step`` (and drop a line that a killed run cut short)."""
    if not path.is_file():
        return
    old = path.read_text(encoding="utf-8", errors="replace")
    keep = []
    for line in old.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            keep.append(line + "\n")
    if "".join(keep) != old:
        _atomic_write(path, "".join(keep))


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


def _train(config: TrainConfig, source: Any, val_source: Any, resume: str | Path | None,
           rank: int, world: int, device: torch.device, stop_at: int | None, overwrite: bool) -> Path:
    out = Path(config.output_dir)
    ckpt_path, state, skipped = _starting_point(config, out, resume, overwrite, stop_at)
    if state is not None and _finished(out, state, config):
        logger.warning("%s finished at step %d already: nothing to do (raise steps to train further)", out, config.steps)
        return out / "model.safetensors"
    if rank == 0 and out.is_dir():
        _prepare_folder(out, overwrite, skipped)
    _barrier(world)
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
        config_file, text = out / "train_config.json", json.dumps(config.to_dict(), indent=2) + "\n"
        if not config_file.is_file() or config_file.read_text(encoding="utf-8", errors="replace") != text:
            _atomic_write(config_file, text)
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed + rank)

    module = recipe.module.to(device)
    optimizer = _optimizer(recipe, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    start = 0
    if state is not None:
        missing = set(recipe.trainable_state()) - set(state["model"])
        if missing:
            raise InputError(f"{ckpt_path} lacks trained weights {sorted(missing)[:5]}: another [freeze] setup?")
        if recipe.module.semantic_head is not None and "semantic_head" not in state:
            raise InputError(f"{ckpt_path} has no semantic head: it was written with semantic_weight = 0")
        try:
            recipe.model.load_state_dict(state["model"], strict=False)
            if recipe.module.semantic_head is not None:
                recipe.module.semantic_head.load_state_dict(state["semantic_head"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            rngs = state["rng"]
            set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise InputError(f"{ckpt_path} does not fit the model of this config ({str(err).splitlines()[0][:160]}): "
                             "resume with the config that wrote it") from None
        start = int(state["step"])
        log = logger.warning if skipped else logger.info
        log("resumed from %s at step %d", ckpt_path, start)
    if rank == 0 and resume:
        _trim_log(out / "log.jsonl", start)
    model: torch.nn.Module = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
    sampler = StepSampler(len(train_ds), seed=config.seed, batch_size=config.batch_size, grad_accum=config.grad_accum,
                          rank=rank, world=world, start_step=start, steps=config.steps)
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers, pin_memory=device.type == "cuda",
                                         worker_init_fn=_ignore_sigint if config.num_workers else None)
    batches = iter(loader)
    dtype = amp_dtype(config, device)
    params = [p for p in module.parameters() if p.requires_grad]
    log_file = out / "log.jsonl"
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=start, disable=rank != 0 or not config.progress, desc="train")
    module.train()
    with _StopOnSignal() as stop:
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            parts_sum: dict[str, float] = {}
            for micro in range(config.grad_accum):
                batch = recipe.prepare(_next_batch(batches), device)
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
        tmp = path.with_suffix(".tmp")  # written in full, then renamed: never half a file under the final name
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        old = sorted(path.parent.glob("step_*.pt"))
        for stale in old[: max(0, len(old) - max(1, cfg.keep_checkpoints))]:
            stale.unlink()
    return path


def main_from_args(args: argparse.Namespace) -> int:
    """``textsam train CONFIG [--resume PATH|auto] [--out DIR] [--overwrite] [--steps N] [--stop-at N] [--device D]``."""
    config = load_config(args.config).with_overrides(output_dir=getattr(args, "out", None) and str(args.out),
                                                     steps=getattr(args, "steps", None),
                                                     device=getattr(args, "device", None))
    resume = getattr(args, "resume", None)
    stop_at = getattr(args, "stop_at", None)
    if stop_at is not None and not 1 <= stop_at <= config.steps:
        raise InputError(f"--stop-at must be between 1 and steps ({config.steps}), got {stop_at}")
    path = train(config, resume=resume, stop_at=stop_at, overwrite=bool(getattr(args, "overwrite", False)))
    if _dist_env()[0] == 0:
        print(path)
    return 0

