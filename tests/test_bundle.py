"""textsam bundles: a whole small model (SAM + CLIP + text head) in one file, loaded offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from textsam import factory
from textsam.bundle import load_bundle, read_bundle_meta, save_bundle
from textsam.errors import WeightsError
from textsam.predictor import TextSamPredictor
from textsam.text.clip import TextProjector

from .tiny import TINY_CONFIG, tiny_sam

CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=64).__dict__,
    "text_cfg": CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2).__dict__,
    "quick_gelu": True,
}


def test_bundle_round_trip_gives_identical_predictions(tmp_path) -> None:
    model = tiny_sam(with_text=True)
    model.text_projector = TextProjector(32, 256, 2, 64).eval()
    phrase = "a red square"
    used = model.text_encoder.tokenizer([f"a photo of a {phrase}."])[0].tolist()
    used += [t for tpl in ["a photo of the {}.", "{}"] for t in model.text_encoder.tokenizer([tpl.format(phrase)])[0].tolist()]
    path = save_bundle(tmp_path / "m.safetensors", model, clip_config=CLIP_CONFIG, used_token_ids=used,
                       training={"note": "test"})
    meta = read_bundle_meta(path)
    assert meta["model"] == "tiny_test" and meta["training"] == {"note": "test"}

    fresh = factory.build_sam(TINY_CONFIG)
    load_bundle(path, fresh)
    img = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    opts = dict(text=phrase, point_coords=np.array([[30, 20]]), point_labels=np.array([1]))
    a, b = TextSamPredictor(model), TextSamPredictor(fresh.eval())
    from textsam.text.prompter import TextOptions

    for p in (a, b):
        p.text.options = TextOptions(templates=["a photo of a {}.", "a photo of the {}.", "{}"])
        p.set_image(img)
    ra, rb = a.predict(**opts), b.predict(**opts)
    assert np.array_equal(ra.masks, rb.masks)
    assert np.allclose(ra.low_res_logits, rb.low_res_logits, atol=1e-5)
    # unused vocabulary rows are stored as zeros (sparse table)
    unused = torch.tensor([5000, 12345])
    assert torch.all(fresh.text_encoder.clip.token_embedding.weight[unused] == 0)


def test_missing_bundled_file_is_a_clear_error(monkeypatch, tmp_path) -> None:
    from textsam.weights import pretrained

    monkeypatch.setattr(pretrained, "PACKAGE_WEIGHTS", tmp_path)
    with pytest.raises(WeightsError, match="bundled shapes_tiny weights are missing"):
        factory.create_model("shapes_tiny")


def test_a_model_without_published_weights_asks_for_a_checkpoint() -> None:
    """``shapes_tiny_v1`` (the first shapes_tiny architecture) has no weights to load: a clear error, not
    silently random weights; ``pretrained=False`` gives the random model on purpose."""
    from textsam.errors import InputError

    with pytest.raises(InputError, match="checkpoint=PATH"):
        factory.create_model("shapes_tiny_v1")
    model = factory.create_model("shapes_tiny_v1", pretrained=False)
    assert model.config.embedding_size == 16 and not model.pretrained
