"""``create_model``: config -> modules -> weights -> eval mode."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .config import MODEL_CONFIGS, ModelConfig, TinyViTEncoderConfig, ViTEncoderConfig
from .errors import InputError
from .model import TextSam
from .modeling.image_encoder import ImageEncoderViT
from .modeling.mask_decoder import MaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.transformer import TwoWayTransformer
from .weights.checkpoint import load_into, read_state_dict, to_sam_state_dict

logger = logging.getLogger(__name__)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(MODEL_CONFIGS)


def get_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` registered under ``name``; the error lists the known names."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def build_image_encoder(cfg: ViTEncoderConfig | TinyViTEncoderConfig) -> nn.Module:
    """The image encoder described by ``cfg`` (random weights)."""
    if isinstance(cfg, TinyViTEncoderConfig):
        from .modeling.tiny_vit import TinyViT

        return TinyViT.from_config(cfg)
    return ImageEncoderViT.from_config(cfg)


def build_sam(config: ModelConfig) -> TextSam:
    """A TextSam with random weights for ``config`` (no text parts)."""
    grid = config.embedding_size
    pcfg, dcfg = config.prompt_encoder, config.mask_decoder
    prompt_encoder = PromptEncoder(
        embed_dim=pcfg.embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.img_size, config.img_size),
        mask_in_chans=pcfg.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=dcfg.transformer_dim,
        transformer=TwoWayTransformer(
            depth=dcfg.depth,
            embedding_dim=dcfg.transformer_dim,
            num_heads=dcfg.num_heads,
            mlp_dim=dcfg.mlp_dim,
            attention_downsample_rate=dcfg.attention_downsample_rate,
        ),
        num_multimask_outputs=dcfg.num_multimask_outputs,
        iou_head_depth=dcfg.iou_head_depth,
        iou_head_hidden_dim=dcfg.iou_head_hidden_dim,
    )
    return TextSam(build_image_encoder(config.image_encoder), prompt_encoder, mask_decoder, config=config)


def load_sam_weights(model: TextSam, path: str | Path) -> None:
    """Load an official SAM/MobileSAM ``.pth`` or an HF ``SamModel`` file strictly into ``model``."""
    state = to_sam_state_dict(read_state_dict(path))
    parts = nn.ModuleDict(
        {"image_encoder": model.image_encoder, "prompt_encoder": model.prompt_encoder, "mask_decoder": model.mask_decoder}
    )
    load_into(parts, state, strict=True)
    logger.info("loaded SAM weights from %s", path)


def _random_small_clip(name: str, clip_config: dict):
    """A randomly initialised open_clip CLIP from an explicit ``model_cfg`` (our own small CLIPs)."""
    import open_clip
    from open_clip.model import CLIP

    from .text.clip import TextEncoder

    context = int(clip_config.get("text_cfg", {}).get("context_length", 77))
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=context)
    return TextEncoder(CLIP(**clip_config).eval(), tokenizer, model_name=name, pretrained=None)


def attach_text(
    model: TextSam,
    *,
    clip: str | None = None,
    pretrained: bool = True,
    text_head: str | Path | None = None,
) -> TextSam:
    """Give ``model`` a CLIP text encoder (and a trained text head, when given).

    Args:
        clip: ``"NAME/TAG"`` of an open_clip model (default: the model config's CLIP, or the one the
            text head names); ``"NAME/@/path/file"`` for local weights, ``"local-dir:/path"`` for a folder.
        pretrained: load CLIP's published weights; ``False`` gives random CLIP weights (no network).
        text_head: a text-head ``.safetensors`` trained for this SAM and CLIP.
    """
    from .text.clip import TextEncoder, parse_clip_spec
    from .text_head import load_text_head, read_text_head_info

    if clip is not None:
        clip_name, clip_tag = parse_clip_spec(clip)
    elif text_head is not None:
        info = read_text_head_info(text_head)
        clip_name, clip_tag = info.clip_model, info.clip_pretrained
    else:
        cfg = model.config.text if model.config is not None else None
        clip_name = cfg.clip_model if cfg else "ViT-B-16-quickgelu"
        clip_tag = cfg.clip_pretrained if cfg else "openai"
    projector = None
    info_extra: dict[str, str] = {}
    if text_head is not None:  # checked against the SAM and CLIP names before any CLIP is built
        projector, head_info = load_text_head(
            text_head,
            sam_model=model.config.name if model.config is not None else None,
            clip_model=clip_name,
            clip_pretrained=clip_tag,
        )
        info_extra = head_info.extra
    current = model.text_encoder
    cfg_text = model.config.text if model.config is not None else None
    if current is not None and (current.model_name, current.pretrained) == (clip_name, clip_tag if pretrained else None):
        pass
    elif not pretrained and cfg_text is not None and cfg_text.clip_config and clip_name == cfg_text.clip_model:
        model.text_encoder = _random_small_clip(clip_name, cfg_text.clip_config).to(model.device)
    else:
        model.text_encoder = TextEncoder.create(clip_name, clip_tag if pretrained else None, device=model.device)
    if projector is not None:
        if "text_encoder" in info_extra:
            _load_tuned_tower(model, Path(str(text_head)))
        model.text_projector = projector.to(model.device).eval()
    return model


def _load_tuned_tower(model: TextSam, head_path: Path) -> None:
    """A head trained with a fine-tuned CLIP text tower needs that tower: it is in the training run's
    ``model.safetensors`` beside the head (``text_encoder.clip.*``). Without it, warn: text would be wrong."""
    import warnings

    from safetensors.torch import load_file

    from .text.clip import load_text_tower, text_tower_state

    run_weights = head_path.with_name("model.safetensors")
    tower = text_tower_state(load_file(str(run_weights))) if run_weights.is_file() else {}
    if not tower:
        msg = (f"the text head {head_path} was trained with a fine-tuned CLIP text tower, but no "
               f"{run_weights.name} with its weights (text_encoder.clip.*) lies beside it: text prompts will "
               "use the original tower and give poor masks. Copy the run's model.safetensors next to the head.")
        logger.warning(msg)
        warnings.warn(msg, stacklevel=3)
        return
    load_text_tower(model.text_encoder, {k: v.to(model.device) for k, v in tower.items()}, str(run_weights))
    logger.info("loaded the fine-tuned CLIP text tower from %s", run_weights)


def _is_bundle(path: str | Path) -> bool:
    """True for a textsam bundle (a .safetensors file whose metadata says so)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return "textsam.bundle" in (f.metadata() or {}).get("textsam", "")
    except Exception:  # noqa: BLE001 - anything unreadable is left to the ordinary loader's errors
        return False


def check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a ``torch.device`` after checking that this machine has it (raises :class:`InputError`
    saying what to use instead: a CPU-only torch has no ``cuda``, only Apple GPUs have ``mps``)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {str(device)!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no usable NVIDIA GPU or driver"
            raise InputError(f"device {str(device)!r} asked for, but this machine has no CUDA device ({build}): "
                             "use --device cpu (or leave --device out)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s): use cuda:0 .. cuda:N-1")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"device {str(device)!r} asked for, but MPS (Apple GPU) is not available here: "
                         "use --device cpu (or leave --device out)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {str(device)!r} is not supported: use cpu, cuda, cuda:N or mps")
    return dev


def create_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    clip: str | None = None,
    text_head: str | Path | None = None,
) -> TextSam:
    """Build a textsam model by name and load its weights.

    Args:
        name: one of :func:`list_models`.
        checkpoint: an official ``.pth`` (segment-anything / MobileSAM) or an HF ``SamModel``
            ``.safetensors`` file (or folder); loaded with ``strict=True``.
        pretrained: without ``checkpoint``, download (or take from the cache) the published weights;
            ``False`` gives random weights and never touches the network.
        device: where to put the model (default: CPU).
        clip: load this open_clip text model now (``"NAME/TAG"``); otherwise CLIP is loaded on the
            first text prompt, from the model config (random weights when ``pretrained=False``).
        text_head: a trained text-head file for this SAM + CLIP pair (implies loading CLIP).

    Returns:
        the model in eval mode.
    """
    from .weights.pretrained import BUNDLED, bundled_path, resolve_weights

    config = get_config(name)
    device = check_device(device)
    model = build_sam(config)
    if checkpoint is not None:
        if _is_bundle(checkpoint):
            from .bundle import load_bundle

            load_bundle(checkpoint, model)
        else:
            load_sam_weights(model, checkpoint)
    elif pretrained and config.weights in BUNDLED:
        from .bundle import load_bundle

        load_bundle(bundled_path(config.weights), model)
    elif pretrained and config.weights is not None:
        load_sam_weights(model, resolve_weights(config.weights))
    elif pretrained:
        raise InputError(f"model {name!r} has no published or bundled weights: pass checkpoint=PATH (e.g. a "
                         "training run's weights), or pretrained=False for random weights")
    if device is not None:
        model = model.to(device)
    model.pretrained = pretrained
    if clip is not None or text_head is not None:
        attach_text(model, clip=clip, pretrained=pretrained, text_head=text_head)
    return model.eval()
