"""textsam.train: losses, prompt sampling, recipes (overfit), exact resume, torchrun parity, CLIP pretraining.

Models: ``tiny_train`` (tests/tiny_train.py: 128 px, 16x16x64 embedding, random weights; fast on CPU; the
assembler test builds the shipped ``shapes_tiny`` architecture) and a 1-layer open_clip CLIP saved
as a ``local-dir`` folder. Data: in-memory datasets with the CocoDataset / ReferDataset API (coloured
squares and discs on 64 px images), plus one COCO file on disk read by the real reader.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from textsam.errors import InputError
from textsam.ops import deepest_points
from textsam.train.batches import BOX, POINT, TEXT, TEXT_POINT, StepSampler, collate
from textsam.train.config import TABLES, DataConfig, FreezeConfig, TrainConfig
from textsam.train.config_file import MOVED, config_from_dict, load_config
from textsam.train.data import build_entries
from textsam.train.losses import dice_loss, iou_mse_loss, sam_loss, sigmoid_focal_loss
from textsam.train.samples import SampleOptions, SegmentationDataset

from .tiny import TINY_CLIP_CFG
from .tiny_train import REPO, TRAIN_MODEL, tiny_train_model  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("tiny_train_model")  # the tests train ``tiny_train``
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}

@pytest.fixture(autouse=True)
def _one_thread():
    """OpenMP with 2 threads on a shared 2-core machine is ~100x slower for these tiny ops."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------- in-memory datasets


class FakeCoco:
    """``CocoDataset`` API: a square and a disc of random colours per image (the disc on top)."""

    def __init__(self, n_images: int = 4, size: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.categories = {1: "square", 2: "circle"}
        self.images: dict[int, SimpleNamespace] = {}
        self.annotations: dict[int, SimpleNamespace] = {}
        self._pix: dict[int, np.ndarray] = {}
        self._masks: dict[int, np.ndarray] = {}
        for iid in range(1, n_images + 1):
            h, w = size, size - 8 * (iid % 2)
            img = np.full((h, w, 3), 128, np.uint8)
            yy, xx = np.mgrid[:h, :w]
            for cat in (1, 2):
                color = list(COLORS)[int(rng.integers(len(COLORS)))]
                r = int(rng.integers(7, 12))
                cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
                m = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r) if cat == 1 else (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                if cat == 2:  # the disc occludes the square
                    self._masks[len(self._masks)] &= ~m
                img[m] = COLORS[color]
                aid = len(self._masks) + 1
                self._masks[aid] = m
                self.annotations[aid] = SimpleNamespace(id=aid, image_id=iid, category_id=cat, iscrowd=0, color=color)
            for a in self.anns_for_image(iid):
                ys, xs = np.nonzero(self._masks[a.id])
                a.area = float(len(xs))
                a.bbox = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
            self._pix[iid] = img
            self.images[iid] = SimpleNamespace(id=iid, file_name=f"{iid}.png", height=h, width=w)

    def image_ids(self) -> list[int]:
        return sorted(self.images)

    def anns_for_image(self, image_id: int) -> list[SimpleNamespace]:
        return [a for a in self.annotations.values() if a.image_id == image_id]

    def mask(self, ann: SimpleNamespace | int) -> np.ndarray:
        return self._masks[ann if isinstance(ann, int) else ann.id].copy()

    def load_image(self, image_id: int) -> np.ndarray:
        return self._pix[image_id].copy()


class FakeRefer:
    """``ReferDataset`` API: one ref per object with two sentences."""

    def __init__(self, coco: FakeCoco) -> None:
        self.coco = coco
        self.refs = [
            SimpleNamespace(ref_id=a.id, image_id=a.image_id, ann_ids=[a.id], category_id=a.category_id, split="train",
                            sentences=[f"{a.color} {coco.categories[a.category_id]}", f"the {a.color} one"])
            for a in coco.annotations.values()
        ]

    def target_mask(self, ref: SimpleNamespace) -> np.ndarray:
        return self.coco.mask(ref.ann_ids[0])

    def expressions(self) -> list[tuple[SimpleNamespace, int, str]]:
        return [(r, i, s) for r in self.refs for i, s in enumerate(r.sentences)]


def make_config(out: Path, clip: str, **kw: object) -> TrainConfig:
    """A tiny run's config; keyword names of table fields (``lr``, ``locator_dim``, ...) go to their table."""
    base = dict(
        data=DataConfig(min_area=0), model=TRAIN_MODEL, clip=clip, steps=6, batch_size=4, lr=1e-3, warmup_steps=1,
        output_dir=str(out), log_every=1, checkpoint_every=0, progress=False, correction_clicks=1,
        projector_hidden_dim=64,
    )
    base.update(kw)
    top: dict[str, object] = {}
    tables: dict[str, dict[str, object]] = {}
    for key, value in base.items():
        if key in MOVED:
            table, name = MOVED[key]
            tables.setdefault(table, {})[name] = value
        else:
            top[key] = value
    return TrainConfig(**top, **{name: TABLES[name](**values) for name, values in tables.items()})  # type: ignore[arg-type]


def write_text_run(tmp_path: Path, clip: str, extra: str, *, output_dir: Path, data_extra: str = "",
                   model: str = TRAIN_MODEL, optim: str = "", text_head: str = "", loss: str = "") -> Path:
    """``tmp_path/run.toml``: a tiny text-recipe run on the synthetic files in ``tmp_path/data`` (``extra``:
    top-level lines; ``optim``, ``text_head``, ``loss``, ``data_extra``: lines of those tables)."""
    path = tmp_path / "run.toml"
    path.write_text(
        f'model = "{model}"\nrecipe = "text"\nclip = "{clip}"\nbatch_size = 2\n'
        f'progress = false\n{extra}output_dir = "{output_dir}"\n'
        f'[optim]\nwarmup_steps = 1\n{optim}[text_head]\nprojector_hidden_dim = 64\n{text_head}[loss]\n{loss}'
        f'[data]\nroot = "{tmp_path / "data"}"\n{data_extra}'
    )
    return path


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


# ------------------------------------------------------------------------------------ 1. losses


def test_focal_and_dice_match_hand_computation() -> None:
    logits = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    fl = 0.0
    for z, t in zip([2.0, -1.0, 0.0, 3.0], [1, 0, 0, 1]):
        p = 1 / (1 + math.exp(-z))
        p_t = p if t else 1 - p
        fl += (0.25 if t else 0.75) * (1 - p_t) ** 2 * -math.log(p_t)
    assert sigmoid_focal_loss(logits, target).item() == pytest.approx(fl / 4, rel=1e-5)
    p = [1 / (1 + math.exp(-z)) for z in (2.0, -1.0, 0.0, 3.0)]
    dice = 1 - (2 * (p[0] + p[3]) + 1) / (sum(p) + 2 + 1)
    assert dice_loss(logits, target).item() == pytest.approx(dice, rel=1e-5)
    perfect = (target * 2 - 1) * 30
    assert sigmoid_focal_loss(perfect, target).item() < 1e-12
    assert dice_loss(perfect, target).item() < 1e-6
    assert iou_mse_loss(torch.ones(1, 1), perfect, target).item() == 0.0
    assert iou_mse_loss(torch.full((1, 1), 0.5), logits, target).item() == pytest.approx(0.25)


def test_min_over_multimask_backprops_only_the_best_mask() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    logits = torch.randn(2, 3, 8, 8)
    logits[0, 1] = (target[0, 0] * 2 - 1) * 30  # sample 0: output 1 is perfect
    logits[1, 2] = (target[1, 0] * 2 - 1) * 30  # sample 1: output 2 is perfect
    logits.requires_grad_(True)
    iou_pred = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    parts = sam_loss(logits, iou_pred, target)
    assert parts["best"].tolist() == [1, 2]
    assert parts["focal"].max().item() < 1e-6 and parts["dice"].max().item() < 1e-6
    parts["loss"].sum().backward()
    grad_norms = logits.grad.flatten(2).abs().sum(-1)
    assert (grad_norms[0, [0, 2]] == 0).all() and (grad_norms[1, [0, 1]] == 0).all()
    assert iou_pred.grad.abs().sum() > 0  # the IoU head is trained on every output


# ----------------------------------------------------------------------------- prompts and data


def test_deepest_points_and_error_clicks() -> None:
    from textsam.train.prompt_model import error_clicks

    m = torch.zeros(1, 16, 16, dtype=torch.bool)
    m[0, 4:11, 2:9] = True  # 7x7 square centred at (5, 7)
    assert deepest_points(m)[0].tolist() == [5, 7]
    target = m.clone()
    pred = torch.zeros_like(m)  # all false negative -> positive click at the centre
    coords, labels = error_clicks(pred, target, scale=2.0)
    assert coords[0, 0].tolist() == [10.5, 14.5] and labels.item() == 1.0  # cell centre (x + 0.5) * 2, minus 0.5
    pred = target.clone()
    pred[0, 12:16, 10:16] = True  # a false-positive blob -> negative click inside it
    coords, labels = error_clicks(pred, target, scale=1.0)
    x, y = coords[0, 0].long().tolist()
    assert labels.item() == 0.0 and 10 <= x < 16 and 12 <= y < 16


def test_dataset_samples_are_deterministic_and_consistent() -> None:
    src = FakeRefer(FakeCoco(2))
    entries = build_entries(src, 128)
    assert len(entries) == 8 and entries[0].phrase.endswith("square")
    ds = SegmentationDataset(src, entries, SampleOptions(img_size=128, lowres=64, probs=(0.25, 0.25, 0.25, 0.25),
                                                         seed=3))
    a, b, c = ds[(0, 5)], ds[(0, 5)], ds[(1, 5)]
    assert torch.equal(a.point, b.point) and torch.equal(a.box, b.box) and a.kind == b.kind
    assert not torch.equal(a.point, c.point) or not torch.equal(a.box, c.box)
    assert a.image.shape == (3, 128, 128) and a.mask.shape == (1, 128, 128)
    assert a.mask_lowres.shape == (1, 64, 64)
    x, y = a.point.long().tolist()
    assert a.mask[0, y, x] == 1  # the point is inside the object
    ys, xs = torch.nonzero(a.mask[0], as_tuple=True)
    assert abs(a.box[0] - xs.min()) <= 3 and abs(a.box[3] - ys.max()) <= 3
    batch = collate([ds[(0, i)] for i in range(4)])
    assert batch.image.shape == (4, 3, 128, 128) and len(batch.text) == 4 and len(batch) == 4
    assert batch.image_emb is None and batch.crop_rows is None
    moved = batch.to("cpu")
    assert moved is not batch and torch.equal(moved.mask, batch.mask) and moved.text == batch.text


def test_step_sampler_shards_and_resumes() -> None:
    full = list(StepSampler(10, seed=1, batch_size=4, steps=5))
    ranks = [list(StepSampler(10, seed=1, batch_size=4, world=2, rank=r, steps=5)) for r in range(2)]
    assert [ranks[0][s] + ranks[1][s] for s in range(5)] == full
    assert list(StepSampler(10, seed=1, batch_size=4, steps=5, start_step=3)) == full[3:]
    accum = list(StepSampler(10, seed=1, batch_size=4, grad_accum=2, steps=5))
    assert [accum[2 * s] + accum[2 * s + 1] for s in range(5)] == full
    epochs = {e for batch in full for e, _ in batch}
    assert epochs == {0, 1}  # 20 samples over a dataset of 10


def test_config_files_json_and_toml(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(
        'model = "shapes_tiny"\nrecipe = "text"\nsteps = 7\n[data]\nroot = "d"\n[freeze]\nmask_decoder = true\n'
        "[prompt_mix]\ntext = 1.0\npoint = 0.0\nbox = 0.0\ntext_point = 0.0\n"
    )
    cfg = load_config(toml)
    assert cfg.steps == 7 and cfg.data.root == "d" and cfg.freeze.mask_decoder and cfg.recipe == "text"
    assert cfg.prompt_mix.probabilities("text") == (0.0, 0.0, 1.0, 0.0)
    js = tmp_path / "run.json"
    js.write_text(json.dumps(cfg.to_dict()))
    assert load_config(js) == cfg

    with pytest.raises(InputError, match="unknown key"):
        config_from_dict({"stepz": 3})
    with pytest.raises(InputError, match="recipe"):
        config_from_dict({"recipe": "magic"})


# ----------------------------------------------------------------------------- 2. recipes overfit


def test_every_config_in_the_repository_loads() -> None:
    """The TOML files under configs/ (the stages of the shipped shapes_tiny and the text-blind baseline the
    README's figure needs) are valid configs."""
    paths = sorted((REPO / "configs").glob("*.toml"))
    configs = {p.name: load_config(p) for p in paths}
    stages = {f"shapes_tiny_v2_{s}.toml" for s in ("sam", "text", "tower", "regions_sep")}
    assert stages <= set(configs)
    tower = configs["shapes_tiny_v2_tower.toml"]
    assert tower.recipe == "text" and not tower.freeze.text_encoder and tower.freeze.image_encoder
    assert configs["shapes_tiny_v2_blind_stage4.toml"].text_head.blind_text
    regions = configs["shapes_tiny_v2_regions_sep.toml"]
    assert regions.locator_only and regions.text_head.locator_factors == "separate"


@pytest.mark.parametrize("recipe", ["sam", "text", "clip_crops"])
def test_recipe_overfits_a_fixed_batch(recipe: str, clip_spec: str, tmp_path: Path) -> None:
    from textsam.train.recipes import build_recipe

    cfg = make_config(tmp_path, clip_spec, recipe=recipe)
    rec = build_recipe(cfg)
    src = FakeRefer(FakeCoco(2))
    ds = SegmentationDataset(src, build_entries(src, 128), SampleOptions(img_size=128, lowres=64, probs=rec.probs,
                                                                         seed=0, clip_input=rec.clip_input))
    samples = [ds[(0, i)] for i in range(4)]
    kinds = [POINT, BOX, TEXT, TEXT_POINT] if recipe != "sam" else [POINT, BOX, POINT, BOX]
    for s, k, i in zip(samples, kinds, range(4)):
        s.kind = k
        if recipe == "clip_crops" and k in (TEXT, TEXT_POINT):
            s.crop = ds.make_crop(src.coco.load_image(s.image_id), ds.target_mask(ds.entries[i]), ds.entries[i].key, 0)
        else:
            s.crop = None
    batch = rec.prepare(collate(samples), torch.device("cpu"))
    params = [p for p in rec.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3)
    with torch.no_grad():
        before = float(rec.module(batch)["loss"])
    for _ in range(20):
        loss = rec.module(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(rec.module(batch)["loss"])
    assert after < 0.7 * before, (before, after)
    if recipe != "sam":
        assert rec.model.text_projector.mlp[0].weight.grad is not None


# ------------------------------------------------------------------------------- 3. exact resume


@pytest.mark.parametrize("recipe", ["text", "clip_crops"])
def test_resume_gives_identical_weights(recipe: str, clip_spec: str, tmp_path: Path) -> None:
    """6 steps in one go == 3 steps, stop, resume for 3 more (text: no disk cache; clip_crops: cached)."""
    from textsam.train.loop import train

    src = FakeRefer(FakeCoco(3))
    cache = str(tmp_path / "cache") if recipe == "clip_crops" else None
    common = dict(recipe=recipe, grad_accum=2, cache_dir=cache, crop_variants=2, freeze=FreezeConfig(image_encoder=True))
    full = train(make_config(tmp_path / "full", clip_spec, **common), source=src)
    cfg = make_config(tmp_path / "split", clip_spec, **common)
    ckpt = train(cfg, source=src, stop_at=3)
    assert ckpt.name == "step_0000003.pt"
    resumed = train(cfg, source=src, val_source=src, resume="auto")
    a, b = read_weights(full), read_weights(resumed)
    assert a.keys() == b.keys() and any(k.startswith("text_projector.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(ln) for ln in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert set(logs[-1]["eval"]) == {"miou_point", "miou_box", "miou_text", "miou_text_point"}
    from textsam.weights.format import read

    head = read(tmp_path / "split" / "text_head.safetensors")
    assert head.sam_model == TRAIN_MODEL and head.clip is not None and head.clip.spec == clip_spec
    assert head.training["recipe"] == recipe and head.text_head.hidden_dim == 64
    assert torch.equal(head.tensors["text_projector.text_type_embed"], a["text_projector.text_type_embed"])
    if cache:
        assert list((tmp_path / "cache" / "crops").rglob("*.pt"))  # crop embeddings were cached


def test_semantic_maps_label_every_object_and_resume_exactly(clip_spec: str, tmp_path: Path) -> None:
    """Class maps paint each object's low-res mask with its class per field; a run with the semantic loss
    (image encoder trained) resumes to the same weights, semantic head included."""
    from textsam.train.data import SemanticLabels
    from textsam.train.loop import train

    src = FakeRefer(FakeCoco(3))
    labels = SemanticLabels(src.coco, ("category", "color"))
    assert labels.num_classes == (3, 1 + len({a.color for a in src.coco.annotations.values()}))
    ds = SegmentationDataset(src, build_entries(src, 128), SampleOptions(img_size=128, lowres=64, seed=0,
                                                                         semantic=labels))
    sample = ds[(0, 0)]
    maps = sample.semantic
    assert maps.shape == (2, 64, 64) and maps.dtype == torch.long
    for ann in src.coco.anns_for_image(sample.image_id):
        region = ds.lowres_mask(src.coco.mask(ann))
        assert region.any()
        assert bool((maps[0][region] == ann.category_id).all())
        assert bool((maps[1][region] == labels.vocab["color"][ann.color]).all())
    union = torch.zeros(64, 64, dtype=torch.bool)
    for ann in src.coco.anns_for_image(sample.image_id):
        union |= ds.lowres_mask(src.coco.mask(ann))
    assert bool((maps[:, ~union] == 0).all())

    common = dict(recipe="text", freeze=FreezeConfig(image_encoder=False), semantic_weight=1.0,
                  semantic_fields=("category", "color"), steps=4)
    full = train(make_config(tmp_path / "full", clip_spec, **common), source=src)
    cfg = make_config(tmp_path / "split", clip_spec, **common)
    train(cfg, source=src, stop_at=2)
    resumed = train(cfg, source=src, resume="auto")
    a, b = read_weights(full), read_weights(resumed)
    assert any(k.startswith("image_encoder.") for k in a) and not any("semantic" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(ln) for ln in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert all(r["semantic"] > 0 for r in logs if "loss" in r)
    with pytest.raises(InputError, match="semantic_weight"):
        make_config(tmp_path, clip_spec, semantic_weight=1.0, freeze=FreezeConfig(image_encoder=True))


def test_text_tower_fine_tuning_trains_resumes_and_reloads(clip_spec: str, tmp_path: Path) -> None:
    """``[freeze] text_encoder = false``: the CLIP text tower trains (its visual tower does not), the export
    holds the text tower, a stopped run resumes to the same weights, and a later run starts from them."""
    from textsam.text.clip import TextEncoder
    from textsam.train.loop import train
    from textsam.train.recipes import build_model

    src = FakeRefer(FakeCoco(3))
    common = dict(recipe="text", grad_accum=2, freeze=FreezeConfig(image_encoder=True, text_encoder=False),
                  text_encoder_lr_scale=0.5)
    full = train(make_config(tmp_path / "full", clip_spec, **common), source=src)
    cfg = make_config(tmp_path / "split", clip_spec, **common)
    train(cfg, source=src, stop_at=3)
    resumed = train(cfg, source=src, resume="auto")
    a, b = read_weights(full), read_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tower = {k.removeprefix("clip."): v for k, v in a.items() if k.startswith("clip.")}
    assert "token_embedding.weight" in tower and "text_projection" in tower
    assert not any(k.startswith(("visual.", "logit_scale")) for k in tower)

    original = TextEncoder.create(clip_spec, None)
    before = original.clip.state_dict()
    changed = [k for k, v in tower.items() if not torch.equal(v, before[k])]
    assert "text_projection" in changed and len(changed) > len(tower) // 2
    # a run seeded with the export starts from the tuned tower (and keeps CLIP's visual tower)
    model = build_model(replace(cfg, checkpoint=str(full), output_dir=str(tmp_path / "next")))
    state = model.text_encoder.clip.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tower.items())
    assert all(torch.equal(state[k], v) for k, v in before.items() if k.startswith("visual."))
    phrases = ["red square", "the green one"]
    assert not torch.allclose(model.text_encoder.encode(phrases), original.encode(phrases), atol=1e-4)
    from textsam.weights.format import read

    head_file = read(tmp_path / "full" / "text_head.safetensors")
    assert head_file.clip.tensors == "text_tower"  # the head carries the tuned tower
    assert all(torch.equal(head_file.tensors[f"clip.{k}"], v) for k, v in tower.items())
    # create_model(text_head=...) loads the head with its tuned tower, from the head file alone
    import shutil
    import warnings

    import textsam

    head = str(tmp_path / "full" / "text_head.safetensors")
    served = textsam.create_model(TRAIN_MODEL, pretrained=False, text_head=head)
    assert torch.allclose(served.text_encoder.encode(phrases), model.text_encoder.encode(phrases), atol=1e-6)
    # the engine keeps scoring with CLIP's own text tower (the one trained with its image tower), sharing the
    # image tower with the head's copy, and is never trained
    assert served.scoring_encoder is served.engine_encoder and served.engine_encoder is not served.text_encoder
    assert torch.allclose(served.scoring_encoder.encode(phrases), original.encode(phrases), atol=1e-6)
    assert served.engine_encoder.clip.visual is served.text_encoder.clip.visual
    assert not any(p.requires_grad for p in served.engine_encoder.parameters())
    alone = tmp_path / "alone" / "text_head.safetensors"
    alone.parent.mkdir()
    shutil.copy(tmp_path / "full" / "text_head.safetensors", alone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moved = textsam.create_model(TRAIN_MODEL, pretrained=False, text_head=str(alone))
    assert torch.allclose(moved.text_encoder.encode(phrases), model.text_encoder.encode(phrases), atol=1e-6)

    # the text-blind baseline gives the tower no signal: it stays as CLIP made it
    blind = read_weights(train(make_config(tmp_path / "blind", clip_spec, blind_text=True, **common), source=src))
    assert all(torch.equal(v, before[k.removeprefix("clip.")]) for k, v in blind.items() if k.startswith("clip."))
    with pytest.raises(InputError, match="text_encoder = false"):
        make_config(tmp_path, clip_spec, recipe="clip_crops", freeze=FreezeConfig(text_encoder=False))
    with pytest.raises(InputError, match="text_encoder_lr_scale"):
        make_config(tmp_path, clip_spec, recipe="text", text_encoder_lr_scale=0.0)


def test_greyscale_views_hide_colour_from_point_and_box_samples_only(clip_spec: str, tmp_path: Path) -> None:
    """``greyscale_prob``: point/box samples sometimes show a luma-only image, with their colour classes
    ignored by the semantic loss; text samples always keep their colours; the loss stays finite."""
    from textsam.train.data import SemanticLabels, greyscale

    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    grey = greyscale(rgb)
    assert grey.shape == rgb.shape and (grey == grey[..., :1]).all()
    assert grey[0, :3, 0].tolist() == [76, 150, 29]  # ITU-R 601 luma of pure red, green, blue

    src = FakeRefer(FakeCoco(3))
    labels = SemanticLabels(src.coco, ("category", "color"))
    assert labels.colour_fields == (1,)
    base = SampleOptions(img_size=128, lowres=64, seed=0, semantic=labels, probs=(0.25, 0.25, 0.25, 0.25))
    ds = SegmentationDataset(src, build_entries(src, 128), replace(base, greyscale_prob=0.5))
    plain = SegmentationDataset(src, build_entries(src, 128), base)
    seen = {"grey": 0, "colour": 0}
    for i in range(len(ds)):
        s, p = ds[(0, i)], plain[(0, i)]
        assert s.kind == p.kind and torch.equal(s.point, p.point)  # same random stream as before
        h, w = s.input_size.tolist()
        x = (s.image * ds.std + ds.mean)[:, :h, :w]  # back to 0..255 pixel values, padding cut off
        is_grey = bool(torch.allclose(x[0], x[1], atol=1e-3) and torch.allclose(x[1], x[2], atol=1e-3))
        seen["grey" if is_grey else "colour"] += 1
        assert torch.equal(s.semantic[0], p.semantic[0])
        if is_grey:
            assert s.kind in (POINT, BOX) and bool((s.semantic[1] == -100).all())
        else:
            assert torch.equal(s.image, p.image) and torch.equal(s.semantic, p.semantic)
    assert seen["grey"] > 0 and seen["colour"] > 0

    # with colour words, text samples whose phrase names no colour may be grey too; the others never
    for ref in src.refs:
        ref.sentences.append("the shape")
    words = labels.colour_words()
    assert words == set(COLORS)
    wide = SegmentationDataset(src, build_entries(src, 128), replace(base, probs=(0.0, 0.0, 0.5, 0.5),
                                                                     greyscale_prob=1.0, colour_words=words))
    for i, entry in enumerate(wide.entries):
        s = wide[(0, i)]
        h, w = s.input_size.tolist()
        x = (s.image * wide.std + wide.mean)[:, :h, :w]
        is_grey = bool(torch.allclose(x[0], x[1], atol=1e-3) and torch.allclose(x[1], x[2], atol=1e-3))
        assert is_grey == (entry.phrase == "the shape"), entry.phrase

    from textsam.train.recipes import build_recipe

    cfg = make_config(tmp_path, clip_spec, recipe="text", freeze=FreezeConfig(image_encoder=False),
                      semantic_weight=1.0, semantic_fields=("category", "color"), greyscale_prob=1.0)
    rec = build_recipe(cfg)
    rec.module.add_semantic_head(labels.num_classes, 1.0)
    samples = [ds[(0, i)] for i in range(len(ds))]
    for sample in samples:
        sample.semantic[1] = -100  # every pixel's colour ignored: still a finite loss
    out = rec.module(rec.prepare(collate(samples[:4]), torch.device("cpu")))
    assert torch.isfinite(out["semantic"]) and float(out["semantic"].detach()) > 0
    with pytest.raises(InputError, match="greyscale_prob"):
        make_config(tmp_path, clip_spec, greyscale_prob=0.5, freeze=FreezeConfig(image_encoder=True))
    with pytest.raises(InputError, match="greyscale_prob"):
        make_config(tmp_path, clip_spec, greyscale_prob=1.5, freeze=FreezeConfig(image_encoder=False))


# --------------------------------------------------------------------------- 4. torchrun parity

_DDP_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads(1)
from tests.test_train import FakeCoco, FakeRefer
from tests.tiny_train import register
register()
from textsam.train.config_file import config_from_dict
from textsam.train.loop import train
train(config_from_dict(json.loads(sys.argv[1])), source=FakeRefer(FakeCoco(3)))
"""


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(clip_spec: str, tmp_path: Path) -> None:
    from textsam.train.loop import train

    cfg = make_config(tmp_path / "ddp", clip_spec, recipe="text", steps=3, batch_size=4, log_every=1)
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT.format(repo=str(REPO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), json.dumps(cfg.to_dict())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = read_weights(tmp_path / "ddp" / "model.safetensors")
    # Same micro-batches (2 x 2 samples, accumulated) in one process: bit-identical. Gradients are
    # averaged by powers of two in both cases, and the gloo sum of two ranks is commutative.
    accum = read_weights(train(replace(cfg, output_dir=str(tmp_path / "accum"), grad_accum=2), source=FakeRefer(FakeCoco(3))))
    assert ddp.keys() == accum.keys()
    assert all(torch.equal(ddp[k], accum[k]) for k in ddp)
    # One batch of 4 in one process: the per-sample gradients are summed in another order, so only
    # close. Key-projection biases get exactly zero gradient in exact arithmetic (softmax is
    # shift-invariant) and Adam normalises their rounding noise into lr-sized steps: looser there.
    single = read_weights(train(replace(cfg, output_dir=str(tmp_path / "single")), source=FakeRefer(FakeCoco(3))))
    for k in ddp:
        atol = 2e-4 if k.endswith("k_proj.bias") else 5e-5
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=atol, msg=k)
    logs = [json.loads(ln) for ln in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3]  # only rank 0 wrote


# ---------------------------------------------------------------------------- 5. CLIP pretraining


def _coloured_shape_crops() -> tuple[list[np.ndarray], list[str]]:
    """16 crops ``(24, 24, 3)`` of a coloured square or circle on grey, and their phrases ("red square")."""
    rng = np.random.default_rng(0)
    crops, phrases = [], []
    for i in range(16):
        color = list(COLORS)[i % 4]
        shape = "square" if (i // 4) % 2 == 0 else "circle"
        crop = np.full((24, 24, 3), 128, np.uint8)
        yy, xx = np.mgrid[:24, :24]
        r = int(rng.integers(6, 10))
        m = (np.abs(xx - 12) <= r) & (np.abs(yy - 12) <= r) if shape == "square" else (xx - 12) ** 2 + (yy - 12) ** 2 <= r * r
        crop[m] = COLORS[color]
        crops.append(crop)
        phrases.append(f"{color} {shape}")
    return crops, phrases


def test_clip_pretrain_lowers_infonce_and_saves_local_dir(tmp_path: Path) -> None:
    import open_clip

    from textsam.text.clip import TextEncoder
    from textsam.train.clip_pretrain import ClipPretrainConfig, CropTextDataset, clip_input_for, pretrain_clip

    crops, phrases = _coloured_shape_crops()
    cfg = ClipPretrainConfig(model_cfg=TINY_CLIP_CFG, steps=25, batch_size=16, lr=2e-3, warmup_steps=2)
    ds = CropTextDataset(clip_input_for(cfg.model_cfg), crops=crops, phrases=phrases)
    result = pretrain_clip(ds, tmp_path / "clip", cfg)
    assert result.losses[-1] < 0.8 * result.losses[0], result.losses
    assert (result.path / "open_clip_config.json").is_file() and (result.path / "open_clip_model.safetensors").is_file()

    spec = f"local-dir:{result.path}"
    loaded = open_clip.create_model(spec).eval()
    encoder = TextEncoder.create(spec, None)
    tok = open_clip.get_tokenizer(spec)
    words = ["red square", "blue circle", "a yellow thing"]
    assert torch.equal(tok(words), open_clip.get_tokenizer("ViT-B-16", context_length=16)(words))
    with torch.no_grad():
        ref_text = result.model.encode_text(tok(words), normalize=True)
        images = torch.stack([ds[i][0] for i in range(4)])
        assert torch.equal(loaded.encode_image(images, normalize=True), result.model.encode_image(images, normalize=True))
        assert torch.equal(loaded.encode_text(tok(words), normalize=True), ref_text)
    # TextEncoder cuts padding before the causal text tower (same maths, other rounding): compare it with
    # a TextEncoder around the in-memory model bit for bit, and with open_clip's encode_text closely.
    in_memory = TextEncoder(result.model.eval(), tok, model_name="mem", pretrained=None)
    assert torch.equal(encoder.encode(words), in_memory.encode(words))
    torch.testing.assert_close(encoder.encode(words), ref_text, rtol=0, atol=1e-6)
    assert encoder.embed_dim == 32


def test_clip_pretrain_cli_sizes_a_clip_from_scratch(tmp_path: Path, clip_spec: str) -> None:
    """``--model-cfg``: open_clip model-config keys over the small default (vision/text key by key); a config
    open_clip cannot build, malformed JSON, or one given with ``--init`` is a usage error."""
    synthetic = pytest.importorskip("textsam.data.synthetic")
    from textsam.text.clip import TextEncoder
    from textsam.train.clip_pretrain import SMALL_CLIP_CFG, main

    synthetic.generate(tmp_path / "data", seed=0, num_train=3, num_val=0, num_test=0, image_size=64)
    sized = tmp_path / "sized.json"
    sized.write_text(json.dumps({"embed_dim": 48, "vision_cfg": {"width": 64, "layers": 2, "head_width": 16}}))
    base = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "clip"), "--steps", "2", "--batch-size", "4"]
    assert main([*base, "--model-cfg", str(sized)]) == 0
    saved = json.loads((tmp_path / "clip" / "open_clip_config.json").read_text())["model_cfg"]
    assert saved["embed_dim"] == 48 and saved["vision_cfg"] == {**SMALL_CLIP_CFG["vision_cfg"], "width": 64,
                                                               "layers": 2, "head_width": 16}
    assert saved["text_cfg"] == SMALL_CLIP_CFG["text_cfg"]
    assert TextEncoder.create(f"local-dir:{tmp_path / 'clip'}", None).encode(["red circle"]).shape == (1, 48)
    for bad in (["--model-cfg", "{not json"], ["--model-cfg", '{"vision_cfg": {"widht": 64}}'],
                ["--model-cfg", '{"vision_cfg": 3}'], ["--model-cfg", "{}", "--init", clip_spec],
                ["--model-cfg", str(tmp_path / "missing.json")]):
        with pytest.raises(SystemExit):
            main([*base, *bad])
    # JSON longer than a file name may be is read as JSON, not tried as a path
    long = json.dumps({"embed_dim": 48, "vision_cfg": {"width": 64, "layers": 2, "head_width": 16}}) + " " * 300
    assert main([*base, "--model-cfg", long, "--out", str(tmp_path / "clip_long")]) == 0


def test_clip_adapt_locks_the_text_tower(tmp_path: Path, clip_spec: str) -> None:
    """``--init --lock-text --class-fraction --grey-prob``: the image tower learns (loss falls), the text tower
    is bit-identical, the saved folder loads and encodes the same, colour-free crops go grey."""
    import open_clip

    from textsam.train.clip_pretrain import (
        ClipPretrainConfig,
        CropTextDataset,
        clip_input_for,
        load_initial_clip,
        names_no_colour,
        pretrain_clip,
    )

    init = load_initial_clip(clip_spec)
    before = {k: v.clone() for k, v in init.model.state_dict().items()}
    cfg = init.model_cfg
    crops, phrases = _coloured_shape_crops()
    ds = CropTextDataset(clip_input_for(cfg), crops=crops, phrases=phrases)
    classes = CropTextDataset(clip_input_for(cfg), crops=crops, phrases=[p.split()[1] for p in phrases], grey_prob=1.0)
    assert names_no_colour("the leftmost circle") and not names_no_colour("all Red things")
    grey = classes[0][0]
    assert torch.allclose(grey[0] * 0.26862954 + 0.48145466, grey[1] * 0.26130258 + 0.4578275, atol=1e-5)
    config = ClipPretrainConfig(model_cfg=cfg, steps=25, batch_size=16, lr=2e-3, warmup_steps=2, lock_text=True,
                                logit_scale=20.0, class_fraction=0.25)
    result = pretrain_clip(ds, tmp_path / "adapted", config, init=init, classes=classes)
    assert result.losses[-1] < 0.8 * result.losses[0], result.losses
    after = result.model.state_dict()
    text_keys = [k for k in before if not k.startswith("visual.")]
    assert text_keys and all(torch.equal(after[k], before[k]) for k in text_keys)
    assert not torch.equal(after["visual.proj"], before["visual.proj"])
    loaded = open_clip.create_model(f"local-dir:{result.path}").eval()
    image = torch.stack([ds[i][0] for i in range(3)])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(image), result.model.encode_image(image))
    with pytest.raises(InputError, match="classes"):
        pretrain_clip(ds, tmp_path / "x", config, init=init)


def test_clip_crops_hue_turn_only_where_the_caption_names_no_colour() -> None:
    """``hue_prob``: a crop whose phrase names no colour gets its hue turned (greys stay grey, a third of a turn
    maps red to green), a crop whose phrase names its colour never; the same (epoch, index) gives the same crop."""
    from textsam.train.clip_pretrain import CropTextDataset, clip_input_for
    from textsam.train.data import rotate_hue

    rgb = np.array([[[255, 0, 0], [128, 128, 128], [0, 0, 255]]], np.uint8)
    assert rotate_hue(rgb, 1 / 3).tolist() == [[[0, 255, 0], [128, 128, 128], [255, 0, 0]]]
    assert rotate_hue(rgb, 1.0).tolist() == rgb.tolist()
    crops, phrases = _coloured_shape_crops()
    clip_input = clip_input_for(TINY_CLIP_CFG)
    plain = CropTextDataset(clip_input, crops=crops, phrases=[p.split()[1] for p in phrases])
    turned = CropTextDataset(clip_input, crops=crops, phrases=[p.split()[1] for p in phrases], hue_prob=1.0)
    named = CropTextDataset(clip_input, crops=crops, phrases=phrases, hue_prob=1.0)
    changed = [not torch.equal(turned[(0, i)][0], plain[(0, i)][0]) for i in range(len(crops))]
    assert sum(changed) >= len(crops) - 1  # a turn of (almost) zero may leave one crop as it was
    assert all(torch.equal(named[(0, i)][0], plain[(0, i)][0]) for i in range(len(crops)))
    assert torch.equal(turned[(3, 5)][0], turned[(3, 5)][0]) and not torch.equal(turned[(3, 5)][0], turned[(4, 5)][0])
    corner = turned[(0, 0)][0][:, 0, 0]  # the grey background keeps its grey
    torch.testing.assert_close(corner, plain[(0, 0)][0][:, 0, 0])


# ------------------------------------------------------------ CLI + the real dataset readers


def test_cli_train_on_synthetic_files(clip_spec: str, tmp_path: Path) -> None:
    """``textsam train run.toml`` on files from the synthetic generator (real COCO + refs readers)."""
    synthetic = pytest.importorskip("textsam.data.synthetic")
    from textsam.cli import main
    from textsam.train.recipes import build_model

    synthetic.generate(tmp_path / "data", seed=0, num_train=6, num_val=2, num_test=0)
    write_text_run(tmp_path, clip_spec, 'steps = 5\nlog_every = 1\n', output_dir=tmp_path / "unused",
                   data_extra="eval_samples = 4\n", loss="correction_clicks = 1\n")
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "run.toml"), "--out", str(out), "--steps", "2"]) == 0
    logs = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 2] and "miou_text" in logs[-1]["eval"]
    assert main(["train", str(tmp_path / "run.toml"), "--out", str(out), "--steps", "3", "--resume", "auto"]) == 0
    assert [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 2, 3, 3]
    weights = read_weights(out / "model.safetensors")
    assert not any(k.startswith("image_encoder.") for k in weights)
    # the export (prompt encoder, decoder, projector) seeds another run; the image encoder keeps its init
    cfg = replace(load_config(tmp_path / "run.toml"), checkpoint=str(out / "model.safetensors"), seed=5)
    model = build_model(cfg)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    # --stop-at: stop inside a longer schedule, with the checkpoint and the weights of that step
    stopped = tmp_path / "stopped"
    assert main(["train", str(tmp_path / "run.toml"), "--out", str(stopped), "--steps", "4", "--stop-at", "2"]) == 0
    ckpt = torch.load(stopped / "checkpoints" / "step_0000002.pt", weights_only=True)
    early = read_weights(stopped / "model.safetensors")
    assert ckpt["step"] == 2 and all(torch.equal(ckpt["model"][k], v) for k, v in early.items())
    assert main(["train", str(tmp_path / "run.toml"), "--out", str(stopped), "--stop-at", "9"]) == 2


def test_compare_scores_each_phrase_kind(clip_spec: str, tmp_path: Path) -> None:
    """``python tools/compare.py RUN --by-kind``: per-kind scores whose sample counts add up."""
    synthetic = pytest.importorskip("textsam.data.synthetic")
    from textsam.cli import main
    from tools import compare

    synthetic.generate(tmp_path / "data", seed=0, num_train=4, num_val=3, num_test=0)
    write_text_run(tmp_path, clip_spec, 'steps = 1\neval_every = 0\n', output_dir=tmp_path / "run")
    assert main(["train", str(tmp_path / "run.toml")]) == 0
    args = [str(tmp_path / "run"), "--split", "val", "--by-kind", "--device", "cpu", "--out", str(tmp_path / "c.json")]
    assert compare.main(args) == 0
    result = json.loads((tmp_path / "c.json").read_text())["results"][str(tmp_path / "run")]
    kinds = result["by_kind"]
    assert set(kinds) <= {"attribute", "category", "spatial"} and "attribute" in kinds
    assert sum(k["samples"] for k in kinds.values()) == result["samples"]
    for scores in [result, *kinds.values()]:
        assert 0.0 <= scores["miou_text"] <= 1.0 and 0.0 <= scores["miou_point"] <= 1.0


def test_shapes_tiny_assembler_carries_a_fine_tuned_text_tower(clip_spec: str, tmp_path: Path) -> None:
    """``python tools/shapes_tiny_bundle.py``: a text stage that tuned the CLIP text tower puts that tower
    (not stage 1's) into the bundle, and ``create_model`` loads a model whose phrases embed as in training."""
    synthetic = pytest.importorskip("textsam.data.synthetic")
    import textsam
    from textsam.cli import main
    from textsam.text.clip import TextEncoder, load_text_tower
    from tools import shapes_tiny_bundle as shapes_tiny

    synthetic.generate(tmp_path / "data", seed=0, num_train=4, num_val=2, num_test=0)
    write_text_run(tmp_path, clip_spec, 'steps = 3\nfreeze = { image_encoder = false, text_encoder = false }\n',
                   output_dir=tmp_path / "run", model="shapes_tiny", optim="lr = 1e-2\n",
                   text_head="num_text_tokens = 2\n")
    assert main(["train", str(tmp_path / "run.toml")]) == 0
    clip_dir = Path(clip_spec.removeprefix("local-dir:"))
    out = tmp_path / "bundle.safetensors"
    assert shapes_tiny.main(["--sam", str(tmp_path / "run"), "--text", str(tmp_path / "run"), "--clip", str(clip_dir),
                             "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    model = textsam.create_model("shapes_tiny", checkpoint=str(out))
    trained = read_weights(tmp_path / "run" / "model.safetensors")
    tuned = TextEncoder.create(clip_spec, None)
    load_text_tower(tuned, {k.removeprefix("clip."): v for k, v in trained.items() if k.startswith("clip.")}, "run")
    stage1 = TextEncoder.create(clip_spec, None)
    phrases = ["the leftmost star", "small red circle"]
    got, want, old = model.text_encoder.encode(phrases), tuned.encode(phrases), stage1.encode(phrases)
    assert torch.allclose(got, want, atol=2e-3)  # the bundle stores fp16
    assert not torch.allclose(got, old, atol=2e-3)


def test_shapes_tiny_assembler_takes_frozen_parts_from_the_text_runs_start_weights(clip_spec: str,
                                                                                   tmp_path: Path) -> None:
    """A text run that froze the image encoder and the CLIP text tower exports only what it trained; the bundle
    must carry the encoder and tower it was trained with (its ``checkpoint``'s), not the SAM stage's, stage 1's
    or a random one."""
    synthetic = pytest.importorskip("textsam.data.synthetic")
    import textsam
    from textsam.cli import main
    from tools import shapes_tiny_bundle as shapes_tiny

    synthetic.generate(tmp_path / "data", seed=0, num_train=4, num_val=2, num_test=0)
    write_text_run(tmp_path, clip_spec, 'steps = 2\nfreeze = { image_encoder = false, text_encoder = false }\n',
                   output_dir=tmp_path / "e2e", model="shapes_tiny", optim="lr = 1e-2\n",
                   text_head="num_text_tokens = 2\n")
    assert main(["train", str(tmp_path / "run.toml")]) == 0
    write_text_run(tmp_path, clip_spec, f'steps = 1\ncheckpoint = "{tmp_path / "e2e"}/model.safetensors"\n'
                   'freeze = { image_encoder = true }\n', output_dir=tmp_path / "tuned", model="shapes_tiny",
                   text_head="num_text_tokens = 2\n")
    assert main(["train", str(tmp_path / "run.toml")]) == 0
    tuned = read_weights(tmp_path / "tuned" / "model.safetensors")
    assert not any(k.startswith(("image_encoder.", "clip.")) for k in tuned)
    assert shapes_tiny.start_chain(tmp_path / "tuned") == [tmp_path / "e2e" / "model.safetensors"]
    out = tmp_path / "bundle.safetensors"
    clip_dir = str(Path(clip_spec.removeprefix("local-dir:")))
    assert shapes_tiny.main(["--sam", str(tmp_path / "tuned"), "--text", str(tmp_path / "tuned"), "--clip", clip_dir,
                             "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    model = textsam.create_model("shapes_tiny", checkpoint=str(out))
    e2e = read_weights(tmp_path / "e2e" / "model.safetensors")
    key = "image_encoder.patch_embed.proj.weight"
    assert torch.allclose(model.state_dict()[key], e2e[key], atol=1e-3)  # fp16 storage
    assert torch.allclose(model.state_dict()["mask_decoder.iou_token.weight"], tuned["mask_decoder.iou_token.weight"],
                          atol=1e-3)
    from textsam.text.clip import TextEncoder, load_text_tower

    e2e_tower = TextEncoder.create(clip_spec, None)
    load_text_tower(e2e_tower, {k.removeprefix("clip."): v for k, v in e2e.items() if k.startswith("clip.")}, "e2e")
    phrases = ["the leftmost star", "small red circle"]
    got, want = model.text_encoder.encode(phrases), e2e_tower.encode(phrases)
    assert torch.allclose(got, want, atol=2e-3)  # the bundle stores fp16
    assert not torch.allclose(got, TextEncoder.create(clip_spec, None).encode(phrases), atol=2e-3)


# ------------------------------------------------------------------------------ config errors


def test_config_errors_name_the_key_and_what_to_write(tmp_path: Path) -> None:
    """Wrong types and values are InputErrors (``steps = "sixty"`` was an unexpected ValueError, ``lr = -1`` an
    AdamW error); an unknown key names the closest known one; bad TOML names the line."""
    cases = {
        'steps = "sixty"': "steps must be a whole number",
        "steps = 8.5": "steps must be a whole number",
        "batch_size = true": "batch_size must be a whole number",
        "[optim]\nlr = -0.001": "[optim] lr must be a positive",
        "[optim]\nlr = 0": "[optim] lr must be a positive",
        'progress = "no"': "progress must be true or false",
        '[augment]\ncrop_enlarge = "big"': "[augment] crop_enlarge must be a list of 2 numbers",
        "stepz = 3": "unknown key 'stepz'; did you mean 'steps'",
        'root = "d"': "'root' belongs in the [data] table",
        "[data]\nrot = 'd'": "unknown key 'rot' in [data]; did you mean 'root'",
        "[prompt_mix]\ntext = -1": "[prompt_mix] text",
        "steps = 8 8": "not valid TOML.*fix line 1 `steps = 8 8`",
        "seed = -1": "seed must be a whole number >= 0",
    }
    for text, words in cases.items():
        path = tmp_path / "c.toml"
        path.write_text(text + "\n")
        with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]") if "TOML" not in words
                           else words):
            load_config(path)
    path = tmp_path / "c.json"
    path.write_text('{"steps": 3,\n "lr": }')
    with pytest.raises(InputError, match="not valid JSON.*line 2"):
        load_config(path)
    assert config_from_dict({"optim": {"lr": 1}, "augment": {"crop_enlarge": [1, 2]}}).augment.crop_enlarge == (1.0, 2.0)


def test_a_key_of_the_flat_layout_names_its_table(tmp_path: Path) -> None:
    """Every key that moved into a table is one line naming the new place; removed keys say what to do; a
    config written by ``TrainConfig.to_dict`` reads back equal."""
    for key, (table, name) in MOVED.items():
        path = tmp_path / "c.toml"
        path.write_text(f"{key} = 1\n")
        with pytest.raises(InputError, match=rf"^{path}: {key} moved to \[{table}\] {name}$"):
            load_config(path)
        assert name in {f.name for f in __import__("dataclasses").fields(TABLES[table])}
    for text in ('locator_kind = "cells"', '[text_head]\nlocator_kind = "regions"'):
        (tmp_path / "c.toml").write_text(text + "\n")
        with pytest.raises(InputError, match="locator_kind was removed: the region locator is the only kind"):
            load_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text('text_head = "runs/x/text_head.safetensors"\n')
    with pytest.raises(InputError, match="give the file as checkpoint"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text("[optim]\nfocal_weight = 2\n")
    with pytest.raises(InputError, match=r"focal_weight moved to \[loss\] focal_weight"):
        load_config(tmp_path / "c.toml")
    cfg = make_config(tmp_path, "x", recipe="text", lr=3e-4, locator_dim=8, cache_dir="c", greyscale_prob=0.0)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "c.json") == cfg and cfg.optim.lr == 3e-4 and cfg.cache.dir == "c"


# --------------------------------------------------- run folders: nothing lost, bad checkpoints, faults


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and its modification time (ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(clip_spec: str, tmp_path: Path) -> None:
    """Training into a folder that holds an earlier run (finished, or stopped part-way) without ``resume`` used to
    replace its weights and config silently, append to its log, and keep its checkpoints beside the new ones."""
    from textsam.train.loop import train

    src = FakeRefer(FakeCoco(2))
    out = tmp_path / "run"
    cfg = make_config(out, clip_spec, recipe="text", steps=3, checkpoint_every=1)
    train(cfg, source=src, stop_at=2)  # stopped part-way
    stopped = _files(out)
    with pytest.raises(InputError, match="already holds a training run.*--resume auto.*--out.*--overwrite"):
        train(cfg, source=src)
    train(cfg, source=src, resume="auto")  # finished
    finished = _files(out)
    other = replace(cfg, steps=2, optim=replace(cfg.optim, lr=5e-4))
    with pytest.raises(InputError, match="already holds a training run"):
        train(other, source=src)
    assert _files(out) == finished and stopped.keys() <= finished.keys()
    # --overwrite: the old run's files go first, so no checkpoint or log line of it is left
    train(other, source=src, overwrite=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000001.pt", "step_0000002.pt"]
    logs = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2] and json.loads((out / "train_config.json").read_text())["optim"]["lr"] == 5e-4
    with pytest.raises(InputError, match="only one"):
        train(other, source=src, resume="auto", overwrite=True)


def test_a_run_that_failed_before_its_first_step_may_be_run_again(clip_spec: str, tmp_path: Path) -> None:
    """A data error in the first step leaves only ``train_config.json``: the same command, once the data is
    fixed, starts without --resume or --overwrite."""
    from textsam.train.loop import train

    coco = FakeCoco(2)

    def unreadable(image_id: int) -> np.ndarray:
        raise InputError(f"cannot read image {image_id}")

    coco.load_image = unreadable  # type: ignore[method-assign]
    cfg = make_config(tmp_path / "run", clip_spec, recipe="text", steps=1)
    with pytest.raises(InputError, match="cannot read image"):
        train(cfg, source=FakeRefer(coco))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["train_config.json"]
    assert train(cfg, source=FakeRefer(FakeCoco(2))).is_file()


def test_resume_auto_on_a_finished_run_changes_no_file_and_on_a_fresh_folder_starts(clip_spec: str,
                                                                                   tmp_path: Path) -> None:
    from textsam.train.loop import train

    src = FakeRefer(FakeCoco(2))
    cfg = make_config(tmp_path / "run", clip_spec, recipe="text", steps=2)
    path = train(cfg, source=src, resume="auto")  # nothing there yet: a fresh start
    before = _files(tmp_path / "run")
    assert train(cfg, source=src, val_source=src, resume="auto") == path
    assert _files(tmp_path / "run") == before  # same bytes, same timestamps: no export, no log or config rewrite
    with pytest.raises(InputError, match="past steps"):
        train(replace(cfg, steps=1), source=src, resume="auto")


def _spoil(path: Path, how: str, marker: Path) -> None:
    """Make a checkpoint truncated, random bytes, or a pickle that would create ``marker`` if it ever ran."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        class Payload:
            def __reduce__(self) -> tuple[object, tuple[object, ...]]:
                return (Path.touch, (marker,))

        torch.save({"format": "textsam.train_state", "step": 99, "payload": Payload()}, path)


@pytest.mark.parametrize("how", ["truncated", "random", "unsafe"])
def test_resume_skips_an_unreadable_latest_checkpoint_and_refuses_a_named_one(how: str, clip_spec: str,
                                                                             tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """``resume="auto"``: the latest checkpoint is truncated, random bytes or a pickle that would run code (it
    never runs: weights_only); it is skipped with a warning naming it and the one before is used, giving the
    uninterrupted run's weights. Named explicitly, it is an InputError that never suggests weights_only=False."""
    from textsam.train.loop import train

    src = FakeRefer(FakeCoco(2))
    full = read_weights(train(make_config(tmp_path / "full", clip_spec, recipe="text", steps=4), source=src))
    cfg = make_config(tmp_path / "split", clip_spec, recipe="text", steps=4, checkpoint_every=1)
    train(cfg, source=src, stop_at=3)
    bad, marker = tmp_path / "split" / "checkpoints" / "step_0000003.pt", tmp_path / "it_ran"
    _spoil(bad, how, marker)
    with pytest.raises(InputError, match="step_0000003.pt") as err:
        train(replace(cfg, output_dir=str(tmp_path / "other")), source=src, resume=bad)
    assert "weights_only" not in str(err.value) and not (tmp_path / "other").exists()
    with caplog.at_level("WARNING", logger="textsam.train.loop"):
        resumed = train(cfg, source=src, resume="auto")
    assert "step_0000003.pt" in caplog.text and "weights_only" not in caplog.text
    assert not marker.exists()
    assert bad.with_name("step_0000003.pt.corrupt").is_file()  # set aside, not deleted, not used again
    a, b = full, read_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(ln) for ln in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4]


def test_sigint_writes_the_last_completed_step_and_resume_is_exact(clip_spec: str, tmp_path: Path) -> None:
    """SIGINT arriving mid-step (while an image loads): the step completes, its checkpoint is written and
    TrainingInterrupted says which; resuming gives the uninterrupted run's weights."""
    import os
    import signal

    from textsam.train.loop import TrainingInterrupted, train

    src = FakeRefer(FakeCoco(2))
    full = read_weights(train(make_config(tmp_path / "full", clip_spec, recipe="text", steps=5), source=src))
    coco = FakeCoco(2)
    load = coco.load_image
    calls = []

    def load_and_interrupt(image_id: int) -> np.ndarray:
        calls.append(image_id)
        if len(calls) == 9:  # step 3 of 5 (batch 4 + correction rounds load images once per sample)
            os.kill(os.getpid(), signal.SIGINT)
        return load(image_id)

    coco.load_image = load_and_interrupt  # type: ignore[method-assign]
    cfg = make_config(tmp_path / "split", clip_spec, recipe="text", steps=5)
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg, source=FakeRefer(coco))
    step = stop.value.step
    assert 1 <= step < 5 and stop.value.checkpoint == tmp_path / "split" / "checkpoints" / f"step_{step:07d}.pt"
    assert torch.load(stop.value.checkpoint, weights_only=True)["step"] == step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    b = read_weights(train(cfg, source=src, resume="auto"))
    assert all(torch.equal(full[k], b[k]) for k in full)


def test_a_crash_while_writing_leaves_no_half_file_under_a_final_name(clip_spec: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed while a checkpoint is written leaves only ``step_N.tmp`` (and maybe a cut log line);
    ``resume="auto"`` uses the previous checkpoint, removes the leftover and finishes exactly."""
    from textsam.train.loop import train

    src = FakeRefer(FakeCoco(2))
    full = read_weights(train(make_config(tmp_path / "full", clip_spec, recipe="text", steps=4), source=src))
    cfg = make_config(tmp_path / "split", clip_spec, recipe="text", steps=4, checkpoint_every=1)
    real_save = torch.save

    class Killed(BaseException):
        pass

    def dying_save(obj: object, f: object, *args: object, **kw: object) -> None:
        if isinstance(obj, dict) and obj.get("step") == 3:  # killed half-way through writing step 3
            if isinstance(f, (str, Path)):
                Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
            else:
                f.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
            raise Killed
        real_save(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        train(cfg, source=src)
    monkeypatch.setattr(torch, "save", real_save)
    ckpts = tmp_path / "split" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000001.pt", "step_0000002.pt", "step_0000003.tmp"]
    assert not (tmp_path / "split" / "model.safetensors").exists()
    with open(tmp_path / "split" / "log.jsonl", "a") as f:
        f.write('{"loss": 1.0, "st')  # a line cut short by the kill
    b = read_weights(train(cfg, source=src, resume="auto"))
    assert all(torch.equal(full[k], b[k]) for k in full)
    assert not list(ckpts.glob("*.tmp"))
    logs = [json.loads(ln) for ln in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
