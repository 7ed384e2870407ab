"""SAM's training losses: focal + dice on mask logits, MSE on the IoU head, min over ambiguous outputs.

All functions take low-resolution logits ``(B, M, H, W)`` (M candidate masks per prompt) and binary
targets ``(B, 1, H, W)`` or ``(B, H, W)`` in {0, 1}; per-mask losses are ``(B, M)``.

SAM (Kirillov et al. 2023, section 3 and appendix A) supervises masks with a linear combination of
focal and dice loss in a 20:1 ratio and trains the IoU head with the mean squared error between the
predicted IoU and the IoU of the predicted mask with the ground truth. For ambiguous prompts the model
returns 3 masks and only the one with the lowest mask loss is backpropagated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _targets_like(logits: Tensor, targets: Tensor) -> Tensor:
    """Broadcast ``(B, H, W)`` / ``(B, 1, H, W)`` targets to ``logits`` ``(B, M, H, W)`` as float."""
    if targets.ndim == logits.ndim - 1:
        targets = targets.unsqueeze(1)
    if targets.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"targets {tuple(targets.shape)} and logits {tuple(logits.shape)} differ in size")
    return targets.to(logits.dtype).expand_as(logits)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss (Lin et al. 2017) of each mask, mean over its pixels: ``(B, M, H, W)`` -> ``(B, M)``.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` with ``p_t = p`` on foreground and ``1 - p`` on background
    and ``alpha_t = alpha`` on foreground, ``1 - alpha`` on background (``alpha < 0`` disables it).
    """
    logits = logits.float()
    t = _targets_like(logits, targets)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft dice loss of each mask: ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)``, ``(B, M)``."""
    logits = logits.float()
    t = _targets_like(logits, targets).flatten(-2)
    p = torch.sigmoid(logits).flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + smooth) / (p.sum(-1) + t.sum(-1) + smooth)


@torch.no_grad()
def mask_iou(logits: Tensor, targets: Tensor, threshold: float = 0.0) -> Tensor:
    """IoU of the binarised masks (``logits > threshold``) with the targets, ``(B, M)``; 1 when both empty."""
    pred = (logits > threshold).flatten(-2)
    t = _targets_like(logits, targets).flatten(-2) > 0.5
    inter = (pred & t).sum(-1).float()
    union = (pred | t).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def iou_mse_loss(iou_pred: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
    """Squared error of the IoU head against the actual IoU of each predicted mask, ``(B, M)``."""
    return (iou_pred.float() - mask_iou(logits, targets)) ** 2


@dataclass(frozen=True)
class LossWeights:
    """SAM's recipe: focal : dice = 20 : 1, IoU MSE with weight 1."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0


def sam_loss(
    logits: Tensor, iou_pred: Tensor, targets: Tensor, weights: LossWeights = LossWeights(),
    min_over_outputs: bool = True,
) -> dict[str, Tensor]:
    """SAM's loss of one decoder call, per sample, with the min-over-outputs rule.

    Args:
        logits: ``(B, M, H, W)`` mask logits (M = 3 for ambiguous prompts, 1 otherwise).
        iou_pred: ``(B, M)`` IoU-head output.
        targets: ``(B, 1, H, W)`` or ``(B, H, W)`` binary target.
        min_over_outputs: SAM's rule for ambiguous prompts (below); ``False`` trains every one of the M
            outputs on the target (a prompt with one meaning, such as a referring phrase: no output may
            hedge on another candidate object).
    Returns:
        ``{"loss", "focal", "dice", "iou", "best"}``: ``(B,)`` tensors. The mask terms are those of the
        output with the lowest ``focal * w_f + dice * w_d`` (only it gets mask gradients), or the means
        over the outputs without the min rule; the IoU term averages over all M outputs, so the head
        learns to rank the candidates. ``best`` is the index of the lowest mask loss.
    """
    focal = sigmoid_focal_loss(logits, targets)
    dice = dice_loss(logits, targets)
    mask_loss = weights.focal * focal + weights.dice * dice
    best = mask_loss.detach().argmin(dim=1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    iou = iou_mse_loss(iou_pred, logits, targets).mean(dim=1)
    if not min_over_outputs:
        loss = mask_loss.mean(dim=1) + weights.iou * iou
        return {"loss": loss, "focal": focal.mean(dim=1), "dice": dice.mean(dim=1), "iou": iou, "best": best}
    loss = mask_loss[rows, best] + weights.iou * iou
    return {"loss": loss, "focal": focal[rows, best], "dice": dice[rows, best], "iou": iou, "best": best}
