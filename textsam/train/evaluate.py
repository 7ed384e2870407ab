"""The training evaluation: mean IoU per prompt kind on a validation set, with the model's own decoder call."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .batches import BOX, POINT, TEXT, TEXT_KINDS, TEXT_POINT, collate
from .losses import mask_iou
from .recipes import Recipe

__all__ = ["evaluate"]


def _iou_sum(recipe: Recipe, emb: Tensor, points: Any, boxes: Tensor | None, tokens: Tensor | None,
             multimask: bool, target: Tensor) -> float:
    """Summed IoU of the most confident mask of one decoder call with ``target (B, 1, S, S)``."""
    low, iou = recipe.model.decode(emb, points, boxes, None, tokens, multimask)
    best = low[torch.arange(low.shape[0], device=low.device), iou.argmax(dim=1)][:, None]
    up = F.interpolate(best.float(), target.shape[-2:], mode="bilinear", align_corners=False)
    return float(mask_iou(up, target).sum())


@torch.no_grad()
def evaluate(recipe: Recipe, dataset: Any, device: torch.device, batch_size: int = 16) -> dict[str, float]:
    """Mean IoU on ``dataset`` (built with ``train=False``) per prompt kind: the deepest interior point
    and the exact box for every recipe, plus the phrase's CLIP *text* embedding (alone and with the
    point) for text recipes. Multimask outputs are reduced to the most confident mask, as at inference.
    With a text locator, "text" adds its click as the predictor does, ``miou_text_tokens_only`` scores
    the phrase without it and ``locate_hit`` is the fraction of clicks that land on the target."""
    module = recipe.module
    was_training = module.training
    module.eval()
    has_locator = module.text_locator is not None
    kinds = [POINT, BOX] + ([TEXT, TEXT_POINT] if module.text_projector is not None else [])
    sums = dict.fromkeys(kinds, 0.0)
    extra = {"miou_text_tokens_only": 0.0, "locate_hit": 0.0} if has_locator else {}
    count = 0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        b = len(batch)
        batch.kind = torch.full((b,), TEXT)  # every row gets its phrase's prompt
        batch = recipe.prepare(batch, device, train=False)
        emb = module.embeddings(batch)
        inputs = module.text_inputs(batch)
        tokens = module.text_tokens(batch, inputs)
        located = module.locate(emb, batch, inputs) if has_locator else None
        ones = torch.ones(b, 1, device=device)
        pts = (batch.point[:, None].float(), ones)

        for kind in kinds:
            points = pts if kind in (POINT, TEXT_POINT) else None
            if kind == TEXT and located is not None:
                points = (located[1][:, None], ones)
            boxes = batch.box.float() if kind == BOX else None
            toks = tokens if kind in TEXT_KINDS else None
            sums[kind] += _iou_sum(recipe, emb, points, boxes, toks, kind in (POINT, TEXT), batch.mask)
        if located is not None:
            extra["miou_text_tokens_only"] += _iou_sum(recipe, emb, None, None, tokens, True, batch.mask)
            xy = located[1].round().long().clamp(0, batch.mask.shape[-1] - 1)
            rows = torch.arange(b, device=device)
            extra["locate_hit"] += float(batch.mask[rows, 0, xy[:, 1], xy[:, 0]].float().sum())
        count += b
    module.train(was_training)
    names = {POINT: "point", BOX: "box", TEXT: "text", TEXT_POINT: "text_point"}
    out = {f"miou_{names[k]}": v / max(count, 1) for k, v in sums.items()}
    return out | {k: v / max(count, 1) for k, v in extra.items()}
