"""Training a CLIP for the training-free engine: object crops as the engine makes them, phrases as the engine
reads them, and every phrase of the training vocabulary a candidate at every step.

The engine (:mod:`textsam.text.engine`) asks of each proposal's crop how well it matches the head noun phrase of
a request ("red circle", "triangles", "white shape": what :func:`textsam.text.spatial.parse` reads), and its
presence answer needs a phrase that names nothing in the image to score low on every crop, also when it shares a
colour or a shape with an object there ("the orange hexagon" beside an orange circle). :mod:`~textsam.train.
clip_pretrain`'s in-batch InfoNCE contrasts a crop only with the phrases that happen to share its batch, and
captions whole expressions ("the leftmost star"). Here:

- **texts**: the heads and anchors that ``spatial.parse`` reads from the split's expressions and absent phrases,
  kept when each word is a colour word of the data, a category name (singular or plural) or a generic noun
  ("shape", "object", "thing"); a phrase of another form has no known meaning and is left out;
- **targets**: a crop's positives are every vocabulary phrase that describes its object (its colour and category;
  a generic noun fits any category): multi-positive cross-entropy over the whole vocabulary, from the crops to the
  phrases and from every phrase with a positive in the batch to the batch's crops (CLIP's two directions);
- **crops**: the engine's ``crop`` and ``blur`` views (:func:`textsam.text.scoring.crop_views`) of every object's
  mask and box, at the engine's enlargement and at one random enlargement in ``enlarge``, resized to the tower's
  input once and cached (uint8);
- **colour as a nuisance**: a share of every batch (``colourless_fraction``) is captioned without colour: those
  crops are shown in greyscale (half of them) or with their hue turned by a random angle
  (:func:`~textsam.train.data.greyscale`, :func:`~textsam.train.data.rotate_hue`); only colourless phrases are
  their positives, and the phrases that name their category in some colour are left out of their softmax;
- ``lock_image``: train the text tower only (LiT's recipe, image tower locked), e.g. to align a text tower to an
  image tower before both are trained;
- ``--patch-size``: start from the initial CLIP with its image tower cut into finer patches
  (:func:`finer_patches`: the same tower, seeing the crop at a multiple of its resolution), more tokens over an
  object's outline for the same input;
- ``precision="bf16"``: the towers' forward passes under bf16 autocast (the weights and the optimiser stay fp32),
  on a CPU with native bf16 (AVX-512 BF16 / AMX) or a GPU;
- ``device``: where it trains (default: cuda when torch sees a GPU, else the CPU); the CLIP comes back on the CPU.

- **unions**: SAM also proposes the union of several objects, and a crop of two blue shapes must not match "the
  blue shape" better than each of them does. So the union of every multi-object expression's targets ("all
  triangles") is cropped too (``union_fraction`` of every batch): its positives are the plural phrases that fit
  each of its objects, and every singular phrase is a negative.

The temperature is fixed: ``logit_scale`` while training; ``ranking_scale`` is saved as the CLIP's logit scale,
which the engine turns crop scores into probabilities with before spatial words re-rank them (on the synthetic
val split a sharper 30 let small appearance differences outweigh "leftmost": spatial phrases 68.2 mIoU against
78.7 at 15). The result is an open_clip ``local-dir``
folder, as :mod:`~textsam.train.clip_pretrain` writes; ``tools/shapes_tiny_bundle.py --clip`` takes it as the
CLIP the bundled model's engine scores with.

Run: ``python -m textsam.train.engine_clip --data ROOT --init local-dir:DIR --out DIR [--steps N] [--lock-image]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["EngineClipConfig", "Vocabulary", "CropBank", "phrase_vocabulary", "crop_bank", "finer_patches",
           "train_engine_clip"]

GENERIC_NOUNS = frozenset({"shape", "shapes", "object", "objects", "thing", "things"})


def plural(noun: str) -> str:
    """English plural of a one-word category name ("cross" -> "crosses", "star" -> "stars")."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


@dataclass(frozen=True)
class Vocabulary:
    """Phrases with a known meaning: ``colours[i]`` (None: any colour), ``categories[i]`` (None: any) and
    ``plurals[i]`` (the phrase names several: "triangles")."""

    phrases: tuple[str, ...]
    colours: tuple[str | None, ...]
    categories: tuple[str | None, ...]
    plurals: tuple[bool, ...]

    def positives(self, members: Sequence[tuple[str | None, str]]) -> Tensor:
        """``(V,)`` bool: the phrases that describe a crop of these objects (``(colour, category)`` each). One
        object: every phrase that fits it, singular or plural (a group phrase's members are scored one by one).
        Several (a crop of their union): only plural phrases that fit each of them."""
        return torch.tensor([(len(members) == 1 or p) and all((c is None or c == colour) and (k is None or k == cat)
                                                              for colour, cat in members)
                             for c, k, p in zip(self.colours, self.categories, self.plurals)])

    @property
    def colourless(self) -> Tensor:
        """``(V,)`` bool: the phrases that name no colour."""
        return torch.tensor([c is None for c in self.colours])


def meaning(phrase: str, colours: Sequence[str], categories: Sequence[str]) -> tuple[str | None, str | None, bool] | None:
    """``(colour, category, plural)`` a phrase names (None for colour or category: any), or None when a word is
    none of the known ones or it names no noun."""
    singular = {c: c for c in categories} | {g: g for g in GENERIC_NOUNS if not g.endswith("s")}
    plurals = {plural(c): c for c in categories} | {plural(g): g for g in GENERIC_NOUNS if not g.endswith("s")}
    colour = category = None
    number = None
    for word in re.findall(r"[a-z]+", phrase.lower()):
        if word in colours:
            colour = word
        elif word in singular or word in plurals:
            noun = singular.get(word) or plurals[word]
            category, number = (None if noun in GENERIC_NOUNS else noun), word in plurals
        else:
            return None
    return (colour, category, bool(number)) if number is not None else None


def phrase_vocabulary(split_root: Path, colours: Sequence[str], categories: Sequence[str]) -> Vocabulary:
    """The engine's texts (heads and anchors) of ``split_root``'s ``refs.json`` and ``absent.json`` expressions that
    have a known :func:`meaning`, sorted."""
    from ..text.spatial import parse

    sentences: list[str] = []
    if (split_root / "refs.json").is_file():
        sentences += [s["sent"] for ref in json.loads((split_root / "refs.json").read_text()) for s in ref["sentences"]]
    if (split_root / "absent.json").is_file():
        sentences += [s for a in json.loads((split_root / "absent.json").read_text()) for s in a["sentences"]]
    texts: set[str] = set()
    for sentence in dict.fromkeys(sentences):
        query = parse(sentence)
        texts.update([query.head, *query.anchors])
    known = {t: meaning(t, colours, categories) for t in sorted(texts)}
    kept = [(t, m) for t, m in known.items() if m is not None]
    if not kept:
        raise InputError(f"no phrase of {split_root} names a known colour or category: nothing to train on")
    return Vocabulary(*(tuple(x) for x in zip(*[(t, *m) for t, m in kept])))


@dataclass(frozen=True)
class CropBank:
    """``crops (N, K, s, s, 3)`` uint8: K views of N regions at the tower's input size; ``members[i]``: the
    ``(colour, category)`` of each object region i covers (one for an object, several for a union)."""

    crops: Tensor
    members: tuple[tuple[tuple[str | None, str], ...], ...]

    @property
    def unions(self) -> np.ndarray:
        """``(N,)`` bool: the regions that are unions of several objects."""
        return np.array([len(m) > 1 for m in self.members])


def crop_bank(coco: Any, size: int, *, groups: Sequence[Sequence[int]] = (), enlarge: tuple[float, float] = (1.05, 1.8),
              seed: int = 0, views: Sequence[str] = ("crop", "blur")) -> CropBank:
    """Every non-crowd object of ``coco`` (a :class:`~textsam.data.coco.CocoDataset`), and the union of every
    annotation-id group in ``groups`` (e.g. the targets of "all triangles": SAM proposes such unions too, and a
    singular phrase must not prefer them), as the engine's ``views`` at its enlargement (1.3) and at one random
    enlargement in ``enlarge``, resized as open_clip's preprocessing does (bicubic, shorter side to ``size``, centre
    crop): ``K = 2 * len(views)`` crops per region. Colours come from the annotations' ``colour`` field (None
    without one)."""
    from PIL import Image

    from ..text.scoring import crop_views

    rng = np.random.default_rng(seed)
    by_image: dict[int, list[tuple[int, ...]]] = {}
    for group in groups:
        if len(group) > 1:
            by_image.setdefault(coco.annotation(group[0]).image_id, []).append(tuple(group))
    crops, members = [], []
    for image_id in coco.image_ids():
        anns = coco.anns_for_image(image_id)
        if not anns:
            continue
        image = coco.load_image(image_id)
        masks = {a.id: np.asarray(coco.mask(a), bool) for a in anns}
        regions = [(a.id,) for a in anns] + sorted(set(by_image.get(image_id, [])))
        region_masks = np.stack([np.logical_or.reduce([masks[i] for i in r]) for r in regions])
        boxes = []
        for r in regions:
            x0, y0, x1, y1 = zip(*[(b[0], b[1], b[0] + b[2], b[1] + b[3]) for b in (coco.annotation(i).bbox for i in r)])
            boxes.append([min(x0), min(y0), max(x1), max(y1)])
        rows = [crop_views(image, region_masks, np.array(boxes, float), views, enlarge=e)
                for e in (1.3, float(rng.uniform(*enlarge)))]
        for k, region in enumerate(regions):
            crops.append(np.stack([_resized(view, size, Image) for row in rows for view in row[k]]))
            members.append(tuple((coco.annotation(i).extra.get("colour"), coco.categories[coco.annotation(i).category_id])
                                 for i in region))
    if not crops:
        raise InputError(f"{coco.annotation_file} has no objects to crop")
    return CropBank(torch.from_numpy(np.stack(crops)), tuple(members))


def _resized(view: Any, size: int, image_module: Any) -> np.ndarray:
    """A PIL view with its shorter side resized to ``size`` (bicubic) and centre-cropped: open_clip's eval resize."""
    w, h = view.size
    scale = size / min(w, h)
    view = view.resize((max(size, round(w * scale)), max(size, round(h * scale))), image_module.BICUBIC)
    left, top = (view.size[0] - size) // 2, (view.size[1] - size) // 2
    return np.asarray(view.crop((left, top, left + size, top + size)).convert("RGB"))


@dataclass(frozen=True)
class EngineClipConfig:
    """Optimisation of :func:`train_engine_clip` (see the module docstring)."""

    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    logit_scale: float = 30.0  # the training temperature
    ranking_scale: float = 15.0  # the logit scale saved with the CLIP: the engine's ranking temperature
    union_fraction: float = 0.25  # of every batch, when the bank has unions
    colourless_fraction: float = 0.5
    grey_fraction: float = 0.5  # of the colourless crops; the others get their hue turned
    lock_image: bool = False
    precision: str = "fp32"  # "bf16": the forward passes under bf16 autocast
    device: str | None = None  # torch device; default: cuda when available, else cpu
    seed: int = 0
    log_every: int = 100

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"precision must be 'fp32' or 'bf16', not {self.precision!r}")
        for name in ("colourless_fraction", "grey_fraction", "union_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.steps < 1 or self.batch_size < 2:
            raise InputError("steps must be >= 1 and batch_size >= 2")


def vocabulary_loss(logits: Tensor, positive: Tensor, valid: Tensor) -> Tensor:
    """Multi-positive cross-entropy of crop-phrase ``logits (B, V)`` both ways: each crop against the phrases it may
    be compared with (``valid``), target mass spread over its ``positive`` ones; each phrase with a positive in the
    batch against the batch's crops. ``positive``, ``valid``: ``(B, V)`` bool, ``positive`` within ``valid``."""
    masked = logits.masked_fill(~valid, float("-inf"))
    target = positive.float()
    to_phrases = -(torch.log_softmax(masked, 1).masked_fill(~valid, 0) * target / target.sum(1, keepdim=True)).sum(1)
    has = positive.any(0)
    by_phrase = masked.t()[has]
    target_t = target.t()[has]
    to_crops = -(torch.log_softmax(by_phrase, 1).masked_fill(~valid.t()[has], 0) * target_t
                 / target_t.sum(1, keepdim=True)).sum(1)
    return 0.5 * (to_phrases.mean() + to_crops.mean())


def _augment(crops: np.ndarray, colourless: np.ndarray, grey: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """``crops (B, s, s, 3)`` uint8 with the colourless ones greyed or hue-turned."""
    from .data import greyscale, rotate_hue

    out = crops.copy()
    for i in np.flatnonzero(colourless):
        out[i] = greyscale(crops[i]) if grey[i] else rotate_hue(crops[i], float(turns[i]))
    return out


def finer_patches(clip: nn.Module, model_cfg: dict[str, Any], patch_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``clip`` (an open_clip ``CLIP`` with a plain ViT image tower) whose tower cuts its input into
    ``patch_size`` patches instead of its own ``p`` (a divisor of ``p``), and its config.

    The new tower is the old one looking at its input enlarged ``k = p / patch_size`` times (nearest): each new
    patch-embedding weight is the sum of the old kernel's ``k x k`` block that saw the same input pixel, so the
    patch embeddings are exactly those of the enlarged input; the positional embeddings, ``(1 + g*g, C)``, are
    interpolated (bicubic) to ``(1 + (k*g)**2, C)``. The transformer, the class token and the projection are
    copied. ``(1 + (k*g)**2)`` tokens: about ``k**2`` times the tower's compute.
    """
    from copy import deepcopy

    from ..text.grounding import resize_pos_embed

    visual = clip.visual
    old = visual.patch_size if isinstance(visual.patch_size, int) else visual.patch_size[0]
    if patch_size < 1 or old % patch_size:
        raise InputError(f"--patch-size must divide the tower's patch size {old}, got {patch_size}")
    k = old // patch_size
    cfg = deepcopy(model_cfg)
    cfg["vision_cfg"]["patch_size"] = patch_size
    new = deepcopy(clip)
    if k == 1:
        return new, cfg
    weight = visual.conv1.weight.detach()  # (C, 3, p, p)
    c = weight.shape[0]
    conv = nn.Conv2d(3, c, kernel_size=patch_size, stride=patch_size, bias=False)
    conv.weight.data.copy_(weight.view(c, 3, patch_size, k, patch_size, k).sum((3, 5)))
    new.visual.conv1 = conv
    grid = tuple(visual.grid_size)
    finer = (grid[0] * k, grid[1] * k)
    new.visual.positional_embedding = nn.Parameter(
        resize_pos_embed(visual.positional_embedding.detach(), grid, finer).contiguous())
    new.visual.patch_size = (patch_size, patch_size)
    new.visual.grid_size = finer
    return new, cfg


def train_engine_clip(clip: nn.Module, tokenizer: Any, bank: CropBank, vocabulary: Vocabulary,
                      config: EngineClipConfig = EngineClipConfig(), *, mean: Sequence[float], std: Sequence[float],
                      progress: bool = False) -> list[float]:
    """Train ``clip`` (an open_clip ``CLIP``, in place) on ``bank`` against ``vocabulary``; returns the losses."""
    from tqdm.auto import tqdm

    from ..text.templates import DEFAULT_TEMPLATES

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clip.to(device)
    positives = torch.stack([vocabulary.positives(m) for m in bank.members]).to(device)  # (N, V)
    unions = np.flatnonzero(bank.unions)
    singles = np.flatnonzero(~bank.unions)
    colourless_phrases = vocabulary.colourless.to(device)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    clip.requires_grad_(False)
    for name, param in clip.named_parameters():
        param.requires_grad_(name != "logit_scale" and not (config.lock_image and name.startswith("visual.")))
    params = [p for p in clip.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=config.lr, betas=(0.9, 0.98), eps=1e-6)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
        return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, (step + 1) / config.steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    clip.train()
    if config.lock_image:
        clip.visual.eval()
    k = bank.crops.shape[1]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=config.precision == "bf16")
    losses: list[float] = []
    for step in tqdm(range(config.steps), disable=not progress, desc="engine clip"):
        n_unions = int(round(config.batch_size * config.union_fraction)) if len(unions) else 0
        index = np.concatenate([rng.choice(singles, config.batch_size - n_unions), rng.choice(unions, n_unions)
                                if n_unions else np.zeros(0, np.int64)]).astype(np.int64)
        view = rng.integers(k, size=config.batch_size)
        colourless = rng.random(config.batch_size) < config.colourless_fraction
        grey = rng.random(config.batch_size) < config.grey_fraction
        turns = rng.random(config.batch_size)
        crops = _augment(bank.crops[index, view].numpy(), colourless, grey, turns)
        pixels = (torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 255 - mean_t) / std_t
        with torch.set_grad_enabled(not config.lock_image), autocast:
            image = F.normalize(clip.encode_image(pixels).float(), dim=-1)
        templates = rng.integers(len(DEFAULT_TEMPLATES), size=len(vocabulary.phrases))
        texts = [DEFAULT_TEMPLATES[t].format(p) for t, p in zip(templates, vocabulary.phrases)]
        with autocast:
            text = F.normalize(clip.encode_text(tokenizer(texts).to(device)).float(), dim=-1)
        positive = positives[torch.from_numpy(index).to(device)]
        shown_without_colour = torch.from_numpy(colourless).to(device)[:, None]
        valid = ~shown_without_colour | colourless_phrases[None] | ~positive  # a recoloured crop: its colour
        positive = positive & (~shown_without_colour | colourless_phrases[None])  # phrases are neither
        loss = vocabulary_loss(config.logit_scale * image @ text.t(), positive, valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % config.log_every == 0:
            logger.info("engine clip step %d loss %.4f", step + 1, sum(losses[-config.log_every:]) / config.log_every)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(config.ranking_scale))
    clip.eval()
    clip.cpu()
    return losses


def main(argv: list[str] | None = None) -> int:
    from ..data.coco import CocoDataset
    from ..factory import check_device
    from ..text.grounding import OPENAI_MEAN, OPENAI_STD
    from .clip_pretrain import load_initial_clip, save_local_dir

    parser = argparse.ArgumentParser(prog="python -m textsam.train.engine_clip", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset root with SPLIT/{images/, instances.json, refs.json} "
                        "and meta.json (the synthetic generator's: its colour words)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--init", required=True, metavar="CLIP",
                        help="the CLIP to start from (local-dir:DIR, NAME/@/FILE or NAME/TAG)")
    parser.add_argument("--out", required=True, help="output local-dir folder")
    parser.add_argument("--steps", type=int, default=EngineClipConfig.steps)
    parser.add_argument("--batch-size", type=int, default=EngineClipConfig.batch_size)
    parser.add_argument("--lr", type=float, default=EngineClipConfig.lr)
    parser.add_argument("--lock-image", action="store_true", help="train the text tower only")
    parser.add_argument("--patch-size", type=int, metavar="P",
                        help="cut the initial image tower into P-pixel patches first (a divisor of its own)")
    parser.add_argument("--bf16", action="store_true",
                        help="the forward passes under bf16 autocast (a CPU with AVX-512 BF16 / AMX, or a GPU)")
    parser.add_argument("--logit-scale", type=float, default=EngineClipConfig.logit_scale,
                        help="the training temperature")
    parser.add_argument("--ranking-scale", type=float, default=EngineClipConfig.ranking_scale,
                        help="the logit scale saved with the CLIP, which the engine ranks with")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    root = Path(args.data)
    meta = json.loads((root / "meta.json").read_text()) if (root / "meta.json").is_file() else {}
    colours = sorted((meta.get("vocab") or {}).get("colours", {}))
    coco = CocoDataset(root / args.split / "instances.json", root / args.split / "images")
    try:
        config = EngineClipConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                  lock_image=args.lock_image, seed=args.seed, logit_scale=args.logit_scale,
                                  ranking_scale=args.ranking_scale, precision="bf16" if args.bf16 else "fp32",
                                  device=args.device)
    except InputError as err:
        parser.error(str(err))
    try:
        check_device(args.device)  # a device this machine does not have is a usage error, before the data is read
    except InputError as err:
        parser.error(str(err))
    vocabulary = phrase_vocabulary(root / args.split, colours, sorted(coco.categories.values()))
    init = load_initial_clip(args.init)
    clip, model_cfg = init.model, init.model_cfg
    if args.patch_size is not None:
        try:
            clip, model_cfg = finer_patches(clip, model_cfg, args.patch_size)
        except InputError as err:
            parser.error(str(err))
    cfg = init.model.visual.preprocess_cfg if hasattr(init.model.visual, "preprocess_cfg") else {}
    size = int(init.model_cfg["vision_cfg"]["image_size"])
    mean, std = cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD)
    logger.info("vocabulary: %d phrases; cropping %s", len(vocabulary.phrases), coco.annotation_file)
    refs = root / args.split / "refs.json"
    groups = [r["ann_ids"] for r in json.loads(refs.read_text())] if refs.is_file() else []
    bank = crop_bank(coco, size, groups=groups, seed=args.seed)
    logger.info("%d crops of objects and %d of unions", int((~bank.unions).sum()), int(bank.unions.sum()))
    losses = train_engine_clip(clip, init.tokenizer, bank, vocabulary, config, mean=mean, std=std, progress=True)
    out = save_local_dir(clip, model_cfg, args.out)
    logger.info("%s (final loss %.4f)", out, sum(losses[-50:]) / len(losses[-50:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
