"""The trainable graph: prompts of every kind through the model's own decoder call, SAM's interactive rounds,
and the losses (mask, IoU, the text locator's, the auxiliary semantic one).

Every decoder call goes through :meth:`TextSam.decode <textsam.model.TextSam.decode>`, the one that inference
uses, so training and inference decode identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..model import TextSam
from ..ops import deepest_points
from ..text.locator import RegionLocator
from .batches import BOX, POINT, TEXT, TEXT_KINDS, TEXT_POINT, Batch
from .losses import LossWeights, sam_loss

__all__ = ["error_clicks", "PromptModel", "TextInputs"]

# a text row's pooled CLIP embedding (R, D), and the tower's per-token features (R, T, W) and mask (R, T) when
# the locator reads them (else None)
TextInputs = tuple[Tensor, Tensor | None, Tensor | None]


def error_clicks(pred: Tensor, target: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """SAM's next click: in the larger of the false-negative / false-positive regions, at its deepest pixel.

    ``pred``, ``target``: ``(B, L, L)`` bool low-res masks; ``scale``: input pixels per low-res pixel.
    Returns coords ``(B, 1, 2)`` in the input frame and labels ``(B, 1)`` (1 = add, 0 = remove). A
    perfect prediction gets a positive click at the object's deepest point.
    """
    fn, fp = target & ~pred, pred & ~target
    use_fn = fn.flatten(1).sum(1) >= fp.flatten(1).sum(1)
    region = torch.where(use_fn[:, None, None], fn, fp)
    perfect = ~region.flatten(1).any(1)
    region = torch.where(perfect[:, None, None], target, region)
    pts = deepest_points(region).float()
    coords = (pts + 0.5) * scale - 0.5
    labels = (use_fn | perfect).float()
    return coords[:, None], labels[:, None]


class PromptModel(nn.Module):
    """The trainable graph of a ``TextSam``: (image encoder) + prompt encoder + mask decoder (+ text projector,
    text locator, CLIP text tower).

    ``forward(batch)`` runs every prompt kind present in the batch through ``1 + clicks`` decoder rounds
    (round 0: the sampled prompt, no mask input; round r: one more error click and the previous round's
    most confident low-res logits as mask input) and returns the mean SAM loss over samples and rounds.
    Ambiguous first prompts (a single point, text alone) get 3 outputs and the min-loss rule (text alone:
    every output trained on the target when ``text_min_loss`` is False); the rest use the single-mask output.

    The trained parts are registered here under ``TextSam``'s attribute names (the image encoder and the text
    tower only when they train, so frozen parts keep their own train/eval mode); the decoder calls go through
    ``model.decode``.
    """

    sam: TextSam  # the model whose decode() every round calls (kept out of this module's submodules)

    def __init__(self, model: TextSam, *, train_image_encoder: bool, clicks: int, weights: LossWeights,
                 train_text_encoder: bool = False, text_min_loss: bool = True, locator_weight: float = 0.0,
                 locate_text: bool = False, locator_only: bool = False) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder if train_image_encoder else None
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.text_projector = model.text_projector
        self.text_locator = model.text_locator
        self.text_encoder = model.text_encoder if train_text_encoder else None
        self.__dict__["sam"] = model  # not registered: its frozen parts keep their own train/eval mode
        self.clicks, self.weights = clicks, weights
        self.text_min_loss = text_min_loss  # False: every output of a bare phrase learns the target
        self.locator_weight = locator_weight  # > 0: the text head's locator is trained to find the target
        self.locate_text = locate_text  # text-alone samples also get the locator's click (as at inference)
        self.locator_only = locator_only  # only the locator trains: forward computes its loss alone
        self.scale = model.img_size / self.prompt_encoder.mask_input_size[0]
        self.semantic_head: nn.Conv2d | None = None
        self.semantic_classes: tuple[int, ...] = ()
        self.semantic_weight = 0.0

    def add_semantic_head(self, num_classes: Sequence[int], weight: float) -> None:
        """Training-only 1x1 conv on the image embedding ``(B, C, h, w)`` -> per-field class logits, upsampled
        to the low-res mask grid and scored by cross-entropy against the batch's ``semantic`` maps."""
        if self.image_encoder is None:
            raise InputError("the semantic loss needs a trainable image encoder")
        channels = self.mask_decoder.transformer_dim
        self.semantic_head = nn.Conv2d(channels, sum(num_classes), kernel_size=1)
        self.semantic_classes, self.semantic_weight = tuple(num_classes), float(weight)

    def semantic_loss(self, emb: Tensor, labels: Tensor) -> Tensor:
        """Mean over fields of the per-pixel cross-entropy; ``labels`` ``(B, F, L, L)`` int64 (-100: ignored)."""
        if self.semantic_head is None:
            raise InputError("no semantic head: call add_semantic_head first")
        logits = F.interpolate(self.semantic_head(emb).float(), labels.shape[-2:], mode="bilinear", align_corners=False)
        parts = torch.split(logits, list(self.semantic_classes), dim=1)
        total = emb.new_zeros((), dtype=torch.float32)
        for i, x in enumerate(parts):  # pixels labelled -100 (colours of greyscale samples) do not count
            y = labels[:, i]
            total = total + F.cross_entropy(x, y, ignore_index=-100, reduction="sum") / (y != -100).sum().clamp_min(1)
        return total / len(parts)

    def text_inputs(self, batch: Batch) -> TextInputs | None:
        """The text rows' inputs (:data:`TextInputs`): from ``prompt_emb`` (and ``prompt_words``), or from
        ``prompt_ids`` through the trained text tower. None when the batch has no text rows."""
        if self.text_projector is None or (batch.prompt_emb is None and batch.prompt_ids is None):
            return None
        if batch.prompt_ids is None:
            return batch.prompt_emb, batch.prompt_words, batch.prompt_word_mask
        if self.text_encoder is None:
            raise InputError("token ids in the batch but the text tower is not trained here")
        if self.text_locator is not None and self.text_locator.word_dim:
            emb, words, mask = self.text_encoder.embed_tokens(batch.prompt_ids, with_words=True)
            return emb.float(), words.float(), mask
        return self.text_encoder.embed_tokens(batch.prompt_ids).float(), None, None

    def text_tokens(self, batch: Batch, inputs: TextInputs | None) -> Tensor | None:
        """``(B, K, C)`` tokens, rows of non-text samples zero (unused)."""
        if inputs is None:
            return None
        tok = self.text_projector(inputs[0])
        full = tok.new_zeros((len(batch), *tok.shape[1:]))
        return full.index_copy(0, batch.prompt_rows, tok)

    def locate(self, emb: Tensor, batch: Batch, inputs: TextInputs | None,
               clicks: bool = True) -> tuple[Tensor, Tensor | None] | None:
        """The locator's scores ``(R, N)`` of the text rows' candidate regions and (``clicks``) its clicks
        ``(B, 2)`` in the input frame (the best candidate's deepest pixel; rows of non-text samples zero);
        None without a locator."""
        if self.text_locator is None or inputs is None:
            return None
        rows = batch.prompt_rows
        regions = batch.regions[rows]
        scores = self.text_locator(emb[rows], regions, batch.region_valid[rows], *inputs,
                                   colours=batch.region_colour[rows])
        if not clicks:
            return scores, None
        xy = RegionLocator.click(regions, scores, self.scale)
        return scores, xy.new_zeros((len(batch), 2)).index_copy(0, rows, xy)

    def locator_loss(self, batch: Batch, scores: Tensor) -> Tensor:
        """Mean locator loss of the text rows: minus the log of the softmax mass on the target candidates."""
        return RegionLocator.loss(scores, batch.region_target[batch.prompt_rows]).mean()

    def embeddings(self, batch: Batch) -> Tensor:
        return self.image_encoder(batch.image) if self.image_encoder is not None else batch.image_emb

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        emb = self.embeddings(batch)
        inputs = self.text_inputs(batch)
        tokens = self.text_tokens(batch, inputs)
        located = self.locate(emb, batch, inputs, clicks=self.locate_text)
        if self.locator_only:  # nothing but the locator trains: no decoder calls
            if located is None:
                raise InputError("a locator-only run needs text samples (prompt_mix text or text_point > 0)")
            loss = self.locator_loss(batch, located[0])
            return {"loss": self.locator_weight * loss, "locate": loss}
        clicks = located[1] if located is not None and self.locate_text else None
        totals: dict[str, Tensor] = {}
        for kind in (POINT, BOX, TEXT, TEXT_POINT):
            idx = torch.nonzero(batch.kind == kind).flatten()
            if idx.numel() == 0:
                continue
            if kind in TEXT_KINDS and tokens is None:
                raise InputError("text prompts in the batch but no text projector / prompt embeddings")
            for name, value in self.interact(emb[idx], batch, idx, kind, tokens, clicks).items():
                totals[name] = totals.get(name, 0.0) + value
        n = len(batch) * (1 + self.clicks)
        out = {name: value / n for name, value in totals.items()}
        if located is not None and self.locator_weight > 0:
            out["locate"] = self.locator_loss(batch, located[0])
            out["loss"] = out["loss"] + self.locator_weight * out["locate"]
        if self.semantic_head is not None:
            out["semantic"] = self.semantic_loss(emb, batch.semantic)
            out["loss"] = out["loss"] + self.semantic_weight * out["semantic"]
        return out

    def interact(self, emb: Tensor, batch: Batch, idx: Tensor, kind: int,
                 tokens: Tensor | None, located: Tensor | None = None) -> dict[str, Tensor]:
        """Summed losses of ``1 + clicks`` rounds for the samples ``idx`` of one prompt kind (``located``:
        ``(B, 2)`` the locator's clicks, given to text-alone samples as at inference)."""
        target = batch.mask_lowres[idx]
        coords = labels = None
        if kind in (POINT, TEXT_POINT):
            coords = batch.point[idx][:, None].float()
            labels = torch.ones(coords.shape[:2], device=coords.device)
        elif kind == TEXT and located is not None:
            coords = located[idx][:, None]
            labels = torch.ones(coords.shape[:2], device=coords.device)
        boxes = batch.box[idx].float() if kind == BOX else None
        toks = tokens[idx] if kind in TEXT_KINDS and tokens is not None else None
        masks = None
        sums: dict[str, Tensor] = {}
        for rnd in range(1 + self.clicks):
            points = (coords, labels) if coords is not None else None
            multimask = rnd == 0 and kind in (POINT, TEXT)
            low, iou = self.sam.decode(emb, points, boxes, masks, toks, multimask)
            parts = sam_loss(low, iou, target, self.weights, min_over_outputs=kind != TEXT or self.text_min_loss)
            for name in ("loss", "focal", "dice", "iou"):
                sums[name] = sums.get(name, 0.0) + parts[name].sum()
            if rnd < self.clicks:
                rows = torch.arange(low.shape[0], device=low.device)
                best = low[rows, iou.argmax(dim=1)].detach().float()
                c, lab = error_clicks(best > 0, target[:, 0] > 0.5, self.scale)
                coords = c if coords is None else torch.cat([coords, c], dim=1)
                labels = lab if labels is None else torch.cat([labels, lab], dim=1)
                masks = best[:, None]
        return sums
