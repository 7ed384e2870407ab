"""State-dict formats: reading files, recognising their naming scheme, renaming, strict loading.

textsam keeps segment-anything's module and attribute names, so official SAM / MobileSAM ``.pth``
files load into our modules unchanged. The only other naming scheme we accept for SAM weights is
transformers' ``SamModel`` (hub files such as ``facebook/sam-vit-base``); :func:`hf_to_sam` is the
single place where those names are translated. textsam's own text heads hold only
``text_projector.*`` tensors.

Nothing here downloads anything; see :mod:`textsam.weights.pretrained` for that.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
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
_MAX_LISTED_IN_MESSAGE = 5  # an error message is one line: fewer keys


# --------------------------------------------------------------------------------------------- reading


def _head(path: Path, n: int = 64) -> tuple[int, bytes]:
    """Size and first ``n`` bytes of a file."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        return size, fh.read(n)


def _describe_file(path: Path) -> str:
    """A short human description of what an unreadable file seems to be."""
    try:
        size, head = _head(path)
    except OSError as exc:  # pragma: no cover - races with deletion etc.
        return f"Could not inspect it ({exc.strerror or exc})"
    if size == 0:
        return "The file is empty (0 bytes)"
    if head.startswith(b"version https://git-lfs"):
        return f"It is a Git LFS pointer ({size} bytes), not the weights themselves"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return f"It is an HTML/XML page ({size} bytes), probably an error page saved instead of the weights"
    if _kind(head) == "unknown":
        return (f"Its {size:,} bytes are neither a zip archive nor a pickle (the two torch.save formats) nor "
                "safetensors: it is not a weights file, or a badly corrupted one")
    return f"It is {size:,} bytes long and is probably truncated or corrupt (an interrupted download?)"


def _kind(head: bytes) -> str:
    """``"zip"`` (torch.save since 1.6), ``"pickle"`` (legacy torch.save, protocol 2+), ``"safetensors"``
    (an 8-byte little-endian header length, then the JSON header) or ``"unknown"``, from the first bytes."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    return "unknown"


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


_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def _torch_reason(exc: BaseException) -> str:
    """The first sentence of torch's error, or ``""`` when it is empty or gives advice textsam must not pass
    on (torch suggests ``weights_only=False``, which would run whatever code the file holds)."""
    text = " ".join(str(exc).split())
    first = text.split(". ")[0].rstrip(".")
    if not first or "weights_only" in first or "weights only" in first.lower():
        return ""
    return f" ({first[:200]})"


def _unreadable(p: Path, exc: BaseException) -> WeightsError:
    return WeightsError(f"cannot read {p} as a PyTorch checkpoint{_torch_reason(exc)}. {_describe_file(p)}. {_FIX_HINT}")


def _load_safetensors(p: Path) -> object:
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ...
        raise WeightsError(
            f"cannot read {p} as a safetensors file{_torch_reason(exc)}. {_describe_file(p)}. {_FIX_HINT}"
        ) from exc


# what torch.save itself writes into a pickle of tensors: skipped when looking for the offending global
_TORCH_OWN_GLOBALS = frozenset({"collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset",
                                "builtins.slice", "builtins.bytearray", "builtins.complex"})


def _foreign_globals(p: Path, max_pickles: int = 4) -> str | None:
    """The first class or function a (legacy torch.save or plain) pickle file names outside torch's own
    tensor-rebuilding ones, found by reading its opcodes (nothing is unpickled or run); None if none."""
    import pickletools

    strings: list[str] = []
    try:
        with p.open("rb") as fh:
            for _ in range(max_pickles):
                for op, arg, _pos in pickletools.genops(fh):
                    if isinstance(arg, str):
                        strings = [*strings[-1:], arg]
                    name = None
                    if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                        name = arg.replace(" ", ".")
                    elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                        name = ".".join(strings)
                    if name and not name.startswith("torch.") and name not in _TORCH_OWN_GLOBALS:
                        return name
    except Exception:  # noqa: BLE001 - a corrupt stream: no (more) globals to report
        return None
    return None


def _load_raw(p: Path) -> object:
    """The object in a checkpoint file: safetensors, or ``torch.load(weights_only=True)`` (tensors and plain
    containers only; nothing in the file is executed). Every failure is a :class:`WeightsError` that says
    what the file looks like and what to do; it never repeats torch's advice to load with
    ``weights_only=False``."""
    try:
        size, head = _head(p)
    except OSError as exc:
        raise WeightsError(f"cannot read {p}: {exc.strerror or exc}. Check the file's permissions.") from exc
    kind = _kind(head)
    if p.suffix == ".safetensors" or kind == "safetensors":
        return _load_safetensors(p)
    if kind == "unknown":  # empty, a web page, random bytes: torch's own message would only confuse
        raise WeightsError(f"cannot read {p} as a PyTorch checkpoint. {_describe_file(p)}. {_FIX_HINT}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a file we refuse anyway
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        name = found.group(1) if found else (_foreign_globals(p) if kind == "pickle" else None)
        if name:
            raise WeightsError(
                f"{p} holds Python objects besides tensors (it references {name}: a pickled model, "
                "training state, or code), which textsam does not unpickle for safety. If the file is yours, "
                "load it in trusted code and re-save the weights with torch.save(model.state_dict(), path); "
                "otherwise use the official checkpoint file."
            ) from None
        raise _unreadable(p, exc) from None
    except Exception as exc:  # RuntimeError (zip archive), EOFError, ...
        raise _unreadable(p, exc) from None


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
            "loading non-strictly into %s: %d missing keys %s, %d extra keys %s",
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
    """One line: what does not fit (counts and the first keys of each kind), then which model the file
    seems to belong to and what to do."""
    limit = _MAX_LISTED_IN_MESSAGE
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (in the model, not in the file): {_short_list(missing, limit)}")
    if unexpected:
        parts.append(f"{len(unexpected)} extra keys (in the file, not in the model): {_short_list(unexpected, limit)}")
    if shape_mismatch:
        shown = "; ".join(f"{k}: model {list(a)} vs file {list(b)}" for k, a, b in shape_mismatch[:limit])
        more = f"; ... ({len(shape_mismatch) - limit} more)" if len(shape_mismatch) > limit else ""
        parts.append(f"{len(shape_mismatch)} shape mismatches: {shown}{more}")
    what = "the model" if isinstance(module, nn.ModuleDict) else type(module).__name__
    head = f"the checkpoint does not fit {what}" + (" (strict load)" if strict else "")
    file_guess = guess_model_name(sd)
    model_guess = guess_model_name(module.state_dict())
    if file_guess and file_guess != model_guess:
        target = f" but the model was built as {model_guess}" if model_guess else ""
        hint = (f"The file looks like {file_guess}{target}: use --model {file_guess} "
                f"(create_model({file_guess!r}, checkpoint=...)).")
    elif file_guess:
        hint = f"The file looks like {file_guess}, like the model; it may be a modified or partial copy."
    elif sd and all(k.startswith(_TEXT_HEAD_PREFIX) for k in sd):
        hint = "The file holds only a textsam text head (text_projector.*), not SAM weights."
    else:
        hint = _foreign_hint(list(sd)).strip() or "The file matches none of textsam's models."
    return f"{head}: {'; '.join(parts)}. {hint}"
