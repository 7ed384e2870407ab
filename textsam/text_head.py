"""Text-head files: the trained text parts of a textsam model, apart from SAM and CLIP weights.

One ``.safetensors`` file; its header metadata holds a JSON object (key ``"textsam"``) naming the SAM
model and the CLIP model/tag the head was trained for, and the projector's shape. Loading a head into
other models is refused with a message that says which models it needs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .errors import WeightsError
from .text.clip import TextProjector

FORMAT = "textsam.text_head"
VERSION = 1


@dataclass
class TextHeadInfo:
    """Metadata stored with a text head."""

    sam_model: str
    clip_model: str
    clip_pretrained: str | None
    clip_dim: int
    token_dim: int
    num_tokens: int
    hidden_dim: int
    recipe: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    word_dim: int = 0  # > 0: the projector's word path reads per-token CLIP features of this width
    word_heads: int = 0
    locator_dim: int = 0  # > 0: the head holds a locator of this width (phrase -> click)
    locator_kind: str = "cells"  # "cells" (TextLocator) or "regions" (RegionLocator)
    locator_appearance: str = "embedding"  # a region locator's appearance features: "embedding" or "colour"
    locator_factors: str = "joint"  # a region locator's matching: "joint" or "separate" (per feature group)

    @property
    def clip_spec(self) -> str:
        return f"{self.clip_model}/{self.clip_pretrained}" if self.clip_pretrained else self.clip_model


def save_text_head(path: str | Path, projector: TextProjector, info: TextHeadInfo) -> Path:
    """Write ``projector`` weights and ``info`` to ``path`` (a ``.safetensors`` file)."""
    path = Path(path)
    tensors = {f"text_projector.{k}": v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}
    meta = {"format": FORMAT, "version": VERSION, **asdict(info)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"textsam": json.dumps(meta)})
    tmp.replace(path)
    return path


def read_text_head_info(path: str | Path) -> TextHeadInfo:
    """The metadata of a text-head file (raises :class:`WeightsError` when it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"text head not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("textsam")
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable text-head .safetensors file ({err})") from err
    if raw is None:
        raise WeightsError(f"{path} has no textsam metadata: it is not a textsam text head")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a textsam text head (format {meta.get('format')!r})")
    fields = {k: meta[k] for k in TextHeadInfo.__dataclass_fields__ if k in meta}
    return TextHeadInfo(**fields)


def load_text_head(
    path: str | Path, *, sam_model: str | None, clip_model: str | None, clip_pretrained: str | None
) -> tuple[TextProjector, TextHeadInfo]:
    """Load a text head after checking it was trained for these SAM and CLIP models."""
    info = read_text_head_info(path)
    wrong = []
    if sam_model is not None and info.sam_model != sam_model:
        wrong.append(f"SAM model {info.sam_model!r} (this model is {sam_model!r})")
    if clip_model is not None and (info.clip_model, info.clip_pretrained) != (clip_model, clip_pretrained):
        wrong.append(f"CLIP {info.clip_spec!r} (this model uses {clip_model}/{clip_pretrained})")
    if wrong:
        raise WeightsError(
            f"the text head {path} was trained for " + " and ".join(wrong) + ". Use "
            f"--model {info.sam_model} --clip {info.clip_spec} (create_model({info.sam_model!r}, "
            f"clip={info.clip_spec!r}, text_head=...)), or a head trained for your models."
        )
    projector = TextProjector(info.clip_dim, info.token_dim, info.num_tokens, info.hidden_dim,
                              word_dim=info.word_dim, word_heads=info.word_heads or 4, locator_dim=info.locator_dim,
                              locator_kind=info.locator_kind, locator_appearance=info.locator_appearance,
                              locator_factors=info.locator_factors)
    state = {k.removeprefix("text_projector."): v for k, v in load_file(str(path)).items()}
    try:
        projector.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"text head {path} does not match its own metadata: {err}") from err
    return projector, info
