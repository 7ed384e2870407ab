"""CLIP scoring of object proposals: isolated views of each proposal through the CLIP image tower.

For every proposal (a mask and its box, original pixels) the image is cut into ``views``:

- ``"crop"``: a square window centred on the box, its side ``enlarge`` times the box's longer side (the
  parts outside the image black), background kept (ReCLIP's crop; the synthetic CLIP's training crops);
- ``"mask"``: the same window with the pixels outside the mask set to CLIP's mean colour (the SAM paper's
  masked crop);
- ``"blur"``: the whole image blurred (Gaussian, radius ``blur_radius`` of its longer side) with the box
  pasted back sharp (ReCLIP's blur view).

Each view goes through open_clip's own evaluation preprocessing for the tower (resize, centre crop,
normalise) and ``encode_image``; the unit embeddings ``(N, V, D)`` are computed once per image and shared
by every phrase, so a phrase costs one matrix product. A view's score is the cosine with the phrase's
template-ensembled embedding; a proposal's crop score is the mean over its views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["VIEWS", "crop_views", "clip_preprocess", "encode_views", "tower_input_size"]

VIEWS = ("crop", "mask", "blur")
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(clip: nn.Module) -> Any:
    """open_clip's evaluation transform for ``clip``'s image tower (PIL image -> normalised ``(3, n, n)``)."""
    import open_clip

    visual = clip.visual
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    size = cfg.get("size", visual.image_size)
    return open_clip.image_transform(
        size, is_train=False, mean=cfg.get("mean", getattr(visual, "image_mean", None) or _OPENAI_MEAN),
        std=cfg.get("std", getattr(visual, "image_std", None) or _OPENAI_STD),
        resize_mode=cfg.get("resize_mode"), interpolation=cfg.get("interpolation"),
        fill_color=cfg.get("fill_color", 0),
    )


def _window(box: Sequence[float], enlarge: float) -> tuple[int, int, int, int]:
    """A square window (x0, y0, x1, y1, exclusive ends) centred on ``box`` (x0, y0, x1, y1 exclusive)."""
    x0, y0, x1, y1 = box
    side = max(1.0, max(x1 - x0, y1 - y0) * enlarge)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)


def tower_input_size(clip: nn.Module) -> int | None:
    """The side of ``clip``'s image-tower input (224 for ViT-B/16), or None when the tower does not say."""
    size = getattr(getattr(clip, "visual", None), "image_size", None)
    if isinstance(size, (tuple, list)):
        size = min(size)
    return int(size) if size else None


def _shrunk(view: Image.Image, max_side: int | None) -> Image.Image:
    """``view`` reduced by the integer factor ``shorter side // max_side`` (PIL's ``reduce``: the mean of each
    k x k block) when that factor is at least 2, else ``view``."""
    k = min(view.size) // max_side if max_side else 0
    return view.reduce(k) if k >= 2 else view


def _reduced_crop(pil: Image.Image, window: tuple[int, int, int, int], k: int) -> Image.Image:
    """``pil.crop(window).reduce(k)`` (the parts of ``window`` outside the image black), without copying the
    whole window: only the blocks of ``k x k`` pixels that touch the image are reduced, from a crop aligned to the
    window's blocks (its edge blocks padded black as the window's are), and pasted into a black canvas. The same
    pixels: a block that touches no image pixel is all black either way."""
    x0, y0, x1, y1 = window
    width, height = pil.size
    out_w, out_h = -(-(x1 - x0) // k), -(-(y1 - y0) // k)
    i0, j0 = max(0, -x0 // k), max(0, -y0 // k)
    i1, j1 = min(out_w, -(-(width - x0) // k)), min(out_h, -(-(height - y0) // k))
    canvas = Image.new(pil.mode, (out_w, out_h))
    if i1 <= i0 or j1 <= j0:
        return canvas
    region = (x0 + i0 * k, y0 + j0 * k, min(x0 + i1 * k, x1), min(y0 + j1 * k, y1))
    inside = region[0] >= 0 and region[1] >= 0 and region[2] <= width and region[3] <= height
    canvas.paste(pil.reduce(k, box=region) if inside else pil.crop(region).reduce(k), (i0, j0))
    return canvas


def crop_views(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, views: Sequence[str], *,
               enlarge: float = 1.3, blur_radius: float = 0.03, max_side: int | None = None) -> list[list[Image.Image]]:
    """The views of every proposal: ``image (H, W, 3)`` uint8, ``masks (N, H, W)`` bool, ``boxes (N, 4)`` x0, y0,
    x1, y1 with exclusive ends (original pixels) -> ``N`` lists of ``len(views)`` PIL images.

    ``max_side``: a view whose shorter side is at least twice ``max_side`` is shrunk by the integer factor
    ``side // max_side`` (a box filter) before it is returned, so the tower's own resize (bicubic with
    antialiasing, whose cost grows with the input) starts from at most about ``2 * max_side`` pixels: what PIL
    calls a reducing gap. The engine passes 3x the tower's input (672 px for 224): a 2339 px window of a whole
    1800 x 1200 photo then takes 11 ms to preprocess instead of 32 ms, and its 224 px input differs by 0.005 of
    CLIP's pixel standard deviation on average (random-weight ViT-B/16 embeddings at cosine 0.99999). The reduced
    crop view is made from the window's blocks that touch the image, without copying the padded window: the same
    pixels, 1.4 ms instead of 5.2 ms for the window of a whole 1800 x 1200 photo."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise InputError(f"views must be some of {VIEWS}, got {list(views)}")
    if enlarge < 1.0:
        raise InputError(f"enlarge must be >= 1, got {enlarge}")
    if max_side is not None and max_side < 1:
        raise InputError(f"max_side must be >= 1, got {max_side}")
    pil = Image.fromarray(image)
    mean = tuple(int(round(c * 255)) for c in _OPENAI_MEAN)
    blurred = None
    out = []
    for mask, box in zip(masks, boxes):
        window = _window(box, enlarge)
        row = []
        for view in views:
            k = (window[2] - window[0]) // max_side if max_side else 0
            if view == "crop" and k >= 2:  # what _shrunk would make of the whole window, without copying it
                row.append(_reduced_crop(pil, window, k))
            elif view == "crop":
                row.append(pil.crop(window))
            elif view == "mask":
                grey = Image.new("RGB", pil.size, mean)
                grey.paste(pil, (0, 0), Image.fromarray(mask.astype(np.uint8) * 255))
                row.append(grey.crop(window))
            else:
                if blurred is None:
                    blurred = pil.filter(ImageFilter.GaussianBlur(max(1.0, blur_radius * max(pil.size))))
                sharp = blurred.copy()
                x0, y0, x1, y1 = (int(round(v)) for v in box)
                sharp.paste(pil.crop((x0, y0, x1, y1)), (x0, y0))
                row.append(sharp)
        out.append([_shrunk(v, max_side) for v in row])
    return out


@torch.inference_mode()
def encode_views(clip: nn.Module, views: list[list[Image.Image]], *, batch_size: int = 32,
                 preprocess: Any = None) -> Tensor:
    """Unit CLIP image embeddings ``(N, V, D)`` float32 of the proposals' views (open_clip's preprocessing and
    ``encode_image``, in batches of ``batch_size``)."""
    if not views:
        return torch.zeros(0, 0, 0)
    preprocess = preprocess or clip_preprocess(clip)
    flat = [im for row in views for im in row]
    device = next(clip.parameters()).device
    dtype = next(clip.visual.parameters()).dtype
    chunks = []
    for i in range(0, len(flat), batch_size):
        batch = torch.stack([preprocess(im) for im in flat[i : i + batch_size]]).to(device, dtype)
        chunks.append(F.normalize(clip.encode_image(batch).float(), dim=-1))
    emb = torch.cat(chunks)
    return emb.view(len(views), len(views[0]), -1)
