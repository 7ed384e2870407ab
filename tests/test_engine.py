"""The training-free text engine: crop embeddings, spatial words, presence, vocabularies in one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import textsam
from textsam.errors import InputError
from textsam.text.scoring import clip_preprocess, crop_views, encode_views, tower_input_size
from textsam.text.spatial import parse, resolve


def test_crop_embeddings_equal_open_clips_own_encode_image() -> None:
    """Random ViT-B/16 weights: our view embeddings are open_clip's preprocess + encode_image on the same crops."""
    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16-quickgelu", pretrained=None)
    model.eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)
    masks = np.zeros((2, 90, 140), bool)
    masks[0, 10:50, 20:70] = True
    masks[1, 40:90, 100:140] = True
    boxes = np.array([[20, 10, 70, 50], [100, 40, 140, 90]], float)
    views = crop_views(image, masks, boxes, ("crop", "mask", "blur"))
    ours = encode_views(model, views)
    with torch.no_grad():
        ref = torch.stack([torch.nn.functional.normalize(model.encode_image(torch.stack(
            [preprocess(im) for im in row])), dim=-1) for row in views])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert ours.shape == (2, 3, 512)
    x = preprocess(views[0][0])
    torch.testing.assert_close(clip_preprocess(model)(views[0][0]), x)  # the same transform, rebuilt from the model


def test_large_views_are_shrunk_by_an_integer_factor_before_the_towers_resize() -> None:
    """``max_side``: a view whose shorter side is at least twice ``max_side`` is reduced by ``side // max_side``
    (block means), smaller views are left alone, and the tower's 224 px input hardly changes."""
    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16-quickgelu", pretrained=None)
    assert tower_input_size(model) == 224
    yy, xx = np.mgrid[0:1000, 0:1500]
    image = np.stack([(xx * 255 // 1500), (yy * 255 // 1000), ((xx + yy) % 256)], -1).astype(np.uint8)
    masks = np.ones((2, 1000, 1500), bool)
    boxes = np.array([[0, 0, 1500, 1000], [100, 100, 300, 300]], float)  # windows of 1950 and 260 px
    plain = crop_views(image, masks, boxes, ("crop", "blur"))
    shrunk = crop_views(image, masks, boxes, ("crop", "blur"), max_side=672)
    assert plain[0][0].size == (1950, 1950) and shrunk[0][0].size == (975, 975)  # 1950 // 672 = 2
    assert plain[0][1].size == shrunk[0][1].size == (1500, 1000)  # 1000 // 672 = 1: left alone
    assert shrunk[1][0].size == plain[1][0].size == (260, 260)
    assert np.array_equal(np.asarray(shrunk[0][0]), np.asarray(plain[0][0].reduce(2)))
    a, b = preprocess(plain[0][0]), preprocess(shrunk[0][0])
    assert float((a - b).abs().mean()) < 0.02  # CLIP's normalised units: a fraction of a grey level
    with pytest.raises(InputError, match="max_side"):
        crop_views(image, masks, boxes, ("crop",), max_side=0)


def test_a_large_crop_view_is_reduced_without_copying_its_window() -> None:
    """The crop view of a window at least twice ``max_side`` is exactly ``crop(window).reduce(k)`` (the parts
    outside the image black), for windows inside, across and beyond the image's edges."""
    from textsam.text.scoring import _reduced_crop

    rng = np.random.default_rng(3)
    pil = Image.fromarray(rng.integers(0, 255, (97, 131, 3), dtype=np.uint8))
    windows = [(-40, -70, 200, 170), (10, 5, 70, 65), (-3, 20, 60, 83), (100, 80, 180, 160), (-500, -500, -100, -100)]
    for x0, y0, x1, y1 in windows:
        for k in (2, 3, 7):
            ref = np.asarray(pil.crop((x0, y0, x1, y1)).reduce(k))
            assert np.array_equal(np.asarray(_reduced_crop(pil, (x0, y0, x1, y1), k)), ref), ((x0, y0, x1, y1), k)


@pytest.mark.parametrize(("phrase", "head", "directions", "rank", "relation", "anchor", "group"), [
    ("the leftmost cross", "cross", ("left",), 0, None, None, False),
    ("the red shape on the left", "red shape", ("left",), 0, None, None, False),
    ("the lower red cross", "red cross", ("bottom",), 0, None, None, False),
    ("all small red crosses", "red crosses", ("small",), 0, None, None, True),
    ("every cross", "cross", (), 0, None, None, True),
    ("second guy from left", "guy", ("left",), 1, None, None, False),
    ("the cup left of the plate", "cup", (), 0, "left", "plate", False),
    ("the cat next to the dog", "cat", (), 0, "near", "dog", False),
    ("the chair close to the fruit and not next to the fridge", "chair", (), 0, "near", "fruit", False),
    ("the person under an umbrella but not holding it", "person", (), 0, "below", "umbrella", False),
    ("the man next to the woman and her dog", "man", (), 0, "near", "woman and her dog", False),
    ("bottom right pizza", "pizza", ("bottom", "right"), 0, None, None, False),
    ("the woman in the middle", "woman", ("middle",), 0, None, None, False),
    ("a photo of a dog", "photo of a dog", (), 0, None, None, False),
    # written by people (RefCOCOS, ../shared/data/refcocos_on_coco_tiny): sides of an anchor, the earliest relation,
    # the clause after a comma, the viewer, pronoun anchors, side words that are garments or body parts
    ("the grey car on the left side of a red car", "grey car", (), 0, "left", "red car", False),
    ("the person on the right hand side of the person wearing a hat", "person", (), 0, "right", "person wearing a hat",
     False),
    ("a pot on the stovetop next to the coffee machine", "pot", (), 0, "on", "stovetop next to the coffee machine", False),
    ("the person standing on the bench, wearing a hat", "person wearing a hat", (), 0, "on", "bench", False),
    ("the cup next to the bread, not containing wine", "cup", (), 0, "near", "bread", False),
    ("the spinning chair that is closest to the wine bottle", "spinning chair", (), 0, "near", "wine bottle", False),
    ("the silver car that is furthest from the red bus", "silver car", (), 0, "far", "red bus", False),
    ("the motorcycle being leaned on by the person in a striped shirt", "motorcycle being leaned on", (), 0, "near",
     "person in a striped shirt", False),
    ("the man farthest from the camera", "man", ("small",), 0, None, None, False),
    ("the elephant fifth farthest from the camera", "elephant", ("small",), 4, None, None, False),
    ("the suitcase with a cat on it", "suitcase with a cat on it", (), 0, None, None, False),
    ("the person in a white top carrying a bag", "person in a white top carrying a bag", (), 0, None, None, False),
    ("the remote held in the right hand of a person", "remote held in the right hand of a person", (), 0, None, None,
     False),
    ("the giraffe in the middle with its mouth open", "giraffe with its mouth open", ("middle",), 0, None, None, False),
    ("far right person", "person", ("right",), 0, None, None, False),
    # what the object is not leaves the head and the anchor (CLIP would prefer the objects it excludes)
    ("the person wearing a hat not carrying a frisbee", "person wearing a hat", (), 0, None, None, False),
    ("the person sitting in the middle not wearing a hat", "person", ("middle",), 0, None, None, False),
    ("the yellow suitcase without a blue tag", "yellow suitcase", (), 0, None, None, False),
    ("black board that does not have a number on it", "black board", (), 0, None, None, False),
    ("the man who isn't smiling", "man", (), 0, None, None, False),
    ("the spoon near a cup that is not empty", "spoon", (), 0, "near", "cup", False),
    ("the bottle that is not empty and is located on the right side of the flower", "bottle", (), 0, "right", "flower",
     False),
    ("the no parking sign", "no parking sign", (), 0, None, None, False),  # nothing before the negation: kept
    # "anyone", "something": no anchor
    ("the knife that is neither held by anyone nor placed on the marble surface", "knife", (), 0, "on",
     "marble surface", False),
])
def test_parse(phrase, head, directions, rank, relation, anchor, group) -> None:
    q = parse(phrase)
    assert (q.head, q.directions, q.rank, q.relation, q.anchor, q.group) == (head, directions, rank, relation, anchor,
                                                                            group)


def test_a_negated_relation_prefers_the_candidates_outside_it() -> None:
    """"the cup that is not on the table": the relation is negated (the head drops "that is not"), and resolve then
    prefers the candidates that do not stand in it to the anchor; "far from" is the opposite of "near"."""
    q = parse("the cross that is not next to the dog")
    assert (q.head, q.relation, q.anchor, q.negated) == ("cross", "near", "dog", True)
    assert parse("the cross next to the dog").negated is False
    assert parse("the cup that isn't on the table").negated is True
    # crosses at 0 (beside the dog at 1) and at 3 (far from it)
    boxes = torch.tensor([[0, 0, 10, 10], [12, 0, 22, 10], [40, 0, 50, 10], [200, 0, 210, 10]], dtype=torch.float)
    head = torch.tensor([0.45, 0.05, 0.05, 0.45])
    anchor = torch.tensor([0.01, 0.97, 0.01, 0.01])
    size = (10, 210)
    assert int(resolve(parse("the cross next to the dog"), head, boxes, size, anchor).argmax()) == 0
    assert int(resolve(q, head, boxes, size, anchor).argmax()) == 3
    assert int(resolve(parse("the cross far from the dog"), head, boxes, size, anchor).argmax()) == 3


def test_a_superlative_with_a_relation_ranks_what_the_relation_leaves() -> None:
    """"the leftmost cross next to the dog": the relation keeps the crosses beside the dog, the superlative picks
    the leftmost of those (alone, "the leftmost cross" is the far one on the left)."""
    q = parse("the leftmost cross next to the dog")
    assert (q.head, q.directions, q.relation, q.anchor) == ("cross", ("left",), "near", "dog")
    assert parse("the knife beside the pineapple, third from the left").directions == ("left",)
    # crosses at 0 (far left, alone), 1 and 2 on either side of the dog (3), and 4 (far right)
    boxes = torch.tensor([[0, 0, 10, 10], [311, 0, 321, 10], [351, 0, 361, 10], [330, 0, 342, 10], [600, 0, 610, 10]],
                         dtype=torch.float)
    head = torch.tensor([0.25, 0.25, 0.25, 0.0, 0.25])
    anchor = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    size = (10, 610)
    assert int(resolve(parse("the leftmost cross"), head, boxes, size).argmax()) == 0
    assert int(resolve(q, head, boxes, size, anchor).argmax()) == 1
    assert int(resolve(parse("the rightmost cross next to the dog"), head, boxes, size, anchor).argmax()) == 2


def test_a_phrase_relating_its_object_to_several_others_keeps_every_relation() -> None:
    """A clause after the anchor that begins with a relation is one more relation ("the chair close to the fruit and
    not next to the fridge"); resolve multiplies them, so the answer stands in all of them (ReCLIP)."""
    q = parse("the chair close to the fruit and not next to the fridge")
    assert (q.head, q.relation, q.anchor, q.negated) == ("chair", "near", "fruit", False)
    assert q.more_relations == (("near", "fridge", True),)
    assert q.relations == (("near", "fruit", False), ("near", "fridge", True)) and q.anchors == ("fruit", "fridge")
    assert q.as_dict()["more_relations"] == [["near", "fridge", True]]
    q2 = parse("the white car next to the red car, in front of the tilted car")
    assert (q2.head, q2.relations) == ("white car", (("near", "red car", False), ("front", "tilted car", False)))
    # a clause that is no relation still describes the head (or, negative, is what the object is not)
    q3 = parse("the person on the bench, wearing a hat, not holding a glass")
    assert (q3.head, q3.more_relations) == ("person wearing a hat", ())
    assert q3.excluded == ("person wearing a hat holding a glass",)
    assert parse("the cross next to the dog").more_relations == () and parse("the cross").relations == ()
    # chairs 0, 2 and 4 (CLIP says so); fruit 1 between 0 and 2; fridge 3 beside 2 and 4
    boxes = torch.tensor([[0, 0, 10, 10], [14, 0, 24, 10], [28, 0, 38, 10], [42, 0, 52, 10], [56, 0, 66, 10]],
                         dtype=torch.float)
    head = torch.tensor([0.3, 0.0, 0.4, 0.0, 0.3])
    fruit = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    fridge = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    size = (10, 66)
    assert int(resolve(q, head, boxes, size, fruit).argmax()) == 2  # the first relation alone: beside the fruit
    both = resolve(q, head, boxes, size, fruit, [fridge])
    assert int(both.argmax()) == 0 and torch.isclose(both.sum(), torch.tensor(1.0))  # beside the fruit, away from the fridge


def test_between_relates_the_object_to_two_others() -> None:
    """"the cup between the plate and the bowl" has two anchors (two "between" entries); "between two trucks"
    names one kind twice. resolve scores ``sum_{j != l} B(i, j, l) P_plate(j) P_bowl(l)``, B: i's centre on the
    segment between j's and l's; "not between" prefers the others."""
    q = parse("the cup between the plate and the bowl")
    assert (q.head, q.relations) == ("cup", (("between", "plate", False), ("between", "bowl", False)))
    q2 = parse("the person with black hair between two trucks")
    assert (q2.head, q2.anchors) == ("person with black hair", ("trucks", "trucks"))
    q3 = parse("the man positioned between the guy in a shirt and jeans and the woman, on the left")
    assert q3.anchors == ("guy in a shirt and jeans", "woman") and q3.directions == ("left",)
    assert parse("the cup between the plates").relations == ()  # no two objects named: plain scoring
    assert parse("the turned on laptop").relations == ()  # "turned on": a particle, no relation
    # cups 1 (between the plate 0 and the bowl 2) and 3 (below them)
    boxes = torch.tensor([[0, 0, 10, 10], [40, 0, 50, 10], [80, 0, 90, 10], [40, 60, 50, 70]], dtype=torch.float)
    head = torch.tensor([0.0, 0.5, 0.0, 0.5])
    plate, bowl = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 0, 1.0, 0])
    size = (70, 90)
    assert torch.allclose(resolve(q, head, boxes, size, plate, [bowl]), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    away = resolve(parse("the cup not between the plate and the bowl"), head, boxes, size, plate, [bowl])
    assert int(away.argmax()) == 3
    # with another relation after it, both must hold: plate 0, cup 1, knife 2, cup 3, bowl 4 in a row (both cups
    # between the plate and the bowl); the knife decides
    boxes = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10], [80, 0, 90, 10]],
                         dtype=torch.float)
    head = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0])
    plate, knife, bowl = torch.eye(5)[0], torch.eye(5)[2], torch.eye(5)[4]
    for side, cup in (("left", 1), ("right", 3)):
        q4 = parse(f"the cup between the plate and the bowl, {side} of the knife")
        assert q4.relations[2] == (side, "knife", False)
        assert int(resolve(q4, head, boxes, (10, 90), plate, [bowl, knife]).argmax()) == cup


def test_a_sets_members_stand_where_the_phrase_puts_them() -> None:
    """support: for "all the cups left of the plate" each candidate's relation terms relative to the best placed
    one; for "all the cars on the left" the half of the image; 1 for a phrase without geometry."""
    from textsam.text.spatial import support

    boxes = torch.tensor([[0, 0, 10, 10], [40, 0, 50, 10], [80, 0, 90, 10], [20, 0, 30, 10]], dtype=torch.float)
    plate = torch.tensor([0.0, 1.0, 0.0, 0.0])
    size = (10, 90)
    assert torch.equal(support(parse("all the cups left of the plate"), boxes, size, plate),
                       torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.equal(support(parse("all the cups right of the plate"), boxes, size, plate),
                       torch.tensor([0.0, 0.0, 1.0, 0.0]))
    near = support(parse("all the cups next to the plate"), boxes, size, plate)
    assert near[3] == 1.0 and 0 < near[0] < near[3] and near[1] == 0.0  # relative: the nearest has 1
    assert torch.equal(support(parse("all the cars on the left"), boxes, size), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.equal(support(parse("all the cars"), boxes, size), torch.ones(4))
    assert torch.equal(support(parse("the leftmost car"), boxes, size), torch.ones(4))  # one answer: resolve's job
    assert torch.equal(support(parse("all the cups left of the plate"), boxes, size, torch.tensor([1.0, 0, 0, 0])),
                       torch.zeros(4))  # nothing stands left of the leftmost: no member


def test_a_reading_is_described_in_words() -> None:
    """Query.describe, the app's "Read as": the head, side words with their rank, every relation."""
    cases = {
        "the chair close to the fruit and not next to the fridge": "'chair', near 'fruit', not near 'fridge'",
        "all cars between the bus and the van": "every 'cars', between 'bus' and 'van'",
        "the second bottle from the right on the counter": "'bottle', number 2 from the right, on 'counter'",
        "the last car from the left": "'car', the last from the left",
        "the leftmost red cross": "'red cross', leftmost",
        "the cup left of the plate": "'cup', left of 'plate'",
        "a dog": "'dog'",
    }
    for phrase, words in cases.items():
        assert parse(phrase).describe() == words, phrase


def test_parse_keeps_the_synthetic_phrases_as_they_were() -> None:
    """The proxy's own phrase forms (the synthetic generator's spatial, attribute and category templates) parse as
    before the rules for people's phrases were added."""
    cases = {"the leftmost star": ("star", ("left",)), "the topmost red shape": ("red shape", ("top",)),
             "the square on the right": ("square", ("right",)), "the upper circle": ("circle", ("top",)),
             "the lower heart": ("heart", ("bottom",)), "the large green square": ("green square", ("big",)),
             "the purple hexagon": ("purple hexagon", ())}
    for phrase, (head, directions) in cases.items():
        q = parse(phrase)
        assert (q.head, q.directions, q.relation) == (head, directions, None), phrase


def test_resolve_superlatives_ordinals_and_relations() -> None:
    # four candidates left to right; 0, 2 and 3 are crosses (CLIP says so), 1 is not
    boxes = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], dtype=torch.float)
    head = torch.tensor([0.32, 0.04, 0.32, 0.32])
    size = (10, 70)
    assert int(resolve(parse("the leftmost cross"), head, boxes, size).argmax()) == 0
    assert int(resolve(parse("the rightmost cross"), head, boxes, size).argmax()) == 3
    assert int(resolve(parse("the second cross from the left"), head, boxes, size).argmax()) == 2
    anchor = torch.tensor([0.01, 0.97, 0.01, 0.01])  # "the dog" is candidate 1
    assert int(resolve(parse("the cross left of the dog"), head, boxes, size, anchor).argmax()) == 0
    assert int(resolve(parse("the cross right of the dog"), head, boxes, size, anchor).argmax()) in (2, 3)
    assert torch.equal(resolve(parse("the cross"), head, boxes, size), head)  # no spatial words: CLIP's answer


def _scene() -> np.ndarray:
    im = Image.new("RGB", (128, 128), (200, 200, 190))
    d = ImageDraw.Draw(im)
    d.ellipse([10, 40, 45, 75], fill=(220, 40, 40))      # red circle, left
    d.ellipse([85, 40, 120, 75], fill=(40, 80, 220))     # blue circle, right
    d.rectangle([45, 95, 80, 125], fill=(230, 200, 40))  # yellow square, bottom
    return np.asarray(im)


@pytest.fixture(scope="module")
def engine_predictor() -> textsam.TextSamPredictor:
    predictor = textsam.TextSamPredictor(textsam.create_model("shapes_tiny", text_head=False))
    predictor.set_image(_scene())
    return predictor


def test_engine_answers_in_one_decoder_call_with_presence(engine_predictor) -> None:
    calls = []
    decoder = engine_predictor.model.mask_decoder
    original = decoder.forward

    def spy(*args, **kwargs):
        calls.append(kwargs["sparse_prompt_embeddings"].shape)
        return original(*args, **kwargs)

    engine_predictor.predict(text="the red circle")  # the first request computes the proposals
    decoder.forward = spy
    try:
        out = engine_predictor.predict(text="the red circle")
    finally:
        decoder.forward = original
    assert len(calls) == 1 and calls[0][0] == 1  # one decoder call, one prompt
    assert out.presence is not None and 0 <= out.presence <= 1 and out.info["found"] == (out.presence >= 0.5)
    box = out.info["prompts"]["box"]
    assert box is not None and box[2] < 64  # the chosen proposal is the left (red) circle


def test_absent_phrase_has_no_mask_with_all_instances(engine_predictor) -> None:
    absent = engine_predictor.predict(text="the green star", instances="all")
    present = engine_predictor.predict(text="the red circle", instances="all")
    assert absent.presence < present.presence
    assert len(present.masks) >= 1
    if not absent.info["found"]:
        assert absent.masks.shape == (0, 128, 128) and absent.scores.shape == (0,)


def test_vocabulary_in_one_pass_equals_single_calls(engine_predictor) -> None:
    phrases = ["the red circle", "the blue circle", "the yellow square", "all the circles", "the leftmost circle"]
    towers = engine_predictor.model.text_encoder.tower_calls
    many = engine_predictor.predict_phrases(phrases)
    assert engine_predictor.model.text_encoder.tower_calls <= towers + 2  # phrases + heads: one text batch each
    assert len(many) == len(phrases)
    for phrase, a in zip(phrases, many):
        b = engine_predictor.predict(text=phrase)
        assert a.masks.shape == b.masks.shape and (a.masks == b.masks).mean() > 0.999
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        assert a.presence == pytest.approx(b.presence, abs=1e-6)


def test_phrases_choosing_the_same_object_share_one_decoder_row(engine_predictor) -> None:
    """Phrases whose chosen proposal is the same object have identical prompts: the vocabulary decodes and
    upsamples it once, and every phrase still gets what its own predict() call gives."""
    phrases = ["the red circle", "a red circle", "red circle", "the blue circle"]
    prompts = engine_predictor.text.prompts_for(phrases, engine_predictor)
    distinct = {(p.points.tobytes(), p.box.tobytes()) for p in prompts}
    assert len(distinct) < len(phrases)  # the three red circles are one object
    rows = []
    decoder = engine_predictor.model.mask_decoder
    original = decoder.forward

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        rows.append(kwargs["sparse_prompt_embeddings"].shape[0])
        return original(*args, **kwargs)

    decoder.forward = spy
    try:
        many = engine_predictor.predict_phrases(phrases)
    finally:
        decoder.forward = original
    assert rows == [len(distinct)]
    for phrase, a in zip(phrases, many):
        b = engine_predictor.predict(text=phrase)
        assert (a.masks == b.masks).all() and a.presence == pytest.approx(b.presence, abs=1e-6)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        assert a.info["labels"] == [phrase] * len(a.masks)
    assert not np.shares_memory(many[0].masks, many[1].masks)


def test_a_vocabulary_on_an_image_without_proposals_equals_single_calls() -> None:
    """A real photo gives shapes_tiny's SAM no confident proposal: every phrase then has nothing to prompt
    with, and the vocabulary must still answer each phrase as predict() does (it raised an IndexError)."""
    from textsam.transforms import load_image

    from .conftest import SHARED_DATA

    photo = SHARED_DATA / "sam_demo_images" / "groceries.jpg"
    if not photo.is_file():
        pytest.skip(f"shared test data not found at {photo}")
    import dataclasses

    from textsam.text.engine import EngineOptions

    model = textsam.create_model("shapes_tiny", text_head=False)
    options = textsam.TextSamPredictor(model).text.options  # the bundle's relaxed filters find a few on it:
    strict = dataclasses.replace(options, engine=dataclasses.replace(  # SAM's text-request defaults find none
        options.engine, proposals=EngineOptions().proposals))
    predictor = textsam.TextSamPredictor(model, text_options=strict)
    predictor.set_image(load_image(photo))
    assert len(predictor.text.engine.proposals(predictor)) == 0
    phrases = ["dog", "the biggest fruit", "a zebra"]
    for phrase, a in zip(phrases, predictor.predict_phrases(phrases)):
        b = predictor.predict(text=phrase)
        assert a.masks.shape == b.masks.shape and (a.masks == b.masks).all() and a.presence == b.presence


def test_a_user_click_keeps_the_candidates_it_touches(engine_predictor) -> None:
    out = engine_predictor.predict(text="circle", point_coords=np.array([[100.0, 57.0]]), point_labels=np.array([1]))
    assert out.masks[0][57, 100] and not out.masks[0][57, 27]  # the blue circle, where the user clicked


def test_a_user_box_keeps_the_candidates_mostly_inside_it(engine_predictor) -> None:
    engine = engine_predictor.text.engine
    for box, inside, outside in (([80, 37, 120, 77], (57, 100), (57, 27)), ([7, 37, 47, 77], (57, 27), (57, 100))):
        out = engine_predictor.predict(text="circle", box=np.array(box, float))
        assert out.masks[0][inside] and not out.masks[0][outside]
        (ranked,) = engine_predictor.text.engine_rank(engine_predictor, ["circle"], user_box=np.array(box, float))
        masks = engine.proposals(engine_predictor).masks
        x0, y0, x1, y1 = box
        for i in torch.nonzero(ranked.probs > 0).flatten():  # every candidate left lies mostly in the box
            assert masks[i, y0 : y1 + 1, x0 : x1 + 1].sum() >= 0.5 * masks[i].sum()
        assert masks[ranked.chosen[0]][inside]


def test_a_full_mask_token_is_the_towers_own_image_embedding() -> None:
    """A mask covering every patch sees what the tower's class token sees: the same embedding as open_clip's
    encode_image on the same input; each mask token is independent of the other masks in the pass."""
    import open_clip

    from textsam.text.grounding import DenseClip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    dense = DenseClip(model, 224)
    masks = np.zeros((3, 224, 224), bool)
    masks[0] = True
    masks[1, :112, :112] = True
    masks[2, 150:, 30:200] = True
    tokens = dense.mask_embeddings(image, masks)
    pixels, _ = dense.prepare(image)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)[0]
    torch.testing.assert_close(tokens[0], ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(dense.mask_embeddings(image, masks[1:2])[0], tokens[1], atol=2e-5, rtol=1e-4)
    assert float(tokens[1] @ tokens[2]) < 0.999  # different patches, different embeddings
    # the pass pads its mask tokens to a multiple of 8 (few distinct sequence lengths) and drops the padding
    lengths = []
    block = model.visual.transformer.resblocks[0]
    hook = block.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape))
    try:
        assert dense.mask_embeddings(image, masks).shape == (3, 512)
        assert dense.mask_embeddings(image, np.concatenate([masks] * 3)).shape == (9, 512)
    finally:
        hook.remove()
    assert [max(shape[:2]) for shape in lengths] == [1 + 196 + 8, 1 + 196 + 16]


def test_cell_coverage_counts_the_pixels_of_each_patch() -> None:
    import open_clip

    from textsam.text.grounding import DenseClip, Geometry

    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    dense = DenseClip(model, 224)
    geometry = Geometry.create(112, 224, 224, 16)  # half-height image: 7 x 14 cells of 16 px
    masks = np.zeros((1, 112, 224), bool)
    masks[0, 16:32, 32:48] = True  # exactly cell (row 1, col 2)
    masks[0, 64:72, 0:16] = True   # half of cell (row 4, col 0)
    cover = dense.cell_coverage(masks, geometry)
    assert cover.shape == (1, 7, 14)
    assert cover[0, 1, 2] == 1.0 and cover[0, 4, 0] == 0.5 and cover.sum() == 1.5


def test_the_shortlist_crops_only_the_best_mask_tokens() -> None:
    """A plain phrase crops ``shortlist`` proposals, a spatial phrase twice as many, a group phrase every one;
    the answer is the best crop among the phrase's own shortlist, whatever else is cached."""
    import dataclasses

    model = textsam.create_model("shapes_tiny", text_head=False)
    options = textsam.TextSamPredictor(model).text.options
    grid = dataclasses.replace(options, engine=dataclasses.replace(options.engine, seeds="grid",  # many proposals
                                                                   shortlist=4))
    engine_predictor = textsam.TextSamPredictor(model, text_options=grid)
    engine_predictor.set_image(_scene())
    engine = engine_predictor.text.engine
    n = len(engine.proposals(engine_predictor))
    k = engine.options.shortlist
    assert n > 2 * k >= 2, "the scene must have more proposals than a spatial shortlist"
    text = engine_predictor.text
    for phrase, expected in [("the red circle", k), ("the leftmost circle", 2 * k), ("all the circles", n)]:
        engine._crops = {}
        (ranked,) = text.engine_rank(engine_predictor, [phrase])
        assert len(engine._crops) == expected, phrase
        assert int(torch.isfinite(ranked.cosines).sum()) == expected
    # shortlist=0: every proposal is cropped and ranked, the earlier engine
    everything = dataclasses.replace(engine.options, shortlist=0)
    full = textsam.TextSamPredictor(engine_predictor.model, text_options=dataclasses.replace(
        text.options, engine=everything))
    full.set_image(_scene())
    (ranked,) = full.text.engine_rank(full, ["the red circle"])
    assert len(full.text.engine._crops) == n and torch.isfinite(ranked.cosines).all()
    (short,) = text.engine_rank(engine_predictor, ["the red circle"])
    kept = torch.isfinite(short.cosines)
    torch.testing.assert_close(short.cosines[kept], ranked.cosines[kept])  # the same crops, cached or not
    assert short.chosen[0] == int(ranked.cosines.masked_fill(~kept, -2).argmax())


def test_a_tower_without_mask_tokens_crops_every_proposal(monkeypatch) -> None:
    """A CLIP tower that is not open_clip's plain ViT (a ResNet CLIP) has no mask tokens: every proposal is then
    cropped, as the earlier engine did, instead of failing."""
    import textsam.text.engine as engine_module
    from textsam.errors import InputError

    def no_tokens(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise InputError("dense CLIP features need an open_clip ViT image tower")

    import dataclasses

    monkeypatch.setattr(engine_module, "DenseClip", no_tokens)
    model = textsam.create_model("shapes_tiny", text_head=False)
    options = textsam.TextSamPredictor(model).text.options
    predictor = textsam.TextSamPredictor(model, text_options=dataclasses.replace(
        options, engine=dataclasses.replace(options.engine, shortlist=2)))  # fewer than the scene's proposals
    predictor.set_image(_scene())
    out = predictor.predict(text="the red circle")
    engine = predictor.text.engine
    assert len(engine._crops) == len(engine.proposals(predictor)) > engine.options.shortlist
    assert out.info["prompts"]["box"][2] < 64  # still the left (red) circle


def test_membership_reads_the_crop_view_and_the_choice_every_view() -> None:
    """With crop + blur views, a group phrase's members and ``instances="all"`` read each proposal's cosine in
    the plain crop view (the calibrated yes/no per object; "all"'s presence is the best member's), and so does a
    single phrase's presence, while the scores that rank the proposals are the mean over the views; with the crop
    view alone the two are the same."""
    import dataclasses

    model = textsam.create_model("shapes_tiny", text_head=False)
    options = textsam.TextSamPredictor(model).text.options
    both = dataclasses.replace(options, engine=dataclasses.replace(options.engine, views=("crop", "blur")))
    predictor = textsam.TextSamPredictor(model, text_options=both)
    predictor.set_image(_scene())
    engine, text = predictor.text.engine, predictor.text
    o = engine.options
    for phrase in ["all the circles", "the red circle"]:
        (ranked,) = text.engine_rank(predictor, [phrase])
        # the engine's own precision for the phrase (bf16 on a CPU with native bf16; int8 is for image towers)
        precision = {"int8": "fp32"}.get(engine.precision(predictor), engine.precision(predictor))
        emb = model.scoring_encoder.encode_ensembles([parse(phrase).head], text.templates(), precision)[0]
        short = torch.isfinite(ranked.cosines)
        crops = torch.stack([engine._crops[int(i)] for i in torch.nonzero(short).flatten()])  # (S, 2, D)
        torch.testing.assert_close(ranked.cosines[short], (crops @ emb).mean(1), atol=1e-5, rtol=1e-5)
        expected = torch.sigmoid(o.presence_gain * ((crops[:, 0] @ emb) - o.presence_bias))
        torch.testing.assert_close(ranked.members[short], expected, atol=1e-5, rtol=1e-5)
        assert (ranked.members[~short] == 0).all()
        assert not torch.allclose(crops[:, 0] @ emb, (crops @ emb).mean(1), atol=1e-3)  # the views disagree
        if parse(phrase).group:
            assert ranked.chosen == [int(i) for i in torch.argsort(ranked.members, descending=True)
                                     if ranked.members[i] >= o.presence_threshold] or len(ranked.chosen) == 1
        else:
            best = ranked.chosen[0]
            crop_view = float(engine._crops[best][0] @ emb)
            assert ranked.presence == pytest.approx(float(torch.sigmoid(torch.tensor(
                o.presence_gain * (crop_view - o.presence_bias)))), abs=1e-6)
            assert crop_view != pytest.approx(float(ranked.cosines[best]), abs=1e-4)  # not the mean
    # "all" keeps the proposals whose membership passes, in the ranking's order
    prompts, presence = text.instance_prompts("circle", predictor.image, predictor=predictor)
    (ranked,) = text.engine_rank(predictor, ["circle"], every=True)
    kept = [i for i in torch.argsort(ranked.probs, descending=True).tolist() if ranked.members[i] >= o.presence_threshold]
    assert kept
    assert [p.presence for p in prompts] == pytest.approx([float(ranked.members[i]) for i in kept][:8])
    assert presence == pytest.approx(float(ranked.members.max()))  # found exactly when a member passes
    crop_only = dataclasses.replace(options, engine=dataclasses.replace(options.engine, views=("crop",)))
    single = textsam.TextSamPredictor(model, text_options=crop_only)
    single.set_image(_scene())
    (ranked,) = single.text.engine_rank(single, ["all the circles"])
    short = torch.isfinite(ranked.cosines)
    torch.testing.assert_close(ranked.members[short], torch.sigmoid(
        o.presence_gain * (ranked.cosines[short] - o.presence_bias)))


def test_every_instance_decodes_each_proposal_once_per_image_and_answers_as_alone() -> None:
    """``instances="all"`` over a vocabulary: a proposal asked for by several phrases is decoded once per image
    (the decoder sees only rows it has not seen), and each phrase's answer equals its answer on a fresh
    predictor; a new image decodes afresh."""
    model = textsam.create_model("shapes_tiny", text_head=False)
    phrases = ["circle", "all the shapes", "the red circle", "square", "a zebra"]
    shared = textsam.TextSamPredictor(model)
    shared.set_image(_scene())
    rows = []
    original = model.mask_decoder.forward

    def spy(*args, **kwargs):
        rows.append(kwargs["sparse_prompt_embeddings"].shape[0])
        return original(*args, **kwargs)

    model.mask_decoder.forward = spy
    try:
        answers = [shared.predict(text=p, instances="all") for p in phrases]
        decoded = sum(rows)
        asked = sum(len(shared.text.instance_prompts(p, shared.image, predictor=shared)[0]) for p in phrases)
        assert decoded == len(shared._candidate_rows) < asked  # each proposal once, fewer than the phrases asked
        rows.clear()
        shared.set_image(_scene())
        shared.predict(text=phrases[0], instances="all")
        assert sum(rows) > 0  # a new image decodes again
    finally:
        model.mask_decoder.forward = original
    for phrase, answer in zip(phrases, answers):
        alone = textsam.TextSamPredictor(model)
        alone.set_image(_scene())
        single = alone.predict(text=phrase, instances="all")
        assert answer.masks.shape == single.masks.shape and (answer.masks == single.masks).all()
        assert np.allclose(answer.scores, single.scores, atol=1e-5) and answer.presence == single.presence


def test_with_a_text_head_the_engine_chooses_for_a_relation_between_two_objects() -> None:
    """shapes_tiny's head reads a phrase whole and has no geometry between two objects: for "the X left of the Y"
    the engine chooses among the head's candidates (its box and click join the call with the head's tokens, and
    it answers presence); other phrases keep the locator's click. A vocabulary decides the same per phrase."""
    from pathlib import Path

    from textsam.transforms import load_image

    model = textsam.create_model("shapes_tiny")
    predictor = textsam.TextSamPredictor(model)
    assert predictor.text.can_locate and not predictor.text.engine_chooses
    assert predictor.text.engine_resolves("the circle left of the square")
    assert predictor.text.engine_resolves("the star that is not above the heart")
    assert not predictor.text.engine_resolves("the leftmost circle")
    predictor.set_image(load_image(Path(textsam.__file__).parent / "examples" / "shapes.png"))
    phrases = ["the circle left of the square", "the red circle", "the star that is not above the heart"]
    singles = [predictor.predict(text=p) for p in phrases]
    relation, plain, negated = (s.info["prompts"] for s in singles)
    assert singles[0].info["query"]["relation"] == "left" and singles[2].info["query"]["negated"] is True
    assert "query" not in singles[1].info  # the head decided: no engine reading
    assert "located" not in relation and relation["box"] is not None and len(relation["points"]) == 1
    assert "located" not in negated and negated["box"] is not None
    assert "located" in plain and plain["box"] is None
    for single, many in zip(singles, predictor.predict_phrases(phrases)):
        assert many.presence == pytest.approx(single.presence, abs=1e-6)
        assert np.array_equal(many.masks, single.masks)
        assert many.info["prompts"]["box"] == single.info["prompts"]["box"]
        assert many.info.get("query") == single.info.get("query")


def test_a_group_or_every_instance_keeps_the_members_in_the_relation() -> None:
    """"all the red circles left of the blue square" and instances="all" keep only the circles left of it; "all
    red circles on the left" drops the one in the right half (the engine's members times spatial.support)."""
    im = Image.new("RGB", (160, 128), (200, 200, 190))
    d = ImageDraw.Draw(im)
    d.ellipse([5, 10, 30, 35], fill=(220, 40, 40))       # red circles, left
    d.ellipse([5, 80, 30, 105], fill=(220, 40, 40))
    d.ellipse([120, 10, 145, 35], fill=(220, 40, 40))    # red circle, right
    d.rectangle([60, 50, 90, 80], fill=(40, 80, 220))    # blue square, middle
    predictor = textsam.TextSamPredictor(textsam.create_model("shapes_tiny", text_head=False))
    predictor.set_image(np.asarray(im))

    def columns(mask: np.ndarray) -> tuple[int, int]:
        xs = np.nonzero(mask)[1]
        return int(xs.min()), int(xs.max())

    every = predictor.predict(text="all red circles").masks[0]
    assert columns(every) == (5, 145)
    assert columns(predictor.predict(text="all red circles left of the blue square").masks[0])[1] < 60
    assert columns(predictor.predict(text="all red circles right of the blue square").masks[0])[0] > 90
    assert columns(predictor.predict(text="all red circles on the left").masks[0])[1] < 100
    left = predictor.predict(text="the red circles left of the blue square", instances="all")
    assert len(left.masks) >= 2 and all(columns(m)[1] < 60 for m in left.masks)
    # with a text head, the locator's members of "all the X on the left" are those in that half too
    headed = textsam.TextSamPredictor(textsam.create_model("shapes_tiny"))
    headed.set_image(np.asarray(im))
    for side, inside in (("left", lambda cx: cx < 80), ("right", lambda cx: cx >= 80)):
        members = headed.predict(text=f"all red circles on the {side}").info["prompts"]["members"]
        assert members and all(inside((m["box"][0] + m["box"][2]) / 2) for m in members), (side, members)
    assert len(headed.predict(text="all red circles").info["prompts"]["members"]) > len(members)


def test_what_a_phrase_excludes_is_a_phrase_clip_can_score() -> None:
    """A negated description leaves the head (CLIP would read "not red" as "red") and comes back, made positive, as
    ``excluded``: the engine's negative phrase for that query. Nothing before the negation: the words stay whole."""
    cases = {
        "the circle that is not red": ("circle", ("circle that is red",)),
        "the person wearing a hat not carrying a frisbee": ("person wearing a hat",
                                                            ("person wearing a hat carrying a frisbee",)),
        "the smallest bottle without a blue or green cap": ("bottle", ("bottle with a blue or green cap",)),
        "the man who isn't smiling": ("man", ("man who is smiling",)),
        "chips that is neither red nor green": ("chips", ("chips that is red or green",)),
        "all the circles that are not red": ("circles", ("circles that are red",)),
        "the no parking sign": ("no parking sign", ()),
        "the red circle": ("red circle", ()),
    }
    for phrase, (head, excluded) in cases.items():
        q = parse(phrase)
        assert (q.head, q.excluded) == (head, excluded), phrase
    q = parse("the smallest bottle without a blue or green cap")
    assert q.directions == ("small",) and q.as_dict()["excluded"] == ["bottle with a blue or green cap"]
    assert q.describe() == "'bottle', smallest, not like 'bottle with a blue or green cap'"
    # a superlative inside what is excluded is no direction of the object
    assert parse("the cup facing right, not the rightmost one").directions == ()


@pytest.mark.parametrize("phrase", ["the circle that is not red", "the circle without red colour",
                                    "the circle which isn't red"])
def test_a_phrase_that_says_what_the_object_is_not_steers_the_engine_away(phrase) -> None:
    """"the circle that is not red" through the engine: the red circle is more like "circle that is red" than like
    "circle", so it is neither chosen nor an instance, and gets the background click; a vocabulary answers as single
    calls do. Before, CLIP scored "circle that is not red" and chose the red one."""
    im = Image.new("RGB", (160, 128), (200, 200, 190))
    d = ImageDraw.Draw(im)
    d.ellipse([5, 10, 45, 50], fill=(220, 40, 40))       # red circle, left
    d.ellipse([100, 60, 140, 100], fill=(40, 80, 220))   # blue circle, right
    predictor = textsam.TextSamPredictor(textsam.create_model("shapes_tiny", text_head=False))
    predictor.set_image(np.asarray(im))
    out = predictor.predict(text=phrase)
    xs = np.nonzero(out.masks[0])[1]
    assert xs.min() >= 80, (phrase, xs.min())  # the blue circle
    prompts = out.info["prompts"]
    background = [p for p, label in zip(prompts["points"], prompts["labels"]) if label == 0]
    assert len(background) == 1 and background[0][0] < 80  # on the red circle
    assert out.info["query"]["excluded"] and out.info["query"]["head"] == "circle"
    every = predictor.predict(text=phrase, instances="all")
    assert every.masks.shape[0] >= 1 and all(np.nonzero(m)[1].min() >= 80 for m in every.masks)
    # a vocabulary answers as single calls do, also where two phrases exclude the same words with shortlists of
    # different sizes (a side word doubles the shortlist)
    phrases = [phrase, "the red circle", "the leftmost " + phrase.removeprefix("the ")]
    assert parse(phrases[2]).excluded == parse(phrase).excluded
    for many, text in zip(predictor.predict_phrases(phrases), phrases):
        single = predictor.predict(text=text)
        assert np.array_equal(many.masks, single.masks), text
        assert many.presence == pytest.approx(single.presence, abs=1e-6), text


@pytest.mark.parametrize("head", [False, True])
def test_a_negative_phrase_steers_away_from_what_it_names(head) -> None:
    """``negative_text`` (the CLI's ``--negative-text``): a proposal more like the negative phrase than like the
    phrase is not chosen, nor an instance, and the one it names gets a background click; with a text head, the
    locator does not click it. Before, the engine and the locator ignored it (shapes_tiny: both modes)."""
    im = Image.new("RGB", (160, 128), (200, 200, 190))
    d = ImageDraw.Draw(im)
    d.ellipse([5, 10, 45, 50], fill=(220, 40, 40))       # red circle, left
    d.ellipse([100, 60, 140, 100], fill=(40, 80, 220))   # blue circle, right
    predictor = textsam.TextSamPredictor(textsam.create_model("shapes_tiny", text_head=None if head else False))
    predictor.set_image(np.asarray(im))

    def columns(mask: np.ndarray) -> tuple[int, int]:
        xs = np.nonzero(mask)[1]
        return int(xs.min()), int(xs.max())

    def chosen_x(prediction: textsam.Prediction) -> float:  # the centre of the object the answer was made for
        prompts = prediction.info["prompts"]
        if prompts.get("located"):
            return prompts["located"][0]
        return (prompts["box"][0] + prompts["box"][2]) / 2

    plain = predictor.predict(text="the circle")
    right = chosen_x(plain) >= 80  # this model's own pick; the negative phrase then names it

    def on_picked_side(x: float) -> bool:
        return x >= 80 if right else x < 80

    negative = "blue circle" if right else "red circle"
    steered = predictor.predict(text="the circle", negative_text=negative)
    assert not on_picked_side(chosen_x(steered))
    prompts = steered.info["prompts"]
    background = [p for p, label in zip(prompts["points"], prompts["labels"]) if label == 0]
    assert len(background) == 1 and on_picked_side(background[0][0])  # a background click on the named circle
    other = columns(steered.masks[0])
    assert not on_picked_side(other[0]) and not on_picked_side(other[1])
    every = predictor.predict(text="the circle", instances="all", negative_text=negative)
    assert not any(on_picked_side(x) for m in every.masks for x in columns(m))
    if not head:  # the engine's instances: the other circle (the head's locator may find none in this drawing)
        assert every.masks.shape[0] >= 1
    # a vocabulary with a negative phrase answers as single calls with it do
    phrases = ["the circle", "a round shape", "all circles"]
    for phrase, many in zip(phrases, predictor.predict_phrases(phrases, negative_text=negative)):
        single = predictor.predict(text=phrase, negative_text=negative)
        assert np.array_equal(many.masks, single.masks), phrase
        assert many.presence == pytest.approx(single.presence, abs=1e-6)
        def backgrounds(prediction: textsam.Prediction) -> list:
            prompts = prediction.info["prompts"]
            return [p for p, label in zip(prompts.get("points", []), prompts.get("labels", [])) if label == 0]

        assert backgrounds(many) == backgrounds(single), phrase


def test_a_relations_presence_needs_its_anchor(engine_predictor) -> None:
    """A relation presupposes its anchor: the presence of "the X left of the Y" is the smaller of the chosen
    object's and the anchor's (the best other shortlisted proposal for the Y), so "the circle left of the
    hexagon" in a picture without a hexagon is less present than the head alone says."""
    predictor = engine_predictor
    text, engine = predictor.text, predictor.text.engine
    o = engine.options
    precision = {"int8": "fp32"}.get(engine.precision(predictor), engine.precision(predictor))
    for phrase in ["the circle left of the square", "the red circle next to the triangle",
                   "the circle left of the square and not next to the yellow square"]:
        (ranked,) = text.engine_rank(predictor, [phrase])
        q = parse(phrase)
        assert len(engine._crops) == len(engine.proposals(predictor))  # every proposal shortlisted: 2 x 8 here
        emb = predictor.model.scoring_encoder.encode_ensembles([q.head, *q.anchors], text.templates(), precision)
        view = o.views.index("crop") if "crop" in o.views else slice(None)  # presence reads the plain crop view
        crops = torch.stack([engine._crops[i][view] for i in range(len(engine._crops))])
        crops = crops.mean(1) if crops.dim() == 3 else crops  # (N, D)
        head_cos = crops @ emb[0]
        best = ranked.chosen[0]
        expected = torch.sigmoid(o.presence_gain * (head_cos[best] - o.presence_bias))
        for k in range(len(q.anchors)):  # each anchor's best other proposal (several relations: every anchor's)
            anchor_cos = crops @ emb[1 + k]
            anchor_cos[best] = float("-inf")
            expected = min(expected, torch.sigmoid(o.presence_gain * (anchor_cos.max() - o.presence_bias)))
        assert ranked.presence == pytest.approx(float(expected), abs=1e-5)
        (alone,) = text.engine_rank(predictor, [q.head])
        assert ranked.presence <= alone.presence + 1e-6 or ranked.chosen != alone.chosen
