"""THE file format of everything textsam trains: one ``.safetensors`` file, tensors plus a JSON header.

Tensors (any subset; the prefixes are :class:`~textsam.model.TextSam`'s attribute names):

- ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``: SAM parts, official key names;
- ``text_projector.*``: :class:`~textsam.text.projector.TextProjector`;
- ``text_locator.*``: :class:`~textsam.text.locator.RegionLocator`;
- ``clip.*``: an open_clip ``CLIP`` state dict, either the whole model (a CLIP textsam trained itself, built
  from ``clip.config``) or only its text tower (a published CLIP whose text tower was fine-tuned). A whole
  small CLIP may store its token-embedding table sparsely: ``clip.token_embedding.ids`` (int64) and
  ``clip.token_embedding.rows``, the rows of the tokens seen in training (other rows are zero).
- ``head_tower.*`` (version 3): in a file whose ``clip.*`` is a whole CLIP, the fine-tuned text tower the text
  head was trained with (open_clip text-tower keys; its token table may be sparse in the same way). The
  training-free engine scores crops with the whole CLIP, whose two towers were trained together; the text head
  reads this tower. That is the split a published CLIP with a fine-tuned head has (the head's file holds its
  tower as ``clip.*`` with ``"tensors": "text_tower"``), in one file.

Header (safetensors metadata key ``"textsam"``), JSON::

    {"format": "textsam", "version": 3,
     "sam_model": "sam_vit_b",                 # the model config the tensors were trained for
     "parts": ["mask_decoder", "text_projector", "text_locator", "clip"],
     "clip": {"model": "ViT-B-16-quickgelu", "pretrained": "openai", "config": null, "tensors": "text_tower"},
     "text_head": {...TextHeadConfig fields...},  # null without a text head
     "text_options": {...},                     # the model's own defaults for TextOptions (may be empty)
     "training": {...}}                          # a free-form record of how the file was made

Files of the earlier formats (``textsam.bundle``, ``textsam.text_head``, ``textsam.trained``) are read
through :func:`read`, which converts them; :func:`convert` rewrites one in this format.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from ..config import TextHeadConfig
from ..errors import WeightsError

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "VERSION", "PARTS", "ClipSpec", "TextsamFile", "is_textsam_file", "read", "write",
           "convert", "head_config_from_tensors"]

FORMAT, VERSION = "textsam", 3  # 3: the head_tower part (version-2 files are read unchanged)
SAM_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
PARTS = (*SAM_PARTS, "text_projector", "text_locator", "clip", "head_tower")
TOKEN_TABLE_PARTS = ("clip", "head_tower")  # the parts whose token-embedding table may be stored sparsely


@dataclass(frozen=True)
class ClipSpec:
    """The CLIP a file belongs to: open_clip ``model`` name and ``pretrained`` tag (None: not a published
    CLIP), its open_clip ``config`` (for a CLIP outside open_clip's registry), and which of its tensors the
    file holds (``"full"``, ``"text_tower"`` or None)."""

    model: str
    pretrained: str | None = None
    config: dict | None = field(default=None, hash=False, compare=False)
    tensors: str | None = None

    @property
    def spec(self) -> str:
        """``"NAME/TAG"`` as ``--clip`` takes it (``"NAME"`` without a tag)."""
        return f"{self.model}/{self.pretrained}" if self.pretrained else self.model


@dataclass
class TextsamFile:
    """A file's header and tensors (keys with their part prefix)."""

    sam_model: str | None
    clip: ClipSpec | None
    text_head: TextHeadConfig | None
    tensors: dict[str, Tensor]
    text_options: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def parts(self) -> list[str]:
        found = {k.split(".", 1)[0] for k in self.tensors}
        return [p for p in PARTS if p in found]

    def part(self, name: str) -> dict[str, Tensor]:
        """The tensors of one part, keys without the part prefix (a sparse CLIP token table expanded)."""
        prefix = f"{name}."
        out = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        if name in TOKEN_TABLE_PARTS and "token_embedding.ids" in out:
            ids, rows = out.pop("token_embedding.ids"), out.pop("token_embedding.rows")
            vocab = int((self.clip.config or {}).get("text_cfg", {}).get("vocab_size", 49408)) if self.clip else 49408
            table = rows.new_zeros(vocab, rows.shape[1])
            table[ids] = rows
            out["token_embedding.weight"] = table
        return out


def _header(path: Path) -> dict[str, Any] | None:
    """The ``"textsam"`` JSON of a safetensors file, or None (raises WeightsError for an unreadable file)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("textsam")
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable .safetensors file ({err})") from None
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise WeightsError(f"{path}: its textsam header is not valid JSON ({err})") from None
    return meta if isinstance(meta, dict) else None


def is_textsam_file(path: str | Path) -> bool:
    """Whether ``path`` is a ``.safetensors`` file written by textsam (this format or an earlier one)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        meta = _header(p)
    except WeightsError:
        return False
    return meta is not None and str(meta.get("format", "")).startswith("textsam")


def read(path: str | Path) -> TextsamFile:
    """Read a textsam file (any version; earlier ones are converted in memory). Tensors come as stored
    (e.g. float16); loading casts them to the model's dtype."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"file not found: {p}. Check the path.")
    meta = _header(p)
    if meta is None or not str(meta.get("format", "")).startswith("textsam"):
        raise WeightsError(f"{p} is not a textsam file (no textsam header): pass a file written by textsam")
    tensors = load_file(str(p))
    fmt = meta.get("format")
    if fmt == FORMAT:
        if int(meta.get("version", 0)) > VERSION:
            raise WeightsError(f"{p} was written by a newer textsam (file version {meta.get('version')}): upgrade")
        clip = meta.get("clip")
        head = meta.get("text_head")
        try:
            head_cfg = TextHeadConfig.from_dict(head) if head else None
        except (TypeError, ValueError) as err:
            raise WeightsError(f"{p}: its text_head header does not describe a text head ({err})") from None
        return TextsamFile(meta.get("sam_model"), ClipSpec(**clip) if clip else None, head_cfg, tensors,
                           dict(meta.get("text_options") or {}), dict(meta.get("training") or {}))
    return _convert_v1(p, meta, tensors)


def write(path: str | Path, file: TextsamFile, *, dtype: torch.dtype | None = None,
          sparse_token_ids: Iterable[int] | None = None) -> Path:
    """Write ``file`` to ``path`` (a temporary name first, then renamed); returns the path.

    ``dtype``: cast floating tensors (e.g. ``torch.float16`` for a bundled model). ``sparse_token_ids``: store
    only these rows of the token-embedding tables (``clip.*`` and ``head_tower.*``; see the module docstring).
    """
    unknown = sorted({k.split(".", 1)[0] for k in file.tensors} - set(PARTS))
    if unknown:
        raise WeightsError(f"tensors of unknown parts {unknown}: a textsam file holds {', '.join(PARTS)}")
    if "head_tower" in file.parts and (file.clip is None or file.clip.tensors != "full" or file.text_head is None):
        raise WeightsError("a head_tower (the text head's own CLIP text tower) goes with a whole CLIP (clip.*) and "
                           "a text head; a head for a published CLIP keeps its tower as clip.* (text_tower)")
    tensors = dict(file.tensors)
    if sparse_token_ids is not None:
        ids = torch.as_tensor(sorted(set(sparse_token_ids)), dtype=torch.int64)
        for part in TOKEN_TABLE_PARTS:
            table = tensors.pop(f"{part}.token_embedding.weight", None)
            if table is not None:
                tensors[f"{part}.token_embedding.ids"] = ids.clone()
                tensors[f"{part}.token_embedding.rows"] = table[ids]
    out = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
           for k, v in tensors.items()}
    head = {
        "format": FORMAT, "version": VERSION, "sam_model": file.sam_model, "parts": file.parts,
        "clip": None if file.clip is None else {"model": file.clip.model, "pretrained": file.clip.pretrained,
                                                 "config": file.clip.config, "tensors": file.clip.tensors},
        "text_head": None if file.text_head is None else file.text_head.to_dict(),
        "text_options": file.text_options, "training": file.training,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        save_file(out, str(tmp), metadata={"textsam": json.dumps(head)})
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def convert(src: str | Path, dst: str | Path) -> Path:
    """Rewrite a file of an earlier textsam format in this one (tensors unchanged, keys renamed)."""
    return write(dst, read(src))


def head_config_from_tensors(tensors: Mapping[str, Tensor]) -> TextHeadConfig:
    """The :class:`TextHeadConfig` that ``text_projector.*`` / ``text_locator.*`` tensors were made with."""
    try:
        first, type_embed = tensors["text_projector.mlp.0.weight"], tensors["text_projector.text_type_embed"]
    except KeyError as err:
        raise WeightsError(f"no text projector tensors ({err.args[0]} missing)") from None
    locator: dict[str, Any] = {}
    if "text_locator.phrase.mlp.2.weight" in tensors:
        appearance = tensors["text_locator.appearance.1.weight"]
        words = tensors.get("text_locator.phrase.word_norm.weight")
        locator = {
            "locator_dim": int(tensors["text_locator.phrase.mlp.2.weight"].shape[0]),
            "locator_word_dim": 0 if words is None else int(words.shape[0]),
            "locator_appearance": "colour" if appearance.shape[1] == 6 else "embedding",
            "locator_factors": "separate" if "text_locator.factor_query.0.weight" in tensors else "joint",
            "locator_presence": "text_locator.presence.weight" in tensors,
        }
    return TextHeadConfig(clip_dim=int(first.shape[1]), token_dim=int(type_embed.shape[1]),
                          num_tokens=int(type_embed.shape[0]), hidden_dim=int(first.shape[0]), **locator)


# ------------------------------------------------------------------------------------- earlier formats
# Reading the files earlier textsam versions wrote (format 1), as :class:`TextsamFile`.
#
# - ``textsam.bundle``: a whole small model (SAM + CLIP + text head), e.g. the first bundled ``shapes_tiny``;
# - ``textsam.text_head``: a text projector (and locator) alone; a head trained with a fine-tuned CLIP text tower
#   kept that tower in the training run's ``model.safetensors`` beside it, which the conversion takes in;
# - ``textsam.trained``: a training run's ``model.safetensors`` (the parts it trained).
#
# Their keys differ from format 2 in three ways, all renamed here: the locator sat inside the projector
# (``text_projector.locator.*`` -> ``text_locator.*``), a fine-tuned tower was ``text_encoder.clip.*``
# (-> ``clip.*``), and the projector had a word path (``text_projector.word_*``) that no shipped head used: its
# output layer was zero, so it changed nothing and is dropped (a head whose word path was trained is refused).


def _convert_v1(path: Path, meta: dict[str, Any], tensors: dict[str, Tensor]) -> TextsamFile:
    """A format-1 file (header ``meta``, ``tensors``) as a format-2 :class:`TextsamFile`."""
    fmt = meta.get("format")
    if fmt == "textsam.bundle":
        tensors = _rename(path, tensors)
        clip = ClipSpec(str(meta["clip_name"]), None, meta.get("clip_config"), "full")
        return TextsamFile(meta.get("model"), clip, _head_config(path, meta.get("text_head") or {}), tensors,
                           dict(meta.get("text_options") or {}), dict(meta.get("training") or {}))
    if fmt == "textsam.text_head":
        tensors = _rename(path, tensors)
        tower = None
        if "text_encoder" in (meta.get("extra") or {}):  # trained with a fine-tuned tower, kept beside it
            run_weights = path.with_name("model.safetensors")
            if not run_weights.is_file():
                raise WeightsError(f"the text head {path} (format 1) was trained with a fine-tuned CLIP text tower "
                                   f"that lives in {run_weights}, which is missing: put the run's model.safetensors "
                                   "beside it once, and convert the head with textsam.weights.format.convert")
            tower = {k: v for k, v in _rename(run_weights, load_file(str(run_weights))).items() if k.startswith("clip.")}
            tensors.update(tower)
            logger.warning("%s: format-1 text head; its fine-tuned CLIP text tower was read from %s (convert the "
                           "head once with textsam.weights.format.convert to keep them in one file)", path, run_weights)
        clip = ClipSpec(str(meta["clip_model"]), meta.get("clip_pretrained"), None, "text_tower" if tower else None)
        training = {"recipe": meta.get("recipe", ""), **(meta.get("extra") or {})}
        return TextsamFile(meta.get("sam_model"), clip, _head_config(path, meta), tensors, {}, training)
    if fmt == "textsam.trained":
        tensors = _rename(path, tensors)
        spec = meta.get("clip")
        clip = None
        if spec:
            from ..text.clip import parse_clip_spec

            text = str(spec).removesuffix("/None")  # format 1 wrote "NAME/None" for a CLIP without a tag
            name, tag = parse_clip_spec(text)
            has_tower = any(k.startswith("clip.") for k in tensors)
            clip = ClipSpec(name, tag, None, "text_tower" if has_tower else None)
        head = head_config_from_tensors(tensors) if "text_projector.mlp.0.weight" in tensors else None
        training = {k: meta[k] for k in ("recipe", "step") if k in meta}
        return TextsamFile(meta.get("sam_model"), clip, head, tensors, {}, training)
    raise WeightsError(f"{path} has an unknown textsam format {fmt!r}: it was written by another textsam version")


def _rename(path: Path, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Format-1 keys -> format-2 keys (see the module docstring)."""
    word_out = tensors.get("text_projector.word_out.weight")
    if word_out is not None and (bool(word_out.abs().max() > 0) or
                                 bool(tensors["text_projector.word_out.bias"].abs().max() > 0)):
        raise WeightsError(f"{path}: its text projector has a trained word path, which textsam no longer has; "
                           "retrain the head with this version")
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("text_projector.word_"):
            continue
        if key.startswith("text_projector.locator."):
            key = "text_locator." + key[len("text_projector.locator."):]
        elif key.startswith("text_encoder.clip."):
            key = "clip." + key[len("text_encoder.clip."):]
        out[key] = value
    return out


def _head_config(path: Path, old: dict[str, Any]) -> TextHeadConfig:
    """A format-1 text-head description (the bundle's ``text_head`` dict or a head file's header)."""
    locator_dim = int(old.get("locator_dim") or 0)
    if locator_dim and old.get("locator_kind", "cells") != "regions":
        raise WeightsError(f"{path}: its text head has a cell locator, which textsam no longer has; retrain the "
                           "head with a region locator")
    return TextHeadConfig(
        clip_dim=int(old["clip_dim"]), token_dim=int(old["token_dim"]), num_tokens=int(old["num_tokens"]),
        hidden_dim=int(old["hidden_dim"]), locator_dim=locator_dim,
        locator_word_dim=int(old.get("word_dim") or 0) if locator_dim else 0,
        locator_appearance=str(old.get("locator_appearance") or "embedding"),
        locator_factors=str(old.get("locator_factors") or "joint"),
    )
