"""The bundled shapes_tiny model end to end: offline load, text (head and grounding), clicks, one call."""

from __future__ import annotations

import numpy as np
import pytest

import textsam
from textsam.text.options import GroundingOptions, TextOptions


@pytest.fixture(scope="module")
def model():
    return textsam.create_model("shapes_tiny")  # bundled file: no network


def _scene() -> tuple[np.ndarray, np.ndarray]:
    img = np.full((128, 128, 3), 110, np.uint8)
    yy, xx = np.mgrid[:128, :128]
    disc = (yy - 40) ** 2 + (xx - 36) ** 2 <= 14**2
    img[disc] = (220, 30, 30)
    img[80:110, 80:110] = (30, 60, 220)
    return img, disc


def test_bundle_loads_offline_with_its_text_parts(model) -> None:
    assert model.text_encoder is not None and model.text_projector is not None and model.text_locator is not None
    from textsam.weights.format import read
    from textsam.weights.pretrained import bundled_path

    bundle = read(bundled_path("shapes_tiny"))
    assert bundle.sam_model == "shapes_tiny" and bundle.clip.tensors == "full" and bundle.text_head.has_locator
    assert textsam.TextSamPredictor(model).text.options.grounding.enabled is False  # the bundle's own default


def test_click_segments_the_object(model) -> None:
    img, disc = _scene()
    pred = textsam.TextSamPredictor(model)
    pred.set_image(img)
    out = pred.predict(point_coords=np.array([[36, 40]]), point_labels=np.array([1]), multimask_output=False)
    iou = (out.masks[0] & disc).sum() / (out.masks[0] | disc).sum()
    assert iou > 0.8, iou


@pytest.mark.parametrize("grounding", [False, True])
def test_text_end_to_end_in_one_decoder_call(model, grounding: bool) -> None:
    img, _ = _scene()
    pred = textsam.TextSamPredictor(model, text_options=TextOptions(grounding=GroundingOptions(enabled=grounding)))
    pred.set_image(img)
    calls = []
    original = model.mask_decoder.forward
    model.mask_decoder.forward = lambda *a, **k: calls.append(k["sparse_prompt_embeddings"].shape) or original(*a, **k)
    try:
        out = pred.predict(text="the red circle", point_coords=np.array([[36, 40]]), point_labels=np.array([1]))
    finally:
        model.mask_decoder.forward = original
    assert len(calls) == 1
    grounded = len(out.info["prompts"]["points"])
    assert (grounded > 0) == grounding
    # click + grounded points + SAM's padding point (no box) + text tokens, all in one sparse sequence
    assert calls[0][1] == 1 + grounded + 1 + model.text_projector.num_tokens
    assert out.masks.shape == (3, 128, 128)



def _synthetic_scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A scene drawn as the training data are (textured background, object sizes of the "large" and "small"
    bins) with a large red circle, a large blue square and a small green triangle, and their visible masks."""
    from textsam.data.shapes_render import COLOURS, SceneObject, background, paint, render_shape

    objects = [SceneObject("circle", "red", "large", COLOURS["red"], 36, 40, 20, 0.0),
               SceneObject("square", "blue", "large", COLOURS["blue"], 88, 92, 21, 0.3),
               SceneObject("triangle", "green", "small", COLOURS["green"], 96, 28, 10, 0.5)]
    canvas, _ = background(np.random.default_rng(3), 128, 128)
    image, visible = paint(canvas, objects, [render_shape(o, 128, 128) for o in objects])
    return image, {o.shape: m for o, m in zip(objects, visible)}


@pytest.mark.parametrize(("phrase", "target"), [("the red circle", "circle"), ("the square", "square"),
                                                ("the small object", "triangle"), ("green triangle", "triangle")])
def test_text_alone_clicks_the_named_object(model, phrase: str, target: str) -> None:
    """The shipped head's region locator picks the named object among the decoder's candidates and clicks it; the
    phrase's tokens and that click go into the prompt decode."""
    assert model.text_locator.factors == "separate" and model.text_locator.appearance_kind == "colour"
    image, masks = _synthetic_scene()
    want = masks[target]
    pred = textsam.TextSamPredictor(model)
    pred.set_image(image)
    out = pred.predict(text=phrase, multimask_output=False)
    x, y = out.info["prompts"]["located"]
    assert want[int(round(y)), int(round(x))], (x, y)
    iou = (out.masks[0] & want).sum() / (out.masks[0] | want).sum()
    assert iou > 0.8, iou


def test_cli_reports_the_located_click(tmp_path) -> None:
    """``textsam segment --text`` alone: the JSON gives the locator's click (image pixels) on the named object;
    with a click of the user's there is none."""
    import json

    from PIL import Image

    from textsam.cli import main

    image, masks = _synthetic_scene()
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    assert main(["segment", str(path), "--model", "shapes_tiny", "--text", "the square", "-o", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    x, y = json.loads((tmp_path / "a" / "scene.json").read_text())["prompt"]["located_click"]
    assert masks["square"][int(round(y)), int(round(x))]
    assert main(["segment", str(path), "--model", "shapes_tiny", "--text", "the square", "--point", "88,92",
                 "-o", str(tmp_path / "b"), "--no-progress"]) == 0
    assert "located_click" not in json.loads((tmp_path / "b" / "scene.json").read_text())["prompt"]
    # a relation: the engine chose, and the JSON says how it read the phrase (a head-decided phrase has no reading)
    assert "query" not in json.loads((tmp_path / "a" / "scene.json").read_text())["prompt"]
    assert main(["segment", str(path), "--model", "shapes_tiny", "--text", "the square that is not left of the circle",
                 "-o", str(tmp_path / "c"), "--no-progress"]) == 0
    prompt = json.loads((tmp_path / "c" / "scene.json").read_text())["prompt"]
    assert "located_click" not in prompt
    assert prompt["query"] == {"head": "square", "directions": [], "rank": 0, "relation": "left", "anchor": "circle",
                               "negated": True, "group": False, "more_relations": [], "excluded": []}
    assert main(["segment", str(path), "--model", "shapes_tiny", "--classes", "the square left of the circle,the square",
                 "-o", str(tmp_path / "d"), "--no-progress"]) == 0
    answers = json.loads((tmp_path / "d" / "scene.json").read_text())["prompt"]["answers"]
    assert answers[0]["query"]["relation"] == "left" and "query" not in answers[1]
