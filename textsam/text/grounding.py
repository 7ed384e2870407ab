"""Training-free localisation of a phrase with CLIP, and CLIP scoring of candidate masks.

Frames (see also :mod:`textsam.transforms`):

* *original*: pixels of the user's image, ``(H, W)``; points are ``(x, y)``, boxes ``x0, y0, x1, y1``.
* *input*: the image resized so its longest side is ``input_size`` (``(h', w')``, SAM's rounding),
  normalised with the CLIP mean/std and zero-padded bottom/right to ``input_size`` squared (zero after
  normalisation is the CLIP mean colour).
* *grid*: patch cells ``(col, row)`` of the ViT over the input frame, each ``patch`` input pixels wide;
  only the ``(gh, gw) = (ceil(h'/patch), ceil(w'/patch))`` cells that touch the real image are kept.

Dense features follow MaskCLIP (Zhou et al., ECCV 2022: the last block keeps only each token's value
path); the maps become ordinary SAM prompts (positive/negative points, boxes) in original pixels by
:func:`prompts_from_similarity` and :func:`instance_candidates` (:mod:`textsam.text.grounding_maps`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from textsam.errors import InputError
from textsam.text.grounding_maps import (
    Geometry,
    GroundedPrompts,
    instance_candidates,
    prompts_from_similarity,
    square_crop,
    upsample_to_image,
)

__all__ = [
    "DenseClip",
    "Geometry",
    "GroundedPrompts",
    "crop_scores",
    "instance_candidates",
    "prompts_from_similarity",
    "resize_pos_embed",
    "similarity_map",
    "upsample_to_image",
]


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
        raise InputError(
            f"expected an (H, W, 3) uint8 RGB array, got {got}; use textsam.transforms.load_image"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"the image is empty (shape {image.shape})")


def _check_visual(visual: nn.Module) -> None:
    """Raise :class:`InputError` unless ``visual`` is an open_clip ``VisionTransformer`` we can open up."""
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
    missing = [name for name in needed if getattr(visual, name, None) is None]
    if missing:
        raise InputError(
            f"dense CLIP features need an open_clip ViT image tower (missing {missing}); "
            "use a ViT CLIP such as 'ViT-B-16-quickgelu' (timm/ResNet towers are not supported)"
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise InputError("CLIP towers with an attentional pooler (CoCa) are not supported for grounding")
    for block in visual.transformer.resblocks:
        if not isinstance(block.attn, nn.MultiheadAttention):
            raise InputError("grounding supports open_clip's default ResidualAttentionBlock only")


def resize_pos_embed(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """A ViT's positional embeddings for another patch grid: ``(1 + src_h*src_w, C)`` -> ``(1 + dst_h*dst_w, C)``,
    bicubic on the patch part, the class row kept."""
    if tuple(src) == tuple(dst):
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    grid = patch_pos.reshape(1, src[0], src[1], -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=dst, mode="bicubic", align_corners=False)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(dst[0] * dst[1], -1).to(pos.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


def _value_proj(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """The value projection of a fused ``nn.MultiheadAttention``: ``(..., C) -> (..., C)``."""
    width = attn.embed_dim
    if attn.in_proj_weight is not None:
        weight = attn.in_proj_weight[2 * width :]
    else:
        weight = attn.v_proj_weight
    bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    return F.linear(x, weight, bias)


def _run_block(block: nn.Module, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """An unmodified open_clip block on batch-first tokens ``(B, L, C)``."""
    if batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


def maskclip_last_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last block: the q-k attention is skipped, every token keeps only its own value.

    ``y = x + ls_1(out_proj(V(ln_1(x))))``, then ``y + ls_2(mlp(ln_2(y)))`` (MaskCLIP's
    ``attn2ffn``/``return_qkv`` path keeps the residual and the block's FFN). ``x``: ``(B, L, C)``.
    """
    y = x + block.ls_1(block.attn.out_proj(_value_proj(block.attn, block.ln_1(x))))
    return y + block.ls_2(block.mlp(block.ln_2(y)))


MASK_TOKEN_BUCKET = 8  # DenseClip.mask_embeddings pads its mask tokens to a multiple of this


class DenseClip:
    """Dense (per-patch) CLIP image features in the joint image-text space.

    Wraps an open_clip ``CLIP`` whose ``visual`` is a ``VisionTransformer``; its weights are never
    modified (the positional embedding is interpolated on the fly for ``input_size``).

    Args:
        clip_model: an open_clip ``CLIP`` whose image tower gives the features.
        input_size: side of the square CLIP input for dense features (multiple of the patch size).
    """

    def __init__(self, clip_model: nn.Module, input_size: int = 448) -> None:
        visual = getattr(clip_model, "visual", None)
        if visual is None:
            raise InputError("clip_model has no 'visual' tower; pass an open_clip CLIP model")
        _check_visual(visual)
        patch_h, patch_w = _pair(visual.patch_size)
        native_h, native_w = _pair(visual.image_size)
        if patch_h != patch_w or native_h != native_w:
            raise InputError("grounding needs square patches and a square native CLIP input size")
        if input_size < patch_h or input_size % patch_h:
            raise InputError(
                f"input_size {input_size} must be a positive multiple of the patch size {patch_h}"
            )
        self.model = clip_model
        self.visual = visual
        self.input_size = int(input_size)
        self.patch_size = int(patch_h)
        self.native_size = int(native_h)
        mean, std = _mean_std(visual)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def mean_color(self) -> np.ndarray:
        """The CLIP mean colour as ``(3,)`` uint8 RGB (used to grey out and pad)."""
        return np.round(self.mean.flatten().numpy() * 255.0).clip(0, 255).astype(np.uint8)

    def _to_input(self, image: np.ndarray, size: int) -> tuple[torch.Tensor, Geometry]:
        """``(H, W, 3)`` uint8 -> normalised, padded ``(3, size, size)`` float32 tensor on the CPU."""
        _check_image(image)
        geometry = Geometry.create(image.shape[0], image.shape[1], size, self.patch_size)
        pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
        if (geometry.resized_h, geometry.resized_w) != image.shape[:2]:
            pixels = F.interpolate(
                pixels,
                (geometry.resized_h, geometry.resized_w),
                mode="bicubic",
                align_corners=False,
                antialias=True,
            ).clamp_(0.0, 255.0)
        pixels = (pixels[0] / 255.0 - self.mean) / self.std
        pad = (0, size - geometry.resized_w, 0, size - geometry.resized_h)
        return F.pad(pixels, pad), geometry

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """``(H, W, 3)`` uint8 RGB -> ``((1, 3, S, S)`` tensor on the model's device, :class:`Geometry`).

        Longest side resized (bicubic, antialiased) to ``S = input_size``, CLIP mean/std normalisation,
        zero padding bottom/right.
        """
        pixels, geometry = self._to_input(image, self.input_size)
        return pixels[None].to(self.device, self.dtype), geometry

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> tokens ``(B, 1 + G*G, C)`` after ``ln_pre`` (class token first)."""
        visual = self.visual
        x = visual.conv1(pixels)
        batch, width, grid_h, grid_w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, width).expand(batch, 1, width)
        pos = resize_pos_embed(visual.positional_embedding, tuple(visual.grid_size), (grid_h, grid_w))
        return visual.ln_pre(torch.cat([cls, x], dim=1) + pos.to(x.dtype))

    def _dense_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after ``ln_pre`` ``(B, L, C)`` -> dense last-layer tokens ``(B, L, C)`` (before ln_post): every
        block as usual, then MaskCLIP's last block."""
        blocks = list(self.visual.transformer.resblocks)
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        for block in blocks[:-1]:
            x = _run_block(block, x, batch_first)
        return maskclip_last_block(blocks[-1], x)

    @torch.no_grad()
    def dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Prepared ``(B, 3, S, S)`` -> L2-normalised patch features ``(B, S/p, S/p, D)`` (full grid)."""
        x = self._dense_tokens(self._embed(pixels.to(self.device, self.dtype)))
        feats = self.visual.ln_post(x[:, 1:]) @ self.visual.proj
        grid = pixels.shape[-1] // self.patch_size
        return F.normalize(feats.float(), dim=-1).reshape(pixels.shape[0], grid, grid, -1)

    def patch_features(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """``(H, W, 3)`` uint8 RGB -> (features ``(gh, gw, D)`` float32, unit norm, :class:`Geometry`).

        Only the cells covering the real image are returned (rows/cols of pure padding are dropped).
        """
        pixels, geometry = self.prepare(image)
        feats = self.dense_features(pixels)[0]
        return feats[: geometry.grid_h, : geometry.grid_w].contiguous(), geometry

    def cell_coverage(self, masks: np.ndarray, geometry: Geometry) -> np.ndarray:
        """The fraction of each grid cell a mask covers: ``masks (N, H, W)`` bool, original frame ->
        ``(N, grid_h, grid_w)`` float64 in [0, 1]. A cell spans original pixels ``[j p / scale, (j + 1) p / scale)``
        (the parts of the last cells that are padding do not count); cells wider than 16 pixels are sampled every
        ``cell // 8`` pixels in each direction (at least 64 samples a cell)."""
        masks = np.asarray(masks, dtype=bool)
        p = self.patch_size
        step = max(1, int(min(p / geometry.scale_x, p / geometry.scale_y) // 8))
        sampled = masks[:, step // 2 :: step, step // 2 :: step]
        h, w = sampled.shape[1:]

        def edges(count: int, scale: float, length: int) -> np.ndarray:
            # cell boundaries in sampled pixels: sample i sits at original pixel i * step + step // 2
            pixel = np.minimum(np.arange(count + 1) * p / scale, (length - 1) * step + step // 2 + 1)
            out = np.ceil((pixel - step // 2) / step).astype(np.int64).clip(0, length)
            out[-1] = length
            return out

        rows = edges(geometry.grid_h, geometry.scale_y, h)
        cols = edges(geometry.grid_w, geometry.scale_x, w)
        # reduceat needs starts inside the array; an empty cell (no sample) counts as uncovered
        sums = np.add.reduceat(np.add.reduceat(sampled, np.minimum(rows[:-1], h - 1), axis=1, dtype=np.int64),
                               np.minimum(cols[:-1], w - 1), axis=2)
        area = np.diff(rows)[:, None] * np.diff(cols)[None, :]
        return np.where(area > 0, sums / np.maximum(area, 1), 0.0)

    @torch.no_grad()
    def mask_embeddings(self, image: np.ndarray, masks: np.ndarray, min_cover: float = 0.5) -> torch.Tensor:
        """Unit CLIP embeddings ``(N, D)`` float32 of ``masks (N, H, W)`` bool (original frame) from ONE pass of the
        image tower over the whole ``image (H, W, 3)`` uint8.

        Each mask gets its own class token (the tower's class embedding at the class position), which in every
        block attends only to itself and to the patches the mask covers (at least ``min_cover`` of the cell; a
        mask smaller than that takes its best-covered cells); the patch tokens and the image's class token never
        attend to the mask tokens, so they are what the plain tower computes. The mask token's output, through
        ``ln_post`` and ``proj``, is the mask's embedding (mask class tokens, Ding et al., ICML 2023; the SAM
        paper limits CLIP's output token to the mask's patches the same way). Cost: the tower at
        ``input_size`` plus ``N`` tokens (rounded up to a multiple of :data:`MASK_TOKEN_BUCKET`), whatever ``N``.
        """
        pixels, geometry = self.prepare(image)
        cover = self.cell_coverage(masks, geometry)  # (N, gh, gw)
        n = cover.shape[0]
        if n == 0:
            return torch.zeros(0, self.visual.proj.shape[1])
        flat = cover.reshape(n, -1)
        inside = flat >= min_cover
        best = flat.max(axis=1, keepdims=True)
        inside |= ~inside.any(axis=1, keepdims=True) & (flat >= best) & (best > 0)
        inside[~inside.any(axis=1), :] = True  # an empty mask reads the whole image
        # whole-image tokens up to a multiple of MASK_TOKEN_BUCKET, their outputs dropped: the tower then sees a
        # few sequence lengths, not one per proposal count (in bf16 on a CPU each new length kept native memory:
        # RSS climbed image after image; with the buckets it levels off)
        real = n
        n += -n % MASK_TOKEN_BUCKET
        inside = np.concatenate([inside, np.ones((n - real, inside.shape[1]), dtype=bool)])
        side = self.input_size // self.patch_size
        cells = np.zeros((n, side, side), dtype=bool)
        cells[:, : geometry.grid_h, : geometry.grid_w] = inside.reshape(n, geometry.grid_h, geometry.grid_w)
        g = side * side
        length = 1 + g + n
        blocked = torch.ones(length, length, dtype=torch.bool)
        blocked[: 1 + g, : 1 + g] = False  # the plain tower
        blocked[1 + g :, 1 : 1 + g] = torch.from_numpy(~cells.reshape(n, g))
        blocked[1 + g + torch.arange(n), 1 + g + torch.arange(n)] = False
        attn_mask = torch.zeros(length, length, dtype=self.dtype, device=self.device)
        attn_mask.masked_fill_(blocked.to(self.device), float("-inf"))
        x = self._embed(pixels)
        x = torch.cat([x, x[:, :1].expand(1, n, x.shape[-1])], dim=1)
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        for block in self.visual.transformer.resblocks:
            x = block(x, attn_mask=attn_mask) if batch_first else \
                block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        out = self.visual.ln_post(x[0, 1 + g : 1 + g + real]) @ self.visual.proj
        return F.normalize(out.float(), dim=-1)

    def to_native(self, image: np.ndarray) -> torch.Tensor:
        """``(h, w, 3)`` uint8 -> ``(3, n, n)`` normalised CPU tensor at the CLIP's native size ``n``."""
        return self._to_input(image, self.native_size)[0]


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _mean_std(visual: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The tower's own normalisation (``image_mean/std``, else ``preprocess_cfg``, else OpenAI's)."""
    mean, std = getattr(visual, "image_mean", None), getattr(visual, "image_std", None)
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = mean if mean is not None else cfg.get("mean", OPENAI_MEAN)
    std = std if std is not None else cfg.get("std", OPENAI_STD)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def similarity_map(patch_feats: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine of every patch with each phrase: ``patch_feats (gh, gw, D)`` (normalised here again) and
    ``text_emb (D,)`` or ``(N, D)`` -> ``(N, gh, gw)`` float32 in [-1, 1]."""
    if patch_feats.ndim != 3:
        raise InputError(f"patch_feats must be (gh, gw, D), got {tuple(patch_feats.shape)}")
    if text_emb.shape[-1] != patch_feats.shape[-1]:
        raise InputError(f"text_emb has dim {text_emb.shape[-1]}, the patch features {patch_feats.shape[-1]}")
    feats = F.normalize(patch_feats.float(), dim=-1)
    texts = F.normalize(text_emb.float().reshape(-1, feats.shape[-1]).to(feats.device), dim=-1)
    return torch.einsum("hwd,kd->khw", feats, texts)


def crop_scores(
    dense_clip: DenseClip,
    image: np.ndarray,
    masks: np.ndarray | torch.Tensor,
    text_emb: torch.Tensor,
    *,
    enlarge: float = 1.2,
    grey_outside: bool = True,
) -> torch.Tensor:
    """CLIP image-text cosine of each mask's crop, ``(C,)`` float32 in [-1, 1]; -1 for empty masks.

    Each crop is the mask's bounding box enlarged ``enlarge`` times around its centre and made square
    (original pixels), with pixels outside the mask set to the CLIP mean colour; all crops go through
    the CLIP image tower in one batch at its native resolution.

    Args:
        dense_clip: the :class:`DenseClip` whose tower embeds the crops.
        image: ``(H, W, 3)`` uint8 RGB, original frame.
        masks: ``(C, H, W)`` bool.
        text_emb: ``(D,)`` text embedding (normalised here).
    """
    _check_image(image)
    masks_np = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks_np.ndim != 3 or masks_np.shape[1:] != image.shape[:2]:
        raise InputError(f"masks must be (C, {image.shape[0]}, {image.shape[1]}), got {masks_np.shape}")
    if enlarge < 1.0:
        raise InputError(f"enlarge must be >= 1, got {enlarge}")
    masks_np = masks_np.astype(bool, copy=False)
    scores = torch.full((masks_np.shape[0],), -1.0, dtype=torch.float32)
    keep = [i for i in range(masks_np.shape[0]) if masks_np[i].any()]
    if not keep:
        return scores
    fill = dense_clip.mean_color
    batch = torch.stack(
        [dense_clip.to_native(square_crop(image, masks_np[i], enlarge, fill, grey_outside)) for i in keep]
    )
    with torch.no_grad():
        features = dense_clip.visual(batch.to(dense_clip.device, dense_clip.dtype))
    emb = F.normalize((features[0] if isinstance(features, tuple) else features).float(), dim=-1)
    text = F.normalize(text_emb.float().flatten().to(emb.device), dim=0)
    scores[keep] = (emb @ text).clamp(-1.0, 1.0).cpu()
    return scores
