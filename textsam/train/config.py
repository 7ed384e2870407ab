"""``TrainConfig``: everything a training run needs, read from a small TOML or JSON file.

Top-level keys say what to train, for how long and where the run goes; tables group the rest by concern:

=============  =========================================================================================
top level      ``model``, ``checkpoint``, ``pretrained``, ``clip``, ``recipe``: what to train, from which
               weights; ``steps``, ``batch_size`` (global), ``grad_accum``, ``seed``: the schedule's size;
               ``amp``, ``device``, ``deterministic``, ``num_workers``: how it runs; ``output_dir``,
               ``checkpoint_every``, ``keep_checkpoints``, ``eval_every``, ``log_every``, ``progress``: what
               it writes
``[data]``     where the samples come from (:class:`DataConfig`)
``[freeze]``   which parts stay fixed (:class:`FreezeConfig`)
``[prompt_mix]``  how often each first prompt kind is drawn (:class:`PromptMix`)
``[optim]``    AdamW and its learning-rate schedule (:class:`OptimConfig`)
``[loss]``     what the loss is made of (:class:`LossConfig`): SAM's focal/dice/IoU weights, the
               correction-click rounds, the auxiliary semantic and locator losses
``[text_head]``  the learned text head of the text recipes (:class:`TextHeadOptions`): projector and
               locator sizes, what the locator reads, the text-blind baseline
``[augment]``  augmentations (:class:`AugmentConfig`): greyscale views and shuffled candidate colours (for
               the synthetic shapes data) and the ``clip_crops`` recipe's crops
``[cache]``    where the frozen encoders' embeddings are cached (:class:`CacheConfig`)
=============  =========================================================================================

Unknown keys are errors (naming the closest known key); a key of the earlier flat layout names its table
(``lr moved to [optim] lr``). Paths are used as written (relative to the working directory). Example::

    model = "shapes_tiny"            # a key of textsam.config.MODEL_CONFIGS, or "from_checkpoint"
    recipe = "text"                  # "sam" | "text" | "clip_crops"
    checkpoint = "runs/sam/model.safetensors"
    clip = "local-dir:runs/clip"
    steps = 2000
    batch_size = 32
    output_dir = "runs/text"

    [data]
    root = "runs/shapes_data"        # root/{train,val}/{images/, instances.json, refs.json}

    [optim]
    lr = 3e-4

    [text_head]
    num_text_tokens = 4

    [prompt_mix]
    text = 0.4
    point = 0.25
    box = 0.25
    text_point = 0.1

Reading and writing the files, and the messages for mistakes in them: :mod:`textsam.train.config_file`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..config import TextHeadConfig
from ..errors import InputError
from .config_types import check_types

__all__ = ["RECIPES", "AMP_MODES", "CACHE_DTYPES", "TEXT_MULTIMASK", "PROMPT_KINDS", "DataConfig", "FreezeConfig", "PromptMix",
           "OptimConfig", "LossConfig", "TextHeadOptions", "AugmentConfig", "CacheConfig", "TrainConfig",
           "TABLES"]

RECIPES = ("sam", "text", "clip_crops")
AMP_MODES = ("auto", "bf16", "off")
TEXT_MULTIMASK = ("min", "all")
CACHE_DTYPES = ("float32", "float16")
PROMPT_KINDS = ("point", "box", "text", "text_point")  # index = the prompt code in samples


def _whole(table: Any, prefix: str, names: tuple[str, ...], low: int) -> None:
    for name in names:
        if getattr(table, name) < low:
            raise InputError(f"{prefix}{name} must be a whole number >= {low}, got {getattr(table, name)}")


def _unit(table: Any, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        if not 0.0 <= getattr(table, name) <= 1.0:
            raise InputError(f"{prefix}{name} must be in [0, 1], got {getattr(table, name)}")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is. ``{split}`` in the file templates is replaced by the split name.

    With ``refs`` (a RefCOCO-style file next to the instances) samples are referring expressions;
    without it (``refs = ""`` or a missing file) they are the COCO instances, phrased by category name.
    ``refs_split_field``: the refs file holds every split and refs are filtered by their ``split``; the images
    of refs in other splits then never train (a COCO image in RefCOCO's val or test stays out of training).

    Several sources in one training split (text recipe; every source reads the same instances and images):
    ``extra_refs``, more refs files (e.g. RefCOCO+ and RefCOCOg over COCO train2017) whose ``train_split``
    refs join the training targets, with the images of their other splits kept out as well (needs
    ``refs_split_field``); ``category_phrases``, one more target per image and category, the union of its
    instances phrased by the category name. Validation reads ``refs`` alone.
    """

    root: str = "."
    train_split: str = "train"
    val_split: str | None = "val"
    instances: str = "{split}/instances.json"
    refs: str = "{split}/refs.json"
    images: str = "{split}/images"
    refs_split_field: bool = False
    extra_refs: tuple[str, ...] = ()
    category_phrases: bool = False
    min_area: float = 16.0  # object area in pixels of the model input frame; smaller ones are skipped
    max_samples: int | None = None  # use only the first N samples of the training split
    eval_samples: int = 128  # validation samples scored at each evaluation

    def __post_init__(self) -> None:
        check_types(self, "[data] ")
        if self.min_area < 0:
            raise InputError(f"[data] min_area must be >= 0 (pixels of the model input), got {self.min_area}")
        if self.max_samples is not None and self.max_samples < 1:
            raise InputError(f"[data] max_samples must be >= 1 (or left out for all), got {self.max_samples}")
        if self.eval_samples < 1:
            raise InputError(f"[data] eval_samples must be >= 1, got {self.eval_samples}")
        if self.extra_refs and not self.refs_split_field:
            raise InputError("[data] extra_refs are refs files that hold every split (RefCOCO-style): set "
                             "refs_split_field = true so that only their train_split refs train")


@dataclass(frozen=True)
class FreezeConfig:
    """Which parts stay fixed (True) and which are trained (False). The names are ``TextSam``'s parts."""

    image_encoder: bool = True
    prompt_encoder: bool = False
    mask_decoder: bool = False
    text_projector: bool = False
    # the CLIP text tower (text recipe only): False fine-tunes it with the mask loss, so words that
    # CLIP's contrastive training never tied to pixels ("leftmost", "upper") get meaning
    text_encoder: bool = True
    # the text head's locator ([text_head] locator_dim > 0); with everything else frozen a run trains only
    # the locator and skips the decoder
    text_locator: bool = False

    def __post_init__(self) -> None:
        check_types(self, "[freeze] ")


@dataclass(frozen=True)
class PromptMix:
    """Relative frequency of each first prompt during training (normalised; text kinds need a text recipe)."""

    text: float = 0.4
    point: float = 0.25
    box: float = 0.25
    text_point: float = 0.1

    def __post_init__(self) -> None:
        check_types(self, "[prompt_mix] ")
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise InputError(f"[prompt_mix] {f.name} is a relative frequency: it must be >= 0, "
                                 f"got {getattr(self, f.name)}")

    def probabilities(self, recipe: str) -> tuple[float, float, float, float]:
        """Normalised probabilities in :data:`PROMPT_KINDS` order; the "sam" recipe drops text kinds."""
        raw = [self.point, self.box, self.text, self.text_point]
        if recipe == "sam":
            raw[2] = raw[3] = 0.0
        total = sum(raw)
        if total <= 0:
            raise InputError(f"prompt_mix gives no usable prompt kind for recipe {recipe!r}: {self}")
        return tuple(v / total for v in raw)  # type: ignore[return-value]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (weight decay on matrices only), linear warmup then cosine decay to ``lr x min_lr_ratio``,
    gradient clipping (``grad_clip``; 0 or none turns it off). A trained CLIP text tower learns at
    ``lr x text_encoder_lr_scale``."""

    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    cosine: bool = True
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    text_encoder_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        check_types(self, "[optim] ")
        if not self.lr > 0:  # also catches nan
            raise InputError(f"[optim] lr must be a positive learning rate (e.g. lr = 1e-4), got {self.lr}")
        if not self.weight_decay >= 0:
            raise InputError(f"[optim] weight_decay must be >= 0, got {self.weight_decay}")
        _whole(self, "[optim] ", ("warmup_steps",), 0)
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise InputError(f"[optim] grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        _unit(self, "[optim] ", ("min_lr_ratio",))
        if self.text_encoder_lr_scale <= 0:
            raise InputError(f"[optim] text_encoder_lr_scale must be > 0, got {self.text_encoder_lr_scale}")


@dataclass(frozen=True)
class LossConfig:
    """What the loss is made of.

    SAM's mask loss ``focal_weight x focal + dice_weight x dice`` plus ``iou_weight x`` the IoU head's MSE,
    over the first decoder round and ``correction_clicks`` more rounds (each with a click in the error
    region; 0: one round). ``text_multimask``: a bare phrase's 3 outputs, ``"min"`` trains only the best one
    (SAM's rule for an ambiguous click), ``"all"`` trains every output on the target. ``semantic_weight``:
    an auxiliary loss, a 1x1 conv on the image embedding classifies every low-res pixel per field of
    ``semantic_fields`` (the COCO ``"category"``, or annotation fields such as ``"colour"``, ``"size"``); it
    trains the image encoder only. ``locator_weight``: the text locator's loss (minus the log of its softmax
    mass on the target candidates).
    """

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    correction_clicks: int = 2
    text_multimask: str = "min"
    semantic_weight: float = 0.0
    semantic_fields: tuple[str, ...] = ("category",)
    locator_weight: float = 1.0

    def __post_init__(self) -> None:
        check_types(self, "[loss] ")
        for name in ("focal_weight", "dice_weight", "iou_weight", "locator_weight", "semantic_weight"):
            if not getattr(self, name) >= 0:
                raise InputError(f"[loss] {name} must be >= 0, got {getattr(self, name)}")
        _whole(self, "[loss] ", ("correction_clicks",), 0)
        if self.text_multimask not in TEXT_MULTIMASK:
            raise InputError(f"[loss] text_multimask must be one of {TEXT_MULTIMASK}, got {self.text_multimask!r}")


@dataclass(frozen=True)
class TextHeadOptions:
    """The learned text head of the text recipes (:class:`~textsam.config.TextHeadConfig` is built from these
    by :meth:`head_config`, the one place that does).

    ``num_text_tokens`` (none: the model config's) decoder tokens from an MLP of width
    ``projector_hidden_dim``. ``locator_dim > 0`` adds a region locator of that width, which chooses among up
    to ``max_regions`` candidate objects per image (``locator_appearance``: ``"embedding"`` or ``"colour"``;
    ``locator_factors``: ``"joint"`` or ``"separate"``); ``word_tokens``: its phrase vector also reads the
    CLIP tower's per-token features (text recipe only); ``locate_text``: text-alone samples get its click in
    training, as the predictor gives it at inference. ``blind_text``: the text-blind baseline, the head sees
    a zero vector instead of the phrase. ``locator_presence``: the locator has a presence readout (kept from the
    start weights; it is trained by ``python -m textsam.train.locator_presence``, not by these recipes).
    """

    num_text_tokens: int | None = None
    projector_hidden_dim: int = 512
    locator_dim: int = 0
    locator_appearance: str = "embedding"
    locator_factors: str = "joint"
    word_tokens: bool = False
    max_regions: int = 16
    locate_text: bool = False
    blind_text: bool = False
    locator_presence: bool = False

    def __post_init__(self) -> None:
        check_types(self, "[text_head] ")
        _whole(self, "[text_head] ", ("projector_hidden_dim", "max_regions"), 1)
        if self.num_text_tokens is not None and self.num_text_tokens < 1:
            raise InputError(f"[text_head] num_text_tokens must be >= 1 (or left out for the model's), got "
                             f"{self.num_text_tokens}")
        if self.locator_dim < 0:
            raise InputError(f"[text_head] locator_dim must be >= 0 (0: no locator), got {self.locator_dim}")
        if self.locator_appearance not in ("embedding", "colour"):
            raise InputError(f"[text_head] locator_appearance must be 'embedding' or 'colour', got "
                             f"{self.locator_appearance!r}")
        if self.locator_factors not in ("joint", "separate"):
            raise InputError(f"[text_head] locator_factors must be 'joint' or 'separate', got "
                             f"{self.locator_factors!r}")
        if self.locate_text and not self.locator_dim:
            raise InputError("[text_head] locate_text = true gives text samples the locator's click: set "
                             "locator_dim > 0")
        if self.locator_presence and not self.locator_dim:
            raise InputError("[text_head] locator_presence = true is a readout of the locator: set locator_dim > 0")
        if self.word_tokens and not self.locator_dim:
            raise InputError("[text_head] word_tokens = true gives the locator the CLIP tower's per-token "
                             "features: set locator_dim > 0")

    def head_config(self, *, clip_dim: int, token_dim: int, default_tokens: int, word_dim: int) -> TextHeadConfig:
        """The text head these options build, for a CLIP of width ``clip_dim`` (per-token features of width
        ``word_dim``) and a decoder of token width ``token_dim``."""
        return TextHeadConfig(
            clip_dim=clip_dim, token_dim=token_dim, num_tokens=self.num_text_tokens or default_tokens,
            hidden_dim=self.projector_hidden_dim, locator_dim=self.locator_dim,
            locator_word_dim=word_dim if self.word_tokens and self.locator_dim else 0,
            locator_appearance=self.locator_appearance, locator_factors=self.locator_factors,
            locator_presence=self.locator_presence,
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentations.

    ``greyscale_prob``: the chance that a point/box training sample shows its image in greyscale (shape
    evidence without colour; its colour classes are ignored by the semantic loss); ``greyscale_text``: text
    samples whose phrase names no colour may be greyscale as well. ``region_colour_shuffle``: the chance that
    a text sample whose phrase names no colour sees its locator candidates' colours with the image's R, G, B
    channels shuffled ("the circle" then cannot learn which colours circles came in). The ``clip_crops``
    recipe's crops: ``crop_variants`` distinct random crops per object (what the cache holds), the box
    enlarged by a factor in ``crop_enlarge``, the pixels outside the mask greyed with ``crop_grey_prob``.
    """

    greyscale_prob: float = 0.0
    greyscale_text: bool = False
    region_colour_shuffle: float = 0.0
    crop_variants: int = 8
    crop_enlarge: tuple[float, float] = (1.0, 2.0)
    crop_grey_prob: float = 0.5

    def __post_init__(self) -> None:
        check_types(self, "[augment] ")
        _whole(self, "[augment] ", ("crop_variants",), 1)
        _unit(self, "[augment] ", ("crop_grey_prob", "greyscale_prob", "region_colour_shuffle"))
        lo, hi = self.crop_enlarge
        if not 1.0 <= lo <= hi:
            raise InputError(f"[augment] crop_enlarge must be [lo, hi] with 1 <= lo <= hi, got {self.crop_enlarge}")


@dataclass(frozen=True)
class CacheConfig:
    """``dir``: cache the frozen encoders' embeddings (image, phrase, crop) in this folder (none: no disk cache);
    ``dtype``: how they are stored, ``"float32"`` or ``"float16"`` (half the disk: a SAM image embedding,
    256 x 64 x 64, takes 2 MiB instead of 4); training reads them back as float32."""

    dir: str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_types(self, "[cache] ")
        if self.dtype not in CACHE_DTYPES:
            raise InputError(f"[cache] dtype must be one of {CACHE_DTYPES}, got {self.dtype!r}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run (see the module docstring for the file layout)."""

    model: str = "shapes_tiny"
    checkpoint: str | None = None  # start weights: an official SAM .pth, an HF SAM file or any textsam file
    pretrained: bool = False  # without checkpoint: start from the published weights of `model`
    clip: str | None = None  # open_clip "NAME/TAG", "NAME" (random) or "local-dir:/path"; default: checkpoint's, model's
    recipe: str = "sam"
    steps: int = 1000
    batch_size: int = 8  # global batch per optimizer step (all ranks x accumulation steps)
    grad_accum: int = 1
    seed: int = 0
    amp: str = "auto"
    device: str | None = None  # default: cuda:LOCAL_RANK when available, else cpu
    deterministic: bool = True
    num_workers: int = 0
    output_dir: str = "runs/train"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0: evaluate only at the end (when there is a validation split)
    log_every: int = 10
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    prompt_mix: PromptMix = field(default_factory=PromptMix)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    text_head: TextHeadOptions = field(default_factory=TextHeadOptions)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        from ..config import MODEL_CONFIGS

        check_types(self, "")
        if self.model != "from_checkpoint" and self.model not in MODEL_CONFIGS:
            known = ", ".join(sorted(MODEL_CONFIGS))
            raise InputError(f"unknown model {self.model!r}; use one of {known} or 'from_checkpoint'")
        if self.model == "from_checkpoint" and not self.checkpoint:
            raise InputError("model = 'from_checkpoint' needs checkpoint = '/path/to/sam_weights'")
        if self.recipe not in RECIPES:
            raise InputError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.amp not in AMP_MODES:
            raise InputError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        _whole(self, "", ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints"), 1)
        _whole(self, "", ("num_workers", "checkpoint_every", "eval_every", "seed"), 0)
        self._check_tables()
        if self.batch_size % self.grad_accum:
            raise InputError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        self.prompt_mix.probabilities(self.recipe)
        f = self.freeze
        if f.image_encoder and f.prompt_encoder and f.mask_decoder and (
            self.recipe == "sam" or (f.text_projector and f.text_encoder
                                     and (f.text_locator or not self.text_head.locator_dim))
        ):
            raise InputError("every part is frozen: nothing to train (see [freeze])")

    def _check_tables(self) -> None:
        """The rules that tie tables to the recipe and to each other."""
        loss, head, augment = self.loss, self.text_head, self.augment
        if loss.semantic_weight > 0 and (self.freeze.image_encoder or not loss.semantic_fields):
            raise InputError("[loss] semantic_weight > 0 trains the image encoder: set [freeze] image_encoder = "
                             "false and name at least one of semantic_fields")
        if head.word_tokens and self.recipe != "text":
            raise InputError("[text_head] word_tokens = true needs recipe = 'text' (per-token features exist for "
                             f"phrases, not for the CLIP image embeddings of recipe {self.recipe!r})")
        if head.locator_dim and not self.uses_text:
            raise InputError(f"[text_head] locator_dim > 0 adds a text locator: it needs a text recipe, not "
                             f"{self.recipe!r}")
        if augment.greyscale_prob > 0 and self.freeze.image_encoder:
            raise InputError("[augment] greyscale_prob > 0 changes the images the image encoder sees: set [freeze] "
                             "image_encoder = false (a frozen encoder's cached embeddings cannot be augmented)")
        if (self.data.extra_refs or self.data.category_phrases) and self.recipe != "text":
            raise InputError("[data] extra_refs and category_phrases add phrased targets to the training split: "
                             f"they need recipe = 'text', not {self.recipe!r}")
        if not self.freeze.text_encoder and self.recipe != "text":
            raise InputError("[freeze] text_encoder = false trains the CLIP text tower with text supervision: "
                             f"it needs recipe = 'text', not {self.recipe!r}")

    @property
    def locator_only(self) -> bool:
        """Only the text locator trains: a run that needs no decoder calls."""
        f = self.freeze
        return bool(self.text_head.locator_dim) and not f.text_locator and all(
            (f.image_encoder, f.prompt_encoder, f.mask_decoder, f.text_projector, f.text_encoder))

    @property
    def uses_text(self) -> bool:
        return self.recipe in ("text", "clip_crops")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A copy with some top-level fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# the tables of a TrainConfig file, by name
TABLES: dict[str, type] = {"data": DataConfig, "freeze": FreezeConfig, "prompt_mix": PromptMix, "optim": OptimConfig,
                           "loss": LossConfig, "text_head": TextHeadOptions, "augment": AugmentConfig,
                           "cache": CacheConfig}
