"""Int8 linear layers (textsam.quantize): the CPU fast path's image encoder and CLIP image tower on x86 CPUs
without native bf16. Each test compares with the fp32 module it copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import textsam
import textsam.predictor as predictor_module
from textsam.errors import InputError
from textsam.quantize import Int8Linear, int8_copy, int8_supported

pytestmark = pytest.mark.skipif(not int8_supported("cpu"), reason="no x86/fbgemm quantized engine in this torch")


def test_an_int8_linear_is_close_to_its_fp32_linear_and_keeps_its_bias() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 160)
    q = Int8Linear(linear)
    x = torch.randn(4, 7, 96)  # any leading shape, as nn.Linear
    with torch.inference_mode():
        full, low = linear(x), q(x)
    assert low.shape == full.shape and low.dtype == torch.float32
    assert (low - full).norm() / full.norm() < 0.02 and not torch.equal(low, full)
    assert torch.equal(q.bias, linear.bias.detach()) and (q.in_features, q.out_features) == (96, 160)
    assert Int8Linear(nn.Linear(8, 3, bias=False)).bias is None


def test_an_int8_copy_swaps_plain_linear_layers_and_leaves_the_module_alone() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.MultiheadAttention(32, 4, batch_first=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = int8_copy(model)
    assert isinstance(q[0], Int8Linear) and type(model[0]) is nn.Linear
    # a Linear subclass (the attention's output projection, read by the fused kernel) stays fp32
    assert type(q[2].out_proj) is type(model[2].out_proj)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_int8_encoder_gives_the_fp32_masks_and_is_a_cached_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """``image_precision="int8"``: the encoder's linear layers through a copy made once per weights; masks of
    clicks agree with fp32's (a random encoder; the proxy figure is in the README); the model's state dict and
    its fp32 encoder are untouched."""
    torch.manual_seed(0)
    model = textsam.create_model("shapes_tiny", text_head=False)
    keys = set(model.state_dict())
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    image[20:70, 30:90] = (220, 40, 40)
    full, low = textsam.TextSamPredictor(model), textsam.TextSamPredictor(model, image_precision="int8")
    full.set_image(image)
    low.set_image(image)
    copy = model.image_encoder_in("int8")
    assert copy is model.image_encoder_in("int8") and copy is not model.image_encoder
    assert model.image_encoder_in("fp32") is model.image_encoder and set(model.state_dict()) == keys
    assert any(isinstance(m, Int8Linear) for m in copy.modules())
    assert not any(isinstance(m, Int8Linear) for m in model.image_encoder.modules())
    cos = torch.nn.functional.cosine_similarity(full.features.flatten(), low.features.flatten(), dim=0)
    assert 0.98 < cos < 1.0
    ious = []
    for x, y in ((60, 45), (10, 10), (110, 80)):
        a = full.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]), multimask_output=False).masks[0]
        b = low.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]), multimask_output=False).masks[0]
        ious.append((a & b).sum() / max(1, (a | b).sum()))
    assert min(ious) > 0.9, ious
    with torch.no_grad():  # new weights: a new copy
        next(model.image_encoder.parameters()).add_(0.01)
    assert model.image_encoder_in("int8") is not copy
    monkeypatch.setattr(predictor_module, "int8_supported", lambda device: False)
    with pytest.raises(InputError, match="int8"):
        textsam.TextSamPredictor(model, image_precision="int8")


def test_the_int8_clip_image_tower_embeds_crops_as_fp32_does(clip_spec: str) -> None:
    from textsam.text.clip import TextEncoder

    encoder = TextEncoder.create(clip_spec, None)
    keys = set(encoder.state_dict())
    tower = encoder.image_model("int8")
    assert tower is encoder.image_model("int8") and set(encoder.state_dict()) == keys
    size = encoder.clip.visual.image_size
    size = size if isinstance(size, int) else size[0]
    x = torch.rand(3, 3, size, size)
    with torch.inference_mode():
        full = torch.nn.functional.normalize(encoder.clip.encode_image(x), dim=-1)
        low = torch.nn.functional.normalize(tower.encode_image(x), dim=-1)
    assert torch.nn.functional.cosine_similarity(full, low).min() > 0.99


def test_an_int8_engine_scores_with_the_int8_tower_and_picks_what_fp32_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """``EngineOptions(precision="int8")`` (the fast path's) on a CPU without native bf16: mask tokens and crops
    through the int8 image tower, the phrase's text pass in fp32; the same objects as the fp32 engine."""
    import dataclasses

    from PIL import Image, ImageDraw

    import textsam.text.engine as engine_module

    monkeypatch.setattr(engine_module, "native_bf16", lambda device: False)
    model = textsam.create_model("shapes_tiny", text_head=False)
    im = Image.new("RGB", (128, 128), (200, 200, 190))
    d = ImageDraw.Draw(im)
    d.ellipse([10, 40, 45, 75], fill=(220, 40, 40))
    d.ellipse([85, 40, 120, 75], fill=(40, 80, 220))
    d.rectangle([45, 95, 80, 125], fill=(230, 200, 40))
    scene = np.asarray(im)
    base = textsam.TextSamPredictor(model).text.options
    preds = {p: textsam.TextSamPredictor(model, text_options=dataclasses.replace(
        base, engine=dataclasses.replace(base.engine, precision=p))) for p in ("int8", "fp32")}
    for p in preds.values():
        p.set_image(scene)
    assert preds["int8"].text.engine.precision(preds["int8"]) == "int8"
    for phrase in ("the red circle", "the blue circle", "the yellow square"):
        a, b = preds["int8"].predict(text=phrase), preds["fp32"].predict(text=phrase)
        assert (a.masks[0] & b.masks[0]).sum() / max(1, (a.masks[0] | b.masks[0]).sum()) > 0.9, phrase
        assert a.presence == pytest.approx(b.presence, abs=0.05)
    encoder = model.scoring_encoder
    assert {key[0] for key in encoder._image_towers} == {"int8"}  # the tower the int8 engine cropped with
    assert not encoder._low_precision_caches  # phrases embedded in fp32
