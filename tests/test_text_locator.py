"""The text locator (phrase -> click) and the projector's word path: units, training, bundles, predictor."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import textsam
from textsam.errors import InputError
from textsam.text.cell_locator import TextLocator, cell_centres, locator_loss, target_cells
from textsam.text.clip import TextProjector
from textsam.train.config import FreezeConfig

from .test_train import FakeCoco, FakeRefer, make_config


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------ units


def test_cells_targets_and_loss() -> None:
    xy = cell_centres(2, 4)
    assert torch.allclose(xy[0], torch.tensor([-0.75, -0.25, 0.25, 0.75] * 2))
    assert torch.allclose(xy[1], torch.tensor([-0.5] * 4 + [0.5] * 4))
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, :4, :4] = 1  # exactly the top-left cell of a 2x2 grid
    mask[1, 0, 7, 7] = 1  # one pixel: too small to cover half a cell, so its cell is taken
    cells = target_cells(mask, (2, 2))
    assert cells.tolist() == [[True, False, False, False], [False, False, False, True]]
    scores = torch.tensor([[5.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    loss = locator_loss(scores, cells)
    assert loss[0] < 0.05 and loss[1] > 4.0  # mass on the target is cheap, mass elsewhere is not
    assert float(locator_loss(scores, torch.zeros_like(cells))[0]) == 0.0  # nothing to find


def test_locator_learns_to_pick_the_leftmost_of_two_look_alikes() -> None:
    """Two identical blobs; the phrase says left or right. Content alone cannot tell them apart: the learned
    position term must. A few hundred steps on a toy problem reach near-perfect pointing."""
    torch.manual_seed(0)
    grid, dim = 8, 16
    loc = TextLocator(clip_dim=4, image_dim=dim, hidden_dim=32, heads=2, head_dim=8)
    opt = torch.optim.Adam(loc.parameters(), lr=3e-3)
    phrase = torch.eye(4)[:2]  # 0 = "left", 1 = "right"

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        emb = torch.randn(n, dim, grid, grid) * 0.1
        cells = torch.zeros(n, grid * grid, dtype=torch.bool)
        which = torch.randint(0, 2, (n,))
        for i in range(n):
            y0, y1 = torch.randint(0, grid, (2,)).tolist()
            x0, x1 = sorted(torch.randperm(grid)[:2].tolist())
            emb[i, :, y0, x0] += 1.0
            emb[i, :, y1, x1] += 1.0
            cells[i, (y0 * grid + x0) if which[i] == 0 else (y1 * grid + x1)] = True
        return emb, phrase[which], cells

    for _ in range(300):
        emb, p, cells = batch(32)
        loss = locator_loss(loc(emb, p), cells).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    emb, p, cells = batch(200)
    with torch.no_grad():
        best = loc(emb, p).argmax(-1)
    assert float(cells[torch.arange(200), best].float().mean()) > 0.95


def test_word_path_starts_as_a_no_op_and_sees_words() -> None:
    torch.manual_seed(0)
    plain = TextProjector(8, 16, 2, 32)
    words = TextProjector(8, 16, 2, 32, word_dim=12, word_heads=4)
    missing = set(words.state_dict()) - set(plain.state_dict())
    assert missing and all(k.startswith("word_") for k in missing)
    words.load_state_dict(plain.state_dict(), strict=False)
    emb = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    feats, mask = torch.randn(3, 5, 12), torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    assert torch.equal(plain(emb), words(emb, feats, mask))  # zero output layer: the same tokens
    torch.nn.init.normal_(words.word_out.weight)
    changed = feats.clone()
    changed[1, 2] += torch.randn(12)  # one word of phrase 1
    changed[0, 4] += torch.randn(12)  # a padding position of phrase 0: masked out
    a, b = words(emb, feats, mask), words(emb, changed, mask)
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1]) and torch.equal(a[2], b[2])
    with pytest.raises(InputError, match="word features"):
        words(emb, torch.randn(3, 5, 7), mask)


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
    """Everything frozen but the locator: the export holds only ``text_projector.locator.*``, the head file
    carries the whole projector with its locator, and the locator's pointing improves."""
    from textsam.train.loop import make_dataset, train
    from textsam.train.recipes import build_recipe, evaluate

    src = FakeRefer(FakeCoco(4))
    freeze = FreezeConfig(image_encoder=True, prompt_encoder=True, mask_decoder=True, text_projector=True,
                          text_encoder=True, text_locator=False)
    cfg = make_config(tmp_path / "loc", clip_spec, recipe="text", freeze=freeze, locator_dim=32, word_tokens=True,
                      steps=40, batch_size=8, lr=3e-3)
    assert cfg.locator_only
    path = train(cfg, source=src)
    weights = load_file(str(path))
    assert weights and all(k.startswith("text_projector.locator.") for k in weights)
    head = json.loads(__import__("safetensors").safe_open(str(tmp_path / "loc" / "text_head.safetensors"),
                                                          "pt").metadata()["textsam"])
    assert head["locator_dim"] == 32 and head["word_dim"] == 64
    logs = [json.loads(ln) for ln in (tmp_path / "loc" / "log.jsonl").read_text().splitlines() if "locate" in ln]
    assert logs[-1]["locate"] < logs[0]["locate"]
    recipe = build_recipe(replace(cfg, checkpoint=None))
    recipe.model.load_state_dict(weights, strict=False)
    ds = make_dataset(recipe, src, train=False, split="train", limit=None)
    metrics = evaluate(recipe, ds, torch.device("cpu"))
    assert {"locate_hit", "miou_text_tokens_only"} <= set(metrics) and 0.0 <= metrics["locate_hit"] <= 1.0


def test_full_run_with_locator_word_path_and_commit_loss(clip_spec: str, tmp_path: Path) -> None:
    """A text run with every new option trains, resumes exactly, and rejects impossible settings."""
    from textsam.train.loop import train

    src = FakeRefer(FakeCoco(3))
    common = dict(recipe="text", freeze=FreezeConfig(image_encoder=True, text_encoder=False), word_tokens=True,
                  locator_dim=16, locate_text=True, text_multimask="all", steps=4)
    full = load_file(str(train(make_config(tmp_path / "full", clip_spec, **common), source=src)))
    assert any(k.startswith("text_projector.word_") for k in full)
    assert any(k.startswith("text_projector.locator.") for k in full)
    cfg = make_config(tmp_path / "split", clip_spec, **common)
    train(cfg, source=src, stop_at=2)
    resumed = load_file(str(train(cfg, source=src, resume="auto")))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    with pytest.raises(InputError, match="locate_text"):
        make_config(tmp_path, clip_spec, recipe="text", locate_text=True)
    with pytest.raises(InputError, match="word_tokens"):
        make_config(tmp_path, clip_spec, recipe="clip_crops", word_tokens=True)
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


# ------------------------------------------------------------------------------------ serving


def _head_without_locator(projector: TextProjector) -> dict[str, torch.Tensor]:
    """The projector's weights without its locator (the shipped head has one; tests swap in their own)."""
    return {k: v for k, v in projector.state_dict().items() if not k.startswith("locator.")}


def _with_locator(model: textsam.TextSam) -> textsam.TextSam:
    old = model.text_projector
    proj = TextProjector(old.clip_dim, old.token_dim, old.num_tokens, old.hidden_dim,
                         word_dim=model.text_encoder.word_dim, locator_dim=32)
    proj.load_state_dict(_head_without_locator(old), strict=False)
    model.text_projector = proj.eval()
    return model


def test_predictor_adds_the_located_click_in_original_pixels() -> None:
    """The click is the best valid cell's centre mapped to the original frame (padding cells never win), it
    joins the text tokens only when the user gives no click or box, and ``locate=False`` turns it off."""
    from textsam.text.prompter import TextOptions

    model = _with_locator(textsam.create_model("shapes_tiny"))
    predictor = textsam.TextSamPredictor(model)
    image = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)  # padded below
    predictor.set_image(image)
    scores = predictor.text.locate_scores(["red star"], predictor.features, predictor.input_size)[0]
    assert torch.isinf(scores[16:]).all() and torch.isfinite(scores[:16]).all()
    with torch.no_grad():  # make one known cell win: row 3, column 20 (4-pixel cells at 128 px)
        loc = model.text_projector.locator
        loc.key[2].weight.zero_()
        loc.key[2].bias.zero_()
        loc.slope.weight.zero_()
        loc.slope.bias.zero_()
        loc.beta.fill_(-30.0)
        loc.gate.bias.fill_(30.0)
    feats = predictor.features
    planted = torch.zeros_like(feats)
    planted[0, :, 3, 20] = 1.0
    predictor.features = planted
    with torch.no_grad():
        loc.key[0].weight.zero_()
        loc.key[0].bias.zero_()
        loc.key[0].weight[:, 0, 0, 0] = 1.0
        loc.key[2].weight[:, :, 0, 0] = 1.0
        loc.query.bias.fill_(1.0)
        loc.query.weight.zero_()
    out = predictor.predict(text="red star")
    assert out.info["prompts"]["located"] == pytest.approx([20 * 4 + 1.5, 3 * 4 + 1.5])
    assert "located" not in predictor.predict(text="red star", point_coords=np.array([[5, 5]]),
                                              point_labels=np.array([1])).info["prompts"]
    predictor.features = feats
    off = textsam.TextSamPredictor(model, text_options=TextOptions(grounding=False, locate=False))
    off.set_image(image)
    assert "located" not in off.predict(text="red star").info["prompts"]


def test_bundle_and_unpack_round_trip_keep_the_locator(tmp_path: Path) -> None:
    """A bundle with a word path and a locator loads with both; ``--unpack`` writes a run folder whose
    weights rebuild the same model for training."""
    from textsam.bundle import read_bundle_meta, save_bundle
    from textsam.train import shapes_tiny
    from textsam.train.config import TrainConfig
    from textsam.train.recipes import build_model
    from textsam.weights.pretrained import bundled_path

    model = _with_locator(textsam.create_model("shapes_tiny"))
    torch.manual_seed(1)
    for p in model.text_projector.locator.parameters():
        torch.nn.init.normal_(p, std=0.1)
    meta = read_bundle_meta(bundled_path("shapes_tiny"))
    path = save_bundle(tmp_path / "b.safetensors", model, clip_config=meta["clip_config"])
    loaded = textsam.create_model("shapes_tiny", checkpoint=str(path))
    assert loaded.text_projector.locator_dim == 32 and loaded.text_projector.word_dim == 128
    a, b = model.text_projector.state_dict(), loaded.text_projector.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    run = tmp_path / "run"
    assert shapes_tiny.main(["--unpack", str(path), "--out", str(run)]) == 0
    cfg = TrainConfig(model="shapes_tiny", recipe="text", checkpoint=str(run / "model.safetensors"),
                      clip=f"local-dir:{run / 'clip'}", word_tokens=True, locator_dim=32, num_text_tokens=4,
                      output_dir=str(tmp_path / "next"))
    rebuilt = build_model(cfg)
    phrases = ["the leftmost star", "all red objects"]
    with torch.no_grad():
        want = model.text_projector(*model.text_encoder.encode_words(phrases))
        got = rebuilt.text_projector(*rebuilt.text_encoder.encode_words(phrases))
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(rebuilt.state_dict()["mask_decoder.iou_token.weight"],
                       model.state_dict()["mask_decoder.iou_token.weight"])


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
    from textsam.text.locator import RegionLocator, region_loss

    torch.manual_seed(0)
    size = 32
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    loc = RegionLocator(clip_dim=4, image_dim=8, hidden_dim=32, factors=factors)
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
        loss = region_loss(loc(emb, masks, None, p), target).mean()
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
    from textsam.train.data import SegmentationDataset, build_entries
    from textsam.train.loop import make_dataset, train
    from textsam.train.recipes import build_recipe, evaluate

    src = FakeRefer(FakeCoco(4))
    entries = build_entries(src, 128)
    ds = SegmentationDataset(src, entries, img_size=128, lowres=32, probs=(0, 0, 1, 0), train=False, max_regions=4)
    sample = ds[0]
    assert sample["regions"].shape == (4, 32, 32) and sample["regions"].dtype == torch.bool
    assert sample["region_valid"].tolist() == [True, True, False, False]  # a square and a disc
    assert int(sample["region_target"].sum()) == 1 and bool(sample["region_target"][0])  # targets first
    train_ds = SegmentationDataset(src, entries, img_size=128, lowres=32, probs=(0, 0, 1, 0), train=True, max_regions=4)
    assert int(train_ds[(0, 0)]["region_valid"].sum()) >= 3  # plus a union and/or a background patch
    colours = sample["region_colour"]  # the pixels' mean colour: the square's and the disc's own
    ann = src.coco.annotations[src.refs[0].ann_ids[0]]
    from .test_train import COLORS

    table = {name: torch.tensor(rgb, dtype=torch.float32) / 255 for name, rgb in COLORS.items()}
    nearest = min(table, key=lambda name: float((table[name] - colours[0, :3]).norm()))
    assert nearest == ann.color  # (edge pixels of the low-res masks mix in some background)

    freeze = FreezeConfig(image_encoder=True, prompt_encoder=True, mask_decoder=True, text_projector=True,
                          text_encoder=True, text_locator=False)
    cfg = make_config(tmp_path / "reg", clip_spec, recipe="text", freeze=freeze, locator_dim=16,
                      locator_kind="regions", locator_appearance="colour", max_regions=4, steps=10, batch_size=8,
                      lr=3e-3)
    weights = load_file(str(train(cfg, source=src)))
    assert weights and all(k.startswith("text_projector.locator.") for k in weights)
    recipe = build_recipe(replace(cfg, checkpoint=None))
    recipe.model.load_state_dict(weights, strict=False)
    metrics = evaluate(recipe, make_dataset(recipe, src, train=False, split="train", limit=None), torch.device("cpu"))
    assert metrics["locate_hit"] >= 0.5  # half the candidates are targets; clicks are inside objects


def test_separate_factors_add_up_and_shuffled_colours_only_for_colourless_phrases() -> None:
    """``factors="separate"``: a candidate's content score is a sum over silhouette, colour and geometry, so the
    score gap between two shapes is the same in any colour. ``region_colour_shuffle``: phrases that name no
    colour see the candidates' colours with the image's channels permuted; phrases that name one never do."""
    from textsam.text.locator import RegionLocator
    from textsam.train.data import SegmentationDataset, build_entries

    torch.manual_seed(0)
    masks = torch.zeros(1, 2, 32, 32, dtype=torch.bool)
    masks[0, 0, 4:12, 4:12] = True  # a square
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    masks[0, 1] = (xx - 8) ** 2 + (yy - 8) ** 2 <= 16  # a disc at the same place

    def gaps_and_scores(factors: str) -> tuple[list[float], list[float]]:
        loc = RegionLocator(clip_dim=4, image_dim=8, hidden_dim=16, appearance="colour", factors=factors).double()
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
    common = dict(img_size=128, lowres=32, probs=(0, 0, 1, 0), train=True, max_regions=4,
                  colour_words=["red", "blue", "green"], greyscale_text=False)
    plain = SegmentationDataset(src, entries, **common)
    shuffled = SegmentationDataset(src, entries, region_colour_shuffle=1.0, **common)
    changed = {True: 0, False: 0}
    for i, entry in enumerate(entries):
        a, b = plain[(0, i)], shuffled[(0, i)]
        assert torch.equal(a["regions"], b["regions"]) and torch.equal(a["image"], b["image"])  # only colours
        names_colour = any(w in entry.phrase.split() for w in common["colour_words"])
        same = torch.allclose(a["region_colour"], b["region_colour"])
        if names_colour:
            assert same
        else:
            means = a["region_colour"][..., :3]
            assert any(torch.allclose(means[..., list(p)], b["region_colour"][..., :3], atol=1e-6)
                       for p in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)))
        changed[names_colour] += not same
    assert changed[False] > 0 and changed[True] == 0
    with pytest.raises(InputError, match="locator_factors"):
        make_config(Path("unused"), "x", locator_factors="both")


def test_predictor_region_candidates_and_click(tmp_path: Path) -> None:
    """With a region locator the predictor decodes a grid of clicks once per image, keeps distinct confident
    masks, and clicks the deepest pixel of the chosen one."""
    from textsam.text.prompter import TextOptions

    model = textsam.create_model("shapes_tiny")
    old = model.text_projector
    proj = TextProjector(old.clip_dim, old.token_dim, old.num_tokens, old.hidden_dim, locator_dim=16,
                         locator_kind="regions", locator_appearance="colour")
    proj.load_state_dict(_head_without_locator(old), strict=False)
    model.text_projector = proj.eval()
    image = np.full((128, 128, 3), 90, np.uint8)
    image[20:50, 70:110] = (220, 40, 40)  # a red box
    image[80:110, 10:40] = (40, 60, 220)  # a blue box
    predictor = textsam.TextSamPredictor(model, text_options=TextOptions(grounding=False, region_grid=8))
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
        predictor.text.locate("red", predictor.features, predictor.input_size, predictor.original_size)
    predictor.set_image(image)
    assert predictor.text._regions is None
