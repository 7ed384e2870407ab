"""Whole small models (SAM + CLIP + text head) in one textsam file, loaded offline; the shapes_tiny assembler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from textsam import factory
from textsam.config import TextHeadConfig
from textsam.errors import WeightsError
from textsam.predictor import TextSamPredictor
from textsam.text.projector import TextProjector
from textsam.weights import format as fmt

from .tiny import TINY_CONFIG, tiny_sam
from .tiny_train import TRAIN_MODEL, registered

CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=64).__dict__,
    "text_cfg": CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2).__dict__,
    "quick_gelu": True,
}


def test_bundle_round_trip_gives_identical_predictions(tmp_path) -> None:
    model = tiny_sam(with_text=True)
    head = TextHeadConfig(clip_dim=32, token_dim=256, num_tokens=2, hidden_dim=64)
    model.text_projector = TextProjector(head).eval()
    phrase = "a red square"
    used = model.text_encoder.tokenizer([f"a photo of a {phrase}."])[0].tolist()
    used += [t for tpl in ["a photo of the {}.", "{}"] for t in model.text_encoder.tokenizer([tpl.format(phrase)])[0].tolist()]
    tensors = {**model.sam_state_dict(), **{f"text_projector.{k}": v for k, v in model.text_projector.state_dict().items()},
               **{f"clip.{k}": v for k, v in model.text_encoder.clip.state_dict().items()}}
    file = fmt.TextsamFile("tiny_test", fmt.ClipSpec("tiny_clip", None, CLIP_CONFIG, "full"), head, tensors, {},
                           {"note": "test"})
    path = fmt.write(tmp_path / "m.safetensors", file, sparse_token_ids=used)
    meta = fmt.read(path)
    assert meta.sam_model == "tiny_test" and meta.training == {"note": "test"} and meta.text_head == head

    fresh = factory.build_sam(TINY_CONFIG)
    factory.load_textsam_file(fresh, path)
    img = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    opts = dict(text=phrase, point_coords=np.array([[30, 20]]), point_labels=np.array([1]))
    a, b = TextSamPredictor(model), TextSamPredictor(fresh.eval())
    from textsam.text.options import ScoringOptions, TextOptions

    for p in (a, b):
        p.text.options = TextOptions(scoring=ScoringOptions(templates=("a photo of a {}.", "a photo of the {}.", "{}")))
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
    """A model config without weights to load (the training tests' ``tiny_train``): a clear error, not
    silently random weights; ``pretrained=False`` gives the random model on purpose."""
    from textsam.errors import InputError

    with registered():
        with pytest.raises(InputError, match="checkpoint=PATH"):
            factory.create_model(TRAIN_MODEL)
        model = factory.create_model(TRAIN_MODEL, pretrained=False)
    assert model.config.embedding_size == 16 and not model.pretrained


def test_unpacking_the_shipped_model_and_assembling_it_again_gives_the_same_file(tmp_path) -> None:
    """``tools/shapes_tiny_bundle.py --unpack`` then the assembler on that run folder: every tensor of the
    shipped file comes back identical (the CLIP token rows for the tokens of the data given), and so do its
    text head and text options."""
    synthetic = pytest.importorskip("textsam.data.synthetic")
    from textsam.weights.pretrained import bundled_path
    from tools import shapes_tiny_bundle

    shipped_path = bundled_path("shapes_tiny")
    run = tmp_path / "shipped"
    assert shapes_tiny_bundle.main(["--unpack", str(shipped_path), "--out", str(run)]) == 0
    synthetic.generate(tmp_path / "data", seed=0, num_train=2, num_val=1, num_test=1)
    out = tmp_path / "again.safetensors"
    assert shapes_tiny_bundle.main(["--sam", str(run), "--text", str(run), "--clip", str(run / "clip"),
                                    "--data", str(tmp_path / "data"), "--out", str(out),
                                    "--text-options", json.dumps(fmt.read(shipped_path).text_options)]) == 0
    shipped, again = fmt.read(shipped_path), fmt.read(out)
    from textsam.text.options import TextOptions

    assert again.text_head == shipped.text_head
    assert TextOptions.from_dict(again.text_options) == TextOptions.from_dict(shipped.text_options)
    assert again.clip.config == shipped.clip.config and again.clip.tensors == "full"
    assert set(again.tensors) == set(shipped.tensors)
    tables = [p for p in fmt.TOKEN_TABLE_PARTS if f"{p}.token_embedding.ids" in shipped.tensors]
    sparse = {f"{p}.token_embedding.{x}" for p in tables for x in ("ids", "rows")}
    for k, v in shipped.tensors.items():
        if k not in sparse:
            assert v.dtype == again.tensors[k].dtype and torch.equal(v, again.tensors[k]), k
    for part in tables:  # the rows of the tokens of the data given, as shipped
        rows = f"{part}.token_embedding.rows"
        ids, shipped_ids = again.tensors[f"{part}.token_embedding.ids"].tolist(), shipped.tensors[f"{part}.token_embedding.ids"]
        where = {int(t): i for i, t in enumerate(shipped_ids.tolist())}
        assert set(ids) <= set(where)
        assert torch.equal(again.tensors[rows], shipped.tensors[rows][[where[t] for t in ids]])
