"""The region locator's presence readout: its scores, its loss, its training stage and how requests use it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import textsam
from textsam.config import TextHeadConfig
from textsam.text.locator import RegionLocator


def _config(presence: bool, factors: str = "separate") -> TextHeadConfig:
    return TextHeadConfig(clip_dim=16, token_dim=8, num_tokens=2, hidden_dim=16, locator_dim=12,
                          locator_appearance="colour", locator_factors=factors, locator_presence=presence)


def _inputs(b: int = 2, n: int = 4, size: int = 16) -> tuple:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(b, n, size, size, dtype=torch.bool)
    for i in range(n):
        masks[:, i, 2 * i : 2 * i + 4, 1 + 3 * i : 5 + 3 * i] = True
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, -1] = False
    return masks, valid, torch.randn(b, 16, generator=g), torch.rand(b, n, 6, generator=g)


@pytest.mark.parametrize("factors", ["separate", "joint"])
def test_the_presence_readout_leaves_the_scores_as_they_were(factors: str) -> None:
    torch.manual_seed(0)
    plain = RegionLocator(_config(False, factors)).eval()
    torch.manual_seed(0)
    with_presence = RegionLocator(_config(True, factors)).eval()
    masks, valid, emb, colours = _inputs()
    scores, none = plain.scores_and_presence(None, masks, valid, emb, colours=colours)
    assert none is None
    scores2, presence = with_presence.scores_and_presence(None, masks, valid, emb, colours=colours)
    torch.testing.assert_close(scores2, scores)
    torch.testing.assert_close(plain.scores(None, masks, valid, emb, colours=colours), scores)
    assert presence.shape == scores.shape and presence[1, -1] == float("-inf")
    assert torch.isfinite(presence[0]).all()
    # the readout starts as the sum of the content matches, so it ranks as the content does
    assert with_presence.presence.in_features == (3 if factors == "separate" else 1)


def test_the_presence_loss_reads_targets_for_present_phrases_and_every_candidate_for_absent_ones() -> None:
    logits = torch.tensor([[2.0, -1.0, 5.0], [2.0, -1.0, 5.0], [0.0, 1.0, float("-inf")], [3.0, 0.0, 0.0]])
    target = torch.tensor([[True, False, False], [False, False, False], [False, False, False],
                           [False, False, False]])
    absent = torch.tensor([False, True, True, False])
    loss = RegionLocator.presence_loss(logits, target, absent)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(loss[0], bce(torch.tensor(2.0), torch.tensor(1.0)))  # its target, not the 5
    torch.testing.assert_close(loss[1], bce(torch.tensor(5.0), torch.tensor(0.0)))  # the best of all
    torch.testing.assert_close(loss[2], bce(torch.tensor(1.0), torch.tensor(0.0)))  # invalid ones ignored
    assert loss[3] == 0  # present, but no candidate matched its object: nothing to learn


def test_the_head_config_keeps_the_readout_and_needs_a_locator() -> None:
    cfg = _config(True)
    assert TextHeadConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="needs a locator"):
        TextHeadConfig(clip_dim=16, locator_presence=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shapes_tiny with a presence readout trained for a few steps on a handful of synthetic images."""
    from textsam.data.synthetic import generate
    from textsam.train.locator_presence import main

    root = tmp_path_factory.mktemp("presence")
    generate(root / "syn", seed=3, num_train=12, num_val=0, num_test=2)
    rc = main(["--data", str(root / "syn"), "--out", str(root / "run"), "--steps", "6", "--batch-size", "8"])
    assert rc == 0
    return root


def test_the_stage_writes_a_model_file_whose_locator_answers_presence(trained: Path) -> None:
    from textsam.weights import format as fmt
    from textsam.weights.pretrained import bundled_path

    path = trained / "run" / "model.safetensors"
    new, old = fmt.read(path), fmt.read(bundled_path("shapes_tiny"))
    assert new.text_head.locator_presence
    assert new.text_head == dataclasses.replace(old.text_head, locator_presence=True)
    changed = {k for k in new.tensors if k not in old.tensors or not torch.equal(new.tensors[k], old.tensors[k])}
    assert changed and all(k.startswith("text_locator.") for k in changed)
    assert {k for k in new.tensors if k.startswith("text_locator.presence.")} == {
        "text_locator.presence.weight", "text_locator.presence.bias"}
    assert new.tensors["text_locator.presence.weight"].dtype == old.tensors["text_locator.beta"].dtype
    # the candidates were kept, so a second run reads them instead of decoding the images again
    assert sorted(p.name for p in (trained / "run" / "candidates").iterdir()) == ["train_00000.pt"]


def test_requests_take_the_locators_presence_and_never_ask_the_engine(trained: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from textsam.transforms import load_image

    model = textsam.create_model("shapes_tiny", text_head=trained / "run" / "model.safetensors")
    assert model.text_locator.presence is not None
    predictor = textsam.TextSamPredictor(model)
    root = trained / "syn" / "test"
    info = json.loads((root / "instances.json").read_text())["images"][0]
    absent = [s for a in json.loads((root / "absent.json").read_text()) if a["image_id"] == info["id"]
              for s in a["sentences"]]
    phrases = ["the red circle", "the largest shape", *absent[:2]]
    predictor.set_image(load_image(str(root / "images" / info["file_name"])))
    monkeypatch.setattr(type(predictor.text), "engine_rank", lambda *a, **k: pytest.fail("the engine was asked"))
    singles = [predictor.predict(text=p) for p in phrases]
    for phrase, out in zip(phrases, singles):
        click, presence = predictor.text.locate_with_presence(phrase, predictor.get_image_embedding(),
                                                              predictor.input_size, predictor.original_size,
                                                              predictor.image)
        assert out.presence == pytest.approx(presence, abs=1e-6) and 0 <= presence <= 1
        assert out.info["found"] == (presence >= 0.5)
        assert out.info["prompts"]["located"] == pytest.approx(click[0].tolist())
    vocabulary = predictor.predict_phrases(phrases)
    for single, many in zip(singles, vocabulary):
        assert many.presence == pytest.approx(single.presence, abs=1e-6)
        assert np.array_equal(many.masks, single.masks)


def test_a_click_of_the_user_still_goes_through_the_engine(trained: Path) -> None:
    from textsam.transforms import load_image

    model = textsam.create_model("shapes_tiny", text_head=trained / "run" / "model.safetensors")
    predictor = textsam.TextSamPredictor(model)
    root = trained / "syn" / "test"
    info = json.loads((root / "instances.json").read_text())["images"][0]
    predictor.set_image(load_image(str(root / "images" / info["file_name"])))
    out = predictor.predict(text="the red circle", point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1]))
    assert "located" not in out.info["prompts"] and out.info["found"]
    assert out.presence is not None  # the engine's answer


def test_bad_data_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from textsam.train.locator_presence import main

    assert main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"), "--steps", "1"]) == 2
    assert "instances.json" in capsys.readouterr().err
    assert main(["--model", "sam_vit_b", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--text-head" in capsys.readouterr().err


def test_a_group_and_all_instances_are_the_candidates_the_locator_finds(trained: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from textsam.transforms import load_image

    model = textsam.create_model("shapes_tiny", text_head=trained / "run" / "model.safetensors")
    predictor = textsam.TextSamPredictor(model)
    root = trained / "syn" / "test"
    info = json.loads((root / "instances.json").read_text())["images"][0]
    predictor.set_image(load_image(str(root / "images" / info["file_name"])))
    monkeypatch.setattr(type(predictor.text), "engine_rank", lambda *a, **k: pytest.fail("the engine was asked"))
    text = predictor.text
    for phrase in ("all the objects", "every shape"):
        _, scores, presence = text.locator_readout(phrase, predictor.get_image_embedding(), predictor.input_size,
                                                   predictor.image)
        members, each = text.locator_members(phrase, predictor)
        want = [int(i) for i in torch.argsort(scores, descending=True) if presence[i] >= 0.5]
        assert members == want and torch.equal(each, presence)
        answer = float(presence.max())
        out = predictor.predict(text=phrase)
        assert out.presence == pytest.approx(answer)
        if members:  # one mask: the union of every member's mask, decoded in one batch
            assert len(out.info["prompts"]["members"]) == len(members)
        every = predictor.predict(text=phrase, instances="all")
        assert every.presence == pytest.approx(answer)
        assert len(every.masks) <= max(1, len(members)) and (len(every.masks) > 0) == bool(members)
