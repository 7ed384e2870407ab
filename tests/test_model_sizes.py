"""Full-size layouts: our sam_vit_b / sam_vit_l / sam_vit_h / mobile_sam against the official builders.

Both sides are built on the meta device (no memory, no init time), so the state-dict key sets and
shapes of the real sizes are compared cheaply. Key counts and element totals are those of the
published checkpoints (reference/sam_clip_facts.md). segment-anything has no MobileSAM builder: its
prompt encoder and mask decoder are SAM's (taken from the official vit_b build), its TinyViT encoder is
checked against the layout written out in test_tiny_vit.py.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import textsam
from textsam.config import MODEL_CONFIGS, TinyViTEncoderConfig
from textsam.factory import build_sam
from textsam.transforms import load_image

from .conftest import SHARED_DATA
from .test_tiny_vit import expected_mobile_sam_encoder
from .tiny import official_sam

segment_anything = pytest.importorskip("segment_anything")

# name -> (official registry key or None, keys, elements)
SIZES = {
    "sam_vit_b": ("vit_b", 314, 93_735_728),
    "sam_vit_l": ("vit_l", 482, 312_343_088),
    "sam_vit_h": ("vit_h", 594, 641_090_864),
    "mobile_sam": (None, 439, 10_140_231),
}
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def ours_on_meta(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_sam(MODEL_CONFIGS[name])
    sd = model.state_dict()
    assert all(k.startswith(SAM_PARTS) for k in sd), "non-SAM tensors in a SAM-only model"
    assert set(sd) == set(model.sam_state_dict())
    return _shapes(sd)


def official_on_meta(registry_key: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        sam = segment_anything.sam_model_registry[registry_key]()
    return _shapes(sam.state_dict())


def official_mobile_sam_layout() -> dict[str, tuple[int, ...]]:
    """MobileSAM = TinyViT encoder + SAM's prompt encoder and mask decoder (build_sam_vit_t)."""
    sam_parts = {k: v for k, v in official_on_meta("vit_b").items() if not k.startswith("image_encoder.")}
    encoder = {f"image_encoder.{k}": v for k, v in expected_mobile_sam_encoder().items()}
    return encoder | sam_parts


def test_registered_names() -> None:
    assert set(SIZES) <= set(textsam.list_models())


@pytest.mark.parametrize("name", list(SIZES))
def test_state_dict_layout_equals_official(name: str) -> None:
    registry_key, n_keys, n_elements = SIZES[name]
    ours = ours_on_meta(name)
    official = official_on_meta(registry_key) if registry_key else official_mobile_sam_layout()
    assert sorted(set(official) - set(ours)) == [], "missing in ours"
    assert sorted(set(ours) - set(official)) == [], "extra in ours"
    assert {k: v for k, v in ours.items() if official[k] != v} == {}, "shape mismatches"
    assert len(ours) == n_keys
    assert sum(int(np.prod(s)) for s in ours.values()) == n_elements


def test_mobile_sam_config_is_tiny_vit() -> None:
    assert isinstance(MODEL_CONFIGS["mobile_sam"].image_encoder, TinyViTEncoderConfig)
    assert MODEL_CONFIGS["mobile_sam"].img_size == 1024
    assert MODEL_CONFIGS["mobile_sam"].embedding_size == 64


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub, "hf_hub_download", refuse)


@pytest.mark.parametrize("name", ["sam_vit_b", "mobile_sam"])
def test_create_model_without_pretrained_weights(name: str, no_network: None) -> None:
    model = textsam.create_model(name, pretrained=False)
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert model.img_size == 1024
    sd = model.sam_state_dict()
    assert len(sd) == SIZES[name][1]
    assert sum(v.numel() for v in sd.values()) == SIZES[name][2]
    assert all(v.device.type == "cpu" for v in sd.values())
    assert all(torch.isfinite(v.float()).all() for v in sd.values())
    home = Path(os.environ["TEXTSAM_HOME"])  # the isolated cache set by conftest
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*"))


# ------------------------------------------------------------------------------ vit_l parity (slow)


def _image() -> np.ndarray:
    path = SHARED_DATA / "sam_demo_images" / "dog.jpg"
    if path.exists():
        return load_image(path)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (500, 750, 3), dtype=np.uint8)
    img[100:300, 200:500] = (30, 200, 30)
    return img


@pytest.mark.slow
def test_vit_l_matches_official_predictor(tmp_path: Path) -> None:
    """Random vit_l written by the official builder (every tensor perturbed) -> same predictions."""
    sam = official_sam("vit_l")
    ckpt = tmp_path / "sam_vit_l_random.pth"
    torch.save(sam.state_dict(), ckpt)
    ref = segment_anything.SamPredictor(sam)
    ours = textsam.TextSamPredictor(textsam.create_model("sam_vit_l", checkpoint=ckpt))
    ckpt.unlink()

    image = _image()
    h, w = image.shape[:2]
    ref.set_image(image)
    ours.set_image(image)
    emb_diff = (ref.get_image_embedding() - ours.get_image_embedding()).abs().max().item()
    assert emb_diff <= 1e-4, emb_diff

    prompts = [
        dict(point_coords=np.array([[0.45 * w, 0.55 * h]]), point_labels=np.array([1])),
        dict(box=np.array([0.2 * w, 0.15 * h, 0.8 * w, 0.9 * h])),
    ]
    for kwargs in prompts:
        for multimask in (True, False):
            ref_logits, ref_iou, ref_low = ref.predict(multimask_output=multimask, return_logits=True, **kwargs)
            got = ours.predict(multimask_output=multimask, return_logits=True, **kwargs)
            assert got.masks.shape == ref_logits.shape == ((3 if multimask else 1), h, w)
            assert np.abs(got.low_res_logits - ref_low).max() <= 1e-4
            assert np.abs(got.masks - ref_logits).max() <= 1e-4
            assert np.abs(got.scores - ref_iou).max() <= 1e-5
