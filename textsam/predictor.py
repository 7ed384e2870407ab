"""TextSamPredictor: embed an image once, then prompt it many times.

Frames: ``point_coords`` are (x, y) pixels and ``box`` is x0, y0, x1, y1 pixels of the original image.
Without text the results equal segment-anything's ``SamPredictor`` for the same checkpoint.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image

from . import transforms
from .errors import InputError
from .model import TextSam
from .ops import mask_nms
from .precision import Precision, autocast, check_precision, native_bf16
from .prompts import PromptBatch, check_mask_input, check_points_and_box
from .quantize import int8_supported
from .text.options import TextOptions
from .text.prompter import TextPrompt, TextPrompter
from .text.spatial import parse

DECODE_CHUNK = 32  # prompts per decoder call: memory stays bounded whatever the batch size
# full-resolution logits (floats) upsampled at once: 32 MB, so a request's transient memory hardly depends on how
# many masks it returns (16 boxes on an 1800 x 1200 photo: 299-303 ms against 304-315 ms with 128 MB)
UPSAMPLE_BUDGET = 1 << 23


class _PredictionFields(NamedTuple):
    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


class Prediction(_PredictionFields):
    """Masks for one prompt (or a batch of prompts, with a leading ``B`` axis).

    masks: ``(C, H, W)`` bool in the original frame (float logits when ``return_logits=True``).
    scores: ``(C,)`` predicted IoU of each mask.
    low_res_logits: ``(C, 4h, 4w)`` decoder logits (256x256 for SAM), usable as ``mask_input``.

    presence: for a text request, how sure the model is that the phrase is in the image, in [0, 1] (None
    without text, or when no engine answered it). With ``instances="all"`` an absent phrase has no masks
    (``C == 0``).

    Unpacks like SAM's 3-tuple. For text prompts ``info`` also holds ``ranking`` (the score masks are ordered
    by: predicted IoU plus ``text_weight`` times ``text_scores``, the dense-CLIP score of each mask when
    grounding is on, else 0), ``labels`` (phrase per mask), ``prompts`` (the points/boxes the text became, original pixels; with a
    text head's locator, ``prompts["located"]`` is its click), ``found`` (presence over the threshold) and, when
    the training-free engine chose the object, ``query``: how it read the phrase (:meth:`textsam.text.spatial.Query.as_dict`:
    the head noun phrase CLIP scored, superlatives and their rank, a relation to an anchor, negated or not, further
    relations, a group).
    """

    info: dict[str, Any]
    presence: float | None

    def __new__(cls, masks: np.ndarray, scores: np.ndarray, low_res_logits: np.ndarray, info: dict | None = None,
                presence: float | None = None):
        self = super().__new__(cls, masks, scores, low_res_logits)
        self.info = info or {}
        self.presence = presence
        return self


def _prompt_key(tp: TextPrompt) -> tuple | None:
    """A hashable key of a text prompt's decoder input (clicks, labels, box), or None when it has its own
    tokens (a text head's: never shared between phrases)."""
    if tp.tokens is not None:
        return None
    box = None if tp.box is None else np.asarray(tp.box, np.float64).tobytes()
    return (np.asarray(tp.points, np.float64).tobytes(), np.asarray(tp.labels, np.int64).tobytes(), box)


class TextSamPredictor:
    """Set an image once with :meth:`set_image`, then call :meth:`predict` for each prompt.

    Args:
        model: a :class:`~textsam.model.TextSam` (from :func:`textsam.create_model`).
        image_precision: ``"fp32"`` (exact SAM numbers), or ``"bf16"`` / ``"fp16"`` to run only the
            image encoder under autocast (faster on CPUs with AMX/AVX-512 BF16 and on GPUs), or ``"int8"``: the
            encoder's linear layers in int8 (:mod:`textsam.quantize`; x86 CPUs, where bf16 is not native).
        text_options: how phrases become prompts (:class:`~textsam.text.options.TextOptions`); default: the
            model file's own settings, else the defaults.
    """

    def __init__(
        self, model: TextSam, *, image_precision: Precision = "fp32", text_options: TextOptions | None = None
    ) -> None:
        check_precision(image_precision, "image_precision", int8=True)
        if image_precision == "int8" and not int8_supported(model.device):
            raise InputError(f"image_precision 'int8' runs on a CPU with PyTorch's x86 quantized engine, not on "
                             f"{model.device}; use 'fp32' or 'bf16'")
        self.model = model
        self.image_precision = image_precision
        self.text = TextPrompter(model, text_options)
        self.reset_image()

    @classmethod
    def fast(cls, model: TextSam, text_options: TextOptions | None = None) -> TextSamPredictor:
        """The CPU fast path (``--fast`` in the CLI, the app and the labeller): ``text_options`` (default: the
        model file's own) made fast (:meth:`~textsam.text.options.TextOptions.fast`: fewer proposal clicks and
        crops, the engine's proposal clicks and CLIP towers in bf16 where the device runs bf16 natively,
        else the CLIP image tower's linear layers in int8) and the image encoder in bf16 where the device runs
        bf16 natively (:func:`textsam.precision.native_bf16`), else, for SAM's ViT encoders, in int8 on a CPU
        with PyTorch's x86 quantized engine (:mod:`textsam.quantize`: sam_vit_b's encoder 1.2-1.4x faster on an AVX2
        CPU; mobile_sam's TinyViT keeps fp32, its int8 masks agreed less with fp32's), else fp32.
        Everything else, the final decoder call included, stays fp32. The
        model keeps its CLIP: the CLI builds a published SAM's fast model with ViT-B/32
        (``create_model(name, clip=textsam.factory.fast_clip(name))``), which makes each CLIP crop 4x cheaper."""
        from .text.prompter import default_options

        options = (text_options or default_options(model)).fast()
        int8 = int8_supported(model.device) and getattr(model.image_encoder, "int8_fast_path", False)
        precision = "bf16" if native_bf16(model.device) else "int8" if int8 else "fp32"
        return cls(model, image_precision=precision, text_options=options)

    # ----------------------------------------------------------------------------------- image
    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.image: np.ndarray | None = None
        # instances="all": the decoded rows of candidates that are a box and clicks alone (no text-head tokens),
        # by their prompts; the phrases of a vocabulary ask for the same proposals again and again
        self._candidate_rows: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        if hasattr(self, "text"):
            self.text.reset()

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
        if self.model.text_encoder is not None:
            self.text.set_image(rgb)  # dense CLIP features, so later text prompts are fast

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.image_precision):
            features = self.model.image_encoder_in(self.image_precision)(x)
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
        *,
        negative_text: str | None = None,
        instances: Literal["one", "all"] = "one",
    ) -> Prediction:
        """Masks for one prompt: any mix of text, clicks, a box and a previous low-res mask.

        All prompts become tokens of ONE mask-decoder call.

        Args:
            text: a phrase naming the object.
            point_coords: ``(N, 2)`` (x, y) pixels of the original image.
            point_labels: ``(N,)`` 1 = foreground, 0 = background.
            box: ``(4,)`` x0, y0, x1, y1 pixels.
            mask_input: ``(1, 256, 256)`` low-res logits from a previous call.
            multimask_output: 3 candidate masks (best for a single click or a bare phrase) instead of 1.
            return_logits: return float logits instead of boolean masks.
            negative_text: a phrase to suppress ("shadow"). With the training-free engine (and a text head's
                locator), a proposal more like it than like ``text`` is not chosen (nor an instance), and the
                proposal it names best gets a background click; with dense grounding, its region gets a
                background point and its similarity is subtracted from the phrase's.
            instances: ``"all"`` returns every instance of the phrase (several grounded candidates
                decoded in one batch, de-duplicated by mask NMS), best first.
        """
        features = self._require_image()
        assert self.original_size is not None and self.image is not None
        if instances not in ("one", "all"):
            raise InputError(f"instances must be 'one' or 'all', not {instances!r}")
        if negative_text is not None and text is None:
            raise InputError("negative_text needs a text prompt too")
        if instances == "all":
            if text is None:
                raise InputError("instances='all' needs a text prompt naming what to find")
            return self._predict_all(text, negative_text, return_logits)
        coords, labels, boxes = check_points_and_box(point_coords, point_labels, box, self.original_size)
        presence = None
        info: dict[str, Any] = {}
        extra = None
        if text is not None:
            engine_prompts = self.text.engine_resolves(text)
            # the head's locator clicks unless the engine chose (a relation between two objects, see engine_resolves)
            located = point_coords is None and box is None and self.text.can_locate and not engine_prompts
            tp = self.text.prompt_for(text, self.image, negative=negative_text, user_box=boxes, user_points=coords,
                                      user_labels=labels, predictor=self, engine_prompts=engine_prompts)
            presence = tp.presence
            if tp.group and tp.members:  # "all the X" asked for one answer: the union of every member
                return self._predict_group(text, tp, coords, labels, return_logits,
                                           engine_prompts and self.text.engine_enabled)
            if len(tp.points):
                coords = tp.points if coords is None else np.concatenate([coords, tp.points])
                labels = tp.labels if labels is None else np.concatenate([labels, tp.labels])
            if boxes is None and tp.box is not None:
                boxes = np.asarray(tp.box, float).reshape(1, 4)
            extra = tp.tokens[None] if tp.tokens is not None else None
            info["prompts"] = {"points": tp.points.tolist(), "labels": tp.labels.tolist(),
                               "box": None if tp.box is None else np.asarray(tp.box).tolist()}
            if engine_prompts and self.text.engine_enabled:  # how the engine read the phrase it chose for
                info["query"] = parse(text).as_dict()
            if located:  # the text head's locator clicks
                assert self.input_size is not None
                click, located_presence = self.text.locate_with_presence(text, features, self.input_size,
                                                                         self.original_size, self.image,
                                                                         exclude=tp.background)
                if located_presence is not None:
                    presence = located_presence
                coords = click if coords is None else np.concatenate([coords, click])
                labels = np.ones(1, np.int64) if labels is None else np.concatenate([labels, np.ones(1, np.int64)])
                info["prompts"]["located"] = click[0].tolist()
        batch = PromptBatch.from_original(
            coords[None] if coords is not None else None,
            labels[None] if labels is not None else None,
            boxes,
            check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size, batch=1),
            self.original_size,
            self.model.img_size,
            self.device,
        )
        low_res, iou = self._decode_low_res(features, batch, extra, multimask_output)
        order = torch.arange(iou.shape[1])
        if text is not None:
            text_scores = self.text.mask_text_scores(low_res[0], text).cpu()
            ranking = iou[0].cpu() + self.text.options.scoring.text_weight * text_scores
            order = torch.argsort(ranking, descending=True)
            # the user's own click or box says the object is there: only a text-alone answer can be "not found"
            user = point_coords is not None or box is not None
            info.update(text_scores=text_scores[order].numpy(), ranking=ranking[order].numpy(), labels=[text] * len(order),
                        found=user or self._found(presence))
        masks, scores, low = self._finish(low_res[:, order], iou[:, order], return_logits)
        return Prediction(masks[0], scores[0], low[0], info, presence)

    def _found(self, presence: float | None) -> bool:
        return presence is None or presence >= self.text.options.engine.presence_threshold

    def _predict_group(self, text: str, tp: TextPrompt, coords: np.ndarray | None, labels: np.ndarray | None,
                       return_logits: bool, engine_read: bool = False) -> Prediction:
        """A group phrase ("all the X") answered as one mask: every member (its box and click, with the text
        tokens and the user's clicks) in one decoder batch, the union of their masks. ``engine_read``: the
        engine chose the members (``info["query"]`` is its reading of the phrase)."""
        prompts = []
        for box_i, click in tp.members:
            pts = click[None] if coords is None else np.concatenate([coords, click[None]])
            lab = np.ones(1, np.int64) if labels is None else np.concatenate([labels, np.ones(1, np.int64)])
            prompts.append(TextPrompt(pts, lab, box_i, tp.tokens))
        low_res, iou = self._decode_low_res(self.features, *self._text_batch(prompts), False)
        low = low_res[:, 0].amax(dim=0, keepdim=True)[None]  # (1, 1, h, w): a pixel is in if any member has it
        score = iou[:, 0].mean().reshape(1, 1)
        masks, scores, lows = self._finish(low, score, return_logits)
        info = {"ranking": scores[0], "labels": [text], "found": self._found(tp.presence),
                "prompts": {"members": [{"box": b.tolist(), "point": c.tolist()} for b, c in tp.members]}}
        if engine_read:
            info["query"] = parse(text).as_dict()
        return Prediction(masks[0], scores[0], lows[0], info, tp.presence)

    def _predict_all(self, text: str, negative_text: str | None, return_logits: bool) -> Prediction:
        """Every instance of ``text``: candidates in one decoder batch, ranked, NMS; none for an absent phrase."""
        assert self.image is not None and self.original_size is not None
        cands, presence = self.text.instance_prompts(text, self.image, negative=negative_text, predictor=self)
        if not cands:
            h, w = self.original_size
            low_side = self.model.prompt_encoder.mask_input_size
            return Prediction(np.zeros((0, h, w), bool), np.zeros(0, np.float32), np.zeros((0, *low_side), np.float32),
                              {"ranking": np.zeros(0), "labels": [], "prompts": [], "found": False}, presence)
        low_res, iou = self._decode_candidates(cands)
        best = iou.argmax(dim=1)
        rows = torch.arange(len(cands))
        low_best, iou_best = low_res[rows, best], iou[rows, best]  # (B, h, w), (B,)
        text_scores = self.text.mask_text_scores(low_best, text).cpu()
        ranking = (iou_best.cpu() + self.text.options.scoring.text_weight * text_scores).numpy()
        masks, _, _ = self._finish(low_best[:, None], iou_best[:, None], False)
        keep = mask_nms(masks[:, 0], ranking, self.text.options.instances.nms_iou)
        if self.text.options.instances.min_score is not None:
            keep = [i for i in keep if ranking[i] >= self.text.options.instances.min_score]
        if not keep:
            keep = [int(np.argmax(ranking))]
        sel = torch.as_tensor(keep)
        out_masks, scores, low = self._finish(low_best[sel][:, None], iou_best[sel][:, None], return_logits)
        info = {
            "text_scores": text_scores[sel].numpy(), "ranking": ranking[keep], "labels": [text] * len(keep),
            "found": self._found(presence),
            "prompts": [{"points": cands[i].points.tolist(), "labels": cands[i].labels.tolist(),
                         "box": None if cands[i].box is None else np.asarray(cands[i].box).tolist()} for i in keep],
        }
        return Prediction(out_masks[:, 0], scores[:, 0], low[:, 0], info, presence)

    @torch.inference_mode()
    def predict_phrases(
        self, phrases: list[str], *, multimask_output: bool = True, return_logits: bool = False,
        negative_text: str | None = None,
    ) -> list[Prediction]:
        """A vocabulary on the current image: one :class:`Prediction` per phrase, as ``predict(text=phrase,
        negative_text=negative_text)`` would give. The image embedding, the proposals and their crop embeddings
        are shared; the phrases (and the negative phrase, what none of them is) are one text batch and one matrix
        product, and every phrase's prompts go into one decoder batch (a second one for group phrases, "all the
        X", which use the single-mask output)."""
        self._require_image()
        assert self.image is not None and self.original_size is not None and self.input_size is not None
        if not phrases:
            raise InputError("give at least one phrase")
        # per phrase, as predict(text=phrase) decides: the engine chooses without a text head, and with one for a
        # phrase relating two objects (TextPrompter.engine_resolves); the head's locator clicks for the others
        by_engine = [self.text.engine_resolves(p) for p in phrases]
        locates = [self.text.can_locate and not e for e in by_engine]
        prompts = self._phrase_prompts(phrases, by_engine, negative_text)
        singles, groups = [], []
        out: list[Prediction | None] = [None] * len(phrases)
        for i, (phrase, tp) in enumerate(zip(phrases, prompts)):
            if tp.group and tp.members:
                groups.append(i)
                continue
            if not locates[i] and not len(tp.points) and tp.box is None and tp.tokens is None:
                # nothing to prompt with (e.g. no proposal on the image): SAM's answer to an empty prompt, as
                # predict() gives it (a row of padding clicks in the batch would be another prompt)
                out[i] = self.predict(text=phrase, multimask_output=multimask_output, return_logits=return_logits,
                                      negative_text=negative_text)
                continue
            if locates[i]:
                click, located_presence = self.text.locate_with_presence(phrase, self.features, self.input_size,
                                                                         self.original_size, self.image,
                                                                         exclude=tp.background)
                tp = TextPrompt(np.concatenate([tp.points, click]), np.concatenate([tp.labels, np.ones(1, np.int64)]),
                                tp.box, tp.tokens, tp.presence if located_presence is None else located_presence,
                                background=tp.background)
                tp.located = click[0].tolist()  # type: ignore[attr-defined]
            singles.append((i, tp))
        if singles:
            # phrases whose prompts are identical (the same chosen proposal and no per-phrase tokens, e.g. several
            # absent classes falling on one object) share one decoder row and one upsampling: the same masks
            rows: dict[tuple, int] = {}
            unique: list[TextPrompt] = []
            row_of = []
            for _, tp in singles:
                row_of.append(rows.setdefault(_prompt_key(tp) or (id(tp),), len(unique)))
                if row_of[-1] == len(unique):
                    unique.append(tp)
            # one decoder batch per kind of row: with a box or without (a batch's prompts all have a box or none:
            # with a text head, a phrase the engine chose for has the proposal's box, the others the locator's click),
            # and per number of clicks (a row padded with "not a point" tokens decodes differently from itself
            # alone: a phrase whose negative adds a background click beside one without)
            kinds: dict[tuple[bool, int], list[int]] = {}
            for k, tp in enumerate(unique):
                kinds.setdefault((tp.box is not None, len(tp.points)), []).append(k)
            parts = list(kinds.values())
            decoded = {}
            for part in parts:
                if part:
                    low, score = self._decode_low_res(self.features, *self._text_batch([unique[k] for k in part]),
                                                      multimask_output)
                    decoded.update({k: (low[j], score[j]) for j, k in enumerate(part)})
            low_res = torch.stack([decoded[k][0] for k in range(len(unique))])
            iou = torch.stack([decoded[k][1] for k in range(len(unique))])
            finished: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
            for row, (i, tp) in zip(row_of, singles):
                if row not in finished:
                    finished[row] = self._finish(low_res[row : row + 1], iou[row : row + 1], return_logits)
                out[i] = self._text_answer(phrases[i], tp, low_res[row : row + 1], iou[row : row + 1], return_logits,
                                           finished[row], by_engine[i] and self.text.engine_enabled)
        for i in groups:
            out[i] = self._predict_group(phrases[i], prompts[i], None, None, return_logits,
                                         by_engine[i] and self.text.engine_enabled)
        return [o for o in out if o is not None]

    def _phrase_prompts(self, phrases: list[str], by_engine: list[bool], negative: str | None = None
                        ) -> list[TextPrompt]:
        """Each phrase's prompts for :meth:`predict_phrases`: the engine's (one text batch and one ranking for
        the phrases it chooses for, ``by_engine``, another for those it only answers presence for), or, with the
        engine off, :meth:`TextPrompter.prompt_for` phrase by phrase; ``negative``: what none of them is."""
        out: dict[int, TextPrompt] = {}
        for chosen in (True, False):
            part = [i for i, e in enumerate(by_engine) if e is chosen]
            if not part:
                continue
            got = self.text.prompts_for([phrases[i] for i in part], self, engine_prompts=chosen, negative=negative)
            if got is None:
                return [self.text.prompt_for(p, self.image, negative=negative) for p in phrases]
            out.update(zip(part, got))
        return [out[i] for i in range(len(phrases))]

    def _text_answer(self, text: str, tp: TextPrompt, low_res: torch.Tensor, iou: torch.Tensor,
                     return_logits: bool,
                     finished: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                     engine_read: bool = False) -> Prediction:
        """One phrase's decoded masks ``(1, M, h, w)`` as a Prediction, ordered by the text ranking. ``finished``:
        :meth:`_finish` of these masks in the decoder's order, when already computed (shared by phrases).
        ``engine_read``: the engine chose the object (``info["query"]`` is its reading of the phrase)."""
        text_scores = self.text.mask_text_scores(low_res[0], text).cpu()
        ranking = iou[0].cpu() + self.text.options.scoring.text_weight * text_scores
        order = torch.argsort(ranking, descending=True)
        info: dict[str, Any] = {
            "prompts": {"points": tp.points.tolist(), "labels": tp.labels.tolist(),
                        "box": None if tp.box is None else np.asarray(tp.box).tolist()},
            "text_scores": text_scores[order].numpy(), "ranking": ranking[order].numpy(), "labels": [text] * len(order),
            "found": self._found(tp.presence)}
        if getattr(tp, "located", None) is not None:
            info["prompts"]["located"] = tp.located  # type: ignore[attr-defined]
        if engine_read:
            info["query"] = parse(text).as_dict()
        if finished is None:
            masks, scores, low = self._finish(low_res[:, order], iou[:, order], return_logits)
        else:  # upsampling is per mask, so reordering after it gives the same arrays
            masks, scores, low = (a[:, order.numpy()] for a in finished)
        return Prediction(masks[0], scores[0], low[0], info, tp.presence)

    def generate(self, **kwargs: Any) -> list[dict[str, Any]]:
        """SAM's automatic mask generation on the current image, as segment-anything's
        ``SamAutomaticMaskGenerator(model, **kwargs).generate(image)``: the same keyword arguments and defaults
        (points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh, stability_score_offset,
        box_nms_thresh, crop_n_layers, crop_nms_thresh, crop_overlap_ratio, crop_n_points_downscale_factor,
        point_grids, min_mask_region_area, output_mode) and the same records: ``segmentation``, ``area``,
        ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box`` (XYWH)."""
        from .modeling.proposals import ProposalOptions, generate_proposals, to_records

        self._require_image()
        unknown = sorted(set(kwargs) - set(ProposalOptions.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown generate() options {unknown}; known: {sorted(ProposalOptions.__dataclass_fields__)}")
        if isinstance(kwargs.get("point_grids"), list):
            kwargs["point_grids"] = tuple(kwargs["point_grids"])
        options = ProposalOptions(**kwargs)
        return to_records(generate_proposals(self, options), options.output_mode)

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
        if coords is not None:
            bsz = coords.shape[0]
        elif box_arr is not None:
            bsz = box_arr.shape[0]
        else:
            bsz = None
        size = self.model.prompt_encoder.mask_input_size
        masks = None
        if mask_input is not None:
            first = check_mask_input(mask_input, size, batch=np.asarray(mask_input).size // (size[0] * size[1]))
            masks = check_mask_input(first, size, batch=bsz if bsz is not None else first.shape[0])
        if bsz == 0 or (masks is not None and masks.shape[0] == 0):
            raise InputError("predict_batch got an empty batch: give at least one prompt")
        batch = PromptBatch.from_original(
            coords, labels, box_arr, masks, self.original_size, self.model.img_size, self.device
        )
        return Prediction(*self._decode(features, batch, None, multimask_output, return_logits))

    def _decode_candidates(self, cands: list[TextPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """``instances="all"``'s multimask decode of every candidate: low-res logits ``(B, 3, 4h, 4w)`` and IoU
        ``(B, 3)``. When every candidate is a box and the same number of clicks with no text-head tokens (the
        engine's proposals), each is one row of the decoder whatever phrase asked for it, so its row is decoded
        once per image (the missing ones in one batch) and reused: a vocabulary's phrases mostly ask for the same
        proposals. Otherwise (text-head tokens, mixed prompts) the candidates are one decoder batch as before."""
        sizes = {len(c.points) for c in cands}
        if any(c.tokens is not None or c.box is None for c in cands) or len(sizes) != 1:
            return self._decode_low_res(self.features, *self._text_batch(cands), True)
        keys = [np.concatenate([np.asarray(c.points, np.float64).ravel(), np.asarray(c.labels, np.float64).ravel(),
                                np.asarray(c.box, np.float64).ravel()]).tobytes() for c in cands]
        fresh = [keys.index(k) for k in dict.fromkeys(keys) if k not in self._candidate_rows]  # first of each
        if fresh:
            low, iou = self._decode_low_res(self.features, *self._text_batch([cands[i] for i in fresh]), True)
            for j, i in enumerate(fresh):
                self._candidate_rows[keys[i]] = (low[j], iou[j])
        rows = [self._candidate_rows[k] for k in keys]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def _text_batch(self, prompts: list[TextPrompt]) -> tuple[PromptBatch, torch.Tensor | None]:
        """Several text prompts as one decoder batch: points padded with "not a point" (-1) labels."""
        assert self.original_size is not None
        n = max(len(p.points) for p in prompts)
        coords = np.zeros((len(prompts), n, 2))
        labels = np.full((len(prompts), n), -1.0)
        for i, p in enumerate(prompts):
            coords[i, : len(p.points)] = p.points
            labels[i, : len(p.points)] = p.labels
        has_box = all(p.box is not None for p in prompts)
        boxes = np.stack([np.asarray(p.box, float) for p in prompts]) if has_box else None
        tokens = [p.tokens for p in prompts]
        extra = torch.stack(tokens) if all(t is not None for t in tokens) else None
        batch = PromptBatch.from_original(
            coords if n else None, labels if n else None, boxes, None,
            self.original_size, self.model.img_size, self.device,
        )
        return batch, extra

    def _decode(
        self,
        features: torch.Tensor,
        batch: PromptBatch,
        extra_tokens: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        low_res, iou = self._decode_low_res(features, batch, extra_tokens, multimask_output)
        return self._finish(low_res, iou, return_logits)

    def _decode_low_res(
        self, features: torch.Tensor, batch: PromptBatch, extra_tokens: torch.Tensor | None, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits ``(B, M, 4h, 4w)`` and IoU ``(B, M)``: one mask-decoder call per
        :data:`DECODE_CHUNK` prompts, so the decoder's working memory does not grow with ``B``."""
        lows, ious = [], []
        for start in range(0, max(1, batch.size), DECODE_CHUNK):
            stop = start + DECODE_CHUNK
            part = batch if batch.size <= DECODE_CHUNK else batch.rows(start, stop)
            extra = None if extra_tokens is None or extra_tokens.shape[0] == 1 else extra_tokens[start:stop]
            low, iou = self.model.decode(
                features if features.shape[0] == 1 else features[start:stop],
                points=part.points,
                boxes=part.boxes,
                masks=part.masks,
                extra_tokens=extra_tokens if extra is None else extra,
                multimask_output=multimask_output,
            )
            lows.append(low)
            ious.append(iou)
        if len(lows) == 1:
            return lows[0], ious[0]
        return torch.cat(lows), torch.cat(ious)

    def _finish(
        self, low_res: torch.Tensor, iou: torch.Tensor, return_logits: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Upsample to the original frame and threshold, a few prompts at a time; numpy arrays out:
        masks ``(B, M, H, W)`` bool (float32 logits with ``return_logits``), IoU ``(B, M)``, low-res ``(B, M, 4h, 4w)``."""
        assert self.input_size is not None and self.original_size is not None
        b, m = low_res.shape[:2]
        h, w = self.original_size
        canvas = self.model.img_size ** 2 + h * w  # floats per mask while upsampling
        step = max(1, UPSAMPLE_BUDGET // max(1, m * canvas))
        masks = np.empty((b, m, h, w), dtype=np.float32 if return_logits else bool)
        for start in range(0, b, step):
            up = self.model.postprocess_masks(low_res[start : start + step], self.input_size, self.original_size)
            masks[start : start + step] = (up if return_logits else up > self.model.mask_threshold).cpu().numpy()
        return masks, iou.float().cpu().numpy(), low_res.float().cpu().numpy()
