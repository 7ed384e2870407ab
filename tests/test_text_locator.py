"""The text head's region locator (phrase x candidate objects -> a click): units, training runs, files, and
the predictor's use of it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import textsam
from textsam.config import TextHeadConfig
from textsam.errors import InputError
from textsam.text.locator import RegionLocator
from textsam.train.config import FreezeConfig, TextHeadOptions, TrainConfig

from .test_train import FakeCoco, FakeRefer, make_config
from .tiny_train import tiny_train_model  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("tiny_train_model")  # the runs train ``tiny_train``


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------ units


def test_encode_words_matches_encode_and_keeps_position_words_apart() -> None:
    model = textsam.create_model("shapes_tiny")
    te = model.text_encoder
    phrases = ["the leftmost star", "the rightmost star", "star"]
    pooled, words, mask = te.encode_words(phrases)
    assert torch.allclose(pooled, te.encode(phrases), atol=1e-5)
    real = (te.tokenize(phrases) != 0).sum(1)  # start, word pieces, end
    assert words.shape == (3, int(real.max()), te.word_dim) and torch.equal(mask.sum(1), real)
    assert torch.count_nonzero(words[2, int(real[2]):]) == 0  # padding rows are zero
    pooled_gap = 1 - torch.cosine_similarity(pooled[0], pooled[1], dim=0)
    word_gap = 1 - torch.cosine_similarity(words[0, 2], words[1, 2], dim=0)  # "leftmost" vs "rightmost"
    assert word_gap > 100 * pooled_gap
    calls = te.tower_calls
    te.encode_words(phrases[:2])
    assert te.tower_calls == calls  # cached


# ------------------------------------------------------------------------------------ training


def test_locator_only_run_trains_just_the_locator_and_ships_in_the_head(clip_spec: str, tmp_path: Path) -> None:
    """Everything frozen but the locator: the export holds only ``text_locator.*``, the head file carries the
    whole head (projector and locator, reading the tower's per-token features), and the locator's pointing
    improves."""
    from textsam.train.evaluate import evaluate
    from textsam.train.loop import train
    from textsam.train.recipes import build_recipe, make_dataset
    from textsam.weights.format import read

    src = FakeRefer(FakeCoco(4))
    freeze = FreezeConfig(image_encoder=True, prompt_encoder=True, mask_decoder=True, text_projector=True,
                          text_encoder=True, text_locator=False)
    cfg = make_config(tmp_path / "loc", clip_spec, recipe="text", freeze=freeze, locator_dim=32, word_tokens=True,
                      steps=40, batch_size=8, lr=3e-3)
    assert cfg.locator_only
    path = train(cfg, source=src)
    weights = load_file(str(path))
    assert weights and all(k.startswith("text_locator.") for k in weights)
    head = read(tmp_path / "loc" / "text_head.safetensors")
    assert head.text_head.locator_dim == 32 and head.text_head.locator_word_dim == 64
    assert {k.split(".")[0] for k in head.tensors} == {"text_projector", "text_locator"}
    logs = [json.loads(ln) for ln in (tmp_path / "loc" / "log.jsonl").read_text().splitlines() if "locate" in ln]
    assert logs[-1]["locate"] < logs[0]["locate"]
    recipe = build_recipe(replace(cfg, checkpoint=None))
    recipe.model.load_state_dict(weights, strict=False)
    ds = make_dataset(recipe, src, train=False, split="train", limit=None)
    metrics = evaluate(recipe, ds, torch.device("cpu"))
    assert {"locate_hit", "miou_text_tokens_only"} <= set(metrics) and 0.0 <= metrics["locate_hit"] <= 1.0


def test_full_run_with_locator_word_features_and_commit_loss(clip_spec: str, tmp_path: Path) -> None:
    """A text run with every text-head option trains, resumes exactly, and rejects impossible settings."""
    from textsam.train.loop import train

    src = FakeRefer(FakeCoco(3))
    common = dict(recipe="text", freeze=FreezeConfig(image_encoder=True, text_encoder=False), word_tokens=True,
                  locator_dim=16, locate_text=True, text_multimask="all", steps=4)
    full = load_file(str(train(make_config(tmp_path / "full", clip_spec, **common), source=src)))
    assert any(k.startswith("text_locator.phrase.word_") for k in full)  # the locator reads the word features
    assert any(k.startswith("clip.") for k in full)
    cfg = make_config(tmp_path / "split", clip_spec, **common)
    train(cfg, source=src, stop_at=2)
    resumed = load_file(str(train(cfg, source=src, resume="auto")))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    with pytest.raises(InputError, match="locate_text"):
        make_config(tmp_path, clip_spec, recipe="text", locate_text=True)
    with pytest.raises(InputError, match="word_tokens"):
        make_config(tmp_path, clip_spec, recipe="clip_crops", word_tokens=True, locator_dim=16)
    with pytest.raises(InputError, match="word_tokens"):
        make_config(tmp_path, clip_spec, recipe="text", word_tokens=True)  # nothing would read the words
    with pytest.raises(InputError, match="text_multimask"):
        make_config(tmp_path, clip_spec, recipe="text", text_multimask="best")


def test_commit_loss_trains_every_output_of_a_bare_phrase() -> None:
    from textsam.train.losses import sam_loss

    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    iou = torch.rand(2, 3)
    sam_loss(logits, iou, target, min_over_outputs=False)["loss"].sum().backward()
    assert (logits.grad.flatten(2).abs().sum(-1) > 0).all()  # every output gets gradients
    logits.grad = None
    sam_loss(logits, iou, target)["loss"].sum().backward()
    assert int((logits.grad.flatten(2).abs().sum(-1) > 0).sum()) == 2  # SAM's rule: the best output only


# ------------------------------------------------------------------------------------ files


def test_bundle_and_unpack_round_trip_keep_the_locator(tmp_path: Path) -> None:
    """A whole-model file whose locator reads per-token features loads with it; the assembler's ``--unpack``
    writes a run folder whose weights rebuild the same model for training, with the run's CLIP folder or with
    the whole CLIP inside the file."""
    from textsam.train.recipes import build_model
    from textsam.weights import format as fmt
    from textsam.weights.pretrained import bundled_path
    from tools import shapes_tiny_bundle

    model = textsam.create_model("shapes_tiny")
    assert model.text_locator.word_dim == 128
    torch.manual_seed(1)
    for p in model.text_locator.parameters():
        torch.nn.init.normal_(p, std=0.1)
    shipped = fmt.read(bundled_path("shapes_tiny"))
    tensors = {**model.sam_state_dict(),
               **{f"text_projector.{k}": v for k, v in model.text_projector.state_dict().items()},
               **{f"text_locator.{k}": v for k, v in model.text_locator.state_dict().items()},
               **{f"clip.{k}": v for k, v in model.text_encoder.clip.state_dict().items()}}
    path = fmt.write(tmp_path / "b.safetensors", replace(shipped, tensors=tensors))
    loaded = textsam.create_model("shapes_tiny", checkpoint=str(path))
    assert loaded.text_locator.hidden_dim == 128 and loaded.text_locator.word_dim == 128
    a, b = model.text_locator.state_dict(), loaded.text_locator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    run = tmp_path / "run"
    assert shapes_tiny_bundle.main(["--unpack", str(path), "--out", str(run)]) == 0
    head = TextHeadOptions(num_text_tokens=4, word_tokens=True, locator_dim=128, locator_appearance="colour",
                           locator_factors="separate", locator_presence=True)
    phrases = ["the leftmost star", "all red objects"]
    with torch.no_grad():
        want = model.text_projector(model.text_encoder.encode(phrases))
    for clip in (f"local-dir:{run / 'clip'}", None):  # the run's CLIP folder, or the CLIP in model.safetensors
        cfg = TrainConfig(model="shapes_tiny", recipe="text", checkpoint=str(run / "model.safetensors"), clip=clip,
                          text_head=head, output_dir=str(tmp_path / "next"))
        rebuilt = build_model(cfg)
        with torch.no_grad():
            got = rebuilt.text_projector(rebuilt.text_encoder.encode(phrases))
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.equal(rebuilt.state_dict()["mask_decoder.iou_token.weight"],
                           model.state_dict()["mask_decoder.iou_token.weight"])
        c = rebuilt.text_locator.state_dict()
        assert all(torch.equal(a[k], c[k]) for k in a)


# ------------------------------------------------------------------------------------ regions


def test_region_geometry_and_silhouettes() -> None:
    from textsam.ops import deepest_points
    from textsam.text.locator import region_geometry, silhouettes

    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 8:16] = True  # 8 wide, 4 high, top right
    masks[1, 10:14, 0:4] = True  # a small square, bottom left
    centroid, feats = region_geometry(masks)
    assert torch.allclose(centroid[0], torch.tensor([0.5, -0.5])) and torch.allclose(centroid[1], torch.tensor([-0.75, 0.5]))
    assert feats[0, 3] > 0.5 and abs(float(feats[1, 3])) < 1e-6  # log width/height
    sil = silhouettes(masks, size=8)
    assert sil.shape == (2, 1, 8, 8)
    assert torch.allclose(sil[1], sil[1].flip(-1), atol=1e-5)  # a square fills its crop symmetrically
    assert float(sil[1].mean()) > 0.5  # whatever its size, the object fills most of its crop
    assert deepest_points(masks).tolist() == [[9, 3], [1, 11]]


@pytest.mark.parametrize("factors", ["joint", "separate"])
def test_region_locator_learns_shape_and_position_of_objects(factors: str) -> None:
    """Candidates are squares and discs of one random colour; phrases "left disc" / "right disc" / "square". The
    silhouette tells the shape apart whatever the colour, the centroid term picks the side."""
    from textsam.text.locator import RegionLocator

    torch.manual_seed(0)
    size = 32
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    loc = RegionLocator(TextHeadConfig(clip_dim=4, token_dim=8, locator_dim=32, locator_factors=factors))
    opt = torch.optim.Adam(loc.parameters(), lr=3e-3)
    phrases = torch.eye(4)[:3]  # 0 = "left disc", 1 = "right disc", 2 = "square"

    def scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        cxs = torch.randperm(6)[:3] * 5 + 4
        cys = torch.randint(6, size - 6, (3,))
        kinds = [0, 0, 1]  # two discs and a square
        masks = torch.zeros(3, size, size, dtype=torch.bool)
        for i, (cx, cy, k) in enumerate(zip(cxs.tolist(), cys.tolist(), kinds)):
            r = 3
            masks[i] = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) if k == 0 else ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r)
        which = int(torch.randint(0, 3, ()))
        discs = [0, 1] if cxs[0] < cxs[1] else [1, 0]
        target = torch.zeros(3, dtype=torch.bool)
        target[discs[0] if which == 0 else discs[1] if which == 1 else 2] = True
        emb = torch.randn(1, 8, 8, 8)  # appearance is noise: only shape and position can decide
        return emb, masks, target, which

    def batch(n: int):
        items = [scene() for _ in range(n)]
        return (torch.cat([e for e, *_ in items]), torch.stack([m for _, m, *_ in items]),
                torch.stack([t for _, _, t, _ in items]), phrases[[w for *_, w in items]])

    for _ in range(150):
        emb, masks, target, p = batch(32)
        loss = RegionLocator.loss(loc(emb, masks, None, p), target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    emb, masks, target, p = batch(100)
    with torch.no_grad():
        best = loc(emb, masks, torch.ones(100, 3, dtype=torch.bool), p).argmax(-1)
    assert float(target[torch.arange(100), best].float().mean()) > 0.9


def test_region_samples_and_a_region_locator_run(clip_spec: str, tmp_path: Path) -> None:
    """``max_regions``: every object of the image is a candidate, the targets are marked, training adds non-object
    candidates; a region-locator-only run trains and its clicks land on objects."""
    from textsam.train.data import build_entries
    from textsam.train.evaluate import evaluate
    from textsam.train.loop import train
    from textsam.train.recipes import build_recipe, make_dataset
    from textsam.train.samples import SampleOptions, SegmentationDataset

    src = FakeRefer(FakeCoco(4))
    entries = build_entries(src, 128)
    options = SampleOptions(img_size=128, lowres=32, probs=(0, 0, 1, 0), train=False, max_regions=4)
    ds = SegmentationDataset(src, entries, options)
    sample = ds[0]
    assert sample.regions.shape == (4, 32, 32) and sample.regions.dtype == torch.bool
    assert sample.region_valid.tolist() == [True, True, False, False]  # a square and a disc
    assert int(sample.region_target.sum()) == 1 and bool(sample.region_target[0])  # targets first
    train_ds = SegmentationDataset(src, entries, replace(options, train=True))
    assert int(train_ds[(0, 0)].region_valid.sum()) >= 3  # plus a union and/or a background patch
    colours = sample.region_colour  # the pixels' mean colour: the square's and the disc's own
    ann = src.coco.annotations[src.refs[0].ann_ids[0]]
    from .test_train import COLORS

    table = {name: torch.tensor(rgb, dtype=torch.float32) / 255 for name, rgb in COLORS.items()}
    nearest = min(table, key=lambda name: float((table[name] - colours[0, :3]).norm()))
    assert nearest == ann.color  # (edge pixels of the low-res masks mix in some background)

    freeze = FreezeConfig(image_encoder=True, prompt_encoder=True, mask_decoder=True, text_projector=True,
                          text_encoder=True, text_locator=False)
    cfg = make_config(tmp_path / "reg", clip_spec, recipe="text", freeze=freeze, locator_dim=16,
                      locator_appearance="colour", max_regions=4, steps=10, batch_size=8, lr=3e-3)
    weights = load_file(str(train(cfg, source=src)))
    assert weights and all(k.startswith("text_locator.") for k in weights)
    recipe = build_recipe(replace(cfg, checkpoint=None))
    recipe.model.load_state_dict(weights, strict=False)
    metrics = evaluate(recipe, make_dataset(recipe, src, train=False, split="train", limit=None), torch.device("cpu"))
    assert metrics["locate_hit"] >= 0.5  # half the candidates are targets; clicks are inside objects


def test_separate_factors_add_up_and_shuffled_colours_only_for_colourless_phrases() -> None:
    """``factors="separate"``: a candidate's content score is a sum over silhouette, colour and geometry, so the
    score gap between two shapes is the same in any colour. ``region_colour_shuffle``: phrases that name no
    colour see the candidates' colours with the image's channels permuted; phrases that name one never do."""
    from textsam.train.data import build_entries
    from textsam.train.samples import SampleOptions, SegmentationDataset

    torch.manual_seed(0)
    masks = torch.zeros(1, 2, 32, 32, dtype=torch.bool)
    masks[0, 0, 4:12, 4:12] = True  # a square
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    masks[0, 1] = (xx - 8) ** 2 + (yy - 8) ** 2 <= 16  # a disc at the same place

    def gaps_and_scores(factors: str) -> tuple[list[float], list[float]]:
        cfg = TextHeadConfig(clip_dim=4, token_dim=8, locator_dim=16, locator_appearance="colour",
                             locator_factors=factors)
        loc = RegionLocator(cfg).double()
        loc.beta.data.fill_(-60.0)  # softplus(beta) ~ 0: score = content * sigmoid(gate) + position
        loc.slope.weight.data.zero_()
        loc.slope.bias.data.zero_()
        gaps, scores = [], []
        for rgb in ([0.9, 0.1, 0.1, 0.05, 0.0, 0.1], [0.1, 0.2, 0.9, 0.0, 0.2, 0.0]):
            with torch.no_grad():
                s = loc(torch.zeros(1, 8, 8, 8, dtype=torch.float64), masks, None, torch.eye(4, dtype=torch.float64)[:1],
                        colours=torch.tensor(rgb, dtype=torch.float64).repeat(1, 2, 1))[0]
            gaps.append(float(s[0] - s[1]))
            scores.append(float(s[0]))
        return gaps, scores

    gaps, scores = gaps_and_scores("separate")
    assert abs(scores[0] - scores[1]) > 1e-3  # the colour matters ...
    assert gaps[0] == pytest.approx(gaps[1], rel=1e-9, abs=1e-12)  # ... but not to which shape is preferred
    joint_gaps, _ = gaps_and_scores("joint")
    assert abs(joint_gaps[0] - joint_gaps[1]) > 1e-9  # a joint region vector can mix colour into shape

    src = FakeRefer(FakeCoco(4))
    for ref in src.refs:
        ref.sentences.append("the shape")
    entries = build_entries(src, 128)
    colour_words = ["red", "blue", "green"]
    common = SampleOptions(img_size=128, lowres=32, probs=(0, 0, 1, 0), train=True, max_regions=4,
                           colour_words=frozenset(colour_words), greyscale_text=False)
    plain = SegmentationDataset(src, entries, common)
    shuffled = SegmentationDataset(src, entries, replace(common, region_colour_shuffle=1.0))
    changed = {True: 0, False: 0}
    for i, entry in enumerate(entries):
        a, b = plain[(0, i)], shuffled[(0, i)]
        assert torch.equal(a.regions, b.regions) and torch.equal(a.image, b.image)  # only colours
        names_colour = any(w in entry.phrase.split() for w in colour_words)
        same = torch.allclose(a.region_colour, b.region_colour)
        if names_colour:
            assert same
        else:
            means = a.region_colour[..., :3]
            assert any(torch.allclose(means[..., list(p)], b.region_colour[..., :3], atol=1e-6)
                       for p in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)))
        changed[names_colour] += not same
    assert changed[False] > 0 and changed[True] == 0
    with pytest.raises(InputError, match="locator_factors"):
        make_config(Path("unused"), "x", locator_factors="both")


# ------------------------------------------------------------------------------------ serving


def test_predictor_region_candidates_and_click(tmp_path: Path) -> None:
    """With a region locator the predictor decodes a grid of clicks once per image, keeps distinct confident
    masks, and clicks the deepest pixel of the chosen one; the click joins the text tokens only when the user
    gives no click or box, and ``LocatorOptions(enabled=False)`` turns it off."""
    from textsam.text.options import GroundingOptions, LocatorOptions, TextOptions

    model = textsam.create_model("shapes_tiny")
    head = model.text_projector.config
    torch.manual_seed(0)  # a fresh locator of its own (random weights): the clicks are what is checked
    model.text_locator = RegionLocator(replace(head, locator_dim=16, locator_word_dim=0,
                                               locator_appearance="colour", locator_factors="joint")).eval()
    image = np.full((128, 128, 3), 90, np.uint8)
    image[20:50, 70:110] = (220, 40, 40)  # a red box
    image[80:110, 10:40] = (40, 60, 220)  # a blue box
    no_grounding = GroundingOptions(enabled=False)
    predictor = textsam.TextSamPredictor(model, text_options=TextOptions(grounding=no_grounding,
                                                                         locator=LocatorOptions(grid=8)))
    predictor.set_image(image)
    out = predictor.predict(text="the red square")
    regions = predictor.text._regions
    assert regions is not None and 1 <= len(regions) <= 32
    x, y = out.info["prompts"]["located"]
    k = regions.shape[-1] / 128  # low-res pixels per input pixel
    chosen = [r for r in regions if r[int((y + 0.5) * k), int((x + 0.5) * k)]]  # the click lies inside a candidate
    assert chosen
    calls = predictor.text.region_candidates(predictor.features, predictor.input_size)
    assert calls is regions  # cached for the image
    with pytest.raises(InputError, match="pixel colours"):
        predictor.text.locate_with_presence("red", predictor.features, predictor.input_size, predictor.original_size)
    assert "located" not in predictor.predict(text="the red square", point_coords=np.array([[5, 5]]),
                                              point_labels=np.array([1])).info["prompts"]
    predictor.set_image(image)
    assert predictor.text._regions is None
    off = textsam.TextSamPredictor(model, text_options=TextOptions(grounding=no_grounding,
                                                                   locator=LocatorOptions(enabled=False)))
    off.set_image(image)
    assert "located" not in off.predict(text="the red square").info["prompts"]
