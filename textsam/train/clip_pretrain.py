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

Adapting an existing CLIP instead (``--init``): start from a CLIP (open_clip ``NAME/TAG``, ``NAME/@/FILE`` or
``local-dir:DIR``, e.g. the ``clip/`` folder of a bundle unpacked by ``tools/shapes_tiny_bundle.py``) and, with ``--lock-text``, train only
its image tower against the locked text tower's template-ensembled phrase embeddings (LiT's recipe with the
other tower locked: every phrase the text tower could embed before still embeds the same, so a text head
trained on that tower keeps working). Two sources of supervision that name no colour help a tower that
tells shapes apart by their colour: ``--class-fraction`` of every batch are single instances captioned by their
category name alone, ``--grey-prob`` shows a crop whose phrase names no colour in greyscale with that
probability, and ``--hue-prob`` turns the hue of such a crop (when it is not greyed) by a random angle, so that
colour is no cue for a caption that does not name it.

The size of a CLIP trained from scratch is shapes_tiny's (:data:`SMALL_CLIP_CFG`) unless ``--model-cfg`` gives
open_clip model-config keys over it (:func:`model_cfg_with`), e.g. a wider and deeper tower for a GPU.

Run: ``python -m textsam.train.clip_pretrain --data ROOT --split train --out DIR [--steps N] [--model-cfg JSON]``,
or ``... --init local-dir:DIR --lock-text --logit-scale 30 --class-fraction 0.5 --grey-prob 0.5``.
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
from ..errors import InputError
from ..text.grounding import OPENAI_MEAN, OPENAI_STD
from ..text.grounding_maps import square_crop
from .batches import StepSampler
from .data import ClipInput, build_entries, coco_of, crop_params, greyscale, names_no_colour, rotate_hue

logger = logging.getLogger(__name__)

# A ~9M-parameter CLIP (most of it the 49408-token embedding): 64 px crops, 8 px patches, width 128.
SMALL_CLIP_CFG: dict[str, Any] = SHAPES_TINY_CLIP_CFG  # the architecture shapes_tiny ships
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def model_cfg_with(overrides: dict[str, Any]) -> dict[str, Any]:
    """:data:`SMALL_CLIP_CFG` with ``overrides`` (an open_clip model config's keys) put in; ``vision_cfg`` and
    ``text_cfg`` are merged key by key, so ``{"vision_cfg": {"width": 256}}`` keeps the other vision keys."""
    cfg = deepcopy(SMALL_CLIP_CFG)
    for key, value in overrides.items():
        if key in ("vision_cfg", "text_cfg"):
            if not isinstance(value, dict):
                raise InputError(f"{key} must be a JSON object of open_clip's {key} keys, got {value!r}")
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


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
    a ``CocoDataset``/``ReferDataset`` (one target per instance, phrased by its category name / one per
    expression), random per ``(epoch, index)``. ``grey_prob``: probability that a crop whose phrase names no
    colour is shown in greyscale (ITU-R 601 luma); ``hue_prob``: probability that such a crop, when not greyed, has
    its hue turned by a uniform random angle (:func:`~textsam.train.data.rotate_hue`)."""

    def __init__(self, clip_input: ClipInput, *, source: Any = None, crops: Sequence[np.ndarray] = (),
                 phrases: Sequence[str] = (), seed: int = 0, enlarge: tuple[float, float] = (1.0, 2.0),
                 grey_outside_prob: float = 0.5, min_area: float = 64.0, grey_prob: float = 0.0,
                 hue_prob: float = 0.0) -> None:
        self.clip_input, self.seed, self.enlarge = clip_input, seed, enlarge
        self.grey_outside_prob, self.grey_prob, self.hue_prob = grey_outside_prob, grey_prob, hue_prob
        self.source, self.crops = source, list(crops)
        self.entries = build_entries(source, 1024, min_area) if source is not None else []
        self.phrases = [e.phrase for e in self.entries] if source is not None else list(phrases)
        if source is None and len(self.crops) != len(self.phrases):
            raise ValueError("crops and phrases differ in length")

    def __len__(self) -> int:
        return len(self.phrases)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, str]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        phrase = self.phrases[index]
        if self.source is None:
            crop, name = self.crops[index], str(index)
        else:
            e = self.entries[index]
            coco = coco_of(self.source)
            mask = np.logical_or.reduce([np.asarray(coco.mask(a), dtype=bool) for a in e.ann_ids])
            enlarge, grey_outside = crop_params(self.seed + epoch, e.key, 0, self.enlarge, self.grey_outside_prob)
            crop = square_crop(coco.load_image(e.image_id), mask, enlarge, self.clip_input.fill,
                               grey_outside=grey_outside)
            name = e.key
        if (self.grey_prob > 0 or self.hue_prob > 0) and names_no_colour(phrase):
            if crop_params(self.seed + epoch, name, 1, (1.0, 1.0), self.grey_prob)[1]:
                crop = greyscale(crop)
            else:
                turn, rotate = crop_params(self.seed + epoch, name, 2, (0.0, 1.0), self.hue_prob)
                if rotate:
                    crop = rotate_hue(crop, turn)
        return self.clip_input(crop), phrase


@dataclass(frozen=True)
class ClipPretrainConfig:
    """``lock_text``: train the image tower only, against the text tower's fixed, template-ensembled phrase
    embeddings, at the fixed temperature ``logit_scale`` (None: the initial CLIP's). ``class_fraction``: the share
    of every batch drawn from the category-name dataset given to :func:`pretrain_clip` as ``classes``."""

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
    lock_text: bool = False
    logit_scale: float | None = None
    class_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.class_fraction < 1.0:
            raise InputError(f"class_fraction must be in [0, 1), got {self.class_fraction}")
        if self.logit_scale is not None and not self.lock_text:
            raise InputError("a fixed logit_scale is for lock_text training; a CLIP trained whole learns its own")


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


def locked_text_loss(model: nn.Module, table: dict[str, Tensor], scale: float, crops: Tensor,
                     phrases: Sequence[str]) -> Tensor:
    """InfoNCE of one batch against the locked text tower's phrase embeddings ``table`` (phrase -> ``(D,)``)."""
    device = crops.device
    uniq = list(dict.fromkeys(phrases))
    ids = torch.tensor([uniq.index(p) for p in phrases], device=device)
    img = model.encode_image(crops, normalize=True)
    txt = torch.stack([table[p] for p in uniq]).to(device)[ids]
    return info_nce(img, txt, torch.tensor(math.log(scale), device=device), ids)


def phrase_table(model: nn.Module, tokenizer: Any, phrases: Sequence[str], batch: int = 256) -> dict[str, Tensor]:
    """Unit template-ensembled embeddings (:data:`~textsam.text.templates.DEFAULT_TEMPLATES`, as the engine
    scores phrases) of every distinct phrase, by the model's text tower."""
    from ..text.clip import TextEncoder
    from ..text.templates import DEFAULT_TEMPLATES

    encoder = TextEncoder(model, tokenizer, model_name="clip_pretrain", pretrained=None, cache_size=0)
    uniq = sorted(set(phrases))
    with torch.no_grad():
        emb = torch.cat([encoder.encode_ensembles(uniq[i : i + batch], DEFAULT_TEMPLATES)
                         for i in range(0, len(uniq), batch)])
    return dict(zip(uniq, emb.cpu()))


@dataclass
class PretrainResult:
    path: Path  # the local-dir folder
    model: nn.Module  # the trained CLIP (eval mode)
    losses: list[float]  # per step


@dataclass(frozen=True)
class InitialClip:
    """A CLIP to start from: the model, its open_clip ``model_cfg`` and its tokenizer."""

    model: nn.Module
    model_cfg: dict[str, Any]
    tokenizer: Any


def load_initial_clip(spec: str) -> InitialClip:
    """The CLIP named by ``spec``: ``NAME/TAG`` (open_clip's registry, published weights), ``NAME/@/FILE`` or
    ``local-dir:DIR`` (e.g. the ``clip/`` folder of an unpacked bundle)."""
    import open_clip

    from ..text.clip import TextEncoder, parse_clip_spec

    name, tag = parse_clip_spec(spec)
    encoder = TextEncoder.create(name, tag)
    if name.startswith("local-dir:"):
        cfg = json.loads((Path(name[len("local-dir:"):]) / CONFIG_FILE).read_text(encoding="utf-8"))["model_cfg"]
    else:
        cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise InputError(f"open_clip has no config for {name!r}")
    return InitialClip(encoder.clip, deepcopy(cfg), encoder.tokenizer)


def pretrain_clip(dataset: CropTextDataset, out_dir: str | Path, config: ClipPretrainConfig = ClipPretrainConfig(),
                  *, init: InitialClip | None = None, classes: CropTextDataset | None = None,
                  progress: bool = False) -> PretrainResult:
    """Train a CLIP on ``dataset`` (from scratch with ``config.model_cfg``, or from ``init`` with its own config;
    ``classes``: the category-name crops that make ``config.class_fraction`` of every batch) and save it as a
    ``local-dir`` folder."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if (classes is None) != (config.class_fraction == 0.0):
        raise InputError("give a classes dataset exactly when class_fraction > 0")
    if init is not None:
        model, model_cfg, tokenizer = init.model.to(device), init.model_cfg, init.tokenizer
    else:
        model_cfg = config.model_cfg
        model = build_clip(model_cfg).to(device)
        tokenizer = clip_tokenizer(int(model_cfg["text_cfg"]["context_length"]))
    table: dict[str, Tensor] = {}
    if config.lock_text:
        model.eval()
        table = phrase_table(model, tokenizer, [*dataset.phrases, *(classes.phrases if classes else [])])
        model.requires_grad_(False)
        model.visual.requires_grad_(True)
        model.visual.train()
        scale = config.logit_scale if config.logit_scale is not None else float(model.logit_scale.exp())
    else:
        model.train()
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
    n_classes = int(round(config.batch_size * config.class_fraction)) if classes is not None else 0
    loaders = []
    for data, size, seed in ((dataset, config.batch_size - n_classes, config.seed),
                             (classes, n_classes, config.seed + 1)):
        if data is None or size == 0:
            continue
        sampler = StepSampler(len(data), seed=seed, batch_size=min(size, len(data)), steps=config.steps)
        loaders.append(torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=_collate,
                                                   num_workers=config.num_workers,
                                                   pin_memory=device.type == "cuda"))
    from tqdm.auto import tqdm

    losses: list[float] = []
    batches = zip(*loaders)
    for step, parts in enumerate(tqdm(batches, total=config.steps, disable=not progress, desc="clip")):
        crops = torch.cat([c for c, _ in parts]).to(device, non_blocking=True)
        phrases = [p for _, ps in parts for p in ps]
        if config.lock_text:
            loss = locked_text_loss(model, table, scale, crops, phrases)
        else:
            loss = batch_loss(model, tokenizer, crops, phrases)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if not config.lock_text:
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if (step + 1) % config.log_every == 0:
            logger.info("clip step %d loss %.4f", step + 1, sum(losses[-config.log_every:]) / config.log_every)
    return PretrainResult(save_local_dir(model.eval(), model_cfg, out_dir), model, losses)


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
    parser.add_argument("--init", metavar="CLIP", help="start from this CLIP (NAME/TAG, NAME/@/FILE or local-dir:DIR) "
                        "instead of a random small one")
    parser.add_argument("--model-cfg", metavar="JSON|FILE",
                        help="a CLIP from scratch of another size: open_clip model-config keys over the small "
                        "default's, e.g. '{\"embed_dim\": 128, \"vision_cfg\": {\"width\": 256, \"layers\": 6}}' "
                        "(or a .json file of them)")
    parser.add_argument("--lock-text", action="store_true", help="train the image tower only (needs --init)")
    parser.add_argument("--logit-scale", type=float, help="fixed temperature with --lock-text (default: the CLIP's)")
    parser.add_argument("--class-fraction", type=float, default=0.0,
                        help="share of every batch: single instances captioned by their category name")
    parser.add_argument("--grey-prob", type=float, default=0.0,
                        help="probability that a crop whose phrase names no colour is shown in greyscale")
    parser.add_argument("--hue-prob", type=float, default=0.0,
                        help="probability that such a crop, when not greyed, has its hue turned by a random angle")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.lock_text and not args.init:
        parser.error("--lock-text adapts an existing CLIP: give --init")
    if args.model_cfg is not None and args.init:
        parser.error("--model-cfg sizes a CLIP trained from scratch; --init brings its own")
    overrides: dict[str, Any] = {}
    if args.model_cfg is not None:
        text = args.model_cfg  # a JSON object, or the path of a file that holds one (a long JSON is no path)
        if not text.lstrip().startswith("{"):
            try:
                text = Path(text).read_text(encoding="utf-8")
            except OSError as err:
                parser.error(f"--model-cfg is neither a JSON object nor a readable file: {err}")
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as err:
            parser.error(f"--model-cfg is neither a JSON object nor a file of one: {err}")
        if not isinstance(overrides, dict):
            parser.error("--model-cfg must be a JSON object of open_clip model-config keys")
        try:  # a config open_clip cannot build stops here, before the data is read
            build_clip(model_cfg_with(overrides))
        except (InputError, TypeError, KeyError, ValueError) as err:
            parser.error(f"--model-cfg: {err}")
    root = Path(args.data) / args.split
    if (root / "refs.json").is_file():
        from ..data.refer import ReferDataset

        source: Any = ReferDataset(root / "refs.json", root / "instances.json", root / "images")
    else:
        from ..data.coco import CocoDataset

        source = CocoDataset(root / "instances.json", root / "images")
    init = load_initial_clip(args.init) if args.init else None
    model_cfg = init.model_cfg if init is not None else model_cfg_with(overrides)
    try:
        cfg = ClipPretrainConfig(model_cfg=model_cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                 seed=args.seed, num_workers=args.num_workers, device=args.device,
                                 lock_text=args.lock_text, logit_scale=args.logit_scale,
                                 class_fraction=args.class_fraction)
    except InputError as err:
        parser.error(str(err))
    clip_input = clip_input_for(model_cfg)
    for name in ("grey_prob", "hue_prob"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must lie in [0, 1]")
    augment = {"grey_prob": args.grey_prob, "hue_prob": args.hue_prob}
    ds = CropTextDataset(clip_input, source=source, seed=args.seed, **augment)
    classes = (CropTextDataset(clip_input, source=coco_of(source), seed=args.seed, **augment)
               if args.class_fraction > 0 else None)
    result = pretrain_clip(ds, args.out, cfg, init=init, classes=classes, progress=True)
    print(f"{result.path} (final loss {result.losses[-1]:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
