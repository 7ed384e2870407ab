"""Model variants as data: one frozen dataclass per component and a table of named configs.

Every number here matches the official builders (segment-anything ``build_sam.py`` and MobileSAM
``build_sam_vit_t``) so that the published checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ViTEncoderConfig:
    """SAM's ViT image encoder (``ImageEncoderViT``).

    The image is ``img_size`` x ``img_size`` pixels; the embedding is
    ``(out_chans, img_size // patch_size, img_size // patch_size)``.
    """

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class TinyViTEncoderConfig:
    """MobileSAM's TinyViT image encoder; the embedding is ``(out_chans, img_size // 16, img_size // 16)``."""

    img_size: int = 1024
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    num_classes: int = 1000
    out_chans: int = 256

    @property
    def embedding_size(self) -> int:
        return self.img_size // 16


@dataclass(frozen=True)
class PromptEncoderConfig:
    """SAM's prompt encoder. Low-resolution masks are ``4 * image_embedding_size`` square."""

    embed_dim: int = 256
    mask_in_chans: int = 16


@dataclass(frozen=True)
class MaskDecoderConfig:
    """SAM's mask decoder with its two-way transformer."""

    transformer_dim: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


@dataclass(frozen=True)
class TextConfig:
    """The CLIP model used for text prompts (open_clip name and pretrained tag)."""

    clip_model: str = "ViT-B-16-quickgelu"
    clip_pretrained: str | None = "openai"
    num_text_tokens: int = 2
    # An open_clip ``model_cfg`` for CLIPs that are not in open_clip's registry (our own small ones):
    # used to build the architecture, e.g. with random weights when ``pretrained=False``.
    clip_config: dict | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True)
class TextHeadConfig:
    """A learned text head: the projector (pooled CLIP embedding -> ``num_tokens`` decoder tokens) and,
    with ``locator_dim > 0``, a region locator (phrase x candidate object masks -> the object to click).

    clip_dim: width ``D`` of the pooled CLIP embedding. token_dim: the decoder's token width ``C`` (256 for
    SAM; also the image embedding's channels). hidden_dim: the projector MLP's width. locator_dim: the
    locator's phrase and region vector width (0: no locator). locator_word_dim: > 0 when the locator's phrase
    vector also reads the CLIP tower's per-token features (their width). locator_appearance: ``"embedding"``
    (the image embedding averaged over a candidate) or ``"colour"`` (its pixels' colour statistics).
    locator_factors: ``"joint"`` (one match over all candidate features) or ``"separate"`` (a sum of
    silhouette, appearance and geometry matches). locator_presence: the locator also answers whether each
    candidate shows what the phrase names (a logistic readout of its content matches, trained with phrases
    that name nothing in the image), which then is the text request's presence.
    """

    clip_dim: int
    token_dim: int = 256
    num_tokens: int = 2
    hidden_dim: int = 512
    locator_dim: int = 0
    locator_word_dim: int = 0
    locator_appearance: str = "embedding"
    locator_factors: str = "joint"
    locator_presence: bool = False

    def __post_init__(self) -> None:
        if min(self.clip_dim, self.token_dim, self.num_tokens, self.hidden_dim) < 1:
            raise ValueError(f"text head sizes must be positive: {self}")
        if self.locator_dim < 0 or self.locator_word_dim < 0:
            raise ValueError(f"locator sizes must be >= 0: {self}")
        if self.locator_appearance not in ("embedding", "colour"):
            raise ValueError(f"locator_appearance must be 'embedding' or 'colour', got {self.locator_appearance!r}")
        if self.locator_factors not in ("joint", "separate"):
            raise ValueError(f"locator_factors must be 'joint' or 'separate', got {self.locator_factors!r}")
        if self.locator_presence and not self.locator_dim:
            raise ValueError("locator_presence needs a locator (locator_dim > 0)")

    @property
    def has_locator(self) -> bool:
        return self.locator_dim > 0

    def to_dict(self) -> dict[str, int | str | bool]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict) -> TextHeadConfig:
        """From :meth:`to_dict`'s form; unknown keys are an error (``ValueError`` naming them)."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown text-head fields {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """A complete textsam variant. ``weights`` names an entry of ``textsam.weights.pretrained.WEIGHTS``."""

    name: str
    image_encoder: ViTEncoderConfig | TinyViTEncoderConfig
    prompt_encoder: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    weights: str | None = None

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def embedding_size(self) -> int:
        return self.image_encoder.embedding_size


# The small CLIP trained from scratch for shapes_tiny (contrastive crops vs phrases; real CLIP tokenizer).
SHAPES_TINY_CLIP_CFG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
    "quick_gelu": False,
}

# The bundled demo model, trained by this project on its synthetic shapes data (docs/shapes_tiny.md).
# 128 px images, patch 4 -> 32x32 embedding of width 128, 128x128 low-res masks (one per input pixel);
# its CLIP is a small open_clip model stored in the same bundle file.
SHAPES_TINY = ModelConfig(
    name="shapes_tiny",
    image_encoder=ViTEncoderConfig(
        img_size=128,
        patch_size=4,
        embed_dim=128,
        depth=6,
        num_heads=4,
        out_chans=128,
        window_size=0,
        global_attn_indexes=(0, 1, 2, 3, 4, 5),
    ),
    prompt_encoder=PromptEncoderConfig(embed_dim=128, mask_in_chans=16),
    mask_decoder=MaskDecoderConfig(transformer_dim=128, depth=2, num_heads=4, mlp_dim=512, iou_head_hidden_dim=128),
    text=TextConfig(
        clip_model="shapes_tiny_clip", clip_pretrained=None, num_text_tokens=2, clip_config=SHAPES_TINY_CLIP_CFG
    ),
    weights="shapes_tiny",
)

MODEL_CONFIGS: dict[str, ModelConfig] = {
    "sam_vit_b": ModelConfig(
        name="sam_vit_b",
        image_encoder=ViTEncoderConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
        weights="sam_vit_b",
    ),
    "sam_vit_l": ModelConfig(
        name="sam_vit_l",
        image_encoder=ViTEncoderConfig(
            embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
        ),
        weights="sam_vit_l",
    ),
    "sam_vit_h": ModelConfig(
        name="sam_vit_h",
        image_encoder=ViTEncoderConfig(
            embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
        ),
        weights="sam_vit_h",
    ),
    "mobile_sam": ModelConfig(
        name="mobile_sam",
        image_encoder=TinyViTEncoderConfig(),
        weights="mobile_sam",
    ),
    "shapes_tiny": SHAPES_TINY,
}
