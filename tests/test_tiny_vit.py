"""TinyViT (MobileSAM image encoder): checkpoint layout, parity with timm's TinyViT, tiny-config training."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from textsam.config import TinyViTEncoderConfig
from textsam.modeling.tiny_vit import Conv2d_BN, TinyViT

# Measured on MobileSAM's own TinyViT (ultralytics' copy of mobile_sam/modeling/tiny_vit_sam.py, built with
# build_sam_vit_t's arguments): 302 encoder keys holding 6_075_415 elements (incl. BatchNorm buffers);
# with segment-anything's prompt encoder (17 keys, 6_476) and mask decoder (120 keys, 4_058_340) the
# full mobile_sam.pt layout is 439 keys / 10_140_231 elements.
ENCODER_KEYS = 302
ENCODER_ELEMENTS = 6_075_415
MOBILE_SAM_KEYS = 439
MOBILE_SAM_ELEMENTS = 10_140_231

DIMS = (64, 128, 160, 320)
DEPTHS = (2, 2, 6, 2)
HEADS = (2, 4, 5, 10)
WINDOWS = (7, 7, 14, 7)


def _conv_bn(prefix: str, cin: int, cout: int, k: int, groups: int = 1) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.c.weight": (cout, cin // groups, k, k)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.bn.{name}"] = (cout,)
    shapes[f"{prefix}.bn.num_batches_tracked"] = ()
    return shapes


def expected_mobile_sam_encoder() -> dict[str, tuple[int, ...]]:
    """Key -> shape of MobileSAM's image encoder, written out from its documented structure."""
    e: dict[str, tuple[int, ...]] = {}
    e |= _conv_bn("patch_embed.seq.0", 3, DIMS[0] // 2, 3)
    e |= _conv_bn("patch_embed.seq.2", DIMS[0] // 2, DIMS[0], 3)
    hidden = 4 * DIMS[0]
    for j in range(DEPTHS[0]):
        e |= _conv_bn(f"layers.0.blocks.{j}.conv1", DIMS[0], hidden, 1)
        e |= _conv_bn(f"layers.0.blocks.{j}.conv2", hidden, hidden, 3, groups=hidden)
        e |= _conv_bn(f"layers.0.blocks.{j}.conv3", hidden, DIMS[0], 1)
    for i in range(1, 4):
        d = DIMS[i]
        for j in range(DEPTHS[i]):
            p = f"layers.{i}.blocks.{j}"
            e[f"{p}.attn.attention_biases"] = (HEADS[i], WINDOWS[i] ** 2)
            e[f"{p}.attn.norm.weight"] = e[f"{p}.attn.norm.bias"] = (d,)
            e[f"{p}.attn.qkv.weight"], e[f"{p}.attn.qkv.bias"] = (3 * d, d), (3 * d,)
            e[f"{p}.attn.proj.weight"], e[f"{p}.attn.proj.bias"] = (d, d), (d,)
            e[f"{p}.mlp.norm.weight"] = e[f"{p}.mlp.norm.bias"] = (d,)
            e[f"{p}.mlp.fc1.weight"], e[f"{p}.mlp.fc1.bias"] = (4 * d, d), (4 * d,)
            e[f"{p}.mlp.fc2.weight"], e[f"{p}.mlp.fc2.bias"] = (d, 4 * d), (d,)
            e |= _conv_bn(f"{p}.local_conv", d, d, 3, groups=d)
    for i in range(3):
        p, cin, cout = f"layers.{i}.downsample", DIMS[i], DIMS[i + 1]
        e |= _conv_bn(f"{p}.conv1", cin, cout, 1)
        e |= _conv_bn(f"{p}.conv2", cout, cout, 3, groups=cout)
        e |= _conv_bn(f"{p}.conv3", cout, cout, 1)
    e["norm_head.weight"] = e["norm_head.bias"] = (320,)
    e["head.weight"], e["head.bias"] = (1000, 320), (1000,)
    e["neck.0.weight"] = (256, 320, 1, 1)
    e["neck.1.weight"] = e["neck.1.bias"] = (256,)
    e["neck.2.weight"] = (256, 256, 3, 3)
    e["neck.3.weight"] = e["neck.3.bias"] = (256,)
    return e


def random_state_dict(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random but well-scaled weights (fan-in scaled), random BatchNorm statistics and attention biases."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.dtype == torch.long:
            out[k] = torch.randint(0, 100, v.shape, generator=g)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif "attention_biases" in k:
            out[k] = torch.randn(v.shape, generator=g)
        elif k.endswith(("running_mean", "bias")):
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif v.ndim == 1:
            out[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            out[k] = torch.randn(v.shape, generator=g) / math.sqrt(v[0].numel())
    return out


@pytest.fixture(scope="module")
def mobile_sam_encoder() -> TinyViT:
    return TinyViT()


def test_state_dict_matches_mobile_sam_layout(mobile_sam_encoder: TinyViT) -> None:
    sd = mobile_sam_encoder.state_dict()
    got = {k: tuple(v.shape) for k, v in sd.items()}
    expected = expected_mobile_sam_encoder()
    assert set(got) - set(expected) == set()
    assert set(expected) - set(got) == set()
    assert got == expected
    assert len(sd) == ENCODER_KEYS
    assert sum(v.numel() for v in sd.values()) == ENCODER_ELEMENTS
    # The non-persistent bias index and eval cache never reach the state dict.
    assert not any(k.endswith(("attention_bias_idxs", ".ab")) for k in sd)


def test_from_config_equals_defaults(mobile_sam_encoder: TinyViT) -> None:
    model = TinyViT.from_config(TinyViTEncoderConfig())
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in mobile_sam_encoder.state_dict().items()
    }
    assert model.img_size == 1024


def test_full_mobile_sam_checkpoint_layout_loads_strictly(mobile_sam_encoder: TinyViT, tmp_path) -> None:
    modeling = pytest.importorskip("segment_anything.modeling")

    def build_sam(encoder: TinyViT) -> torch.nn.Module:
        return modeling.Sam(
            image_encoder=encoder,
            prompt_encoder=modeling.PromptEncoder(
                embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
            ),
            mask_decoder=modeling.MaskDecoder(
                num_multimask_outputs=3,
                transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                transformer_dim=256,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
        )

    sd = build_sam(mobile_sam_encoder).state_dict()
    assert len(sd) == MOBILE_SAM_KEYS
    assert sum(v.numel() for v in sd.values()) == MOBILE_SAM_ELEMENTS
    assert sum(k.startswith("image_encoder.") for k in sd) == ENCODER_KEYS

    # Same flat-OrderedDict format as mobile_sam.pt; load it back strictly into a fresh model.
    path = tmp_path / "mobile_sam_random.pt"
    torch.save(sd, path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    encoder_sd = {
        k.removeprefix("image_encoder."): v for k, v in loaded.items() if k.startswith("image_encoder.")
    }
    fresh = TinyViT()
    fresh.load_state_dict(encoder_sd, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[f"image_encoder.{k}"]), k


# ---------------------------------------------------------------------------------------------------
# Parity with timm's TinyViT (same block internals, other names; downsample at the start of the next
# stage; patch merging always stride 2, so the last merge is patched to stride 1 as in MobileSAM).


def _to_timm_key(k: str) -> str:
    k = k.replace(".c.", ".conv.")
    k = k.replace("patch_embed.seq.0.", "patch_embed.conv1.").replace(
        "patch_embed.seq.2.", "patch_embed.conv2."
    )
    if k.startswith("layers."):
        _, i, rest = k.split(".", 2)
        stage = int(i) + 1 if rest.startswith("downsample.") else int(i)
        k = f"stages.{stage}.{rest}"
    elif k.startswith("norm_head."):
        k = "head.norm." + k.removeprefix("norm_head.")
    elif k.startswith("head."):
        k = "head.fc." + k.removeprefix("head.")
    return k


def _timm_reference(sd: dict[str, torch.Tensor]):
    tiny_vit = pytest.importorskip("timm.models.tiny_vit")
    ref = tiny_vit.TinyVit(
        in_chans=3,
        num_classes=1000,
        embed_dims=DIMS,
        depths=DEPTHS,
        num_heads=HEADS,
        window_sizes=WINDOWS,
        drop_path_rate=0.0,
    )
    ref.stages[3].downsample.conv2.conv.stride = (1, 1)
    for m in ref.modules():
        if isinstance(m, tiny_vit.Attention):
            m.fused_attn = False  # MobileSAM's explicit softmax(q k^T * scale + bias) v
    ref.load_state_dict({_to_timm_key(k): v for k, v in sd.items() if not k.startswith("neck.")}, strict=True)
    ref.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        y = ref.forward_features(x)
        for conv, norm, pad in (("neck.0", "neck.1", 0), ("neck.2", "neck.3", 1)):
            y = F.conv2d(y, sd[f"{conv}.weight"], padding=pad)
            y = F.layer_norm(
                y.permute(0, 2, 3, 1), (y.shape[1],), sd[f"{norm}.weight"], sd[f"{norm}.bias"], 1e-6
            )
            y = y.permute(0, 3, 1, 2)
        return y

    return forward


def _parity(img_size: int, batch: int, fused_attn: bool | None) -> float:
    torch.manual_seed(0)
    model = TinyViT(img_size=img_size)
    sd = random_state_dict(model)
    model.load_state_dict(sd, strict=True)
    model.eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused_attn
    reference = _timm_reference(sd)
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(x), reference(x)
    assert ours.shape == ref.shape == (batch, 256, img_size // 16, img_size // 16)
    return (ours - ref).abs().max().item()


@pytest.mark.parametrize("fused_attn", [None, True], ids=["auto", "sdpa"])
def test_parity_with_timm_tiny_vit_256(fused_attn: bool | None) -> None:
    # 256 input: 32x32 map in stage 1 (windows 7, padded to 35) and 16x16 in stages 2-3 (padded to 28 / 21).
    assert _parity(256, 2, fused_attn) <= 1e-4


@pytest.mark.slow
def test_parity_with_timm_tiny_vit_1024() -> None:
    assert _parity(1024, 1, None) <= 1e-4


# ---------------------------------------------------------------------------------------------------
# Tiny config: shapes, gradients, eval-cache behaviour, input checks.


def tiny_model() -> TinyViT:
    return TinyViT(
        img_size=256,
        embed_dims=(8, 16, 24, 32),
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 3, 4),
        window_sizes=(7, 7, 14, 7),
        num_classes=10,
        out_chans=32,
    )


def test_tiny_forward_backward() -> None:
    torch.manual_seed(0)
    model = tiny_model().train()
    x = torch.randn(2, 3, 256, 256)
    out = model(x)
    assert out.shape == (2, 32, 16, 16)
    loss = (out - torch.randn_like(out)).square().mean()
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("head.", "norm_head.")):
            assert p.grad is None, name  # classifier head is not used by the SAM encoder
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name, p in model.named_parameters():
        if name.endswith(("attention_biases", "qkv.weight", "local_conv.c.weight", "neck.2.weight")):
            assert p.grad.abs().sum() > 0, name


def test_eval_mode_bias_cache_and_gradients() -> None:
    torch.manual_seed(0)
    model = tiny_model().eval()
    attn = model.layers[1].blocks[0].attn
    x = torch.randn(1, 3, 256, 256)
    # Eval mode with autograd on (e.g. frozen BatchNorm fine-tuning): gradients still reach the biases.
    model(x).sum().backward()
    assert attn.attention_biases.grad is not None and attn.attention_biases.grad.abs().sum() > 0
    assert attn.ab is None
    with torch.no_grad():
        y0 = model(x)
    assert attn.ab is not None and attn.ab.shape == (2, 49, 49)
    # Loading new weights after eval() must not leave a stale cache.
    sd = random_state_dict(model, seed=3)
    model.load_state_dict(sd)
    fresh = tiny_model()
    fresh.load_state_dict(sd)
    fresh.eval()
    with torch.no_grad():
        y1, y_fresh = model(x), fresh(x)
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y1, y_fresh, rtol=0, atol=1e-6)
    model.train()
    assert attn.ab is None


def test_eval_matches_train_mode_math() -> None:
    """Eval (folded BatchNorm, cached biases) equals training-mode modules run with running statistics."""
    torch.manual_seed(0)
    model = tiny_model()
    model.load_state_dict(random_state_dict(model, seed=5))
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        y_eval = model.eval()(x)
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()  # running statistics
            if isinstance(m, Conv2d_BN):
                m.forward = types.MethodType(torch.nn.Sequential.forward, m)  # plain conv -> bn
        y_ref = model(x)
    torch.testing.assert_close(y_eval, y_ref, rtol=0, atol=1e-5)


def test_input_and_config_errors() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="image tensor"):
        model(torch.zeros(1, 1, 256, 256))
    with pytest.raises(ValueError, match="image tensor"):
        model(torch.zeros(3, 256, 256))
    with pytest.raises(ValueError, match="4 stages"):
        TinyViT(embed_dims=(64, 128, 160), depths=(2, 2, 6), num_heads=(2, 4, 5), window_sizes=(7, 7, 14))
    with pytest.raises(ValueError, match="divisible"):
        TinyViT(num_heads=(2, 3, 5, 10))
