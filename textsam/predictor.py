"""TextSamPredictor: embed an image once, then prompt it many times.

Frames: ``point_coords`` are (x, y) pixels and ``box`` is x0, y0, x1, y1 pixels of the original image.
Without text the results equal segment-anything's ``SamPredictor`` for the same checkpoint.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image

from . import transforms
from .errors import InputError
from .model import TextSam
from .prompts import PromptBatch, check_mask_input, check_points_and_box

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Prediction(NamedTuple):
    """Masks for one prompt (or a batch of prompts, with a leading ``B`` axis).

    masks: ``(C, H, W)`` bool in the original frame (float logits when ``return_logits=True``).
    scores: ``(C,)`` predicted IoU of each mask.
    low_res_logits: ``(C, 4h, 4w)`` decoder logits (256x256 for SAM), usable as ``mask_input``.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


class TextSamPredictor:
    """Set an image once with :meth:`set_image`, then call :meth:`predict` for each prompt.

    Args:
        model: a :class:`~textsam.model.TextSam` (from :func:`textsam.create_model`).
        image_precision: ``"fp32"`` (exact SAM numbers), or ``"bf16"`` / ``"fp16"`` to run only the
            image encoder under autocast (faster on CPUs with AMX/AVX-512 BF16 and on GPUs).
    """

    def __init__(self, model: TextSam, *, image_precision: Precision = "fp32") -> None:
        if image_precision not in ("fp32", "bf16", "fp16"):
            raise InputError(f"image_precision must be 'fp32', 'bf16' or 'fp16', not {image_precision!r}")
        self.model = model
        self.image_precision = image_precision
        self.reset_image()

    # ----------------------------------------------------------------------------------- image
    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.image: np.ndarray | None = None

    @property
    def is_image_set(self) -> bool:
        return self.features is not None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def set_image(self, image: np.ndarray | Image.Image, image_format: Literal["RGB", "BGR"] = "RGB") -> None:
        """Embed an image: ``(H, W, 3)`` uint8 RGB array or a PIL image of any mode.

        Grayscale, RGBA, 16-bit, palette and EXIF-rotated images are converted to RGB first.
        """
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}")
        rgb = transforms.load_image(image)
        if image_format == "BGR":
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        self.reset_image()
        resized = transforms.resize_longest_side(rgb, self.model.img_size)
        x = torch.from_numpy(np.array(resized, copy=True)).to(self.device).permute(2, 0, 1).contiguous()[None]
        self.original_size = (int(rgb.shape[0]), int(rgb.shape[1]))
        self.input_size = (int(x.shape[-2]), int(x.shape[-1]))
        self.features = self._encode(self.model.preprocess(x.float()))
        self.image = rgb

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        ctx: Any = contextlib.nullcontext()
        if self.image_precision != "fp32":
            ctx = torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.image_precision])
        with ctx:
            features = self.model.image_encoder(x)
        return features.float()

    def get_image_embedding(self) -> torch.Tensor:
        """The current image embedding ``(1, C, h, w)`` (``(1, 256, 64, 64)`` for SAM)."""
        return self._require_image()

    def _require_image(self) -> torch.Tensor:
        if self.features is None:
            raise InputError("no image is set: call predictor.set_image(image) before predicting.")
        return self.features

    # ---------------------------------------------------------------------------------- predict
    @torch.inference_mode()
    def predict(
        self,
        text: str | None = None,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Prediction:
        """Masks for one prompt: any mix of text, clicks, a box and a previous low-res mask.

        Args:
            text: a phrase naming the object (needs a model with text parts).
            point_coords: ``(N, 2)`` (x, y) pixels of the original image.
            point_labels: ``(N,)`` 1 = foreground, 0 = background.
            box: ``(4,)`` x0, y0, x1, y1 pixels.
            mask_input: ``(1, 256, 256)`` low-res logits from a previous call.
            multimask_output: 3 candidate masks (best for a single click) instead of 1.
            return_logits: return float logits instead of boolean masks.
        """
        features = self._require_image()
        assert self.original_size is not None
        h, w = self.original_size
        coords, labels, boxes = check_points_and_box(point_coords, point_labels, box, (h, w))
        batch = PromptBatch.from_original(
            coords[None] if coords is not None else None,
            labels[None] if labels is not None else None,
            boxes,
            check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size, batch=1),
            self.original_size,
            self.model.img_size,
            self.device,
        )
        extra = self._text_tokens(text, batch.size) if text is not None else None
        masks, scores, low = self._decode(features, batch, extra, multimask_output, return_logits)
        return Prediction(masks[0], scores[0], low[0])

    @torch.inference_mode()
    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Prediction:
        """Many prompts on the current image in ONE decoder call.

        Args:
            point_coords: ``(B, N, 2)`` pixels; point_labels ``(B, N)``.
            boxes: ``(B, 4)`` pixels.
            mask_input: ``(B, 1, 256, 256)``.
        Returns:
            a :class:`Prediction` whose arrays have a leading ``B`` axis: masks ``(B, C, H, W)``.
        """
        features = self._require_image()
        assert self.original_size is not None
        coords, labels, box_arr = check_points_and_box(
            point_coords, point_labels, boxes, self.original_size, batched=True
        )
        bsz = next(a.shape[0] for a in (coords, box_arr, mask_input) if a is not None) if (
            coords is not None or box_arr is not None or mask_input is not None
        ) else 1
        batch = PromptBatch.from_original(
            coords,
            labels,
            box_arr,
            check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size, batch=bsz),
            self.original_size,
            self.model.img_size,
            self.device,
        )
        return Prediction(*self._decode(features, batch, None, multimask_output, return_logits))

    def _decode(
        self,
        features: torch.Tensor,
        batch: PromptBatch,
        extra_tokens: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        low_res, iou = self.model.decode(
            features,
            points=batch.points,
            boxes=batch.boxes,
            masks=batch.masks,
            extra_tokens=extra_tokens,
            multimask_output=multimask_output,
        )
        assert self.input_size is not None and self.original_size is not None
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks.cpu().numpy(), iou.float().cpu().numpy(), low_res.float().cpu().numpy()

    def _text_tokens(self, text: str, batch_size: int) -> torch.Tensor:
        raise InputError(
            "this model has no text pathway yet; text prompts need a text head (see the README)."
        )
