"""SAM's mask decoder (official attribute names, ``mask_decoder.*``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts masks and IoU scores from an image embedding and prompt tokens.

    Output tokens: index 0 is the single-mask token, 1..num_multimask_outputs the multimask tokens.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
    ) -> tuple[Tensor, Tensor]:
        """Decode one batch of prompts against one image embedding.

        Args:
            image_embeddings: ``(1, C, h, w)`` (shared by every prompt) or ``(B, C, h, w)``.
            image_pe: ``(1, C, h, w)`` dense positional encoding.
            sparse_prompt_embeddings: ``(B, N, C)`` prompt tokens (N may be 0).
            dense_prompt_embeddings: ``(B, C, h, w)`` mask-prompt embedding (or the no-mask embedding).
            multimask_output: return the 3 multimask outputs instead of the single-mask output.

        Returns:
            ``masks (B, M, 4h, 4w)`` low-resolution logits and ``iou_pred (B, M)``, M = 3 or 1.
        """
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, sel)

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        token_slice: slice = slice(None),
    ) -> tuple[Tensor, Tensor]:
        """Masks ``(B, M, 4h, 4w)`` and IoU ``(B, M)`` for the mask tokens selected by ``token_slice``."""
        hs, src = self._attend(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, token_slice]
        return self._masks(hs, src, token_slice), iou_pred

    def predict_confident(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        min_iou: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Like :meth:`forward`, but masks only for the prompts that can pass an IoU filter.

        The transformer and the IoU head run for every prompt; the upscaling and the mask head (about half
        of the decoder's work) only for the ``K`` prompts whose best predicted IoU is at least ``min_iou``.
        Their masks equal :meth:`forward`'s. Returns ``iou_pred (B, M)``, ``masks (K, M, 4h, 4w)`` and the
        prompts' indices ``rows (K,)``.
        """
        sel = slice(1, None) if multimask_output else slice(0, 1)
        hs, src = self._attend(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, sel]
        rows = torch.nonzero(iou_pred.amax(dim=1) >= min_iou).flatten()
        return iou_pred, self._masks(hs[rows], src[rows], sel), rows

    def _attend(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                dense_prompt_embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """The two-way transformer: output tokens ``(B, T, C)`` and image tokens as a map ``(B, C, h, w)``."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)), dim=1)

        src = image_embeddings + dense_prompt_embeddings
        if src.shape[0] == 1 and b > 1:
            src = src.expand(b, -1, -1, -1)
        shared = _all_rows_equal(dense_prompt_embeddings) and image_embeddings.shape[0] == 1
        if shared:
            src = src[:1]  # every prompt sees the same image: project it once (broadcast inside)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        # (B, h*w, C) is channels-last memory: keep it so the upscaling convs and norms run copy-free.
        return hs, src.reshape(src.shape[0], h, w, c).permute(0, 3, 1, 2)

    def _masks(self, hs: Tensor, src: Tensor, token_slice: slice) -> Tensor:
        """Low-res mask logits ``(B, M, 4h, 4w)`` from the transformer's outputs (see :meth:`_attend`)."""
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        indices = range(self.num_mask_tokens)[token_slice]
        if hs.shape[0] == 0:
            h, w = src.shape[-2:]
            return hs.new_zeros(0, len(indices), 4 * h, 4 * w)
        upscaled = self.output_upscaling(src)  # (B, C/8, 4h, 4w), channels-last in memory
        hyper_in = torch.stack([self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in indices], dim=1)
        _, cu, hu, wu = upscaled.shape
        pixels = upscaled.permute(0, 2, 3, 1).reshape(upscaled.shape[0], hu * wu, cu)
        return (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(hs.shape[0], -1, hu, wu)


def _all_rows_equal(x: Tensor) -> bool:
    """True when a batch tensor is an expanded view of one row (stride 0 on dim 0) or has batch 1."""
    return x.shape[0] == 1 or x.stride(0) == 0
