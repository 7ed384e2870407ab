"""textsam bundles: one ``.safetensors`` file holding a whole small model (SAM + CLIP + text head).

Used for the bundled ``shapes_tiny`` model. Keys: the official SAM names (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``), ``text_projector.*`` and ``clip.*`` (an open_clip ``CLIP``).
The CLIP token-embedding table is stored sparsely: only the rows of tokens seen in training
(``clip.token_embedding.ids`` + ``clip.token_embedding.rows``); other tokens embed as zero vectors.
The header metadata (key ``"textsam"``) is JSON: the model name, the open_clip model config, the text
head shape and a free-form training record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .errors import WeightsError

FORMAT = "textsam.bundle"
_IDS, _ROWS, _TABLE = "clip.token_embedding.ids", "clip.token_embedding.rows", "clip.token_embedding.weight"


def save_bundle(
    path: str | Path,
    model: nn.Module,
    *,
    clip_config: dict[str, Any],
    used_token_ids: list[int] | None = None,
    training: dict[str, Any] | None = None,
    text_options: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a TextSam with its text encoder and projector to one file (returns the path)."""
    if model.text_encoder is None or model.text_projector is None:
        raise WeightsError("a bundle needs a model with a text encoder and a text projector")
    state = {k: v for k, v in model.sam_state_dict().items()}
    state.update({f"text_projector.{k}": v for k, v in model.text_projector.state_dict().items()})
    state.update({f"clip.{k}": v for k, v in model.text_encoder.clip.state_dict().items()})
    if used_token_ids is not None:
        ids = torch.as_tensor(sorted(set(used_token_ids)), dtype=torch.int64)
        state[_IDS] = ids
        state[_ROWS] = state.pop(_TABLE)[ids]
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()}
    proj = model.text_projector
    meta = {
        "format": FORMAT,
        "model": model.config.name if model.config is not None else "custom",
        "clip_name": model.text_encoder.model_name,
        "clip_config": clip_config,
        "text_head": {
            "clip_dim": proj.clip_dim, "token_dim": proj.token_dim,
            "num_tokens": proj.num_tokens, "hidden_dim": proj.hidden_dim,
            "word_dim": proj.word_dim, "word_heads": proj.word_heads, "locator_dim": proj.locator_dim,
            "locator_kind": proj.locator_kind, "locator_appearance": proj.locator_appearance,
            "locator_factors": proj.locator_factors,
        },
        "training": training or {},
        "text_options": text_options or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"textsam": json.dumps(meta)})
    tmp.replace(path)
    return path


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a bundle file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("textsam")
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"cannot read the textsam bundle {path}: {err}") from err
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a textsam bundle")
    return meta


def load_bundle(path: str | Path, model: nn.Module) -> nn.Module:
    """Fill ``model`` (SAM parts built from its config) with a bundle's SAM, CLIP and text-head weights."""
    import open_clip
    from open_clip.model import CLIP

    from .text.clip import TextEncoder, TextProjector
    from .weights.checkpoint import load_into

    meta = read_bundle_meta(path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    sam = {k: v for k, v in state.items() if k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder."))}
    parts = nn.ModuleDict(
        {"image_encoder": model.image_encoder, "prompt_encoder": model.prompt_encoder, "mask_decoder": model.mask_decoder}
    )
    load_into(parts, sam, strict=True)

    clip = CLIP(**meta["clip_config"])
    clip_state = {k.removeprefix("clip."): v for k, v in state.items() if k.startswith("clip.")}
    if _IDS in state:
        table = torch.zeros_like(clip.token_embedding.weight)
        table[state[_IDS]] = state[_ROWS]
        clip_state.pop("token_embedding.ids")
        clip_state.pop("token_embedding.rows")
        clip_state["token_embedding.weight"] = table
    load_into(clip, clip_state, strict=True)
    context = int(meta["clip_config"].get("text_cfg", {}).get("context_length", 77))
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=context)  # the standard CLIP BPE
    model.text_encoder = TextEncoder(clip.eval(), tokenizer, model_name=meta["clip_name"], pretrained=None)

    head = meta["text_head"]
    projector = TextProjector(head["clip_dim"], head["token_dim"], head["num_tokens"], head["hidden_dim"],
                              word_dim=int(head.get("word_dim", 0)), word_heads=int(head.get("word_heads") or 4),
                              locator_dim=int(head.get("locator_dim", 0)),
                              locator_kind=str(head.get("locator_kind", "cells")),
                              locator_appearance=str(head.get("locator_appearance", "embedding")),
                              locator_factors=str(head.get("locator_factors", "joint")))
    load_into(projector, {k.removeprefix("text_projector."): v for k, v in state.items()
                          if k.startswith("text_projector.")}, strict=True)
    model.text_projector = projector.eval()
    model.bundle_meta = meta
    return model
