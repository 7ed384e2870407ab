"""State-dict formats: reading files, recognising their naming scheme, renaming, strict loading.

textsam keeps segment-anything's module and attribute names, so official SAM / MobileSAM ``.pth``
files load into our modules unchanged. The only other naming scheme we accept for SAM weights is
transformers' ``SamModel`` (hub files such as ``facebook/sam-vit-base``); :func:`hf_to_sam` is the
single place where those names are translated. textsam's own text heads hold only
``text_projector.*`` tensors.

Nothing here downloads anything; see :mod:`textsam.pretrained` for that.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from textsam.errors import CheckpointMismatchError, WeightsError

__all__ = [
    "read_state_dict",
    "detect_format",
    "hf_to_sam",
    "to_sam_state_dict",
    "load_into",
    "guess_model_name",
]

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

_FIX_HINT = (
    "Delete the file and download it again, or run `textsam weights verify` to compare it with the "
    "published sha256."
)
_WRAPPER_KEYS = ("model", "state_dict")
_PREFIXES_TO_STRIP = ("module.", "_orig_mod.")
_SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_HF_MARKERS = (
    "vision_encoder.",
    "shared_image_embedding.",
    "prompt_encoder.shared_embedding.",
    "prompt_encoder.point_embed.",
    "prompt_encoder.mask_embed.",
    "mask_decoder.upscale_conv",
    "mask_decoder.upscale_layer_norm",
)
_TEXT_HEAD_PREFIX = "text_projector."
_MAX_LISTED = 20


# --------------------------------------------------------------------------------------------- reading


def _describe_file(path: Path) -> str:
    """A short human description of what an unreadable file seems to be."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:  # pragma: no cover - races with deletion etc.
        return f"Could not inspect it ({exc})"
    if size == 0:
        return "The file is empty (0 bytes)"
    if head.startswith(b"version https://git-lfs"):
        return f"It is a Git LFS pointer ({size} bytes), not the weights themselves"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return f"It is an HTML/XML page ({size} bytes), probably an error page saved instead of the weights"
    return f"It is {size:,} bytes long and is probably truncated or corrupt (an interrupted download?)"


def _is_not_weights(path: Path) -> bool:
    """True for files that are clearly not weights at all (empty, LFS pointer, web page)."""
    return "truncated or corrupt" not in _describe_file(path)


def _resolve_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (p / name).is_file():
                return p / name
        raise WeightsError(
            f"{p} is a folder without model.safetensors or pytorch_model.bin; pass the path of the "
            "checkpoint file itself."
        )
    if not p.is_file():
        raise WeightsError(
            f"checkpoint file not found: {p}. Check the path, or download the weights again "
            "(create_model(name) downloads the published files; `textsam weights verify` checks them)."
        )
    return p


def _load_raw(p: Path) -> object:
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as exc:  # SafetensorError, OSError, ...
            raise WeightsError(
                f"cannot read {p} as a safetensors file: {exc}. {_describe_file(p)}. {_FIX_HINT}"
            ) from exc
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() and not _is_not_weights(p):
            raise WeightsError(
                f"{p} holds Python objects besides tensors (a pickled model or training state?), which "
                "textsam does not unpickle for safety. Load it in trusted code and re-save the weights "
                "with torch.save(model.state_dict(), path), or use the official checkpoint file."
            ) from exc
        raise WeightsError(
            f"cannot read {p} as a PyTorch checkpoint: {exc}. {_describe_file(p)}. {_FIX_HINT}"
        ) from exc
    except Exception as exc:  # RuntimeError (zip archive), EOFError, ...
        raise WeightsError(
            f"cannot read {p} as a PyTorch checkpoint: {exc}. {_describe_file(p)}. {_FIX_HINT}"
        ) from exc


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES_TO_STRIP:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def read_state_dict(path: str | Path) -> StateDict:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict on the CPU.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(map_location="cpu", weights_only=True)`` (tensors only, nothing executed). A folder
    written by ``save_pretrained`` is accepted too (its ``model.safetensors`` is read). A top-level
    ``"model"`` or ``"state_dict"`` wrapper is unwrapped and ``module.`` prefixes (DataParallel /
    DDP) and ``_orig_mod.`` prefixes (``torch.compile``) are stripped. Names are returned unchanged otherwise; see :func:`to_sam_state_dict`.

    Raises:
        WeightsError: the file is missing, empty, truncated or corrupt, is not a state dict, or holds
            pickled Python objects; the message says what the file looks like and what to do.
    """
    p = _resolve_path(path)
    obj = _load_raw(p)

    for _ in range(2):
        if isinstance(obj, Mapping):
            wrapped = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if wrapped is not None:
                obj = wrapped
    if isinstance(obj, nn.Module):  # pragma: no cover - weights_only=True never returns modules
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"{p} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors). "
            "Pass a checkpoint saved with torch.save(model.state_dict(), path) or a .safetensors file."
        )

    tensors: StateDict = {}
    skipped: list[str] = []
    for key, value in obj.items():
        if isinstance(value, torch.Tensor) and isinstance(key, str):
            tensors[_strip_prefix(key)] = value
        else:
            skipped.append(str(key))
    if not tensors:
        raise WeightsError(
            f"{p} holds no tensors (top-level keys: {_short_list(skipped, 10)}); it is not a model "
            "checkpoint. Pass the weights file itself."
        )
    if skipped:
        logger.warning("%s: ignoring %d non-tensor entries: %s", p, len(skipped), _short_list(skipped, 10))
    logger.debug("read %d tensors from %s", len(tensors), p)
    return tensors


# ---------------------------------------------------------------------------------------------- formats


def _short_list(keys: list[str] | set[str], limit: int = _MAX_LISTED) -> str:
    keys = sorted(keys) if isinstance(keys, set) else list(keys)
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def _foreign_hint(keys: list[str]) -> str:
    """Name known checkpoint families that textsam does not load."""
    if any(k.startswith(("image_encoder.trunk.", "memory_attention.", "memory_encoder.")) for k in keys):
        return " The names look like a SAM 2 checkpoint, which textsam does not load."
    if any(".hf_token." in k or ".hf_mlp." in k or "compress_vit_feat" in k for k in keys):
        return " The names look like a SAM-HQ checkpoint, which textsam does not load."
    return ""


def _looks_hf(keys: list[str]) -> bool:
    return any(k.startswith(_HF_MARKERS) for k in keys)


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Tell which naming scheme a state dict uses.

    Returns:
        ``"hf"`` for transformers' ``SamModel`` names (``vision_encoder.*``,
        ``prompt_encoder.shared_embedding.*``, ...), ``"sam"`` for official segment-anything /
        MobileSAM names (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``, possibly with
        extra ``text_projector.*`` tensors), ``"textsam_text_head"`` when every key starts with
        ``text_projector.``.

    Raises:
        WeightsError: none of these; the message lists a few of the keys.
    """
    keys = list(state_dict)
    if not keys:
        raise WeightsError("the state dict is empty: the file holds no weights.")
    if _looks_hf(keys):
        return "hf"
    if any(k.startswith(_SAM_PREFIXES) for k in keys):
        return "sam"
    if all(k.startswith(_TEXT_HEAD_PREFIX) for k in keys):
        return "textsam_text_head"
    raise WeightsError(
        f"unrecognised checkpoint layout ({len(keys)} tensors, e.g. {_short_list(keys[:8], 8)}). "
        "textsam reads official segment-anything / MobileSAM files, transformers SamModel files and "
        "its own text heads." + _foreign_hint(keys)
    )


# ---------------------------------------------------------------------------------- HF -> official names

_HF_PE = "prompt_encoder.shared_embedding.positional_embedding"
_HF_SHARED_PE = "shared_image_embedding.positional_embedding"
_SAM_PE = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"

# (pattern on the full key, replacement); the first match wins.
_HF_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        # vision encoder
        (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
        (r"^vision_encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"image_encoder.blocks.\1.norm\2."),
        (r"^vision_encoder\.layers\.(\d+)\.", r"image_encoder.blocks.\1."),
        (r"^vision_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
        (r"^vision_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
        (r"^vision_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
        (r"^vision_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
        (r"^vision_encoder\.", "image_encoder."),
        # prompt encoder
        (rf"^{re.escape(_HF_PE)}$", _SAM_PE),
        (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
        (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
        (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
        (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
        (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
        (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
        # mask decoder
        (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
        (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
        (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
        (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
        (
            r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.",
            r"mask_decoder.transformer.layers.\1.norm\2.",
        ),
    ]
]
# transformers' SamFeedForward: proj_in, layers.0..n-1, proj_out  ==  official MLP layers.0..n+1
_HF_MLP = re.compile(
    r"^(mask_decoder\.(?:iou_prediction_head|output_hypernetworks_mlps\.\d+))\.(proj_in|proj_out|layers\.(\d+))\.(.+)$"
)


def hf_to_sam(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a transformers ``SamModel`` state dict to official segment-anything names.

    This is the reverse of transformers' ``convert_sam_to_hf.py`` and the only place in textsam that
    knows transformers' names. Tensors are not copied or changed, only renamed. The point-encoding
    Gaussian matrix appears twice in HF files (``shared_image_embedding.positional_embedding`` and
    ``prompt_encoder.shared_embedding.positional_embedding``, ``save_pretrained`` keeps only the
    first); one copy becomes ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``. Keys
    that no rule knows are passed through unchanged, so a strict load reports them.

    Raises:
        WeightsError: the two copies of the positional matrix differ.
    """
    sd = dict(state_dict)
    shared = sd.pop(_HF_SHARED_PE, None)
    if shared is not None:
        if _HF_PE in sd:
            other = sd[_HF_PE]
            comparable = other is not shared and not (other.is_meta or shared.is_meta)
            if other.shape != shared.shape or (comparable and not torch.equal(other, shared)):
                raise WeightsError(
                    f"the HF checkpoint holds two different point-encoding matrices ({_HF_SHARED_PE} and "
                    f"{_HF_PE}); SAM uses one for both. The file is inconsistent: re-export it."
                )
        else:
            sd[_HF_PE] = shared

    mlp_hidden: dict[str, int] = {}
    for key in sd:
        m = _HF_MLP.match(key)
        if m and m.group(3) is not None:
            mlp_hidden[m.group(1)] = max(mlp_hidden.get(m.group(1), 0), int(m.group(3)) + 1)

    out: StateDict = {}
    for key, value in sd.items():
        new = _map_hf_key(key, mlp_hidden)
        if new in out:
            raise WeightsError(
                f"two HF keys map to the same official name {new!r}; the file is not a SamModel."
            )
        out[new] = value
    return out


def _map_hf_key(key: str, mlp_hidden: dict[str, int]) -> str:
    m = _HF_MLP.match(key)
    if m:
        prefix, part, index, rest = m.groups()
        if part == "proj_in":
            i = 0
        elif part == "proj_out":
            i = mlp_hidden.get(prefix, 0) + 1
        else:
            i = int(index) + 1
        return f"{prefix}.layers.{i}.{rest}"
    for pattern, repl in _HF_RULES:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            return new
    return key


def to_sam_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Detect the naming scheme and return a dict with official segment-anything names.

    Official and textsam-text-head dicts are returned as a shallow copy; HF dicts go through
    :func:`hf_to_sam`. Raises :class:`WeightsError` for unknown layouts (see :func:`detect_format`).
    """
    fmt = detect_format(state_dict)
    if fmt == "hf":
        logger.info("converting a transformers SamModel state dict to official SAM names")
        return hf_to_sam(state_dict)
    return dict(state_dict)


# ------------------------------------------------------------------------------------------ model guess


def guess_model_name(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Guess which ``textsam.list_models()`` entry a state dict (or a model's own) belongs to.

    Uses the image-encoder shapes: ViT width and depth (``image_encoder.patch_embed.proj.weight``,
    768/1024/1280 -> ``sam_vit_b/l/h``) or TinyViT stages (``image_encoder.layers.*`` ->
    ``mobile_sam``). HF names are understood too. Returns ``None`` when there is no image encoder or
    no known variant matches.
    """
    from textsam.config import MODEL_CONFIGS, TinyViTEncoderConfig, ViTEncoderConfig

    keys = list(state_dict)
    sd = hf_to_sam(state_dict) if _looks_hf(keys) else state_dict
    proj = sd.get("image_encoder.patch_embed.proj.weight")
    if proj is not None and proj.ndim == 4:
        width = int(proj.shape[0])
        depth = len({k.split(".")[2] for k in sd if k.startswith("image_encoder.blocks.")})
        vits = [c for c in MODEL_CONFIGS.values() if isinstance(c.image_encoder, ViTEncoderConfig)]
        for exact in (True, False):
            for cfg in vits:
                enc = cfg.image_encoder
                if enc.embed_dim == width and (not exact or enc.depth == depth):
                    return cfg.name
        return None
    if any(k.startswith("image_encoder.layers.") for k in sd):
        stem = sd.get("image_encoder.patch_embed.seq.2.c.weight")
        tinys = [c for c in MODEL_CONFIGS.values() if isinstance(c.image_encoder, TinyViTEncoderConfig)]
        for cfg in tinys:
            if stem is None or int(stem.shape[0]) == cfg.image_encoder.embed_dims[0]:
                return cfg.name
    return None


# -------------------------------------------------------------------------------------------- loading


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
    """Load ``state_dict`` into ``module``, explaining any mismatch.

    A state dict with transformers ``SamModel`` names is renamed first (:func:`hf_to_sam`). Tensors are
    copied into the module's parameters/buffers (cast to their dtype). With ``strict=False`` missing and
    unexpected keys are only logged; differing shapes always fail.

    Raises:
        CheckpointMismatchError: keys missing from the file, keys the module does not have (strict only)
            or different shapes. The message lists the first keys of each kind with counts and names the
            model the file probably belongs to.
    """
    sd = dict(state_dict)
    if _looks_hf(list(sd)):
        sd = hf_to_sam(sd)
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shape_mismatch = [
        (k, tuple(expected[k].shape), tuple(sd[k].shape))
        for k in expected
        if k in sd and tuple(expected[k].shape) != tuple(sd[k].shape)
    ]
    if shape_mismatch or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(
            _mismatch_message(module, sd, missing, unexpected, shape_mismatch, strict), missing, unexpected
        )
    if missing or unexpected:
        logger.warning(
            "loading non-strictly into %s: %d missing keys %s, %d unexpected keys %s",
            type(module).__name__,
            len(missing),
            _short_list(missing),
            len(unexpected),
            _short_list(unexpected),
        )
    module.load_state_dict(sd, strict=strict)


def _mismatch_message(
    module: nn.Module,
    sd: Mapping[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    strict: bool,
) -> str:
    lines = [
        f"the checkpoint does not fit {type(module).__name__}" + (" (strict load)" if strict else "") + ":"
    ]
    if missing:
        lines.append(f"  {len(missing)} missing keys (in the model, not in the file): {_short_list(missing)}")
    if unexpected:
        lines.append(
            f"  {len(unexpected)} unexpected keys (in the file, not in the model): {_short_list(unexpected)}"
        )
    if shape_mismatch:
        shown = "; ".join(
            f"{k}: model {list(a)} vs file {list(b)}" for k, a, b in shape_mismatch[:_MAX_LISTED]
        )
        more = (
            f"; ... ({len(shape_mismatch) - _MAX_LISTED} more)" if len(shape_mismatch) > _MAX_LISTED else ""
        )
        lines.append(f"  {len(shape_mismatch)} shape mismatches: {shown}{more}")
    file_guess = guess_model_name(sd)
    model_guess = guess_model_name(module.state_dict())
    if file_guess and file_guess != model_guess:
        target = f" but the model was built as {model_guess}" if model_guess else ""
        lines.append(
            f"The file looks like {file_guess}{target}: create the model with "
            f"create_model({file_guess!r}, checkpoint=...)."
        )
    elif file_guess:
        lines.append(
            f"The file looks like {file_guess}, like the model; it may be a modified or partial copy."
        )
    elif sd and all(k.startswith(_TEXT_HEAD_PREFIX) for k in sd):
        lines.append("The file holds only a textsam text head (text_projector.*), not SAM weights.")
    else:
        hint = _foreign_hint(list(sd))
        lines.append(hint.strip() or "The file matches none of textsam's models.")
    return "\n".join(lines)
