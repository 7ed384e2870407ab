"""TextSam: SAM's image encoder, prompt encoder and mask decoder, plus optional text parts.

State-dict keys of the SAM parts are the official ones (``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``); pixel mean/std are non-persistent buffers as in SAM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .modeling.mask_decoder import MaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .precision import reduced_copy

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class TextSam(nn.Module):
    """SAM with a sparse-token slot for text.

    Args:
        image_encoder: maps a normalised, padded image ``(B, 3, S, S)`` to ``(B, C, S/16, S/16)``.
        prompt_encoder: points/boxes/masks -> tokens.
        mask_decoder: tokens + image embedding -> masks and IoU scores.
        config: the variant this model was built from (kept for metadata and checks).
        text_encoder: optional ``TextEncoder`` (CLIP text tower) for phrases: the one the text head reads.
        text_projector: optional ``TextProjector`` mapping CLIP embeddings to prompt tokens.
        text_locator: optional ``RegionLocator`` turning a phrase into a click (part of the same text head).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        config: ModelConfig | None = None,
        text_encoder: nn.Module | None = None,
        text_projector: nn.Module | None = None,
        text_locator: nn.Module | None = None,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.config = config
        self.text_encoder = text_encoder
        self.text_projector = text_projector
        self.text_locator = text_locator
        # the CLIP the training-free engine (and dense grounding) scores with, when it is not ``text_encoder``:
        # a text head trained with a fine-tuned text tower keeps the contrastive CLIP here (see scoring_encoder)
        self.engine_encoder: nn.Module | None = None
        self.default_text_options: dict = {}  # a bundled model's own TextOptions defaults (from its file)
        self.pretrained = True  # whether published weights were asked for (CLIP follows this when lazily loaded)
        self._reduced_encoders: dict = {}  # image_encoder_in's int8 copy, outside the state dict
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def scoring_encoder(self) -> nn.Module | None:
        """The CLIP that scores image regions against phrases (the engine's crops and mask tokens, dense
        grounding): ``engine_encoder`` when the model has one, else ``text_encoder``. They differ when a text
        head was trained with a fine-tuned text tower: the fine-tuned tower no longer matches CLIP's image tower,
        so the engine keeps the CLIP whose two towers were trained together."""
        return self.engine_encoder if self.engine_encoder is not None else self.text_encoder

    def image_encoder_in(self, precision: str) -> nn.Module:
        """The image encoder to run in ``precision``: ``image_encoder`` itself for fp32, bf16 and fp16 (the
        predictor runs it under autocast); for ``int8`` a copy with int8 linear layers (:mod:`textsam.quantize`,
        a CPU module), made on first use and again after the encoder's weights change
        (:func:`textsam.precision.reduced_copy`)."""
        if precision != "int8":
            return self.image_encoder
        return reduced_copy(self._reduced_encoders, self.image_encoder, "int8")

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024 for SAM)."""
        return int(self.image_encoder.img_size)

    def sam_state_dict(self) -> dict[str, Tensor]:
        """The SAM part of the state dict, with the official key names."""
        prefixes = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def preprocess(self, x: Tensor) -> Tensor:
        """Resized image ``(B, 3, h, w)`` on the 0-255 scale -> normalised, padded ``(B, 3, S, S)``."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self, masks: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Tensor:
        """Low-res logits ``(B, C, 4h, 4w)`` -> logits ``(B, C, H, W)`` in the original frame.

        Upsamples to the padded input, crops the padding, then resizes to the original size
        (bilinear, as SAM does).
        """
        low = masks.shape[-1]
        if self.img_size % low == 0 and masks.shape[-2] == low:
            # Upsample only the low-res rows/columns the crop needs (+2 so no kept pixel sees the edge
            # clamp): the same values as upsampling the whole canvas and cropping, with less work.
            scale = self.img_size // low
            rows = min(low, (input_size[0] - 1) // scale + 2)
            cols = min(low, (input_size[1] - 1) // scale + 2)
            masks = F.interpolate(
                masks[..., :rows, :cols], scale_factor=scale, mode="bilinear", align_corners=False
            )
        else:
            masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)

    def decode(
        self,
        image_embeddings: Tensor,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        extra_tokens: Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """One mask-decoder call for a batch of prompts on one image (or one image per prompt).

        Args:
            image_embeddings: ``(1, C, h, w)`` or ``(B, C, h, w)``.
            points: ``(B, N, 2)`` coords in the input frame and ``(B, N)`` labels.
            boxes: ``(B, 4)`` in the input frame.
            masks: ``(B, 1, 4h, 4w)`` low-res logits from a previous call.
            extra_tokens: ``(B, K, C)`` tokens from text or grounding, appended to the sparse prompts.
        Returns:
            low-res logits ``(B, M, 4h, 4w)`` and predicted IoU ``(B, M)``.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks, extra_tokens=extra_tokens)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def decode_confident(
        self, image_embeddings: Tensor, points: tuple[Tensor, Tensor], min_iou: float, multimask_output: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`decode` for many clicks of which only the confident ones are wanted (candidate generation):
        IoU ``(B, M)`` for every prompt, low-res logits ``(K, M, 4h, 4w)`` only for the ``K`` prompts whose
        best IoU is at least ``min_iou``, and their indices ``(K,)`` (see ``MaskDecoder.predict_confident``)."""
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=None)
        return self.mask_decoder.predict_confident(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense,
                                                   multimask_output, min_iou)
