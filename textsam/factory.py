"""``create_model``: config -> modules -> weights -> eval mode."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .config import MODEL_CONFIGS, ModelConfig, TinyViTEncoderConfig, ViTEncoderConfig
from .errors import InputError, WeightsError
from .model import TextSam
from .modeling.image_encoder import ImageEncoderViT
from .modeling.mask_decoder import MaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.transformer import TwoWayTransformer
from .weights.checkpoint import load_into, read_state_dict, to_sam_state_dict

if TYPE_CHECKING:
    from .weights.format import TextsamFile

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


def build_sam(config: ModelConfig, *, init: bool = True) -> TextSam:
    """A TextSam with random weights for ``config`` (no text parts).

    ``init=False``: for a strict load that overwrites every parameter and buffer (:func:`load_sam_weights`), the
    image encoder, where nearly all the parameters are, is made on the meta device and given uninitialised
    storage instead of random values (ViT-H's random initialisation alone took 2.35 s, ViT-B's 0.43 s, on the
    2-core CPU). An encoder with non-persistent buffers (TinyViT's attention index tables, which no checkpoint
    holds) is built as usual, and so are the small prompt encoder and mask decoder: the prompt encoder's random
    Fourier matrix (``scale * randn``) would run through a Python meta kernel, whose first call imports
    ``torch._dynamo`` (0.9 s)."""
    encoder = None
    if not init and not isinstance(config.image_encoder, TinyViTEncoderConfig):
        with torch.device("meta"):
            encoder = build_image_encoder(config.image_encoder)
        if any(m._non_persistent_buffers_set for m in encoder.modules()):
            encoder = None
        else:
            encoder = encoder.to_empty(device="cpu")
    return TextSam(encoder if encoder is not None else build_image_encoder(config.image_encoder),
                   *_prompt_parts(config), config=config)


def _prompt_parts(config: ModelConfig) -> tuple[PromptEncoder, MaskDecoder]:
    """The prompt encoder and mask decoder of ``config``, randomly initialised."""
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
    return prompt_encoder, mask_decoder


def load_sam_weights(model: TextSam, path: str | Path) -> None:
    """Load an official SAM/MobileSAM ``.pth`` or an HF ``SamModel`` file strictly into ``model``."""
    state = to_sam_state_dict(read_state_dict(path))
    parts = nn.ModuleDict(
        {"image_encoder": model.image_encoder, "prompt_encoder": model.prompt_encoder, "mask_decoder": model.mask_decoder}
    )
    load_into(parts, state, strict=True)
    logger.info("loaded SAM weights from %s", path)


def _clip_name_tag(model: TextSam, clip: str | None, head: TextsamFile | None) -> tuple[str, str | None]:
    """The CLIP to use: ``clip`` (``"NAME/TAG"``), else the text head's, else the model config's."""
    from .text.clip import DEFAULT_CLIP, parse_clip_spec

    if clip is not None:
        return parse_clip_spec(clip)
    if head is not None and head.clip is not None:
        return head.clip.model, head.clip.pretrained
    cfg = model.config.text if model.config is not None else None
    return (cfg.clip_model, cfg.clip_pretrained) if cfg is not None else DEFAULT_CLIP


def fast_clip(name: str, clip: str | None = None, text_head: str | Path | bool | None = None,
              checkpoint: str | Path | None = None) -> str | None:
    """The CLIP (``"NAME/TAG"``) the CPU fast path builds model ``name`` with: ``clip`` when one is asked for;
    else :data:`~textsam.text.clip.FAST_CLIP` (OpenAI's ViT-B/32) for a model whose config names the default
    published CLIP (OpenAI's ViT-B/16: the published SAMs), unless a text head file or a textsam checkpoint
    (which may carry its own head and CLIP) is given; else None: the model's own CLIP (a bundled model such as
    ``shapes_tiny`` keeps the CLIP its head was trained with)."""
    from .text.clip import DEFAULT_CLIP, FAST_CLIP
    from .weights.format import is_textsam_file

    if clip is not None:
        return clip
    cfg = get_config(name).text
    if cfg is None or (cfg.clip_model, cfg.clip_pretrained) != DEFAULT_CLIP or cfg.clip_config:
        return None
    if isinstance(text_head, (str, Path)) or (checkpoint is not None and is_textsam_file(checkpoint)):
        return None
    return "/".join(FAST_CLIP)


def attach_text(
    model: TextSam,
    *,
    clip: str | None = None,
    pretrained: bool = True,
    text_head: str | Path | None = None,
) -> TextSam:
    """Give ``model`` a CLIP text encoder (and a trained text head, when given).

    Args:
        clip: ``"NAME/TAG"`` of an open_clip model (default: the text head's CLIP, else the model config's);
            ``"NAME/@/path/file"`` for local weights, ``"local-dir:/path"`` for a folder.
        pretrained: load CLIP's published weights; ``False`` gives random CLIP weights (no network).
        text_head: a textsam file holding a text head trained for this SAM and CLIP (and the fine-tuned CLIP
            text tower it was trained with, when there was one).
    """
    from .text.clip import TextEncoder

    head = read_text_head(text_head, model, clip) if text_head is not None else None
    name, tag = _clip_name_tag(model, clip, head)
    current = model.text_encoder
    cfg_text = model.config.text if model.config is not None else None
    if current is not None and (current.model_name, current.pretrained) == (name, tag if pretrained else None):
        pass
    elif cfg_text is not None and cfg_text.clip_config and name == cfg_text.clip_model and (
            not pretrained or cfg_text.clip_pretrained is None):
        model.text_encoder = TextEncoder.from_config(name, cfg_text.clip_config, device=model.device)
        model.engine_encoder = None  # the CLIP asked for scores too
    else:
        model.text_encoder = TextEncoder.create(name, tag if pretrained else None, device=model.device)
        model.engine_encoder = None
    if head is not None:
        _load_parts(model, head, str(text_head))
    return model


def read_text_head(path: str | Path, model: TextSam, clip: str | None = None) -> TextsamFile:
    """A textsam file with a text head, checked against ``model``'s SAM and the CLIP asked for (``clip``):
    the error names the models the head needs."""
    from .weights.format import read

    head = read(path)
    if head.text_head is None:
        raise WeightsError(f"{path} holds no text head (its parts: {', '.join(head.parts) or 'none'})")
    wrong = []
    sam_name = model.config.name if model.config is not None else None
    if sam_name is not None and head.sam_model not in (None, sam_name):
        wrong.append(f"SAM model {head.sam_model!r} (this model is {sam_name!r})")
    if clip is not None and head.clip is not None:
        from .text.clip import parse_clip_spec

        if parse_clip_spec(clip) != (head.clip.model, head.clip.pretrained):
            wrong.append(f"CLIP {head.clip.spec!r} (you asked for {clip!r})")
    if wrong:
        use_clip = head.clip.spec if head.clip is not None else "NAME/TAG"
        raise WeightsError(
            f"the text head {path} was trained for " + " and ".join(wrong) + f". Use --model {head.sam_model} "
            f"--clip {use_clip} (create_model({head.sam_model!r}, clip={use_clip!r}, text_head=...)), or a head "
            "trained for your models."
        )
    return head


def _load_parts(model: TextSam, file: TextsamFile, source: str) -> None:
    """Load every part a textsam file holds into ``model`` (strictly, part by part), building the text head
    from its config and, for a CLIP textsam trained itself, the CLIP from its open_clip config."""
    from .text.clip import TextEncoder, load_text_tower
    from .text.locator import RegionLocator
    from .text.projector import TextProjector

    def floats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        state = file.part(part)
        if state:
            load_into(getattr(model, part), floats(state), strict=True)
    clip_state = file.part("clip")
    if clip_state and file.clip is not None and file.clip.tensors == "full":
        if file.clip.config is None:
            raise WeightsError(f"{source} holds a whole CLIP but not its open_clip config")
        model.text_encoder = TextEncoder.from_config(file.clip.model, file.clip.config, clip_state, device=model.device)
        model.engine_encoder = None
        head_tower = file.part("head_tower")
        if head_tower:  # the head reads its own fine-tuned tower; the engine keeps the CLIP trained whole
            model.engine_encoder, model.text_encoder = model.text_encoder, model.text_encoder.text_copy()
            load_text_tower(model.text_encoder, {k: v.to(model.device) for k, v in floats(head_tower).items()},
                            f"{source} (head_tower)")
    elif clip_state:
        if model.text_encoder is None:
            raise WeightsError(f"{source} holds a fine-tuned CLIP text tower: attach its CLIP first")
        if model.engine_encoder is None:  # the engine keeps the CLIP whose towers were trained together
            model.engine_encoder, model.text_encoder = model.text_encoder, model.text_encoder.text_copy()
        load_text_tower(model.text_encoder, {k: v.to(model.device) for k, v in floats(clip_state).items()}, source)
    if model.engine_encoder is not None:  # never trained by a text-head run
        model.engine_encoder.requires_grad_(False)
    if file.text_head is not None:
        projector = TextProjector(file.text_head)
        load_into(projector, floats(file.part("text_projector")), strict=True)
        model.text_projector = projector.to(model.device).eval()
        model.text_locator = None
        if file.text_head.has_locator:
            locator = RegionLocator(file.text_head)
            load_into(locator, floats(file.part("text_locator")), strict=True)
            model.text_locator = locator.to(model.device).eval()
    model.default_text_options = dict(file.text_options)


def load_textsam_file(model: TextSam, path: str | Path, *, pretrained_clip: bool = True) -> None:
    """Load a textsam file that holds a whole SAM (and possibly its CLIP and text head) into ``model``."""
    from .text.clip import TextEncoder
    from .weights.format import read

    file = read(path)
    missing = [p for p in ("image_encoder", "prompt_encoder", "mask_decoder") if not file.part(p)]
    if missing:
        raise WeightsError(
            f"{path} holds no {', '.join(missing)} weights, so it cannot stand for a whole SAM: a training run "
            "that froze parts exports only what it trained. Pass the SAM weights as checkpoint= and this file "
            "as text_head= (CLI: --checkpoint SAM --text-head FILE)."
        )
    if model.config is not None and file.sam_model not in (None, model.config.name):
        raise WeightsError(f"{path} was trained for {file.sam_model!r}, not {model.config.name!r}: use "
                           f"--model {file.sam_model}")
    if file.clip is not None and file.clip.tensors == "text_tower":
        model.text_encoder = TextEncoder.create(file.clip.model, file.clip.pretrained if pretrained_clip else None,
                                                device=model.device)
    _load_parts(model, file, str(path))


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
    text_head: str | Path | bool | None = None,
) -> TextSam:
    """Build a textsam model by name and load its weights.

    Args:
        name: one of :func:`list_models`.
        checkpoint: an official ``.pth`` (segment-anything / MobileSAM), an HF ``SamModel`` ``.safetensors``
            file (or folder), or a textsam file holding the whole SAM (and whatever text parts it has); loaded
            with ``strict=True``.
        pretrained: without ``checkpoint``, download (or take from the cache) the published weights;
            ``False`` gives random weights and never touches the network.
        device: where to put the model (default: CPU).
        clip: load this open_clip text model now (``"NAME/TAG"``); otherwise CLIP is loaded on the
            first text prompt, from the model config (random weights when ``pretrained=False``).
        text_head: a textsam file with a text head trained for this SAM + CLIP pair (implies loading CLIP);
            ``False`` drops the text head a bundled model carries, so text goes through the training-free
            engine alone (same SAM and CLIP).

    Returns:
        the model in eval mode.
    """
    from .weights.format import is_textsam_file
    from .weights.pretrained import BUNDLED, bundled_path, resolve_weights

    config = get_config(name)
    device = check_device(device)
    # official or published SAM weights are loaded strictly: no random values are made only to be overwritten
    official = checkpoint is not None and not is_textsam_file(checkpoint)
    published = checkpoint is None and pretrained and config.weights is not None and config.weights not in BUNDLED
    model = build_sam(config, init=not (official or published))
    if checkpoint is not None:
        if is_textsam_file(checkpoint):
            load_textsam_file(model, checkpoint, pretrained_clip=pretrained)
        else:
            load_sam_weights(model, checkpoint)
    elif pretrained and config.weights in BUNDLED:
        load_textsam_file(model, bundled_path(config.weights), pretrained_clip=False)
    elif pretrained and config.weights is not None:
        load_sam_weights(model, resolve_weights(config.weights))
    elif pretrained:
        raise InputError(f"model {name!r} has no published or bundled weights: pass checkpoint=PATH (e.g. a "
                         "training run's weights), or pretrained=False for random weights")
    if device is not None:
        model = model.to(device)
    model.pretrained = pretrained
    if text_head is False:
        model.text_projector = model.text_locator = None
        if model.engine_encoder is not None:  # the head's own text tower has no reader left
            model.text_encoder, model.engine_encoder = model.engine_encoder, None
        text_head = None
    elif text_head is True:
        raise InputError("text_head takes a file, False (no head) or None (the model's own), not True")
    if clip is not None or text_head is not None:
        attach_text(model, clip=clip, pretrained=pretrained, text_head=text_head)
    return model.eval()
