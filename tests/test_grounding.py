"""CLIP grounding: geometry, similarity maps -> SAM prompts, dense features of a tiny random CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from textsam.errors import InputError
from textsam.text.grounding import (
    DenseClip,
    Geometry,
    crop_scores,
    instance_candidates,
    prompts_from_similarity,
    similarity_map,
    upsample_to_image,
)
from textsam.text.templates import IMAGENET_TEMPLATES, expand, get_templates

SIZES = [(480, 640), (640, 480), (333, 1000), (100, 100)]  # (H, W)
S, P = 448, 16


def _resized(h: int, w: int) -> tuple[int, int]:
    scale = S / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _cell_centre(h: int, w: int, col: int, row: int) -> tuple[float, float]:
    """Expected original-pixel centre of a full (not partly padded) cell."""
    rh, rw = _resized(h, w)
    return (col + 0.5) * P * w / rw, (row + 0.5) * P * h / rh


def _blob(shape: tuple[int, int], row: float, col: float, sigma: float = 1.0) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * sigma**2))


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize("hw", SIZES)
def test_geometry_round_trip(hw: tuple[int, int]) -> None:
    h, w = hw
    geo = Geometry.create(h, w, S, P)
    rh, rw = _resized(h, w)
    assert geo.grid_shape == (-(-rh // P), -(-rw // P))
    cells = np.array([[c, r] for r in range(geo.grid_h) for c in range(geo.grid_w)])
    pixels = geo.grid_to_image(cells)
    np.testing.assert_array_equal(geo.image_to_grid(pixels), cells)
    assert (pixels[:, 0] > 0).all() and (pixels[:, 0] < w).all()
    assert (pixels[:, 1] > 0).all() and (pixels[:, 1] < h).all()
    np.testing.assert_allclose(geo.grid_to_image([[1, 2]])[0], _cell_centre(h, w, 1, 2))
    # the last, possibly partly padded, cell maps to the centre of its real part
    last_x = ((geo.grid_w - 1) * P + rw) / 2 * w / rw
    np.testing.assert_allclose(geo.grid_to_image([[geo.grid_w - 1, 0]])[0, 0], last_x)
    with pytest.raises(InputError):
        geo.grid_to_image([[geo.grid_w, 0]])


# ---------------------------------------------------------------- maps -> prompts


@pytest.mark.parametrize("hw", SIZES)
def test_peak_and_negative_points(hw: tuple[int, int]) -> None:
    geo = Geometry.create(*hw, S, P)
    gh, gw = geo.grid_shape
    peak, low = (gh // 3, gw // 2), (gh - 2, 1)
    sim = 0.2 + 0.1 * _blob((gh, gw), *peak) - 0.15 * _blob((gh, gw), *low)
    out = prompts_from_similarity(sim, geo, num_positive=1, num_negative=1)
    np.testing.assert_array_equal(out.labels, [1, 0])
    np.testing.assert_allclose(out.points[0], _cell_centre(*hw, peak[1], peak[0]), rtol=1e-5)
    np.testing.assert_allclose(out.points[1], _cell_centre(*hw, low[1], low[0]), rtol=1e-5)
    assert out.score == pytest.approx(sim[peak]) and out.box is None and out.heatmap.shape == (gh, gw)
    refined = prompts_from_similarity(sim, geo, num_negative=0, refine=True)
    np.testing.assert_array_equal(geo.image_to_grid(refined.points), [[peak[1], peak[0]]])


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("smooth", [True, False])
def test_box_covers_blob(hw: tuple[int, int], smooth: bool) -> None:
    geo = Geometry.create(*hw, S, P)
    gh, gw = geo.grid_shape
    r0, r1, c0, c1 = 2, gh // 2, 3, gw - 4
    sim = np.zeros((gh, gw))
    sim[r0 : r1 + 1, c0 : c1 + 1] = 1.0
    out = prompts_from_similarity(sim, geo, num_positive=3, num_negative=2, with_box=True, smooth=smooth)
    h, w = hw
    rh, rw = _resized(h, w)
    expected = [c0 * P * w / rw, r0 * P * h / rh, (c1 + 1) * P * w / rw, (r1 + 1) * P * h / rh]
    np.testing.assert_allclose(out.box, expected, rtol=1e-5)
    cells = geo.image_to_grid(out.points)
    inside = (cells[:, 1] >= r0) & (cells[:, 1] <= r1) & (cells[:, 0] >= c0) & (cells[:, 0] <= c1)
    np.testing.assert_array_equal(inside, out.labels == 1)
    assert (out.labels == 1).sum() == 3 and (out.labels == 0).sum() == 2


@pytest.mark.parametrize("hw", SIZES)
def test_two_blobs_two_candidates(hw: tuple[int, int]) -> None:
    geo = Geometry.create(*hw, S, P)
    gh, gw = geo.grid_shape
    a, b = (2, 3), (gh - 3, gw - 4)
    sim = 0.3 * _blob((gh, gw), *b) + 0.5 * _blob((gh, gw), *a)
    cands = instance_candidates(sim, geo, threshold=0.3)
    assert len(cands) == 2
    assert cands[0].score > cands[1].score
    np.testing.assert_allclose(cands[0].points[0], _cell_centre(*hw, a[1], a[0]), rtol=1e-5)
    np.testing.assert_allclose(cands[1].points[0], _cell_centre(*hw, b[1], b[0]), rtol=1e-5)
    for cand, centre in zip(cands, (a, b)):
        x0, y0, x1, y1 = cand.box
        x, y = _cell_centre(*hw, centre[1], centre[0])
        assert x0 < x < x1 and y0 < y < y1
    assert len(instance_candidates(sim, geo, threshold=0.3, min_score=0.45)) == 1


def test_touching_blobs_split_and_flat_map() -> None:
    geo = Geometry.create(480, 640, S, P)
    gh, gw = geo.grid_shape
    sim = _blob((gh, gw), 10, 8, 2.0) + 0.9 * _blob((gh, gw), 10, 16, 2.0)  # one component, two peaks
    assert len(instance_candidates(sim, geo, threshold=0.2)) == 1
    split = instance_candidates(sim, geo, threshold=0.2, peaks_per_component=3)
    assert [tuple(geo.image_to_grid(c.points)[0]) for c in split] == [(8, 10), (16, 10)]
    assert split[0].box[2] <= split[1].box[0] + 1e-3  # the cells are shared out, boxes do not overlap
    flat = instance_candidates(np.full((gh, gw), 0.25), geo)
    assert len(flat) == 1  # documented: one candidate, centre cell, whole-image box
    np.testing.assert_allclose(flat[0].box, [0, 0, 640, 480], rtol=1e-6)
    up = upsample_to_image(sim, geo)
    assert up.shape == (480, 640)


def test_bad_maps_raise() -> None:
    geo = Geometry.create(100, 200, S, P)
    with pytest.raises(InputError):
        prompts_from_similarity(np.zeros((3, 3)), geo)
    with pytest.raises(InputError):
        prompts_from_similarity(np.zeros(geo.grid_shape), geo, box_threshold=1.5)


# ---------------------------------------------------------------- templates


def test_templates() -> None:
    sentences = expand("  the   dog ", "default")
    assert sentences[0] == "a photo of a dog." and len(sentences) == len(get_templates("default"))
    assert len(IMAGENET_TEMPLATES) == 80 and len(expand("cat", "imagenet80")) == 80
    assert expand("the dog", ["{} on grass"]) == ["the dog on grass"]
    with pytest.raises(InputError):
        expand("   ")
    with pytest.raises(InputError):
        expand("dog", ["no slot"])
    with pytest.raises(InputError):
        get_templates("nope")


# ---------------------------------------------------------------- tiny CLIP


@pytest.fixture(scope="module")
def tiny_clip() -> torch.nn.Module:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={
            "image_size": 64,
            "patch_size": 16,
            "width": 64,
            "layers": 2,
            "head_width": 32,
            "mlp_ratio": 2.0,
        },
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        quick_gelu=True,
    )
    return model.eval()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("input_size", [64, 96])
def test_patch_features(tiny_clip: torch.nn.Module, input_size: int) -> None:
    dense = DenseClip(tiny_clip, input_size=input_size)
    pos_before = tiny_clip.visual.positional_embedding.detach().clone()
    feats, geo = dense.patch_features(_image(50, 90))
    assert geo.grid_shape == (-(-_resized_for(50, 90, input_size) // 16), input_size // 16)
    assert feats.shape == (*geo.grid_shape, 32)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(geo.grid_shape))
    torch.testing.assert_close(tiny_clip.visual.positional_embedding, pos_before)  # weights untouched
    sim = similarity_map(feats, torch.randn(3, 32))
    assert sim.shape == (3, *geo.grid_shape) and sim.abs().max() <= 1 + 1e-5
    out = prompts_from_similarity(sim[0], geo, num_negative=2, with_box=True)
    assert out.labels[0] == 1 and out.points.shape == (len(out.labels), 2) and len(out.labels) <= 3
    assert (out.points >= 0).all() and (out.points[:, 0] <= 90).all() and (out.points[:, 1] <= 50).all()


def _resized_for(h: int, w: int, size: int) -> int:
    return int(h * size / max(h, w) + 0.5)


def test_similarity_map_is_the_cosine_of_each_patch() -> None:
    torch.manual_seed(1)
    feats = F.normalize(torch.randn(4, 5, 8), dim=-1)
    text = torch.randn(2, 8)
    sim = similarity_map(feats * 3, text)  # features are normalised again
    torch.testing.assert_close(sim, torch.einsum("hwd,kd->khw", feats, F.normalize(text, dim=-1)))
    with pytest.raises(InputError, match="dim"):
        similarity_map(feats, torch.randn(7))


def test_maskclip_matches_hand_computation(tiny_clip: torch.nn.Module) -> None:
    """The dense 'maskclip' features equal a step-by-step computation from the raw parameters."""
    v = tiny_clip.visual
    dense = DenseClip(tiny_clip, input_size=96)
    pixels, _ = dense.prepare(_image(70, 96, seed=3))
    with torch.no_grad():
        ours = dense.dense_features(pixels)[0]  # (6, 6, 32)
        # patch embedding + bicubic pos-embed resize 4x4 -> 6x6
        x = F.conv2d(pixels, v.conv1.weight, stride=16).flatten(2).transpose(1, 2)  # (1, 36, 64)
        pos = v.positional_embedding
        grid = pos[1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(36, 64)])
        x = torch.cat([v.class_embedding.reshape(1, 1, 64), x], dim=1) + pos
        x = F.layer_norm(x, (64,), v.ln_pre.weight, v.ln_pre.bias)
        x = v.transformer.resblocks[0](x)  # an ordinary block
        last = v.transformer.resblocks[1]
        h = F.layer_norm(x, (64,), last.ln_1.weight, last.ln_1.bias)
        wv, bv = last.attn.in_proj_weight[128:192], last.attn.in_proj_bias[128:192]
        y = x + (h @ wv.T + bv) @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
        h2 = F.layer_norm(y, (64,), last.ln_2.weight, last.ln_2.bias)
        hidden = h2 @ last.mlp.c_fc.weight.T + last.mlp.c_fc.bias
        hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
        y = y + hidden @ last.mlp.c_proj.weight.T + last.mlp.c_proj.bias
        tokens = F.layer_norm(y[0, 1:], (64,), v.ln_post.weight, v.ln_post.bias) @ v.proj
        expected = F.normalize(tokens, dim=-1).reshape(6, 6, 32)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_crop_scores_one_batch(tiny_clip: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    dense = DenseClip(tiny_clip, input_size=64)
    image = _image(40, 70, seed=5)
    masks = np.zeros((3, 40, 70), dtype=bool)
    masks[0, 5:20, 10:30] = True
    masks[2, 30:40, 60:70] = True  # touches the border: the square crop is padded
    calls: list[tuple[int, ...]] = []
    forward = tiny_clip.visual.forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return forward(x)

    monkeypatch.setattr(tiny_clip.visual, "forward", counting)
    scores = crop_scores(dense, image, masks, torch.randn(32))
    assert calls == [(2, 3, 64, 64)]
    assert scores.shape == (3,) and scores[1] == -1 and (scores.abs() <= 1).all()
    assert (crop_scores(dense, image, np.zeros((2, 40, 70), bool), torch.randn(32)) == -1).all()
    assert len(calls) == 1


def test_dense_clip_rejects_bad_input(tiny_clip: torch.nn.Module) -> None:
    with pytest.raises(InputError):
        DenseClip(tiny_clip, input_size=100)
    with pytest.raises(InputError):
        DenseClip(tiny_clip).patch_features(np.zeros((10, 10), dtype=np.uint8))
