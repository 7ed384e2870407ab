"""``textsam export --web DIR``: a self-contained static folder that segments by text and clicks in a browser.

The folder holds ONNX graphs, the tokenizer's merges, ``manifest.json`` (every constant the page's script
needs), the page (``index.html``, ``textsam.js``) and onnxruntime-web (:mod:`textsam.export.web_runtime`).
Nothing in it reaches the network; any static file server serves it (``textsam app --static DIR``).

Graphs (float32; ``B`` prompts, ``N`` points, ``S`` = ``img_size``, ``L`` = the low-res mask side, ``4h``):

| file | inputs | outputs |
|---|---|---|
| ``encoder.onnx`` | ``image (1, 3, S, S)``: resized, normalised, zero-padded | ``embedding (1, C, h, w)`` |
| ``decoder.onnx`` | ``image_embeddings``, ``point_coords (B, N, 2)`` input frame, ``point_labels (B, N)`` | ``low_res_masks (B, 4, L, L)``, ``iou_predictions (B, 4)`` |
| ``decoder_text.onnx`` | the same and ``text_embedding (B, D)`` (a text head's tokens follow the points) | the same |
| ``upsample.onnx`` | ``low_res_masks (B, 1, L, L)``, ``orig_im_size (2,)`` (H, W) | ``masks (B, 1, H, W)`` logits, original frame |
| ``locator.onnx`` | ``image_embeddings``, ``masks (1, M, L, L)`` 0/1, ``rgb (1, 3, S, S)`` in [0, 1], ``text_embedding (1, D)``, ``words (1, T, W)``, ``word_mask (1, T)`` | ``scores (1, M)``, and ``presence (1, M)`` logits for a locator with a presence readout |
| ``clip_text.onnx`` | ``tokens (B, T)`` int64 | ``embedding (B, D)`` unit, ``words (B, T, W)`` |
| ``clip_image.onnx`` | ``image (B, 3, R, R)`` open_clip-normalised | ``embedding (B, D)`` unit |
| ``clip_text_head.onnx`` | as ``clip_text.onnx``: a text head's own fine-tuned tower (only for such a head) | the same |

``clip_text`` and ``clip_image`` are the CLIP that scores crops (``model.scoring_encoder``); a head trained with
a fine-tuned text tower reads its phrases through ``clip_text_head``. The text graphs take any ``T`` up to the
tokenizer's context length; for a causal tower (``manifest.json``'s ``text.any_length``) the page runs its
sentences' longest instead of every position (a new phrase in a mobile_sam page: 902 -> 211 ms).

Point labels follow SAM's ONNX convention (-1 padding, 0 negative, 1 positive, 2/3 box corners; the caller
appends a (0, 0, -1) point when there is no box). What the graphs do not hold, because it is data-dependent
control flow, the page's script does in the same order as :class:`~textsam.predictor.TextSamPredictor`:
the locator's click seeds (k-means of the embedding, regions, deepest points), the confidence filter and mask
NMS over the candidates, the deepest point of the chosen one, PIL's resampling for the model input and the
CLIP crops, the CLIP tokenizer, the phrase templates, the spatial-word parser, and the presence answer.

What a folder holds depends on the model's text path (:func:`text_mode`): with a text head that has a
locator (the bundled ``shapes_tiny``), every graph above; without a head (the published models, or
``create_model(..., text_head=False)``), no ``decoder_text`` and ``locator``: the page runs the training-free
engine (proposals from the embedding's regions, CLIP crops, spatial words; the plain crop view only, see
:func:`page_options`). A model whose text path the page cannot follow (dense CLIP grounding) gets a page for
clicks and a box, and ``manifest.json`` says why.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..model import TextSam
from ..text.options import TextOptions
from .onnx import OnnxPromptDecoder, check_export

logger = logging.getLogger(__name__)

__all__ = ["export_web", "check_web_folder", "text_mode", "page_options", "PAGE_FILES", "WEB_FORMAT"]

WEB_FORMAT = 1  # manifest.json's "format": the page refuses a folder of another format
PAGE_DIR = Path(__file__).with_name("web_page")
PAGE_FILES = ("index.html", "textsam.js")
TOKENIZER_FILE = "bpe_simple_vocab_16e6.txt.gz"
WORKER_MIN_IMG_SIZE = 512  # models with inputs this large run in onnxruntime-web's proxy worker
LOCATOR_OPSET = 20  # the silhouettes' affine_grid needs ONNX AffineGrid (opset 20)


class _Encoder(nn.Module):
    def __init__(self, model: TextSam) -> None:
        super().__init__()
        self.encoder = model.image_encoder

    def forward(self, image: Tensor) -> Tensor:
        return self.encoder(image)


class _Decoder(OnnxPromptDecoder):
    """Prompt encoder + mask decoder for a batch of point prompts (and text embeddings) on one image: all four
    mask tokens at low resolution; the page picks the mask (as the predictor does) and upsamples it."""

    def forward(self, image_embeddings: Tensor, point_coords: Tensor, point_labels: Tensor,  # type: ignore[override]
                *text_inputs: Tensor) -> tuple[Tensor, Tensor]:
        pe = self.model.prompt_encoder
        sparse = self._embed_points(point_coords, point_labels)
        if self.with_text:
            (text_embedding,) = text_inputs
            sparse = torch.cat([sparse, self.model.text_projector(text_embedding).to(sparse.dtype)], dim=1)
        h, w = pe.image_embedding_size
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(sparse.shape[0], -1, h, w)
        return self.model.mask_decoder.predict_masks(image_embeddings, pe.get_dense_pe(), sparse, dense)


class _Upsample(OnnxPromptDecoder):
    def forward(self, low_res_masks: Tensor, orig_im_size: Tensor) -> Tensor:  # type: ignore[override]
        return self._postprocess(low_res_masks, orig_im_size)


class _Locator(nn.Module):
    def __init__(self, model: TextSam) -> None:
        super().__init__()
        self.locator = model.text_locator
        self.size = model.prompt_encoder.mask_input_size[0]

    def forward(self, image_embeddings: Tensor, masks: Tensor, rgb: Tensor, text_embedding: Tensor, words: Tensor,
                word_mask: Tensor) -> Tensor:
        from ..text.locator import region_colours

        colours = None
        if self.locator.appearance_kind == "colour":
            low = F.adaptive_avg_pool2d(rgb, self.size)[0]  # lowres_rgb's pooling of the padded input
            colours = region_colours(low, masks[0] > 0.5)[None]
        word_inputs = (words, word_mask) if self.locator.word_dim else (None, None)
        scores, presence = self.locator.scores_and_presence(image_embeddings, masks, None, text_embedding,
                                                            *word_inputs, colours=colours)
        return scores if presence is None else (scores, presence)


class _ClipText(nn.Module):
    def __init__(self, encoder) -> None:  # noqa: ANN001 - a TextEncoder
        super().__init__()
        self.encoder = encoder

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        pooled, words, _ = self.encoder.embed_tokens(tokens, with_words=True, trim=False)
        return pooled, words


class _ClipImage(nn.Module):
    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, image: Tensor) -> Tensor:
        return F.normalize(self.clip.encode_image(image), dim=-1)


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: Sequence[str], outputs: Sequence[str],
            dynamic: dict, opset: int) -> None:
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # nn.MultiheadAttention's fused kernel has no ONNX form
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(module.eval(), args, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False)
    torch.backends.mha.set_fastpath_enabled(fastpath)


def _clip_recipe(clip: nn.Module) -> dict:
    """open_clip's evaluation preprocessing of ``clip``'s image tower, as the page reproduces it (a square crop
    resized to ``size`` with PIL's ``interpolation``, then normalised)."""
    from torchvision import transforms as T

    from ..text.scoring import clip_preprocess

    size, mean, std, interpolation = None, None, None, None
    for t in clip_preprocess(clip).transforms:
        if isinstance(t, T.Resize):
            size, interpolation = t.size, t.interpolation.value
        elif isinstance(t, T.Normalize):
            mean, std = [float(v) for v in t.mean], [float(v) for v in t.std]
    size = size if isinstance(size, int) else (size[0] if size else None)
    if size is None or mean is None or interpolation not in ("bilinear", "bicubic"):
        raise InputError("the page cannot reproduce this CLIP's image preprocessing (it needs a Resize with PIL "
                         "bilinear or bicubic and a Normalize); export a model with another CLIP")
    return {"size": int(size), "mean": mean, "std": std, "interpolation": interpolation}


def _manifest(model: TextSam, name: str, graphs: dict[str, str], options: TextOptions, mode: str | None) -> dict:
    """Every constant the page's script needs (see ``textsam.js``)."""
    from ..text import templates as tpl

    pe = model.prompt_encoder
    out: dict = {
        "format": WEB_FORMAT,
        "model": name,
        "img_size": model.img_size,
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
        "pixel_std": [float(v) for v in model.pixel_std.flatten()],
        "embedding_size": list(pe.image_embedding_size),
        "embedding_channels": pe.embed_dim,
        # the 1024-px encoders take seconds in WebAssembly: the page then runs onnxruntime in its proxy worker
        "worker": model.img_size >= WORKER_MIN_IMG_SIZE,
        "low_res_size": list(pe.mask_input_size),
        "mask_threshold": float(model.mask_threshold),
        "graphs": graphs,
        "text": None,
    }
    encoder = model.scoring_encoder
    if mode is not None:
        lo, eo, po = options.locator, options.engine, options.engine.proposals
        templates = options.scoring.templates
        out["text"] = {
            "mode": mode,
            "tokenizer": TOKENIZER_FILE,
            "context_length": encoder.context_length,
            # the text graphs take token rows of any length up to context_length: the page runs its sentences'
            # longest, not all context_length positions (the same embeddings: the tower is causal)
            "any_length": encoder.causal,
            "clip_dim": encoder.embed_dim,
            "logit_scale": float(encoder.clip.logit_scale.detach().exp()),
            "templates": list(templates) if templates is not None else list(tpl.DEFAULT_TEMPLATES),
            "clip_image": _clip_recipe(encoder.clip),
            "engine": {"enlarge": eo.enlarge, "iou_weight": eo.iou_weight, "presence_bias": eo.presence_bias,
                       "presence_gain": eo.presence_gain, "presence_threshold": eo.presence_threshold,
                       "views": list(eo.views)},
        }
        if mode == "head":
            out["text"]["locator"] = {"clusters": lo.clusters, "min_region_tokens": lo.min_region_tokens,
                                      "max_seeds": lo.max_seeds, "min_iou": lo.min_iou, "nms_iou": lo.nms_iou,
                                      "max_candidates": lo.max_candidates,
                                      "presence": getattr(model.text_locator, "presence", None) is not None}
        else:
            out["text"]["proposals"] = {"seeds": eo.seeds, "clusters": eo.clusters,
                                        "min_region_tokens": eo.min_region_tokens, "max_seeds": eo.max_seeds,
                                        "points_per_side": po.points_per_side, "points_per_batch": po.points_per_batch,
                                        "pred_iou_thresh": po.pred_iou_thresh,
                                        "stability_score_thresh": po.stability_score_thresh,
                                        "stability_score_offset": po.stability_score_offset,
                                        "box_nms_thresh": po.box_nms_thresh}
            out["text"]["max_proposals"] = eo.max_proposals
    return out


def page_options(options: TextOptions) -> TextOptions:
    """The text options the page follows for ``options``: the same, except that its engine crops every proposal,
    in fp32, with the plain crop view alone (``shortlist=0``, ``precision="fp32"``, ``views=("crop",)``): the page
    has no mask tokens (they need a CLIP graph with an attention-mask input), its graphs are fp32, and its script
    makes the crop view only (a model whose engine also uses the masked or blurred view, as the bundled
    shapes_tiny's does, is scored in the page by its crop view). ``TextSamPredictor(model,
    text_options=page_options(...))`` gives the page's masks."""
    engine = dataclasses.replace(options.engine, shortlist=0, precision="fp32", views=("crop",))
    return dataclasses.replace(options, engine=engine)


def text_mode(model: TextSam, options: TextOptions) -> tuple[str | None, str | None]:
    """How the page answers text for this model: ``("head", None)`` (a text head with a locator: its tokens and
    click, the engine's presence), ``("engine", None)`` (no head: the training-free engine chooses), or
    ``(None, why)`` when it cannot."""
    if options.grounding.enabled:
        return None, "it ranks masks by dense CLIP grounding, which the page does not compute"
    if not options.engine.enabled:
        return None, "its text engine is off"
    if model.scoring_encoder is None or not hasattr(model.scoring_encoder.clip, "visual"):
        return None, "it has no CLIP image tower"
    if model.text_projector is None:
        if options.engine.proposals.point_grids is not None:
            return None, "its proposals use custom point grids"
        return "engine", None
    if model.text_locator is None or not options.locator.enabled or options.locator.seeds != "embedding":
        return None, "its text head has no locator with embedding seeds"
    return "head", None


def check_web_folder(out_dir: str | Path, opset: int = 17) -> Path:
    """Check what can be checked before a model is built: the onnx package, the opset, and that ``out_dir`` is
    new, empty or an earlier export (never a folder of the user's own files). Returns it as a Path."""
    out_dir = Path(out_dir)
    check_export(out_dir / "manifest.json", opset)
    if out_dir.exists() and not (out_dir / "manifest.json").is_file():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise InputError(f"{out_dir} exists and is not an exported page: choose a new or empty folder")
    return out_dir


def export_web(model: TextSam, out_dir: str | Path, *, name: str | None = None, runtime: str | Path | None = None,
               opset: int = 17, quantize: bool = False, options: TextOptions | None = None,
               worker: bool | None = None) -> Path:
    """Write the static page folder for ``model`` into ``out_dir`` (see the module docstring); returns it.

    ``runtime``: the onnxruntime-web tarball to vendor (default: the pinned one, downloaded once). ``options``: the
    text settings the page follows (default: the model's own; ``TextOptions().fast()`` for a lighter engine), through
    :func:`page_options`. ``quantize``:
    the image encoder's and the CLIP towers' weights as 8-bit integers (onnxruntime's dynamic quantisation; a
    smaller folder, slightly different masks). The folder is written under a temporary name and renamed, so a failed export
    leaves nothing behind; an existing folder is replaced only when it is an earlier export (its
    ``manifest.json`` says so)."""
    from ..text.prompter import default_options
    from .web_runtime import vendor_runtime

    out_dir = check_web_folder(out_dir, opset)
    name = name or (model.config.name if model.config else "model")
    model = model.float().eval().cpu()
    if model.text_encoder is None:  # the published models load CLIP on first use
        from ..factory import attach_text

        attach_text(model, pretrained=getattr(model, "pretrained", True))
        model.text_encoder.float().eval().cpu()
    options = page_options(options or default_options(model))
    mode, why_not = text_mode(model, options)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        vendor_runtime(tmp, runtime)
        graphs = _export_graphs(model, tmp, mode=mode, opset=opset, quantize=quantize)
        if why_not is not None:
            logger.warning("the page for %s takes clicks and a box only: %s", name, why_not)
        else:
            import open_clip.tokenizer

            shutil.copyfile(open_clip.tokenizer.default_bpe(), tmp / TOKENIZER_FILE)
        manifest = _manifest(model, name, graphs, options, mode)
        if worker is not None:
            manifest["worker"] = worker
        manifest["text_unavailable"] = why_not
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        for file in PAGE_FILES:
            shutil.copyfile(PAGE_DIR / file, tmp / file)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except OSError as err:
        raise InputError(f"cannot write {out_dir}: {err.strerror or err}. Choose another folder.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


_POINT_AXES = {"point_coords": {0: "B", 1: "N"}, "point_labels": {0: "B", 1: "N"}}  # dynamic axes of the decoders
_DECODER_OUTPUTS = ["low_res_masks", "iou_predictions"]


def _example_prompts(model: TextSam) -> tuple[Tensor, Tensor, Tensor]:
    """Tracing inputs: an image embedding ``(1, C, h, w)`` and two prompts of three points (input frame)."""
    pe = model.prompt_encoder
    emb = torch.randn(1, pe.embed_dim, *pe.image_embedding_size)
    return emb, torch.rand(2, 3, 2) * model.img_size, torch.tensor([[1.0, 0.0, -1.0]] * 2)


def _export_graphs(model: TextSam, out: Path, *, mode: str | None, opset: int, quantize: bool) -> dict[str, str]:
    """Trace every graph into ``out``; returns graph name -> file name."""
    s, low = model.img_size, model.prompt_encoder.mask_input_size[0]
    emb, coords, labels = _example_prompts(model)
    graphs = {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "upsample": "upsample.onnx"}
    _export(_Encoder(model), (torch.randn(1, 3, s, s),), out / "encoder.onnx", ["image"], ["embedding"], {}, opset)
    _export(_Decoder(model), (emb, coords, labels), out / "decoder.onnx",
            ["image_embeddings", "point_coords", "point_labels"], _DECODER_OUTPUTS, _POINT_AXES, opset)
    _export(_Upsample(model), (torch.randn(2, 1, low, low), torch.tensor([96.0, 128.0])), out / "upsample.onnx",
            ["low_res_masks", "orig_im_size"], ["masks"], {"low_res_masks": {0: "B"}, "masks": {0: "B", 2: "H", 3: "W"}},
            opset)
    if mode is not None:  # the CLIP that scores the crops: the engine's own when the model has one
        _export_clip(model.scoring_encoder, out, opset)
        graphs.update(clip_text="clip_text.onnx", clip_image="clip_image.onnx")
    if mode == "head":
        _export_head(model, out, opset)
        graphs.update(decoder_text="decoder_text.onnx", locator="locator.onnx")
        if model.scoring_encoder is not model.text_encoder:  # the head reads its own (fine-tuned) text tower
            _export_clip_text(model.text_encoder, out / "clip_text_head.onnx", opset)
            graphs.update(clip_text_head="clip_text_head.onnx")
    if quantize:  # the big towers; the decoder and the head stay float
        for name in ("encoder", "clip_text", "clip_image", "clip_text_head"):
            if name in graphs:
                graphs[name] = _quantize(out / graphs[name])
    return graphs


def _quantize(path: Path) -> str:
    """``path`` with its MatMul/Gemm weights as 8-bit integers (onnxruntime's dynamic quantisation), written as
    ``<name>.int8.onnx`` in place of the float graph; returns the new file name."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_name(f"{path.stem}.int8.onnx")
    quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm"])
    path.unlink()
    return quantized.name


def _export_head(model: TextSam, out: Path, opset: int) -> None:
    """The text head's graphs: ``decoder_text.onnx`` (its tokens after the points) and ``locator.onnx``."""
    s, low = model.img_size, model.prompt_encoder.mask_input_size[0]
    emb, coords, labels = _example_prompts(model)
    encoder = model.text_encoder
    d = encoder.embed_dim
    _export(_Decoder(model, with_text=True), (emb, coords, labels, torch.randn(2, d)), out / "decoder_text.onnx",
            ["image_embeddings", "point_coords", "point_labels", "text_embedding"], _DECODER_OUTPUTS,
            {**_POINT_AXES, "text_embedding": {0: "B"}}, opset)
    word_dim = int(encoder.clip.ln_final.normalized_shape[0])
    presence = getattr(model.text_locator, "presence", None) is not None  # its own presence readout
    masks = (torch.rand(1, 3, low, low) > 0.5).float()
    _export(_Locator(model), (emb, masks, torch.rand(1, 3, s, s), torch.randn(1, d), torch.randn(1, 5, word_dim),
                              torch.ones(1, 5, dtype=torch.bool)),
            out / "locator.onnx", ["image_embeddings", "masks", "rgb", "text_embedding", "words", "word_mask"],
            ["scores", "presence"] if presence else ["scores"],
            {"masks": {1: "M"}, "words": {1: "T"}, "word_mask": {1: "T"}, "scores": {1: "M"},
             **({"presence": {1: "M"}} if presence else {})}, max(opset, LOCATOR_OPSET))


def _export_clip_text(encoder, path: Path, opset: int) -> None:  # noqa: ANN001 - a TextEncoder
    """A CLIP text tower as ``path``: token ids -> unit embedding and per-token features."""
    tokens = encoder.tokenize(["a red circle", "a photo of the blue star."]).cpu()
    _export(_ClipText(encoder), (tokens,), path, ["tokens"], ["embedding", "words"],
            {"tokens": {0: "B", 1: "T"}, "embedding": {0: "B"}, "words": {0: "B", 1: "T"}}, opset)


def _export_clip(encoder, out: Path, opset: int) -> None:  # noqa: ANN001 - a TextEncoder
    """The CLIP towers: ``clip_text.onnx`` (token ids -> unit embedding and per-token features) and
    ``clip_image.onnx`` (normalised crops -> unit embeddings)."""
    _export_clip_text(encoder, out / "clip_text.onnx", opset)
    r = _clip_recipe(encoder.clip)["size"]
    _export(_ClipImage(encoder.clip), (torch.randn(2, 3, r, r),), out / "clip_image.onnx", ["image"], ["embedding"],
            {"image": {0: "B"}, "embedding": {0: "B"}}, opset)
