"""ONNX export of the prompt encoder + mask decoder, with SAM's official ONNX interface (plus text).

The graph takes the image embedding from ``TextSamPredictor.get_image_embedding()`` (the image encoder
is not part of it) and the prompts, and returns upscaled mask logits in the original image frame:

| input | shape | meaning |
|---|---|---|
| ``image_embeddings`` | ``(1, C, h, w)`` float32 | image-encoder output |
| ``point_coords`` | ``(1, N, 2)`` float32 | x, y in the resized ``img_size`` frame (``ResizeLongestSide``) |
| ``point_labels`` | ``(1, N)`` float32 | -1 padding, 0 negative, 1 positive, 2 box top-left, 3 box bottom-right |
| ``mask_input`` | ``(1, 1, 4h, 4w)`` float32 | previous low-res logits, or zeros |
| ``has_mask_input`` | ``(1,)`` float32 | 1 to use ``mask_input`` |
| ``orig_im_size`` | ``(2,)`` float32 | (H, W) of the original image |
| ``text_embedding`` (``with_text``) | ``(1, D)`` float32 | ``model.text_encoder.encode([phrase])`` |

Outputs ``masks (1, M, H, W)`` logits, ``iou_predictions (1, M)``, ``low_res_masks (1, M, 4h, 4w)``;
M = 4 (token 0 is the single-mask output) or 1 with ``return_single_mask`` (SAM's rule: token 0 when
there are more than 2 point tokens, else the best of tokens 1-3). As in SAM, callers append the (0, 0)
point with label -1 when no box is given. Text tokens follow the point tokens, as in
``PromptEncoder(extra_tokens=...)``.

What the graph does not hold: a text head's locator. It chooses among candidate objects that a batched
decoder pass over a grid of clicks makes, then NMS, which a static graph cannot express; callers pass its
click (``predictor.predict(text=...).info["prompts"]["located"]``, original pixels, mapped to the resized
frame) as an ordinary positive point. :func:`export_onnx` says so when it exports such a head.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..model import TextSam

logger = logging.getLogger(__name__)

INPUT_NAMES = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
OUTPUT_NAMES = ("masks", "iou_predictions", "low_res_masks")


class OnnxPromptDecoder(nn.Module):
    """Prompt encoder + mask decoder + postprocessing without data-dependent control flow."""

    def __init__(self, model: TextSam, *, return_single_mask: bool = False, with_text: bool = False) -> None:
        super().__init__()
        if with_text and model.text_projector is None:
            raise InputError(f"{model.config.name if model.config else 'this model'} has no text head to export; "
                             "drop --text or load a model with a text head (e.g. shapes_tiny).")
        self.model = model
        self.return_single_mask = return_single_mask
        self.with_text = with_text

    def _embed_points(self, coords: Tensor, labels: Tensor) -> Tensor:
        pe = self.model.prompt_encoder
        coords = (coords + 0.5) / self.model.img_size
        emb = pe.pe_layer._pe_encoding(coords)
        labels = labels.unsqueeze(-1)
        emb = emb * (labels != -1) + pe.not_a_point_embed.weight * (labels == -1)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (labels == i)
        return emb

    def _postprocess(self, masks: Tensor, orig_im_size: Tensor) -> Tensor:
        s = self.model.img_size
        masks = F.interpolate(masks, size=(s, s), mode="bilinear", align_corners=False)
        scale = s / torch.max(orig_im_size)
        prepadded = torch.floor(orig_im_size * scale + 0.5).to(torch.int64)
        masks = masks[..., : prepadded[0], : prepadded[1]]
        size = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
        *text_inputs: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``text_inputs``: ``(text_embedding,)`` when exported with text (see the module docstring)."""
        pe = self.model.prompt_encoder
        sparse = self._embed_points(point_coords, point_labels)
        if self.with_text:
            (text_embedding,) = text_inputs
            tokens = self.model.text_projector(text_embedding)
            sparse = torch.cat([sparse, tokens.to(sparse.dtype)], dim=1)
        dense = pe.mask_downscaling(mask_input) * has_mask_input
        dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        low_res, scores = self.model.mask_decoder.predict_masks(
            image_embeddings, pe.get_dense_pe(), sparse, dense
        )
        if self.return_single_mask:
            num_points = point_labels.shape[1]
            bias = torch.zeros_like(scores)
            bias[:, 0] = 1000.0 * (num_points - 2.5)
            best = torch.argmax(scores + bias, dim=1)
            low_res = low_res[torch.arange(low_res.shape[0]), best].unsqueeze(1)
            scores = scores[torch.arange(scores.shape[0]), best].unsqueeze(1)
        return self._postprocess(low_res, orig_im_size), scores, low_res


def example_inputs(model: TextSam, num_points: int = 3, with_text: bool = False) -> tuple[Tensor, ...]:
    """Random inputs of the exported shapes (for tracing and tests)."""
    pe = model.prompt_encoder
    c = pe.embed_dim
    h, w = pe.image_embedding_size
    s = model.img_size
    inputs = [
        torch.randn(1, c, h, w),
        torch.randint(0, s, (1, num_points, 2)).float(),
        torch.randint(0, 4, (1, num_points)).float(),
        torch.randn(1, 1, 4 * h, 4 * w),
        torch.tensor([1.0]),
        torch.tensor([float(s) * 0.75, float(s)]),
    ]
    if with_text:
        inputs.append(torch.randn(1, model.text_projector.clip_dim))
    return tuple(inputs)


def input_names(model: TextSam, with_text: bool) -> list[str]:
    """The graph's input names, in order (see the module docstring)."""
    return list(INPUT_NAMES) + (["text_embedding"] if with_text else [])


def export_onnx(
    model: TextSam,
    out: str | Path,
    *,
    return_single_mask: bool = False,
    with_text: bool = False,
    opset: int = 17,
) -> Path:
    """Write the prompt-encoder + decoder graph of ``model`` to ``out`` (see the module docstring)."""
    out = check_export(out, opset)
    wrapper = OnnxPromptDecoder(model.float().eval().cpu(), return_single_mask=return_single_mask,
                                with_text=with_text)
    tmp = _writable_tmp(out)
    names = input_names(model, with_text)
    if with_text and model.text_locator is not None:
        logger.warning("not exported: the text head's locator (it chooses among candidate objects from a batched "
                       "decoder pass, which a static graph cannot hold); pass its click, "
                       "predict(text=...).info['prompts']['located'], as a positive point")
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    try:
        _export(wrapper, model, tmp, names, dynamic, with_text, opset)
        os.replace(tmp, out)
    except OSError as err:
        raise InputError(f"cannot write {out}: {err.strerror or err}. Choose another -o path.") from None
    finally:
        tmp.unlink(missing_ok=True)  # a failed or interrupted export leaves nothing behind
    logger.info("wrote %s", out)
    return out


def check_export(out: str | Path, opset: int = 17) -> Path:
    """Check what can be checked before a model is built: the onnx package, the opset, the output path
    (not a folder, its parent not a file). Returns ``out`` as a Path; :class:`InputError` otherwise."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError as err:
        raise InputError("ONNX export needs the onnx package: pip install onnx") from err
    if opset < 11:
        raise InputError(f"opset {opset} is too old; use 11 or newer (default 17).")
    newest = _max_opset()
    if opset > newest:
        raise InputError(f"opset {opset} is newer than this torch can export (up to {newest}); use 11 to {newest} "
                         "(default 17).")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out} is a folder: give the path of the .onnx file to write, e.g. {out / 'decoder.onnx'}")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"cannot write {out}: {parent} is a file, not a folder. Choose another -o path.")
    return out


def _max_opset() -> int:
    """The newest opset torch's TorchScript exporter (the one used here) writes."""
    try:
        from torch.onnx import _constants

        return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):  # a torch that moved its constants: let torch itself decide
        return 10**6


def _writable_tmp(out: Path) -> Path:
    """The temporary file the graph is written to before it is renamed to ``out``, created now (empty, with
    the usual permissions) so that a folder, a missing parent or a read-only place is reported at once."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb"):
            pass
    except OSError as err:
        raise InputError(f"cannot write {out}: {err.strerror or err}. Choose another -o path "
                         "(a folder you can write to).") from None
    return tmp


def _export(wrapper: nn.Module, model: TextSam, tmp: Path, names: list[str], dynamic: dict, with_text: bool,
            opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks become trace-time constants, which is intended here: N is the only dynamic axis and
        # both attention paths are valid for any N. The legacy exporter is chosen on purpose (SAM's own).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            example_inputs(model, with_text=with_text),
            str(tmp),
            input_names=names,
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
