"""Options of the text pathway, one frozen dataclass per concern, gathered in :class:`TextOptions`.

A model file may carry its own defaults (e.g. the bundled ``shapes_tiny`` turns grounding off); pass
``TextSamPredictor(model, text_options=TextOptions(...))`` to choose others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .engine import EngineOptions

__all__ = ["GroundingOptions", "ScoringOptions", "InstanceOptions", "LocatorOptions", "EngineOptions", "TextOptions"]


@dataclass(frozen=True)
class GroundingOptions:
    """Training-free localisation: dense CLIP patch features (MaskCLIP) compared with the phrase; the
    similarity map becomes click tokens (and optionally a box) of the same decoder call.

    enabled: use it (off by default: the proposal engine, :class:`EngineOptions`, answers text requests without
    a text head; this path stays for comparison). clip_input_size: side of the square image given
    to the CLIP tower for dense features (a multiple of its patch size). num_positive / num_negative: clicks
    per phrase. box: also give the box of the best similarity region.
    """

    enabled: bool = False
    clip_input_size: int = 448
    num_positive: int = 1
    num_negative: int = 1
    box: bool = False


@dataclass(frozen=True)
class ScoringOptions:
    """How a phrase is embedded and how candidate masks are ranked.

    templates: prompt templates for the phrase's CLIP embedding ensemble (each with one ``{}``; None: the
    default short list, :data:`textsam.text.templates.DEFAULT_TEMPLATES`). text_weight: weight of the CLIP
    score of a mask against SAM's predicted IoU when masks are ranked.
    """

    templates: tuple[str, ...] | None = None
    text_weight: float = 1.0


@dataclass(frozen=True)
class InstanceOptions:
    """``instances="all"``: at most ``max_instances`` candidates, de-duplicated by mask IoU ``nms_iou``, and
    (when ``min_score`` is set) only those ranked at least ``min_score``."""

    max_instances: int = 8
    nms_iou: float = 0.5
    min_score: float | None = None


SEED_KINDS = ("embedding", "grid")
FAST_POINTS_PER_SIDE = 8  # the fast path's proposal grid, for seeds="grid" (TextOptions.fast)
FAST_MAX_SEEDS = 24  # the fast path's proposal clicks from the embedding
FAST_MAX_PROPOSALS = 16
FAST_SHORTLIST = 3  # proposals cropped per phrase
FAST_MODEL = "mobile_sam"  # the model of the CLI's --fast when no --model is given


@dataclass(frozen=True)
class LocatorOptions:
    """A text head's locator: a phrase without a click or box of the user's gets the locator's click.

    enabled: use it when the model has one. Candidate objects (once per image): the decoder's most confident
    mask for each of a set of clicks, decoded ``points_per_batch`` clicks at a time, kept when its predicted
    IoU is at least ``min_iou``, de-duplicated by mask IoU ``nms_iou``, at most ``max_candidates``. The clicks:
    ``seeds="embedding"`` (default) one per region of the image embedding (``clusters`` k-means groups split
    into connected regions of at least ``min_region_tokens`` tokens, at most ``max_seeds``;
    :func:`textsam.modeling.seeds.embedding_seeds`), 9-30 clicks on the synthetic scenes; ``seeds="grid"`` a
    ``grid`` x ``grid`` grid (256 clicks at 16). Small batches keep the per-click image tokens in cache.
    """

    enabled: bool = True
    seeds: str = "embedding"
    clusters: int = 16
    min_region_tokens: int = 3
    max_seeds: int = 64
    grid: int = 16
    points_per_batch: int = 8
    min_iou: float = 0.5
    nms_iou: float = 0.7
    max_candidates: int = 32

    def __post_init__(self) -> None:
        if self.seeds not in SEED_KINDS:
            raise InputError(f"unknown locator seeds {self.seeds!r}; choose one of {', '.join(SEED_KINDS)}")
        counts = (self.clusters, self.min_region_tokens, self.max_seeds, self.grid, self.points_per_batch,
                  self.max_candidates)
        if min(counts) < 1:
            raise InputError("locator clusters, min_region_tokens, max_seeds, grid, points_per_batch and "
                             "max_candidates must be >= 1")


_GROUPS = {"grounding": GroundingOptions, "scoring": ScoringOptions, "instances": InstanceOptions,
           "locator": LocatorOptions, "engine": EngineOptions}
# the flat option names of textsam files written before the options were grouped
_FLAT = {"clip_input_size": ("grounding", "clip_input_size"), "num_positive": ("grounding", "num_positive"),
         "num_negative": ("grounding", "num_negative"), "grounded_box": ("grounding", "box"),
         "templates": ("scoring", "templates"), "text_weight": ("scoring", "text_weight"),
         "max_instances": ("instances", "max_instances"), "nms_iou": ("instances", "nms_iou"),
         "min_score": ("instances", "min_score"), "locate": ("locator", "enabled"),
         "region_grid": ("locator", "grid"), "region_min_iou": ("locator", "min_iou"),
         "region_nms_iou": ("locator", "nms_iou"), "max_regions": ("locator", "max_candidates")}


@dataclass(frozen=True)
class TextOptions:
    """Every option of the text pathway, grouped by concern."""

    grounding: GroundingOptions = field(default_factory=GroundingOptions)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    instances: InstanceOptions = field(default_factory=InstanceOptions)
    locator: LocatorOptions = field(default_factory=LocatorOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in _GROUPS}

    def fast(self) -> TextOptions:
        """These options with the CPU fast path's engine: at most 24 proposal clicks from the image embedding (8 x 8
        with ``seeds="grid"``) instead of 32, the best 16 proposals kept instead of 32, 3 crops per phrase
        instead of 4, and the engine in bf16 where the device computes it natively, else with the CLIP image
        tower's linear layers in int8 on a CPU that has them (``EngineOptions.precision="int8"``; a model file or
        caller that chose fp32 gets it here). On the synthetic proxy
        (shapes_tiny's SAM and CLIP through the engine, 200 test images, ``tools/engine_ablation.py``) the fewer
        clicks, proposals and crops cost 3.0 mIoU with this round's bundle (73.9 -> 70.9), 0.7 with session 30's
        (54.4 against 55.1), where the whole fast path with bf16 measured 55.06 against 55.05 (``textsam eval
        synthetic --no-text-head [--fast]`` on a CPU with AVX-512 BF16); every other option is kept.
        :meth:`textsam.TextSamPredictor.fast` adds the image encoder in bf16."""
        e = self.engine
        engine = dataclasses.replace(
            e, max_proposals=min(e.max_proposals, FAST_MAX_PROPOSALS), max_seeds=min(e.max_seeds, FAST_MAX_SEEDS),
            shortlist=min(e.shortlist, FAST_SHORTLIST) if e.shortlist else FAST_SHORTLIST, precision="int8",
            proposals=dataclasses.replace(e.proposals, points_per_side=FAST_POINTS_PER_SIDE))
        return dataclasses.replace(self, engine=engine)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextOptions:
        """From :meth:`to_dict`'s nested form (groups may be partial). The flat names of older model files
        (``{"grounding": false, "region_grid": 16}``) are read too."""
        groups: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
        for key, value in data.items():
            if key in _GROUPS and isinstance(value, Mapping):
                groups[key].update(value)
            elif key == "grounding" and isinstance(value, bool):
                groups["grounding"]["enabled"] = value
            elif key in _FLAT:
                group, name = _FLAT[key]
                groups[group][name] = value
            elif key != "method":  # "method" chose a dense-feature variant that is gone (MaskCLIP remains)
                raise InputError(f"unknown text option {key!r}; the groups are {', '.join(_GROUPS)}")
        built = {}
        for name, kind in _GROUPS.items():
            values = groups[name]
            unknown = sorted(set(values) - set(kind.__dataclass_fields__))
            if unknown:
                raise InputError(f"unknown {name} options {unknown}; known: {sorted(kind.__dataclass_fields__)}")
            if name == "scoring" and values.get("templates") is not None:
                values = dict(values, templates=tuple(values["templates"]))
            if name == "engine":
                values = _engine_values(values)
            built[name] = kind(**values)
        return cls(**built)


def _engine_values(values: dict[str, Any]) -> dict[str, Any]:
    """Engine options from a dict (its ``proposals`` a dict of ``ProposalOptions`` fields, ``views`` a list)."""
    from ..modeling.proposals import ProposalOptions

    out = dict(values)
    if isinstance(out.get("proposals"), Mapping):
        defaults = dataclasses.asdict(EngineOptions().proposals)
        fields = {**defaults, **out["proposals"]}
        unknown = sorted(set(fields) - set(ProposalOptions.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown proposal options {unknown}")
        out["proposals"] = ProposalOptions(**fields)
    if "views" in out:
        out["views"] = tuple(out["views"])
    return out
