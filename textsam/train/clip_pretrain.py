"""Contrastive pretraining of a small open_clip CLIP from scratch: object crops vs their phrases.

The model is built from an explicit config, ``open_clip.model.CLIP(embed_dim, CLIPVisionCfg(...),
CLIPTextCfg(...))``, uses the real CLIP BPE tokenizer (``open_clip.get_tokenizer("ViT-B-16")``, with a
shorter context) and is trained with the symmetric InfoNCE loss and CLIP's learnable temperature. Crops
are made like the ``clip_crops`` recipe's (square, box enlarged in ``[1, 2]``, outside-mask pixels grey
with probability 0.5). Crops that share a phrase are all positives of each other (multi-positive targets).

The result is an open_clip ``local-dir`` folder (``open_clip_config.json`` with ``model_cfg`` and
``preprocess_cfg``, plus ``open_clip_model.safetensors``), loadable with
``open_clip.create_model("local-dir:DIR")``, ``open_clip.get_tokenizer("local-dir:DIR")`` and
``textsam.text.clip.TextEncoder.create("local-dir:DIR", None)``.

Run: ``python -m textsam.train.clip_pretrain --data ROOT --split train --out DIR [--steps N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from ..config import SHAPES_TINY_CLIP_CFG
from ..text.grounding import OPENAI_MEAN, OPENAI_STD
from ..text.grounding_maps import square_crop
from .batches import StepSampler
from .data import ClipInput, build_entries, coco_of, crop_params

logger = logging.getLogger(__name__)

# A ~9M-parameter CLIP (most of it the 49408-token embedding): 64 px crops, 8 px patches, width 128.
SMALL_CLIP_CFG: dict[str, Any] = SHAPES_TINY_CLIP_CFG  # the architecture shapes_tiny ships
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def build_clip(model_cfg: dict[str, Any] = SMALL_CLIP_CFG) -> nn.Module:
    """A randomly initialised ``open_clip.model.CLIP`` from an open_clip ``model_cfg`` dict."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return CLIP(
        embed_dim=int(model_cfg["embed_dim"]),
        vision_cfg=CLIPVisionCfg(**model_cfg["vision_cfg"]),
        text_cfg=CLIPTextCfg(**model_cfg["text_cfg"]),
        quick_gelu=bool(model_cfg.get("quick_gelu", False)),
    )


def clip_tokenizer(context_length: int) -> Any:
    """The real CLIP BPE tokenizer (as ``ViT-B-16``'s) with ``context_length`` tokens."""
    import open_clip

    return open_clip.get_tokenizer("ViT-B-16", context_length=context_length)


def preprocess_cfg(model_cfg: dict[str, Any]) -> dict[str, Any]:
    size = int(model_cfg["vision_cfg"]["image_size"])
    return {"size": size, "mode": "RGB", "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
            "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}


def save_local_dir(model: nn.Module, model_cfg: dict[str, Any], path: str | Path) -> Path:
    """Write ``model`` as an open_clip ``local-dir`` folder; returns the folder."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg(model_cfg)}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / (WEIGHTS_FILE + ".tmp")), metadata={"format": "pt"})
    (out / (WEIGHTS_FILE + ".tmp")).replace(out / WEIGHTS_FILE)
    return out


def info_nce(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, groups: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE over a batch of unit embeddings ``(B, D)``; ``groups (B,)``: equal ids (the same
    phrase) are all positives, with the target mass spread evenly over them."""
    logits = logit_scale.exp() * image_emb @ text_emb.t()
    if groups is None:
        groups = torch.arange(logits.shape[0], device=logits.device)
    pos = (groups[:, None] == groups[None, :]).float()
    targets = pos / pos.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


class CropTextDataset(torch.utils.data.Dataset):
    """``(crop (3, n, n), phrase)`` pairs: in-memory ``crops`` (uint8 ``(s, s, 3)``) or made on the fly from
    a ``CocoDataset``/``ReferDataset`` (one target per instance / expression), random per ``(epoch, index)``."""

    def __init__(self, clip_input: ClipInput, *, source: Any = None, crops: Sequence[np.ndarray] = (),
                 phrases: Sequence[str] = (), seed: int = 0, enlarge: tuple[float, float] = (1.0, 2.0),
                 grey_prob: float = 0.5, min_area: float = 64.0) -> None:
        self.clip_input, self.seed, self.enlarge, self.grey_prob = clip_input, seed, enlarge, grey_prob
        self.source, self.crops = source, list(crops)
        self.entries = build_entries(source, 1024, min_area) if source is not None else []
        self.phrases = [e.phrase for e in self.entries] if source is not None else list(phrases)
        if source is None and len(self.crops) != len(self.phrases):
            raise ValueError("crops and phrases differ in length")

    def __len__(self) -> int:
        return len(self.phrases)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, str]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if self.source is None:
            return self.clip_input(self.crops[index]), self.phrases[index]
        e = self.entries[index]
        coco = coco_of(self.source)
        mask = np.logical_or.reduce([np.asarray(coco.mask(a), dtype=bool) for a in e.ann_ids])
        enlarge, grey = crop_params(self.seed + epoch, e.key, 0, self.enlarge, self.grey_prob)
        crop = square_crop(coco.load_image(e.image_id), mask, enlarge, self.clip_input.fill, grey_outside=grey)
        return self.clip_input(crop), e.phrase


@dataclass(frozen=True)
class ClipPretrainConfig:
    model_cfg: dict[str, Any] = field(default_factory=lambda: deepcopy(SMALL_CLIP_CFG))
    steps: int = 2000
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    device: str | None = None  # default: cuda when available, else cpu


def _collate(items: list[tuple[Tensor, str]]) -> tuple[Tensor, list[str]]:
    return torch.stack([x for x, _ in items]), [p for _, p in items]


def batch_loss(model: nn.Module, tokenizer: Any, crops: Tensor, phrases: Sequence[str]) -> Tensor:
    """InfoNCE of one batch (phrases deduplicated: one text per distinct phrase)."""
    device = model.logit_scale.device
    uniq = list(dict.fromkeys(phrases))
    ids = torch.tensor([uniq.index(p) for p in phrases], device=device)
    img = model.encode_image(crops.to(device, non_blocking=True), normalize=True)
    txt = model.encode_text(tokenizer(uniq).to(device), normalize=True)[ids]
    return info_nce(img, txt, model.logit_scale, ids)


@dataclass
class PretrainResult:
    path: Path  # the local-dir folder
    model: nn.Module  # the trained CLIP (eval mode)
    losses: list[float]  # per step


def pretrain_clip(dataset: CropTextDataset, out_dir: str | Path, config: ClipPretrainConfig = ClipPretrainConfig(),
                  *, progress: bool = False) -> PretrainResult:
    """Train a CLIP from scratch on ``dataset`` and save it as a ``local-dir`` folder."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_clip(config.model_cfg).train().to(device)
    tokenizer = clip_tokenizer(int(config.model_cfg["text_cfg"]["context_length"]))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress_ = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    batch = min(config.batch_size, len(dataset))
    sampler = StepSampler(len(dataset), seed=config.seed, batch_size=batch, steps=config.steps)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate,
                                         num_workers=config.num_workers, pin_memory=device.type == "cuda")
    from tqdm.auto import tqdm

    losses: list[float] = []
    for step, (crops, phrases) in enumerate(tqdm(loader, total=config.steps, disable=not progress, desc="clip")):
        loss = batch_loss(model, tokenizer, crops, phrases)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if (step + 1) % config.log_every == 0:
            logger.info("clip step %d loss %.4f", step + 1, sum(losses[-config.log_every:]) / config.log_every)
    return PretrainResult(save_local_dir(model.eval(), config.model_cfg, out_dir), model, losses)


def clip_input_for(model_cfg: dict[str, Any]) -> ClipInput:
    """How crops are fed to a CLIP with this config (its size and the OpenAI mean/std)."""
    return ClipInput(int(model_cfg["vision_cfg"]["image_size"]), OPENAI_MEAN, OPENAI_STD)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textsam.train.clip_pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset root with SPLIT/{images/, instances.json[, refs.json]}")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="output local-dir folder")
    parser.add_argument("--steps", type=int, default=ClipPretrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=ClipPretrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=ClipPretrainConfig.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    root = Path(args.data) / args.split
    if (root / "refs.json").is_file():
        from ..data.refer import ReferDataset

        source: Any = ReferDataset(root / "refs.json", root / "instances.json", root / "images")
    else:
        from ..data.coco import CocoDataset

        source = CocoDataset(root / "instances.json", root / "images")
    cfg = ClipPretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             num_workers=args.num_workers, device=args.device)
    ds = CropTextDataset(clip_input_for(cfg.model_cfg), source=source, seed=args.seed)
    result = pretrain_clip(ds, args.out, cfg, progress=True)
    print(f"{result.path} (final loss {result.losses[-1]:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
