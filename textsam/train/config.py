"""``TrainConfig``: everything a training run needs, read from a small JSON or TOML file.

Top-level keys are the fields of :class:`TrainConfig`; the tables ``data``, ``freeze`` and
``prompt_mix`` fill :class:`DataConfig`, :class:`FreezeConfig` and :class:`PromptMix`. Unknown keys are
errors (with the list of known ones). Paths are used as written (relative to the working directory).
Example (TOML)::

    model = "shapes_tiny"            # a key of textsam.config.MODEL_CONFIGS, or "from_checkpoint"
    recipe = "clip_crops"            # "sam" | "text" | "clip_crops"
    clip = "local-dir:runs/shapes_clip"
    steps = 2000
    batch_size = 32                  # global: all ranks and accumulation steps together
    lr = 3e-4
    output_dir = "runs/shapes_tiny"

    [data]
    root = "data/shapes"             # root/{train,val}/{images/, instances.json, refs.json}

    [freeze]
    image_encoder = false

    [prompt_mix]
    text = 0.4
    point = 0.25
    box = 0.25
    text_point = 0.1
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InputError

RECIPES = ("sam", "text", "clip_crops")
AMP_MODES = ("auto", "bf16", "off")
TEXT_MULTIMASK = ("min", "all")
PROMPT_KINDS = ("point", "box", "text", "text_point")  # index = the prompt code in samples


@dataclass(frozen=True)
class DataConfig:
    """Where the data is. ``{split}`` in the file templates is replaced by the split name.

    With ``refs`` (a RefCOCO-style file next to the instances) samples are referring expressions;
    without it (``refs = ""`` or a missing file) they are the COCO instances, phrased by category name.
    ``refs_split_field``: the refs file holds every split and refs are filtered by their ``split``.
    """

    root: str = "."
    train_split: str = "train"
    val_split: str | None = "val"
    instances: str = "{split}/instances.json"
    refs: str = "{split}/refs.json"
    images: str = "{split}/images"
    refs_split_field: bool = False
    min_area: float = 16.0  # object area in pixels of the model input frame; smaller ones are skipped
    max_samples: int | None = None  # use only the first N samples of the training split
    eval_samples: int = 128  # validation samples scored at each evaluation

    def __post_init__(self) -> None:
        _check_types(self, "[data] ")
        if self.min_area < 0:
            raise InputError(f"[data] min_area must be >= 0 (pixels of the model input), got {self.min_area}")
        if self.max_samples is not None and self.max_samples < 1:
            raise InputError(f"[data] max_samples must be >= 1 (or left out for all), got {self.max_samples}")
        if self.eval_samples < 1:
            raise InputError(f"[data] eval_samples must be >= 1, got {self.eval_samples}")


@dataclass(frozen=True)
class FreezeConfig:
    """Which parts stay fixed (True) and which are trained (False)."""

    image_encoder: bool = True
    prompt_encoder: bool = False
    mask_decoder: bool = False
    text_projector: bool = False
    # the CLIP text tower (text recipe only): False fine-tunes it with the mask loss, so words that
    # CLIP's contrastive training never tied to pixels ("leftmost", "upper") get meaning
    text_encoder: bool = True
    # the text head's locator (locator_dim > 0); with everything else frozen a run trains only the locator
    # and skips the decoder
    text_locator: bool = False

    def __post_init__(self) -> None:
        _check_types(self, "[freeze] ")


@dataclass(frozen=True)
class PromptMix:
    """Relative frequency of each first prompt during training (normalised; text kinds need a text recipe)."""

    text: float = 0.4
    point: float = 0.25
    box: float = 0.25
    text_point: float = 0.1

    def __post_init__(self) -> None:
        _check_types(self, "[prompt_mix] ")
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
class TrainConfig:
    """One training run (see the module docstring for the file format)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: str = "shapes_tiny"
    checkpoint: str | None = None  # SAM weights to start from (required for model = "from_checkpoint")
    pretrained: bool = False  # without checkpoint: start from the published weights of `model`
    clip: str | None = None  # open_clip "NAME/TAG", "NAME" (random) or "local-dir:/path"; default: model's
    text_head: str | None = None  # initialise the TextProjector from this text-head file
    num_text_tokens: int | None = None  # default: the model config's
    projector_hidden_dim: int = 512
    recipe: str = "sam"
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    steps: int = 1000
    batch_size: int = 8  # global batch per optimizer step (all ranks x accumulation steps)
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    cosine: bool = True
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    amp: str = "auto"
    seed: int = 0
    num_workers: int = 0
    device: str | None = None  # default: cuda:LOCAL_RANK when available, else cpu
    deterministic: bool = True
    output_dir: str = "runs/train"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0: evaluate only at the end (when there is a validation split)
    log_every: int = 10
    progress: bool = True
    prompt_mix: PromptMix = field(default_factory=PromptMix)
    correction_clicks: int = 2  # extra decoder rounds with a click in the error region; 0 disables
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    cache_dir: str | None = None  # frozen encoders: cache image / CLIP embeddings here
    crop_variants: int = 8  # clip_crops: distinct random crops per object (what the cache holds)
    crop_enlarge: tuple[float, float] = (1.0, 2.0)
    crop_grey_prob: float = 0.5
    text_encoder_lr_scale: float = 1.0  # the text tower's learning rate is lr x this (when trained)
    blind_text: bool = False  # baseline: the projector sees a zero vector instead of the prompt embedding
    # auxiliary loss: a 1x1 conv on the image embedding classifies every low-res pixel per field (the
    # COCO "category", or annotation fields such as "colour", "size"); trains the image encoder only
    semantic_weight: float = 0.0
    semantic_fields: tuple[str, ...] = ("category",)
    # augmentation: the chance that a point/box training sample shows its image in greyscale (trains the
    # image encoder to see shapes without their colours; text samples keep colour)
    greyscale_prob: float = 0.0
    greyscale_text: bool = False  # text samples whose phrase names no colour may be greyscale as well
    # a bare phrase's 3 decoder outputs: "min" trains only the best one (SAM's rule for an ambiguous
    # click), "all" trains every output on the target (a phrase names one target; the outputs cannot
    # hedge over candidates, e.g. put each star in its own output for "the leftmost star")
    text_multimask: str = "min"
    # the text projector also attends to the CLIP tower's per-token features (a word path), so words the
    # pooled embedding hardly tells apart ("left" / "right") reach the decoder; text recipe only
    word_tokens: bool = False
    # a text locator in the text head (phrase x image embedding -> the cell to click), this wide (0: none);
    # trained to put its softmax mass on the target (weight locator_weight). locate_text: text-alone
    # samples get its click in training, as the predictor gives it at inference
    locator_dim: int = 0
    locator_kind: str = "cells"  # "cells": embedding cells; "regions": candidate objects (max_regions per image)
    max_regions: int = 16
    locator_appearance: str = "embedding"  # a region locator's appearance: "embedding" or "colour" (pixels only)
    locator_factors: str = "joint"  # a region locator's matching: "joint" or "separate" (sum over feature groups)
    # text samples whose phrase names no colour: the chance that their candidates' colours come from the image
    # with its R, G, B channels shuffled (a region locator with colour appearance): "the circle" then cannot
    # learn which colours circles came in
    region_colour_shuffle: float = 0.0
    locator_weight: float = 1.0
    locate_text: bool = False

    def __post_init__(self) -> None:
        from ..config import MODEL_CONFIGS

        _check_types(self, "")
        if self.model != "from_checkpoint" and self.model not in MODEL_CONFIGS:
            known = ", ".join(sorted(MODEL_CONFIGS))
            raise InputError(f"unknown model {self.model!r}; use one of {known} or 'from_checkpoint'")
        if self.model == "from_checkpoint" and not self.checkpoint:
            raise InputError("model = 'from_checkpoint' needs checkpoint = '/path/to/sam_weights'")
        if self.recipe not in RECIPES:
            raise InputError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.amp not in AMP_MODES:
            raise InputError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "crop_variants", "keep_checkpoints",
                     "projector_hidden_dim"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be a whole number >= 1, got {getattr(self, name)}")
        if self.num_text_tokens is not None and self.num_text_tokens < 1:
            raise InputError(f"num_text_tokens must be >= 1 (or left out for the model's), got {self.num_text_tokens}")
        for name in ("warmup_steps", "correction_clicks", "num_workers", "checkpoint_every", "eval_every", "seed"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be a whole number >= 0, got {getattr(self, name)}")
        if not self.lr > 0:  # also catches nan
            raise InputError(f"lr must be a positive learning rate (e.g. lr = 1e-4), got {self.lr}")
        for name in ("weight_decay", "focal_weight", "dice_weight", "iou_weight", "locator_weight"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise InputError(f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        for name in ("min_lr_ratio", "crop_grey_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        lo, hi = self.crop_enlarge
        if not 1.0 <= lo <= hi:
            raise InputError(f"crop_enlarge must be [lo, hi] with 1 <= lo <= hi, got {self.crop_enlarge}")
        if self.semantic_weight < 0:
            raise InputError(f"semantic_weight must be >= 0, got {self.semantic_weight}")
        if self.semantic_weight > 0 and (self.freeze.image_encoder or not self.semantic_fields):
            raise InputError("semantic_weight > 0 trains the image encoder: set [freeze] image_encoder = false "
                             "and name at least one of semantic_fields")
        if self.word_tokens and self.recipe != "text":
            raise InputError("word_tokens = true needs recipe = 'text' (per-token features exist for phrases, not "
                             f"for the CLIP image embeddings of recipe {self.recipe!r})")
        if self.locator_dim < 0:
            raise InputError(f"locator_dim must be >= 0 (0: no locator), got {self.locator_dim}")
        if self.locator_dim and not self.uses_text:
            raise InputError(f"locator_dim > 0 adds a text locator: it needs a text recipe, not {self.recipe!r}")
        if self.locator_kind not in ("cells", "regions"):
            raise InputError(f"locator_kind must be 'cells' or 'regions', got {self.locator_kind!r}")
        if self.locator_appearance not in ("embedding", "colour"):
            raise InputError(f"locator_appearance must be 'embedding' or 'colour', got {self.locator_appearance!r}")
        if self.locator_factors not in ("joint", "separate"):
            raise InputError(f"locator_factors must be 'joint' or 'separate', got {self.locator_factors!r}")
        if not 0.0 <= self.region_colour_shuffle <= 1.0:
            raise InputError(f"region_colour_shuffle must be in [0, 1], got {self.region_colour_shuffle}")
        if self.max_regions < 1:
            raise InputError(f"max_regions must be >= 1, got {self.max_regions}")
        if self.locate_text and not self.locator_dim:
            raise InputError("locate_text = true gives text samples the locator's click: set locator_dim > 0")
        if self.text_multimask not in TEXT_MULTIMASK:
            raise InputError(f"text_multimask must be one of {TEXT_MULTIMASK}, got {self.text_multimask!r}")
        if not 0.0 <= self.greyscale_prob <= 1.0:
            raise InputError(f"greyscale_prob must be in [0, 1], got {self.greyscale_prob}")
        if self.greyscale_prob > 0 and self.freeze.image_encoder:
            raise InputError("greyscale_prob > 0 changes the images the image encoder sees: set [freeze] "
                             "image_encoder = false (a frozen encoder's cached embeddings cannot be augmented)")
        if not self.freeze.text_encoder and self.recipe != "text":
            raise InputError("[freeze] text_encoder = false trains the CLIP text tower with text supervision: "
                             f"it needs recipe = 'text', not {self.recipe!r}")
        if self.text_encoder_lr_scale <= 0:
            raise InputError(f"text_encoder_lr_scale must be > 0, got {self.text_encoder_lr_scale}")
        if self.batch_size % self.grad_accum:
            raise InputError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        self.prompt_mix.probabilities(self.recipe)
        if self.freeze.image_encoder and self.freeze.prompt_encoder and self.freeze.mask_decoder and (
            self.recipe == "sam" or (self.freeze.text_projector and self.freeze.text_encoder
                                     and (self.freeze.text_locator or not self.locator_dim))
        ):
            raise InputError("every part is frozen: nothing to train (see [freeze])")

    @property
    def locator_only(self) -> bool:
        """Only the text locator trains: a run that needs no decoder calls."""
        f = self.freeze
        return bool(self.locator_dim) and not f.text_locator and all(
            (f.image_encoder, f.prompt_encoder, f.mask_decoder, f.text_projector, f.text_encoder))

    @property
    def uses_text(self) -> bool:
        return self.recipe in ("text", "clip_crops")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A copy with some top-level fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_SECTIONS = {"data": DataConfig, "freeze": FreezeConfig, "prompt_mix": PromptMix}
_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
_PLURAL = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "strings"}


def _toml(value: Any) -> str:
    """``value`` as it would be written in a config file (for messages)."""
    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError):
        return repr(value)


def _type_problem(value: Any, hint: Any) -> str | None:
    """What ``value`` should have been for the type ``hint`` (None: it fits)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        wanted = [_type_problem(value, a) for a in args if a is not type(None)]
        return None if None in wanted else wanted[0]
    if origin is tuple:
        items = [args[0]] * len(value) if args[-1] is Ellipsis and isinstance(value, (list, tuple)) else list(args)
        kind = f"a list of {'' if args[-1] is Ellipsis else f'{len(args)} '}{_PLURAL[args[0]]}"
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            return kind
        return kind if any(_type_problem(v, t) for v, t in zip(value, items)) else None
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    else:  # a section (DataConfig, ...)
        return None if isinstance(value, hint) else "a table"
    return None if ok else _KINDS[hint]


def _check_types(obj: Any, prefix: str) -> None:
    """Raise an InputError for the first field of dataclass ``obj`` whose value has the wrong type; turn
    lists into tuples and whole numbers into floats where the field says so."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        wanted = _type_problem(value, hint)
        if wanted is not None:
            example = "" if f.default is MISSING or f.default is None else f" (e.g. {f.name} = {_toml(f.default)})"
            raise InputError(f"{prefix}{f.name} must be {wanted}{example}, got {_toml(value)}")
        if isinstance(value, list):
            object.__setattr__(obj, f.name, tuple(float(v) if isinstance(v, int) and float in typing.get_args(hint)
                                                  else v for v in value))
        elif hint is float and isinstance(value, int):
            object.__setattr__(obj, f.name, float(value))


def _unknown_key(cls: type, key: str, section: str | None) -> str:
    """The message for an unknown ``key`` of ``cls`` (the table ``section``; None: the top level)."""
    where = f" in [{section}]" if section else ""
    if section is None:
        for name, sub in _SECTIONS.items():
            if key in {f.name for f in fields(sub)}:
                return f"{key!r} belongs in the [{name}] table: move it under [{name}]"
    elif key in {f.name for f in fields(TrainConfig)}:
        return f"{key!r} is a top-level key, not one of [{section}]: move it above the first [table]"
    known = sorted(f.name for f in fields(cls))
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"the known keys are {', '.join(known)}"
    return f"unknown key {key!r}{where}; {hint}"


def _build(cls: type, values: dict[str, Any], section: str | None = None) -> Any:
    if not isinstance(values, dict):
        raise InputError(f"[{section}] must be a table (key = value lines under [{section}]), "
                         f"got {_toml(values)}")
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise InputError(_unknown_key(cls, unknown[0], section))
    kwargs = dict(values)
    for name, sub in _SECTIONS.items():
        if cls is TrainConfig and name in kwargs:
            kwargs[name] = _build(sub, kwargs[name], name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise InputError(f"bad value{f' in [{section}]' if section else ''}: {err}") from err


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a plain dict (the parsed file, or ``TrainConfig.to_dict()``)."""
    if not isinstance(values, dict):
        raise InputError(f"a training config is a table of key = value pairs, got {_toml(values)}")
    return _build(TrainConfig, values)


def _at_line(text: str, line: int) -> str:
    lines = text.splitlines()
    return f" `{lines[line - 1].strip()}`" if 1 <= line <= len(lines) and lines[line - 1].strip() else ""


def load_config(path: str | Path) -> TrainConfig:
    """Read a ``.json`` or ``.toml`` training config (InputError naming the file and what to fix)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"training config not found: {p}. Check the path (a .toml or .json file).")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{p} is not UTF-8 text: a training config is a .toml or .json file") from err
    except OSError as err:
        raise InputError(f"cannot read the training config {p}: {err.strerror or err}") from err
    if p.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError as err:
                raise InputError("reading TOML on Python 3.10 needs `pip install tomli`; or use JSON") from err
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            found = re.search(r"at line (\d+)", str(err))
            line = int(found[1]) if found else 0
            fix = f"; fix line {line}{_at_line(text, line)}" if line else ""
            raise InputError(f"{p} is not valid TOML: {str(err).splitlines()[0]}{fix}") from err
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{p} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno}); "
                             f"fix line {err.lineno}{_at_line(text, err.lineno)}") from err
    try:
        return config_from_dict(values)
    except InputError as err:
        raise InputError(f"{p}: {err}") from err


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write ``config`` as JSON (readable by :func:`load_config`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return p
