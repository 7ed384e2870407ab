"""Teach a text head's region locator to say "not in this image": its presence readout, trained on the model's
own candidate objects with phrases that name nothing in the image.

    python -m textsam.train.locator_presence --model shapes_tiny --data runs/shapes_data --out runs/presence \
        [--split train] [--steps 2500] [--batch-size 64] [--absent-fraction 0.4] [--lr 3e-4] [--max-images N]

Without a presence readout the locator only ranks: a softmax over the image's candidates always has a winner,
so an absent phrase ("the purple star" on an image without one) still gets a click and a mask, and the request's
presence comes from the training-free engine's CLIP crops. This stage adds the readout
(:class:`~textsam.config.TextHeadConfig` ``locator_presence``; ``presence_i = sigmoid(w . c_i + b)`` over the
candidate's content matches, see :mod:`textsam.text.locator`) and fine-tunes the whole locator with two losses:

- :meth:`~textsam.text.locator.RegionLocator.loss` (minus the log softmax mass on the target candidates) for
  phrases that name something, as the locator was trained;
- :meth:`~textsam.text.locator.RegionLocator.presence_loss` (binary cross-entropy of "the phrase is in the
  image": a present phrase's best target candidate against an absent phrase's best candidate).

Candidates are the model's own (the predictor's locator candidates with the default
:class:`~textsam.text.options.LocatorOptions`: the decoder's masks for one click per region of the image
embedding), not ground-truth objects, so the readout learns on the masks it will see. A phrase's targets are
the candidates whose mask IoU with one of its objects is at least 0.5 (pycocotools).

Data: the synthetic layout (``textsam data synth``): ``{split}/instances.json`` (COCO, RLE masks),
``{split}/refs.json`` (referring expressions), ``{split}/absent.json`` (per image, phrases that name nothing in
it: ``[{"image_id", "file_name", "sentences": [...]}]``), ``{split}/images/``. The candidates are computed once
and kept in ``OUT/candidates/`` (chunks of 100 images; an interrupted run resumes where it stopped).

Output: ``OUT/model.safetensors``, the model's textsam file (the bundled model's, or ``--text-head``'s) with the
new locator and ``locator_presence = true``, in the source file's precision; load it with
``create_model(MODEL, text_head=OUT/model.safetensors)``. Only colour-appearance locators (the bundled
``shapes_tiny``'s) are supported: an embedding-appearance locator would need every image's embedding kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, TextSamError

__all__ = ["PresenceOptions", "build_candidates", "train_presence", "main"]

logger = logging.getLogger(__name__)
CHUNK = 100


@dataclass(frozen=True)
class PresenceOptions:
    """steps / batch_size / lr: AdamW on the locator (the readout learns at ``30 * lr``). absent_fraction: the
    share of each batch drawn from absent phrases. min_iou: a candidate is a phrase's target when its mask IoU
    with one of the phrase's objects is at least this. max_images: use only the first N images (0: all)."""

    steps: int = 2500
    batch_size: int = 64
    lr: float = 3e-4
    absent_fraction: float = 0.4
    min_iou: float = 0.5
    max_images: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise InputError("steps and batch_size must be >= 1 and lr > 0")
        if not 0.0 <= self.absent_fraction < 1.0 or not 0.0 < self.min_iou <= 1.0:
            raise InputError("absent_fraction must be in [0, 1) and min_iou in (0, 1]")


@dataclass
class ImageCandidates:
    """One image: candidate masks ``regions (M, L, L)`` bool (low-res, padded input frame), their colour
    statistics ``colours (M, 6)``, and its phrases as ``(phrase, target (M,) bool, absent)``."""

    image_id: int
    regions: Tensor
    colours: Tensor
    phrases: list[tuple[str, Tensor, bool]]


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise InputError(f"{path} does not exist: the data folder must hold instances.json, refs.json and "
                         "absent.json for the split (textsam data synth writes them)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path} is not valid JSON ({err})") from None


def build_candidates(predictor, root: Path, split: str, out: Path, options: PresenceOptions,  # noqa: ANN001
                     progress: bool = True) -> list[ImageCandidates]:
    """The model's candidates for every image of ``root/split`` with each phrase's targets (see the module
    docstring); chunks already in ``out`` are read, not recomputed."""
    from pycocotools import mask as mask_utils

    from ..text.locator import lowres_rgb, region_colours
    from ..transforms import load_image

    folder = root / split
    coco = _read_json(folder / "instances.json")
    refs = _read_json(folder / "refs.json")
    absent = _read_json(folder / "absent.json")
    images = coco["images"][: options.max_images or None]  # type: ignore[index]
    anns: dict[int, dict[int, dict]] = {}
    for a in coco["annotations"]:  # type: ignore[index]
        anns.setdefault(int(a["image_id"]), {})[int(a["id"])] = a
    phrases: dict[int, list[tuple[str, list[int]]]] = {}
    for r in refs:  # type: ignore[union-attr]
        ids = [int(i) for i in r.get("ann_ids", [r.get("ann_id")])]
        for s in r["sentences"]:
            phrases.setdefault(int(r["image_id"]), []).append((s["sent"] if isinstance(s, dict) else str(s), ids))
    for a in absent:  # type: ignore[union-attr]
        for s in a["sentences"]:
            phrases.setdefault(int(a["image_id"]), []).append((str(s), []))
    out.mkdir(parents=True, exist_ok=True)
    model, text = predictor.model, predictor.text
    result: list[ImageCandidates] = []
    start = time.perf_counter()
    for c0 in range(0, len(images), CHUNK):
        path = out / f"{split}_{c0 // CHUNK:05d}.pt"
        if path.is_file():
            result.extend(torch.load(path, weights_only=False))
            continue
        chunk = []
        for im in images[c0 : c0 + CHUNK]:
            iid = int(im["id"])
            image = load_image(str(folder / "images" / im["file_name"]))
            predictor.set_image(image)
            regions = text.region_candidates(predictor.get_image_embedding(), predictor.input_size).cpu()
            colours = region_colours(lowres_rgb(image, model.img_size, regions.shape[-1]), regions)
            with torch.inference_mode():  # candidates in the original frame, for the IoU with the objects
                logits = regions.float()[:, None] * 2 - 1
                full = model.postprocess_masks(logits, predictor.input_size, predictor.original_size)[:, 0] > 0
            cand_rles = mask_utils.encode(np.asfortranarray(full.numpy().transpose(1, 2, 0).astype(np.uint8)))
            items = []
            for phrase, ids in phrases.get(iid, []):
                target = torch.zeros(len(regions), dtype=torch.bool)
                if ids and len(regions):
                    gts = [anns[iid][i]["segmentation"] for i in ids if i in anns.get(iid, {})]
                    if gts:
                        iou = np.asarray(mask_utils.iou(cand_rles, gts, [0] * len(gts))).reshape(len(regions), -1)
                        target = torch.from_numpy(iou.max(1) >= options.min_iou)
                items.append((phrase, target, not ids))
            chunk.append(ImageCandidates(iid, regions, colours, items))
        torch.save(chunk, path)
        result.extend(chunk)
        if progress:
            done = min(c0 + CHUNK, len(images))
            logger.info("candidates: %d/%d images (%.0f s)", done, len(images), time.perf_counter() - start)
    return result


def _batch(locator, samples: Sequence[tuple[ImageCandidates, tuple[str, Tensor, bool]]],  # noqa: ANN001
           words: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Scores and presence logits ``(B, N)`` of a batch of (image, phrase) samples, their targets ``(B, N)``
    and which phrases are absent ``(B,)``."""
    b = len(samples)
    n = max(1, max(len(img.regions) for img, _ in samples))
    size = samples[0][0].regions.shape[-1]
    masks = torch.zeros(b, n, size, size, dtype=torch.bool)
    valid = torch.zeros(b, n, dtype=torch.bool)
    colours = torch.zeros(b, n, 6)
    target = torch.zeros(b, n, dtype=torch.bool)
    length = max(words[p][1].shape[0] for _, (p, _, _) in samples)
    width = next(iter(words.values()))[1].shape[1]
    feats, word_mask = torch.zeros(b, length, width), torch.zeros(b, length, dtype=torch.bool)
    for i, (img, (phrase, tgt, _)) in enumerate(samples):
        m = len(img.regions)
        masks[i, :m], valid[i, :m], colours[i, :m], target[i, :m] = img.regions, True, img.colours, tgt
        w = words[phrase][1]
        feats[i, : len(w)], word_mask[i, : len(w)] = w, True
    emb = torch.stack([words[p][0] for _, (p, _, _) in samples])
    inputs = (feats, word_mask) if locator.word_dim else (None, None)
    scores, presence = locator.scores_and_presence(None, masks, valid, emb, *inputs, colours=colours)
    return scores, presence, target, torch.tensor([a for _, (_, _, a) in samples])


def train_presence(model, data: list[ImageCandidates], options: PresenceOptions,  # noqa: ANN001
                   progress: bool = True) -> dict[str, float]:
    """Add a presence readout to ``model.text_locator`` (a new locator with ``locator_presence``, started from
    the old one's weights) and fine-tune it on ``data``; returns the last losses."""
    from ..text.locator import RegionLocator

    old = model.text_locator
    if old is None:
        raise InputError("this model's text head has no locator: nothing to train")
    if old.appearance_kind != "colour":
        raise InputError("only a colour-appearance locator can be trained here (see the module docstring)")
    config = dataclasses.replace(old.config, locator_presence=True)
    locator = RegionLocator(config).to(torch.float32)
    missing = locator.load_state_dict({k: v.float() for k, v in old.state_dict().items()}, strict=False).missing_keys
    if any(not k.startswith("presence.") for k in missing):
        raise TextSamError(f"the old locator lacks {missing}")
    model.text_locator = locator
    present = [(img, item) for img in data for item in img.phrases if not item[2] and len(img.regions)]
    absent = [(img, item) for img in data for item in img.phrases if item[2] and len(img.regions)]
    if not present or not absent:
        raise InputError(f"training needs phrases that name something ({len(present)}) and phrases that name "
                         f"nothing ({len(absent)}) on images with candidates")
    words: dict[str, tuple[Tensor, Tensor]] = {}
    unique = sorted({item[0] for _, item in present + absent})
    with torch.inference_mode():
        for i in range(0, len(unique), 256):
            part = unique[i : i + 256]
            emb, feats, mask = model.text_encoder.encode_words(part)
            for j, phrase in enumerate(part):
                words[phrase] = (emb[j].float().cpu().clone(), feats[j][mask[j]].float().cpu().clone())
    rng = random.Random(options.seed)
    torch.manual_seed(options.seed)
    assert locator.presence is not None
    readout = list(locator.presence.parameters())
    rest = [p for n, p in locator.named_parameters() if not n.startswith("presence.")]
    opt = torch.optim.AdamW([{"params": rest, "lr": options.lr}, {"params": readout, "lr": 30 * options.lr}],
                            weight_decay=0.0)
    locator.train()
    last: dict[str, float] = {}
    start = time.perf_counter()
    for step in range(options.steps):
        batch = [rng.choice(absent) if rng.random() < options.absent_fraction else rng.choice(present)
                 for _ in range(options.batch_size)]
        scores, presence, target, is_absent = _batch(locator, batch, words)
        assert presence is not None
        has = target.any(1)
        rank = RegionLocator.loss(scores, target)[has].mean() if has.any() else scores.new_zeros(())
        pres = RegionLocator.presence_loss(presence, target, is_absent).mean()
        loss = rank + pres
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = {"rank": float(rank.detach()), "presence": float(pres.detach())}
        if progress and (step % 100 == 0 or step == options.steps - 1):
            logger.info("step %d/%d: rank %.3f, presence %.3f (%.0f s)", step + 1, options.steps, last["rank"],
                        last["presence"], time.perf_counter() - start)
    locator.eval()
    locator.requires_grad_(False)
    return last


def save_with_locator(source: Path, model, out: Path) -> Path:  # noqa: ANN001
    """``source`` (a textsam file holding the text head) rewritten with ``model.text_locator`` and its config."""
    from ..weights import format as fmt

    file = fmt.read(source)
    if file.text_head is None:
        raise InputError(f"{source} holds no text head")
    locator = model.text_locator
    dtype = next((v.dtype for k, v in file.tensors.items() if k.startswith("text_locator.")), torch.float32)
    tensors = {k: v for k, v in file.tensors.items() if not k.startswith("text_locator.")}
    tensors.update({f"text_locator.{k}": v.detach().to(dtype) for k, v in locator.state_dict().items()})
    training = dict(file.training)
    training["locator_presence"] = "python -m textsam.train.locator_presence"
    new = dataclasses.replace(file, text_head=locator.config, tensors=tensors, training=training)
    return fmt.write(out, new)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textsam.train.locator_presence", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes_tiny", help="a model name (default shapes_tiny)")
    parser.add_argument("--text-head", default=None, help="a textsam file with the text head to extend "
                        "(default: the model's own, for a bundled model)")
    parser.add_argument("--data", required=True, type=Path, help="a folder in the synthetic layout")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--split", default="train")
    defaults = PresenceOptions()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--absent-fraction", type=float, default=defaults.absent_fraction)
    parser.add_argument("--max-images", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import textsam

        from ..weights.pretrained import BUNDLED, bundled_path

        options = PresenceOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                  absent_fraction=args.absent_fraction, max_images=args.max_images, seed=args.seed)
        if args.text_head is None and args.model not in BUNDLED:
            raise InputError(f"{args.model} has no text head of its own: pass --text-head FILE")
        source = Path(args.text_head) if args.text_head else bundled_path(args.model)
        model = textsam.create_model(args.model, text_head=args.text_head) if args.text_head else \
            textsam.create_model(args.model)
        model = model.float()
        predictor = textsam.TextSamPredictor(model)
        data = build_candidates(predictor, args.data, args.split, args.out / "candidates", options)
        losses = train_presence(model, data, options)
        path = save_with_locator(source, model, args.out / "model.safetensors")
    except TextSamError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} (last losses: rank {losses['rank']:.3f}, presence {losses['presence']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
